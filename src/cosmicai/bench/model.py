"""``cosmicai bench model``: torch eager (fp32 and bf16 autocast) vs ONNX Runtime fp32 vs INT8.

Throughput: the same rendered test galaxies for every configuration, at each thread count and
each batch size asked for, in rounds; each round runs every (engine, threads, batch) once in a
shuffled order, and a configuration's speed-up over torch is the median of its per-round ratios
to torch eager at the same threads and batch (machines drift by tens of percent between
back-to-back runs, so only ratios measured side by side mean much). The best batch differs by
engine and thread count, so several batch sizes in one run show each engine at its best
against torch on the very same batches.

Ceiling (:mod:`cosmicai.bench.ceiling`): after every round, the network's quantized layers are
timed alone at each batch, so each engine's speed also reads as a share of what this CPU's
matrix products allow.

Memory and start-up: each engine in a fresh process that imports, loads the model and infers
10 batches of 512, as a worker does; its peak RSS (``ru_maxrss``) and import + load time.

The torch side needs the ``astromae`` extra. It runs the AstroMAE architecture with a
checkpoint's weights when given one, else with random weights: the speed of a network does not
depend on its weight values.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cosmicai.astromae.config import AstroMAEConfig, products
from cosmicai.bench.ceiling import ceiling
from cosmicai.bench.machine import machine

Predict = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], Any]


def _config_of(checkpoint: Path | None) -> AstroMAEConfig:
    """The widths the bench's ceiling and FLOP figures are for: the checkpoint's when given
    (needs torch to read), else AstroMAE's defaults, which the shipped models have."""
    if checkpoint is None:
        return AstroMAEConfig()
    try:
        from cosmicai.astromae.checkpoint import load_checkpoint
    except ImportError:
        return AstroMAEConfig()
    return load_checkpoint(checkpoint).config


def fp32_flop_per_cycle(features: list[str]) -> int:
    """fp32 FLOP per cycle per core, taken as two FMA units of the widest vectors the CPU has
    (AVX-512: 16 lanes × 2 × 2 = 64; AVX2: 8 × 2 × 2 = 32). A CPU with one AVX-512 FMA unit
    has half that; the figure is the ceiling the measurement is compared with."""
    return 64 if "avx512f" in features else 32 if "avx2" in features else 16


def has_bf16(features: list[str]) -> bool:
    """torch's bf16 autocast is a speed-up only with bf16 instructions (AVX-512 BF16 or AMX);
    elsewhere it emulates them and is slower than fp32, which no torch user would choose."""
    return "avx512_bf16" in features or "amx_bf16" in features


def cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    except (OSError, ValueError):
        pass
    return float("nan")


@dataclass
class Engine:
    name: str
    threads: int
    predict: Predict


def _torch_engines(checkpoint: Path | None, threads: int, bf16: bool) -> list[Engine]:
    import torch

    from cosmicai.astromae.checkpoint import load_checkpoint
    from cosmicai.astromae.network import AstroMAE

    model = load_checkpoint(checkpoint) if checkpoint else AstroMAE().eval()

    def eager(images: npt.NDArray[np.float32], mags: npt.NDArray[np.float32]) -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(images), torch.from_numpy(mags)).numpy()

    def autocast(images: npt.NDArray[np.float32], mags: npt.NDArray[np.float32]) -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(images), torch.from_numpy(mags)).float().numpy()

    engines = [Engine("torch eager fp32", threads, eager)]
    if bf16:
        engines.append(Engine("torch bf16 autocast", threads, autocast))
    return engines


def _ort_engine(name: str, spec: str, threads: int, arena: bool) -> Engine:
    from cosmicai.model import RedshiftModel, load_model_bytes

    session = RedshiftModel(load_model_bytes(spec), threads=threads, arena=arena, name=spec)
    return Engine(name, threads, session.predict)


@dataclass
class Throughput:
    samples_per_s: list[float] = field(default_factory=list)
    ratios_to_torch: list[float] = field(default_factory=list)


def throughput(
    engines: list[Engine],
    images: npt.NDArray[np.float32],
    mags: npt.NDArray[np.float32],
    *,
    batches: list[int],
    rounds: int,
    seed: int = 0,
    each_round: Callable[[], None] | None = None,
) -> dict[tuple[str, int, int], Throughput]:
    """Samples/s of every engine at every batch size over the same galaxies, ``rounds`` times,
    shuffled each round; keyed by (engine, threads, batch). ``each_round`` runs after every
    round, for measurements that should drift with the machine as these do."""
    rng = random.Random(seed)
    for engine in engines:  # warm-up: first-call allocations and kernel selection
        for batch in batches:
            engine.predict(images[:batch], mags[:batch])
    configurations = [(e, b) for e in engines for b in batches]
    results = {(e.name, e.threads, b): Throughput() for e, b in configurations}
    for _ in range(rounds):
        order = configurations[:]
        rng.shuffle(order)
        this_round: dict[tuple[str, int, int], float] = {}
        for engine, batch in order:
            t0 = time.perf_counter()
            for i in range(0, len(images), batch):
                engine.predict(images[i : i + batch], mags[i : i + batch])
            rate = len(images) / (time.perf_counter() - t0)
            this_round[(engine.name, engine.threads, batch)] = rate
            results[(engine.name, engine.threads, batch)].samples_per_s.append(rate)
        for (name, threads, batch), rate in this_round.items():
            base = this_round.get(("torch eager fp32", threads, batch))
            if base:
                results[(name, threads, batch)].ratios_to_torch.append(rate / base)
        if each_round is not None:
            each_round()
    return results


_WORKER = """
import sys, time, json
t0 = time.perf_counter()
engine, spec, threads, arena, batches = sys.argv[1:6]
threads, arena, batches = int(threads), arena == "1", int(batches)
import numpy as np
if engine == "torch":
    import torch
    from cosmicai.astromae.checkpoint import load_checkpoint
    from cosmicai.astromae.network import AstroMAE
    torch.set_num_threads(threads)
    model = load_checkpoint(spec) if spec else AstroMAE().eval()
    def predict(x, m):
        with torch.inference_mode():
            return model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
else:
    from cosmicai.model import RedshiftModel, load_model_bytes
    predict = RedshiftModel(load_model_bytes(spec), threads=threads, arena=arena).predict
loaded = time.perf_counter() - t0
data = np.load(sys.argv[6])
x, m = data["images"], data["magnitudes"]
t1 = time.perf_counter()
for i in range(batches):
    predict(x, m)
infer = time.perf_counter() - t1
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"import_load_s": loaded, "infer_s": infer,
                  "peak_rss_mib": int(hwm.split()[1]) / 1024}))
"""


def fresh_process(
    engine: str, spec: str, threads: int, arena: bool, batches: int, data: Path
) -> dict[str, float]:
    """Import, load and ``batches`` × 512 galaxies in a new interpreter; its peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _WORKER,
            engine,
            spec,
            str(threads),
            "1" if arena else "0",
            str(batches),
            str(data),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine} worker failed: {done.stderr.strip()[-400:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_bench(
    *,
    fp32: str,
    int8: str,
    checkpoint: Path | None,
    threads: list[int],
    batches: list[int],
    samples: int,
    rounds: int,
    rss_batches: int,
    work: Path,
) -> dict[str, Any]:
    from cosmicai.data.synth import render_chunk

    part = render_chunk("test", 0, max(samples, 512), 2000)
    images, mags = part.images, part.magnitudes.astype(np.float32)
    ghz = cpu_ghz()
    about = machine(note="2 vCPUs shared with other jobs; figures are relative")
    flop_per_cycle = fp32_flop_per_cycle(about["cpu_features"])
    bf16 = has_bf16(about["cpu_features"])
    engines: list[Engine] = []
    torch_error = None
    notes = [] if bf16 else ["torch bf16 autocast left out: this CPU has no bf16 instructions"]
    for t in threads:
        try:
            engines += _torch_engines(checkpoint, t, bf16)
        except ImportError as exc:
            torch_error = f"torch engines skipped: {exc}"
        engines.append(_ort_engine("ORT fp32", fp32, t, arena=True))
        engines.append(_ort_engine("ORT INT8", int8, t, arena=True))
    config = _config_of(checkpoint)
    gflop = 2 * sum(p.macs for p in products(config)) / 1e9
    ceilings: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}

    def measure_ceilings() -> None:
        for b in batches:
            ceilings[b].append(ceiling(b, threads=1, config=config))

    try:
        import onnx  # noqa: F401  (builds the single-product graphs)
    except ImportError:
        notes.append("ceiling left out: it needs the onnx package (the astromae extra)")
        measure = None
    else:
        measure = measure_ceilings
    measured = throughput(
        engines,
        images[:samples],
        mags[:samples],
        batches=batches,
        rounds=rounds,
        each_round=measure,
    )
    bounds = {b: _median_ceiling(runs) for b, runs in ceilings.items() if runs}
    rows = []
    for (name, t, batch), r in measured.items():
        median = statistics.median(r.samples_per_s)
        gflops = median * gflop
        rows.append(
            {
                "engine": name,
                "threads": t,
                "batch": batch,
                "samples_per_s_median": median,
                "samples_per_s_runs": r.samples_per_s,
                "samples_per_s_per_thread": median / t,
                "speedup_vs_torch_eager_median_of_pairs": statistics.median(r.ratios_to_torch)
                if r.ratios_to_torch
                else None,
                "gflop_per_s": gflops,
                "fraction_of_fp32_peak": gflops / (ghz * flop_per_cycle * t),
                "vs_cosmicai_36_per_vcpu": median / t / 36.0,
                "of_ceiling_per_thread": median / t / bounds[batch][_ceiling_key(name)]
                if batch in bounds
                else None,
            }
        )
    work.mkdir(parents=True, exist_ok=True)
    data = work / "bench-batch.npz"
    np.savez(data, images=images[:512], magnitudes=mags[:512])
    n = max(threads)
    processes = []
    specs: list[tuple[str, str, str, bool]] = [
        ("torch eager fp32", "torch", str(checkpoint or ""), False),
        ("ORT fp32, arena off", "ort", fp32, False),
        ("ORT fp32, arena on", "ort", fp32, True),
        ("ORT INT8, arena off", "ort", int8, False),
        ("ORT INT8, arena on", "ort", int8, True),
    ]
    for label, engine, spec, arena in specs:
        if engine == "torch" and torch_error:
            continue
        figures = fresh_process(engine, spec, n, arena, rss_batches, data)
        processes.append(
            {"configuration": label, "threads": n, "batches_of_512": rss_batches, **figures}
        )
    report: dict[str, Any] = {
        "machine": about,
        "model": {
            "fp32": fp32,
            "int8": int8,
            "torch_weights": str(checkpoint or "random"),
            "gflop_per_galaxy": gflop,
        },
        "settings": {
            "batches": batches,
            "samples_per_measurement": samples,
            "rounds": rounds,
            "threads": threads,
            "cpu_ghz": ghz,
            "fp32_flop_per_cycle": flop_per_cycle,
            "fp32_peak_gflops_per_core": ghz * flop_per_cycle,
        },
        "throughput": sorted(rows, key=lambda r: (r["threads"], r["batch"], r["engine"])),
        "best": best_per_engine(rows),
        "ceiling": {str(b): c for b, c in bounds.items()},
        "fresh_process": processes,
        "notes": notes + ([torch_error] if torch_error else []),
    }
    report["targets"] = targets(report)
    return report


def _ceiling_key(engine: str) -> str:
    return "int8_samples_per_s" if "INT8" in engine else "fp32_samples_per_s"


def _median_ceiling(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over rounds of each ceiling figure, with every round's kept."""
    keys = ("int8_samples_per_s", "fp32_samples_per_s", "int8_gmac_per_s", "fp32_gmac_per_s")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["runs"] = [{k: r[k] for k in keys} for r in runs]
    out["quantized_share_of_macs"] = runs[0]["quantized_share_of_macs"]
    out["products_last_round"] = runs[-1]["products"]
    return out


def best_per_engine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (engine, threads) at its fastest batch, with its ratio to torch on that batch."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["engine"], r["threads"])
        if key not in best or r["samples_per_s_median"] > best[key]["samples_per_s_median"]:
            best[key] = r
    return [best[k] for k in sorted(best, key=lambda k: (k[1], k[0]))]


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# AstroMAE inference: torch vs ONNX Runtime fp32 vs INT8",
        "",
        f"Written by `cosmicai bench model` on {m['date']}: {m['cpu_model']}, {m['cpus']} CPUs "
        f"({', '.join(m['cpu_features'])}), {s['cpu_ghz']:.1f} GHz; load average at start "
        f"{m['load_average_at_start']}; onnxruntime {m.get('onnxruntime')}, "
        f"torch {m.get('torch', 'absent')}.",
        "",
        f"Batches {', '.join(map(str, s['batches']))}; {s['samples_per_measurement']} rendered "
        f"test galaxies per measurement, {s['rounds']} rounds with the configurations in a new "
        "random order each round. Speed-up = median over rounds of (configuration ÷ torch eager "
        "fp32 at the same threads and batch, same round). Peak = "
        f"{s['fp32_peak_gflops_per_core']:.0f} fp32 GFLOP/s per core "
        f"({s['fp32_flop_per_cycle']} FLOP/cycle: two FMA units of the CPU's widest vectors).",
        "",
        "Each engine at its fastest batch:",
        "",
        *_table(report["best"]),
        "",
        *_ceiling_lines(report),
        *_target_lines(report),
        "Every configuration:",
        "",
        *_table(report["throughput"]),
        "",
        "Fresh worker process (import, load, then batches of 512), as a Lambda worker starts:",
        "",
        "| configuration | threads | import + load (s) | peak RSS (MiB) | inference (s) |",
        "|---|---|---|---|---|",
    ]
    for p in report["fresh_process"]:
        lines.append(
            f"| {p['configuration']} | {p['threads']} | {p['import_load_s']:.2f} | "
            f"{p['peak_rss_mib']:.0f} | {p['infer_s']:.1f} ({p['batches_of_512']} × 512) |"
        )
    lines += ["", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


#: What the bench is asked to show (the AstroMAE issue's targets), checked on every run.
TARGETS = {
    "speedup": 3.0,  # × torch eager at equal threads, best ORT configuration
    "per_thread": 540.0,  # samples/s per vCPU: 15 × CosmicAI's ~36
    "rss_mib": 400.0,  # fresh INT8 worker, import + load + 10 batches of 512
    "import_load_s": 0.5,
}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the run's figure for it and whether it was met: the best ORT speed-up
    and rate per thread; the default worker's (arena on) memory and start-up."""
    ort = [r for r in report["throughput"] if r["engine"].startswith("ORT")]
    speedups = [r for r in ort if r["speedup_vs_torch_eager_median_of_pairs"] is not None]
    fresh = [p for p in report["fresh_process"] if p["configuration"].startswith("ORT INT8")]
    rows: list[dict[str, Any]] = []

    def where(r: dict[str, Any]) -> str:
        return f"{r['engine']}, {r['threads']} thread(s), batch {r['batch']}"

    for rows_of, key, label, unit in (
        (speedups, "speedup_vs_torch_eager_median_of_pairs", "× torch eager at equal threads", "×"),
        (ort, "samples_per_s_per_thread", " samples/s per thread", ""),
    ):
        if rows_of:
            best = max(rows_of, key=itemgetter(key))
            goal = TARGETS["speedup" if unit else "per_thread"]
            text = f"{best[key]:.2f}×" if unit else f"{best[key]:.0f}"
            rows.append(
                {
                    "target": f"≥ {goal:g}{label}",
                    "best": f"{text} ({where(best)})",
                    "met": best[key] >= goal,
                }
            )
    if fresh:
        # the worker's default (arena on), not whichever setting happened to do best
        worker = next((p for p in fresh if "arena on" in p["configuration"]), fresh[0])
        for key, label, text in (
            ("peak_rss_mib", "fresh INT8 worker peak RSS ≤ {:g} MiB", "{:.0f} MiB"),
            ("import_load_s", "INT8 import + load ≤ {:g} s", "{:.2f} s"),
        ):
            goal = TARGETS["rss_mib" if key == "peak_rss_mib" else key]
            rows.append(
                {
                    "target": label.format(goal),
                    "best": f"{text.format(worker[key])} ({worker['configuration']})",
                    "met": worker[key] <= goal,
                }
            )
    return rows


def _target_lines(report: dict[str, Any]) -> list[str]:
    rows = targets(report)
    if not rows:
        return []
    lines = ["Against the targets (this run):", "", "| target | this run | met |"]
    lines.append("|---|---|---|")
    lines += [f"| {r['target']} | {r['best']} | {'yes' if r['met'] else 'no'} |" for r in rows]
    return [*lines, ""]


def _ceiling_lines(report: dict[str, Any]) -> list[str]:
    bounds = report.get("ceiling") or {}
    if not bounds:
        return []
    share = next(iter(bounds.values()))["quantized_share_of_macs"]
    lines = [
        "Ceiling: the network's quantized layers alone "
        f"({share:.1%} of its multiply-accumulates), each timed by itself as one ONNX Runtime "
        "node at the shape the batch gives it (INT8: `DynamicQuantizeMatMul`, signed 8-bit "
        "weights; fp32: `MatMul`), on 1 thread, in every round; everything else the network "
        "does is taken as free. Median over rounds (range in brackets). `of ceiling` in the "
        "tables is an engine's samples/s per thread against the ceiling of its precision at "
        "its batch.",
        "",
        "| batch | INT8 ceiling (samples/s) | INT8 GEMM (GMAC/s) | fp32 ceiling (samples/s) "
        "| fp32 GEMM (GMAC/s) |",
        "|---|---|---|---|---|",
    ]
    for batch, c in bounds.items():

        def span(key: str, c: dict[str, Any] = c) -> str:
            values = [r[key] for r in c["runs"]]
            return f"{c[key]:.0f} ({min(values):.0f}–{max(values):.0f})"

        lines.append(
            f"| {batch} | {span('int8_samples_per_s')} | {span('int8_gmac_per_s')} | "
            f"{span('fp32_samples_per_s')} | {span('fp32_gmac_per_s')} |"
        )
    return [*lines, ""]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| engine | threads | batch | samples/s (median) | per thread | × torch eager "
        "(same batch) | GFLOP/s | of fp32 peak | of ceiling | × CosmicAI (36/s/vCPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = r["speedup_vs_torch_eager_median_of_pairs"]
        bound = r.get("of_ceiling_per_thread")
        lines.append(
            f"| {r['engine']} | {r['threads']} | {r['batch']} | {r['samples_per_s_median']:.0f} | "
            f"{r['samples_per_s_per_thread']:.0f} | "
            f"{'' if speed is None else f'{speed:.2f}'} | {r['gflop_per_s']:.0f} | "
            f"{r['fraction_of_fp32_peak']:.0%} | {'' if bound is None else f'{bound:.0%}'} | "
            f"{r['vs_cosmicai_36_per_vcpu']:.1f} |"
        )
    return lines
