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
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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
        int, typer.Option(min=1, help="Ranks running at once (like MaxConcurrency).")
    ] = 2,
) -> None:
    """Run Initialize, every rank (as its own process) and Summarize on this machine."""
    from cosmicai.request import load_request

    try:
        request = load_request(request_file)
    except CosmicAIError as exc:
        _fail(exc)
    _run(request, storage, workers)


def _run(request: object, storage: str, workers: int) -> None:
    from cosmicai.local import run_local
    from cosmicai.report import print_summary
    from cosmicai.request import RunRequest

    assert isinstance(request, RunRequest)
    try:
        result = run_local(request, storage, workers=workers, console=console)
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
        {"bucket": "cosmicai-demo", "data_prefix": dataset.name, "batch_size": 256, "model": model}
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
        f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, {result.parameters:,} parameters); "
        f"parity ORT vs torch on {result.parity_samples} galaxies: max |dz| "
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
    batch: Annotated[int, typer.Option(min=1)] = 512,
    samples: Annotated[int, typer.Option(min=1, help="Galaxies per measurement.")] = 1024,
    rounds: Annotated[int, typer.Option(min=1)] = 5,
    rss_batches: Annotated[int, typer.Option(min=1)] = 10,
    out: Annotated[Path, typer.Option(help="Figures: OUT.json and OUT.md.")] = Path(
        "docs/astromae-bench"
    ),
) -> None:
    """torch eager (fp32, bf16 autocast) vs ORT fp32 vs ORT INT8 on the same galaxies, 1 thread
    and all cores, interleaved; plus peak RSS and import + load time of a fresh worker."""
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
            batch=batch,
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
