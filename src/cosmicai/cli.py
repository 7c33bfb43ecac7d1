"""The ``cosmicai`` command line."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from cosmicai import __version__
from cosmicai.constants import DEMO_MODEL, ENV_STORAGE
from cosmicai.exceptions import CosmicAIError, InvalidRequestError
from cosmicai.rendezvous.cli import app as rendezvous_app

if TYPE_CHECKING:
    from cosmicai.data.partitioner import WrittenPartition

app = typer.Typer(
    help="Serverless AI inference over astronomical datasets (the CosmicAI workload).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make, cut and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
aws_app = typer.Typer(
    help="Start, follow and summarize runs on a deployed stack.", no_args_is_help=True
)
app.add_typer(aws_app, name="aws")
app.add_typer(rendezvous_app, name="rendezvous")
model_app = typer.Typer(help="Export, quantize and check models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
bench_app = typer.Typer(
    help="Benchmarks; figures go to JSON + markdown with the machine described.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)

StorageOption = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar=ENV_STORAGE,
        help="'s3' for Amazon S3, or a local directory whose sub-folders are the buckets.",
    ),
]


def _fail(exc: Exception) -> NoReturn:
    code = 2 if isinstance(exc, InvalidRequestError | ValueError) else 1
    from rich.markup import escape

    # Escaped: a message quoting the input ("partitions[3]", "[bold]") is not markup.
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _size(text: str) -> int:
    from cosmicai.data.partitioner import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def validate(request_file: Path) -> None:
    """Validate a run request: print it normalised, or every error (exit status 2)."""
    from cosmicai.request import load_request

    try:
        request = load_request(request_file)
    except CosmicAIError as exc:
        _fail(exc)
    if request.ignored_fields:
        err_console.print(
            "[yellow]note:[/] ignored fields of the original container: "
            + ", ".join(request.ignored_fields)
        )
    print(request.model_dump_json(indent=2))


@app.command()
def plan(request_file: Path, storage: StorageOption = "s3") -> None:
    """Plan a run (partitions to ranks) and print the plan, without running it."""
    from cosmicai.pipeline import make_plan
    from cosmicai.report import print_plan
    from cosmicai.request import load_request
    from cosmicai.storage import open_storage

    try:
        print_plan(make_plan(load_request(request_file), open_storage(storage)), console)
    except CosmicAIError as exc:
        _fail(exc)


@app.command()
def run(
    request_file: Path,
    storage: StorageOption = "s3",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Ranks running at once (like MaxConcurrency); a request's max_concurrency "
            "lowers it, never raises it.",
        ),
    ] = 2,
    resume: Annotated[
        bool,
        typer.Option(
            help="Finish an existing run of this run_id: keep its plan, run only the ranks "
            "without an ok result, summarize again. Without it a used run_id is refused."
        ),
    ] = False,
) -> None:
    """Run Initialize, every rank (as its own process) and Summarize on this machine."""
    from cosmicai.request import load_request

    try:
        request = load_request(request_file)
    except CosmicAIError as exc:
        _fail(exc)
    _run(request, storage, workers, resume=resume)


def _run(request: object, storage: str, workers: int, *, resume: bool = False) -> None:
    from cosmicai.local import run_local
    from cosmicai.report import print_summary
    from cosmicai.request import RunRequest

    assert isinstance(request, RunRequest)
    try:
        result = run_local(request, storage, workers=workers, console=console, resume=resume)
    except CosmicAIError as exc:
        _fail(exc)
    print_summary(result.summary, console)
    location = f"{storage.rstrip('/')}/{request.bucket}/{request.run_prefix}"
    console.print(f"Results: {location}")
    if result.summary.failed_ranks:
        failed = ", ".join(str(r) for r in sorted(result.summary.failed_ranks))
        err_console.print(f"[bold red]error:[/] rank(s) {failed} failed")
        raise typer.Exit(1)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its data.")] = Path(
        ".demo"
    ),
    partitions: Annotated[int, typer.Option(min=1, help="Partitions (and ranks).")] = 6,
    partition_size: Annotated[str, typer.Option(help="Size of each partition.")] = "10MB",
    workers: Annotated[int, typer.Option(min=1, help="Ranks running at once.")] = 2,
    seed: int = 0,
    model: Annotated[
        str,
        typer.Option(
            help="ONNX model: AstroMAE INT8 (CosmicAI's workload) by default; "
            "builtin:reference is the small CNN."
        ),
    ] = DEMO_MODEL,
) -> None:
    """The whole pipeline on this machine: render SDSS test galaxies into partitions, run
    AstroMAE (INT8) over them with one rank per partition, print the summary."""
    from cosmicai.data.format import BYTES_PER_SAMPLE
    from cosmicai.data.partitioner import samples_per_partition
    from cosmicai.data.synth import synthesize
    from cosmicai.request import parse_request
    from cosmicai.storage import parse_location

    per_partition = samples_per_partition(_size(partition_size))
    samples = partitions * per_partition
    store = directory / "store"
    dataset = store / "cosmicai-demo" / f"sdss-test-{partitions}x{partition_size}-seed{seed}"
    if not (dataset / "_index.json").exists():
        shutil.rmtree(dataset, ignore_errors=True)
        with console.status(f"Rendering {samples:,} SDSS test galaxies ..."):
            written = synthesize(
                parse_location(str(dataset)),
                size_bytes=samples * BYTES_PER_SAMPLE,
                split="test",
                seed=seed,
                partition_bytes=_size(partition_size),
            )
        console.print(
            f"Rendered {samples:,} galaxies ({samples * BYTES_PER_SAMPLE / 2**20:.0f} MB) into "
            f"{len(written)} partitions under {dataset}"
        )
    request = parse_request(
        {"bucket": "cosmicai-demo", "data_prefix": dataset.name, "model": model}
    )
    console.print(f"Run request: {request.model_dump_json(exclude_defaults=True)}", soft_wrap=True)
    _run(request, str(store), workers)


def _print_partition(written: WrittenPartition) -> None:
    console.print(f"  {written.key}: {written.samples:,} samples")


def _print_total(written: list[WrittenPartition]) -> None:
    console.print(f"{sum(w.samples for w in written):,} samples in {len(written)} partitions")


@data_app.command("synth")
def data_synth(
    out: Annotated[str, typer.Option(help="s3://bucket/prefix, file:///dir or a directory.")],
    size: Annotated[str, typer.Option(help="Size of the split, e.g. 1GB.")] = "1GB",
    split: Annotated[str, typer.Option(help="test or train (disjoint galaxies).")] = "test",
    seed: int = 0,
    partition_size: Annotated[str, typer.Option(help="Size of each output partition.")] = "100MB",
    processes: Annotated[int, typer.Option(min=1, help="Rendering processes.")] = (
        os.cpu_count() or 1
    ),
) -> None:
    """Render a deterministic dataset from the real SDSS catalogue (same seed, same bytes)."""
    from cosmicai.data.synth import synthesize
    from cosmicai.storage import parse_location

    if split not in ("test", "train"):
        raise typer.BadParameter(f"split must be 'test' or 'train', not {split!r}")
    try:
        location = parse_location(out)
        written = synthesize(
            location,
            size_bytes=_size(size),
            split=split,  # type: ignore[arg-type]
            seed=seed,
            partition_bytes=_size(partition_size),
            processes=processes,
            on_written=_print_partition,
        )
    except CosmicAIError as exc:
        _fail(exc)
    _print_total(written)


@data_app.command("partition")
def data_partition(
    source: Annotated[str, typer.Argument(help="Location of the partitions to re-cut.")],
    out: Annotated[str, typer.Option(help="s3://bucket/prefix, file:///dir or a directory.")],
    size: Annotated[str, typer.Option(help="Target partition size: 10/25/50/75/100MB.")] = "25MB",
) -> None:
    """Re-cut a dataset into numbered partitions 1, 2, 3, ... of a given size."""
    from cosmicai.data.partitioner import read_partitions, repartition
    from cosmicai.storage import parse_location

    try:
        written = repartition(
            read_partitions(parse_location(source)),
            parse_location(out),
            _size(size),
            on_written=_print_partition,
        )
    except CosmicAIError as exc:
        _fail(exc)
    _print_total(written)


@data_app.command("convert")
def data_convert(
    files: Annotated[list[Path], typer.Argument(help="CosmicAI N.pt partitions.")],
    out: Annotated[str, typer.Option(help="s3://bucket/prefix, file:///dir or a directory.")],
) -> None:
    """Convert CosmicAI N.pt (torch TensorDataset) partitions; needs cosmicai[convert]."""
    from cosmicai.data.convert import convert_pt_files
    from cosmicai.data.partitioner import WrittenPartition, write_dataset_index
    from cosmicai.storage import parse_location

    try:
        location = parse_location(out)
        converted = convert_pt_files(files, location, on_progress=console.print)
        write_dataset_index(
            location,
            [WrittenPartition(c.number, c.key, c.samples, c.bytes) for c in converted],
        )
    except (CosmicAIError, ImportError) as exc:
        _fail(exc)
    console.print(f"converted {len(converted)} partitions into {location}")


StackOption = Annotated[
    str, typer.Option("--stack", envvar="COSMICAI_STACK", help="Name of the deployed stack.")
]


@aws_app.command("start")
def aws_start(
    request_file: Path,
    stack: StackOption,
    watch: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = False,
) -> None:
    """Start a run on a deployed stack (the request is validated here first)."""
    from cosmicai.aws.runs import describe_stack, start_run
    from cosmicai.request import load_request

    try:
        request = load_request(request_file)
        deployed = describe_stack(stack)
        arn = start_run(deployed, request)
    except CosmicAIError as exc:
        _fail(exc)
    console.print(f"Started run [bold]{request.run_id}[/]: {arn}")
    if deployed.dashboard_url:
        console.print(f"Dashboard: {deployed.dashboard_url}")
    if watch:
        aws_watch(request.run_id, stack)


@aws_app.command("watch")
def aws_watch(run_id: str, stack: StackOption) -> None:
    """Follow a run: Map item counts as a progress bar, until the execution ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from cosmicai.aws.runs import RunProgress, describe_stack, watch_run

    try:
        deployed = describe_stack(stack)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("Distributed Test", total=None)

            def show(p: RunProgress) -> None:
                bar.update(
                    task,
                    total=p.ranks_total or None,
                    completed=p.ranks_succeeded + p.ranks_failed,
                    description=f"{p.status.lower()}: {p.ranks_running} running, "
                    f"{p.ranks_failed} failed",
                )

            final = watch_run(deployed, run_id, on_progress=show)
    except CosmicAIError as exc:
        _fail(exc)
    if final.status != "SUCCEEDED":
        err_console.print(f"[bold red]run {run_id} {final.status}:[/] {final.error}: {final.cause}")
        raise typer.Exit(1)
    console.print(f"Run {run_id} succeeded: `cosmicai aws summary {run_id} --stack {stack}`")


@aws_app.command("summary")
def aws_summary(run_id: str, stack: StackOption) -> None:
    """Print a run's summary: accuracy, performance and cost."""
    from cosmicai.aws.runs import describe_stack, fetch_summary
    from cosmicai.report import print_summary

    try:
        summary = fetch_summary(describe_stack(stack), run_id)
    except CosmicAIError as exc:
        _fail(exc)
    print_summary(summary, console)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v.strip().removesuffix("MB")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, not {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise typer.BadParameter(f"{what} must be comma-separated non-negative integers")
    return values


@bench_app.command("sweep")
def bench_sweep(
    out: Annotated[Path, typer.Option(help="Folder for sweep.json, sweep.md.")] = Path(
        "docs/sweep"
    ),
    workdir: Annotated[
        Path, typer.Option(help="Where the generated dataset and runs are kept.")
    ] = Path(".sweep"),
    full: Annotated[
        bool, typer.Option(help="The full sweep: 1 GB, world sizes 1,2,4,8,all, 3 repeats.")
    ] = False,
    model: Annotated[str, typer.Option(help="Model of every run.")] = "builtin:reference",
    sizes: Annotated[str | None, typer.Option(help="Partition sizes in MB.")] = None,
    world_sizes: Annotated[
        str | None, typer.Option(help="World sizes; 0 means one rank per partition.")
    ] = None,
    dataset_mb: Annotated[int | None, typer.Option(min=1, help="Dataset size in MB.")] = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="Runs per cell.")] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Worker processes at once (default: the CPU count).")
    ] = os.cpu_count() or 1,
    memory_mb: Annotated[
        int, typer.Option(min=128, max=10240, help="Configured Lambda memory, for the cost.")
    ] = 2048,
) -> None:
    """CosmicAI's table on this machine: partition sizes x world sizes, each repeated; writes
    JSON + markdown with the published table beside it. Small by default; --full for all."""
    import shlex

    from cosmicai.bench.sweep import SweepConfig, run_sweep, sweep_markdown

    config = SweepConfig(model=model, concurrency=concurrency, memory_mb=memory_mb)
    if full:
        config.dataset_mb, config.repeats = 1024, 3
        config.world_sizes = [1, 2, 4, 8, 0]
    if sizes is not None:
        config.partition_mb = _int_list(sizes, "--sizes")
    if world_sizes is not None:
        config.world_sizes = _int_list(world_sizes, "--world-sizes")
    if dataset_mb is not None:
        config.dataset_mb = dataset_mb
    if repeats is not None:
        config.repeats = repeats
    if max(config.partition_mb) > config.dataset_mb or min(config.partition_mb) < 1:
        raise typer.BadParameter(
            f"partition sizes must be between 1 and the dataset size ({config.dataset_mb} MB)"
        )
    try:
        result = run_sweep(config, workdir, say=console.print)
    except CosmicAIError as exc:
        _fail(exc)
    result.command = "cosmicai " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(result.model_dump_json(indent=1))
    (out / "sweep.md").write_text(sweep_markdown(result))
    console.print(f"Sweep written to {out / 'sweep.json'} and {out / 'sweep.md'}")


@app.command()
def report(
    path: Annotated[
        Path, typer.Argument(help="A sweep.json (or its folder), or a local run's folder.")
    ],
    out: Annotated[Path | None, typer.Option(help="Folder for report.html and .md.")] = None,
) -> None:
    """One HTML page (and markdown) with the tables and figures of a run or a sweep."""
    from cosmicai.page import render

    try:
        page, md = render(path, out)
    except CosmicAIError as exc:
        _fail(exc)
    console.print(f"Report: {page} (and {md})")


SweepFile = Annotated[
    Path | None,
    typer.Option("--sweep", help="A sweep.json whose measured profile calibrates the projection."),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        help="'astromae-int8': AstroMAE's speed, start-up and footprint measured before its "
        "model landed (the sweep's memory slope is kept when --sweep is given)."
    ),
]
RateOption = Annotated[
    float | None,
    typer.Option(
        "--samples-per-s-per-vcpu", min=0.001, help="Override the model's speed on one vCPU."
    ),
]
ColdOption = Annotated[float | None, typer.Option(min=0, help="Override the cold start (s).")]
S3RateOption = Annotated[float, typer.Option(min=0.001, help="S3 read rate per worker, MB/s.")]
ArchitectureOption = Annotated[
    str | None,
    typer.Option(
        help="Lambda architecture priced: x86_64 or arm64 (default: the one the calibration "
        "was measured on, else x86_64)."
    ),
]


def _architecture(given: str | None, calibration: object) -> str:
    from cosmicai.projection import Calibration

    assert isinstance(calibration, Calibration)
    if given is None:
        return calibration.architecture or "x86_64"
    if given not in ("x86_64", "arm64"):
        raise typer.BadParameter(f"--architecture must be x86_64 or arm64, not {given!r}")
    if calibration.architecture not in (None, given):
        err_console.print(
            f"[yellow]note:[/] the calibration was measured on {calibration.architecture}; "
            f"{given} is priced with that speed per vCPU, which is not measured. Calibrate "
            f"with `cosmicai bench sweep` on an {given} machine for its own speed.",
            soft_wrap=True,
        )
    return given


def _calibration(
    sweep: Path | None, preset: str | None, rate: float | None, cold: float | None, s3: float
) -> object:
    from cosmicai.projection import ASTROMAE_INT8, Calibration, calibration_from_sweep

    if sweep is None and preset is None and rate is None:
        default = Path("docs/sweep/sweep.json")
        if not default.exists():
            raise typer.BadParameter(
                "give --sweep SWEEP.json (from `cosmicai bench sweep`), --preset or "
                "--samples-per-s-per-vcpu"
            )
        sweep = default
    calibration: Calibration | None = None
    if sweep is not None:
        try:
            calibration = calibration_from_sweep(str(sweep))
        except (OSError, ValueError, KeyError) as exc:
            raise typer.BadParameter(f"{sweep} is not a readable sweep.json: {exc}") from None
    if preset is not None:
        if preset != "astromae-int8":
            raise typer.BadParameter(f"unknown preset {preset!r}; have: astromae-int8")
        update: dict[str, object] = {}
        if calibration is not None:
            update["rss_per_partition_mb"] = calibration.rss_per_partition_mb
            update["source"] = ASTROMAE_INT8.source + f"; memory slope from {sweep}"
        calibration = ASTROMAE_INT8.model_copy(update=update)
    if calibration is None:
        calibration = ASTROMAE_INT8.model_copy(update={"source": "given on the command line"})
    update = {"s3_mb_per_s": s3}
    if rate is not None:
        update["cpu_s_per_sample"] = 1 / rate
        update["architecture"] = None  # the caller's figure, from a machine we do not know
        update["source"] = calibration.source + f"; speed {rate:g} samples/s per vCPU given"
    if cold is not None:
        update["cold_start_s"] = cold
    return calibration.model_copy(update=update)


@app.command()
def project(
    sweep: SweepFile = None,
    preset: PresetOption = None,
    samples_per_s_per_vcpu: RateOption = None,
    cold_start_s: ColdOption = None,
    s3_mb_per_s: S3RateOption = 90.0,
    partition_mb: Annotated[float, typer.Option(min=1)] = 25,
    memory_mb: Annotated[int, typer.Option(min=128, max=10240)] = 1769,
    concurrency: Annotated[int, typer.Option(min=1)] = 1000,
    world_size: Annotated[
        int | None, typer.Option(min=1, help="Ranks (default one per partition).")
    ] = None,
    child_type: Annotated[str, typer.Option(help="EXPRESS or STANDARD children.")] = "EXPRESS",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset size, e.g. 12.6GB (default: CosmicAI's and 1 TB).")
    ] = None,
    child_start_rate: Annotated[
        float, typer.Option(min=0.001, help="Map children started per second (assumed).")
    ] = 500.0,
    map_start_s: Annotated[
        float, typer.Option(min=0, help="Seconds before the Map starts children (assumed).")
    ] = 1.0,
    architecture: ArchitectureOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the projection as JSON here.")] = None,
) -> None:
    """Project a run to AWS at full scale (Map wall-clock, cost, peak memory) from a measured
    profile, with every assumption printed."""
    from cosmicai.projection import ASSUMPTIONS, DATASETS, Calibration, Scenario
    from cosmicai.projection import project as simulate

    calibration = _calibration(sweep, preset, samples_per_s_per_vcpu, cold_start_s, s3_mb_per_s)
    assert isinstance(calibration, Calibration)
    if child_type not in ("EXPRESS", "STANDARD"):
        raise typer.BadParameter(f"--child-type must be EXPRESS or STANDARD, not {child_type!r}")
    arch = _architecture(architecture, calibration)
    datasets = {dataset: _size(dataset)} if dataset else DATASETS
    results = []
    for name, size in datasets.items():
        p = simulate(
            Scenario(
                dataset_bytes=size,
                partition_mb=partition_mb,
                memory_mb=memory_mb,
                world_size=world_size,
                concurrency=concurrency,
                map_child_type=child_type,  # type: ignore[arg-type]
                child_start_rate=child_start_rate,
                map_start_s=map_start_s,
                architecture=arch,  # type: ignore[arg-type]
            ),
            calibration,
        )
        results.append(p)
        _print_projection(name, p)
    console.print(f"Calibration: {calibration.source}", soft_wrap=True)
    console.print(
        f"  {1 / calibration.cpu_s_per_sample:,.0f} samples/s per vCPU, cold start "
        f"{calibration.cold_start_s:.2f} s, RSS {calibration.rss_base_mb:.0f} MB + "
        f"{calibration.rss_per_partition_mb:.2f} x partition MB, "
        f"S3 {calibration.s3_mb_per_s:g} MB/s"
    )
    console.print("Assumptions:")
    for key, text in ASSUMPTIONS.items():
        console.print(f"  - {key}: {text}", soft_wrap=True)
    if out is not None:
        import json

        out.write_text(
            json.dumps(
                {
                    "calibration": calibration.model_dump(),
                    "assumptions": ASSUMPTIONS,
                    "projections": [
                        {"dataset": n, **p.model_dump()}
                        for n, p in zip(datasets, results, strict=True)
                    ],
                },
                indent=1,
            )
        )


def _print_projection(name: str, p: object) -> None:
    from cosmicai.projection import Projection

    assert isinstance(p, Projection)
    s, c = p.scenario, p.cost
    fit = "" if p.fits else " [red](does not fit in memory)[/]"
    console.print(
        f"[bold]{name}[/]: {p.partitions:,} partitions of {s.partition_mb:g} MB, "
        f"{p.world_size:,} ranks, {s.memory_mb:,} MB ({p.vcpu:.2f} vCPU, {p.threads} thread(s)), "
        f"{s.architecture}{' (speed not measured on it)' if p.speed_borrowed else ''}, "
        f"concurrency {s.concurrency:,}, {s.map_child_type} children\n"
        f"  Map wall-clock {p.map_wall_s:.2f} s (rank p50 {p.rank_s_p50:.2f} s, max "
        f"{p.rank_s_max:.2f} s), {p.gbit_per_s:.2f} Gbit/s; peak RSS {p.peak_rss_mb:.0f} MB"
        f"{fit}\n"
        f"  cost ${c.total:.4f} (Lambda ${c.lambda_compute + c.lambda_requests:.4f} of which "
        f"INIT {c.init_gb_seconds:,.0f} of {c.billed_gb_seconds:,.0f} GB-s; Step Functions "
        f"${c.step_functions:.4f}; S3 ${c.s3_requests:.4f}; prices {c.prices_date})",
        soft_wrap=True,
    )


@app.command("plan-aws")
def plan_aws(
    deadline: Annotated[float, typer.Option(min=0.1, help="Map wall-clock limit, seconds.")],
    budget: Annotated[float, typer.Option(min=0, help="Cost limit of the run, dollars.")],
    sweep: SweepFile = None,
    preset: PresetOption = None,
    samples_per_s_per_vcpu: RateOption = None,
    cold_start_s: ColdOption = None,
    s3_mb_per_s: S3RateOption = 90.0,
    dataset: Annotated[str, typer.Option(help="Dataset size.")] = "12.6GB",
    concurrency: Annotated[int, typer.Option(min=1, help="Account concurrency limit.")] = 1000,
    show: Annotated[int, typer.Option(min=0, help="Runner-up options shown.")] = 4,
    architecture: ArchitectureOption = None,
) -> None:
    """Pick partition size x memory x world size x child type for a deadline and a budget
    (cheapest that meets both), with its predicted time and cost and the runners-up."""
    from cosmicai.projection import Calibration, plan_grid

    calibration = _calibration(sweep, preset, samples_per_s_per_vcpu, cold_start_s, s3_mb_per_s)
    assert isinstance(calibration, Calibration)
    arch = _architecture(architecture, calibration)
    choice = plan_grid(
        _size(dataset),
        calibration,
        deadline_s=deadline,
        budget=budget,
        concurrency=concurrency,
        architecture=arch,  # type: ignore[arg-type]
    )
    console.print(
        f"{len(choice.feasible)} of {choice.considered} configurations meet "
        f"{deadline:g} s and ${budget:g} for {dataset} (calibration: {calibration.source})",
        soft_wrap=True,
    )
    if not choice.feasible:
        for label, p in (("fastest", choice.fastest), ("cheapest", choice.cheapest)):
            if p is not None:
                _print_projection(f"Closest ({label})", p)
        err_console.print("[bold red]error:[/] no configuration meets the deadline and budget")
        raise typer.Exit(1)
    _print_projection("Choice", choice.feasible[0])
    for i, p in enumerate(choice.feasible[1 : 1 + show], start=2):
        _print_projection(f"Runner-up {i}", p)
    if choice.fastest is not None and choice.fastest not in choice.feasible[: 1 + show]:
        _print_projection("Fastest of all (for comparison)", choice.fastest)


@model_app.command("export")
def model_export(
    checkpoint: Annotated[Path, typer.Argument(help="AstroMAE checkpoint (.pt).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="ONNX file to write.")],
    config: Annotated[
        Path | None,
        typer.Option(help="JSON of AstroMAEConfig widths, for a state_dict without one."),
    ] = None,
) -> None:
    """AstroMAE checkpoint -> ONNX (dynamic batch, preprocessing inside), checked by the ONNX
    checker and against torch on a fixed batch (fails if max |dz| > 1e-4). Needs the
    'astromae' extra (torch, onnx). Takes our checkpoints, plain state_dicts and pickled
    whole models (read without running their code)."""
    import json

    try:
        from cosmicai.astromae.export import PARITY_TOLERANCE, export_checkpoint
        from cosmicai.astromae.network import AstroMAEConfig
    except ImportError as exc:
        _fail(
            CosmicAIError(
                f"export needs the 'astromae' extra (pip install 'cosmicai[astromae]'): {exc}"
            )
        )
    try:
        widths = AstroMAEConfig.from_dict(json.loads(config.read_text())) if config else None
        result = export_checkpoint(checkpoint, out, config=widths)
    except (CosmicAIError, OSError, ValueError) as exc:
        _fail(exc)
    console.print(
        f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, {result.parameters:,} parameters, "
        f"attention fused in {result.fused_attention} blocks); parity ORT vs torch on "
        f"{result.parity_samples} galaxies: max |dz| "
        f"{result.max_abs_diff:.2e} (limit {PARITY_TOLERANCE:g})"
    )


@model_app.command("quantize")
def model_quantize(
    model: Annotated[str, typer.Argument(help="fp32 ONNX model: a path or builtin:NAME.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="INT8 ONNX file to write.")],
    method: Annotated[
        str,
        typer.Option(
            help="'dynamic' (activation ranges per batch; about 1.9x faster here) or 'static' "
            "(calibrated once on training galaxies)."
        ),
    ] = "dynamic",
    test_samples: Annotated[int, typer.Option(min=1, help="Rendered test galaxies.")] = 5000,
    calibration_samples: Annotated[int, typer.Option(min=1)] = 512,
    max_mae_increase: Annotated[float, typer.Option(help="Relative, e.g. 0.02 = 2%.")] = 0.02,
    max_nmad_increase: Annotated[float, typer.Option(help="Relative, e.g. 0.03 = 3%.")] = 0.03,
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(
            help="Node-name prefix left in fp32 (repeatable; default: first magnitude layer)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=1)] = os.cpu_count() or 1,
) -> None:
    """INT8 copy of an ONNX model (MatMul/Gemm only, signed 8-bit weights), written only if
    it keeps its accuracy on the rendered test split: MAE may grow by at most 2%, NMAD by 3%.
    Otherwise both models' figures are printed and the command exits 1."""
    from cosmicai.model import load_model_bytes
    from cosmicai.quantize import DEFAULT_EXCLUDE, Split, accuracy_guard, quantize

    if method not in ("static", "dynamic"):
        raise typer.BadParameter(f"method must be 'static' or 'dynamic', not {method!r}")
    try:
        fp32 = load_model_bytes(model)
        calibration = (
            Split.rendered("train", calibration_samples, 1000) if method == "static" else None
        )
        int8 = quantize(
            fp32,
            method=method,  # type: ignore[arg-type]
            exclude=tuple(keep_fp32) if keep_fp32 else DEFAULT_EXCLUDE,
            calibration=calibration,
        )
        guard = accuracy_guard(
            fp32,
            int8,
            Split.rendered("test", test_samples, 2000),
            max_mae_increase=max_mae_increase,
            max_nmad_increase=max_nmad_increase,
            threads=threads,
        )
    except CosmicAIError as exc:
        _fail(exc)
    for label, m in (("fp32", guard.fp32), ("int8", guard.int8)):
        console.print(
            f"{label}: MAE {m.mae:.5f}  NMAD {m.nmad:.5f}  bias {m.bias:+.5f}  "
            f"outliers {m.outlier_fraction:.4f}  ({m.samples} test galaxies)"
        )
    console.print(
        f"change: MAE {guard.mae_change:+.2%} (limit +{max_mae_increase:.0%}), "
        f"NMAD {guard.nmad_change:+.2%} (limit +{max_nmad_increase:.0%})"
    )
    if not guard.passed:
        err_console.print(
            "[bold red]refused:[/] the INT8 model loses too much accuracy; nothing written"
        )
        raise typer.Exit(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(int8)
    console.print(
        f"wrote {out} ({len(int8) / 1e6:.1f} MB, {method} INT8, from {len(fp32) / 1e6:.1f} MB)"
    )


@bench_app.command("model")
def bench_model(
    fp32: Annotated[str, typer.Option(help="fp32 ONNX model.")] = "builtin:astromae",
    int8: Annotated[str, typer.Option(help="INT8 ONNX model.")] = "builtin:astromae-int8",
    checkpoint: Annotated[
        Path | None, typer.Option(help="AstroMAE checkpoint for torch (default: random weights).")
    ] = None,
    threads: Annotated[list[int] | None, typer.Option(help="Thread counts (repeatable).")] = None,
    batch: Annotated[
        list[int] | None,
        typer.Option(min=1, help="Batch sizes (repeatable; default 64 and 512)."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Galaxies per measurement.")] = 1024,
    rounds: Annotated[int, typer.Option(min=1)] = 5,
    rss_batches: Annotated[int, typer.Option(min=1)] = 10,
    out: Annotated[Path, typer.Option(help="Figures: OUT.json and OUT.md.")] = Path(
        "docs/astromae-bench"
    ),
) -> None:
    """torch eager (fp32, bf16 autocast where the CPU has bf16) vs ORT fp32 vs ORT INT8 on the
    same galaxies and batches, 1 thread and all cores, interleaved; plus peak RSS and import +
    load time of a fresh worker."""
    import json

    from cosmicai.bench.model import markdown, run_bench
    from cosmicai.model import available_cpus

    counts = sorted(set(threads or [1, available_cpus()]))
    try:
        report = run_bench(
            fp32=fp32,
            int8=int8,
            checkpoint=checkpoint,
            threads=counts,
            batches=sorted(set(batch or [64, 512])),
            samples=samples,
            rounds=rounds,
            rss_batches=rss_batches,
            work=Path(".bench"),
        )
    except (CosmicAIError, RuntimeError) as exc:
        _fail(exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    console.print(text, soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover - console entry point for `python -m cosmicai`
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
