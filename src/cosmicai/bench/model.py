"""``cosmicai bench model``: torch eager (fp32 and bf16 autocast) vs ONNX Runtime fp32 vs INT8.

Throughput: the same rendered test galaxies, the same batch size, for every configuration and
thread count, in rounds; each round runs every configuration once in a shuffled order, and a
configuration's speed-up over torch is the median of its per-round ratios (machines drift by
tens of percent between back-to-back runs, so only ratios measured side by side mean much).

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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cosmicai.bench.machine import machine

Predict = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], Any]

#: FLOP per galaxy of AstroMAE at its default widths (2 × multiply-accumulates, counted by
#: cosmicai.astromae.network.count_macs).
ASTROMAE_GFLOP = 0.2192
#: fp32 FLOP per cycle per core with two AVX-512 FMA units (16 lanes × 2 × 2); the peak
#: this is measured against. INT8 VNNI's peak is four times that.
FP32_FLOP_PER_CYCLE = 64


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


def _torch_engines(checkpoint: Path | None, threads: int) -> list[Engine]:
    import torch

    from cosmicai.astromae.checkpoint import load_checkpoint
    from cosmicai.astromae.network import AstroMAE

    model = load_checkpoint(checkpoint) if checkpoint else AstroMAE().eval()

    def eager(images: npt.NDArray[np.float32], mags: npt.NDArray[np.float32]) -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(images), torch.from_numpy(mags)).numpy()

    def bf16(images: npt.NDArray[np.float32], mags: npt.NDArray[np.float32]) -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(images), torch.from_numpy(mags)).float().numpy()

    return [
        Engine("torch eager fp32", threads, eager),
        Engine("torch bf16 autocast", threads, bf16),
    ]


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
    batch: int,
    rounds: int,
    seed: int = 0,
) -> dict[tuple[str, int], Throughput]:
    """Samples/s of every engine over the same batches, ``rounds`` times, shuffled each round."""
    rng = random.Random(seed)
    for engine in engines:  # warm-up: first-call allocations and kernel selection
        engine.predict(images[:batch], mags[:batch])
    results = {(e.name, e.threads): Throughput() for e in engines}
    for _ in range(rounds):
        order = engines[:]
        rng.shuffle(order)
        this_round: dict[tuple[str, int], float] = {}
        for engine in order:
            t0 = time.perf_counter()
            for i in range(0, len(images), batch):
                engine.predict(images[i : i + batch], mags[i : i + batch])
            rate = len(images) / (time.perf_counter() - t0)
            this_round[(engine.name, engine.threads)] = rate
            results[(engine.name, engine.threads)].samples_per_s.append(rate)
        for (name, threads), rate in this_round.items():
            base = this_round.get(("torch eager fp32", threads))
            if base:
                results[(name, threads)].ratios_to_torch.append(rate / base)
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
    batch: int,
    samples: int,
    rounds: int,
    rss_batches: int,
    work: Path,
) -> dict[str, Any]:
    from cosmicai.data.synth import render_chunk

    part = render_chunk("test", 0, max(samples, 512), 2000)
    images, mags = part.images, part.magnitudes.astype(np.float32)
    ghz = cpu_ghz()
    engines: list[Engine] = []
    torch_error = None
    for t in threads:
        try:
            engines += _torch_engines(checkpoint, t)
        except ImportError as exc:
            torch_error = f"torch engines skipped: {exc}"
        engines.append(_ort_engine("ORT fp32", fp32, t, arena=True))
        engines.append(_ort_engine("ORT INT8", int8, t, arena=True))
    measured = throughput(engines, images[:samples], mags[:samples], batch=batch, rounds=rounds)
    rows = []
    for (name, t), r in measured.items():
        median = statistics.median(r.samples_per_s)
        gflops = median * ASTROMAE_GFLOP
        rows.append(
            {
                "engine": name,
                "threads": t,
                "samples_per_s_median": median,
                "samples_per_s_runs": r.samples_per_s,
                "samples_per_s_per_thread": median / t,
                "speedup_vs_torch_eager_median_of_pairs": statistics.median(r.ratios_to_torch)
                if r.ratios_to_torch
                else None,
                "gflop_per_s": gflops,
                "fraction_of_fp32_peak": gflops / (ghz * FP32_FLOP_PER_CYCLE * t),
                "vs_cosmicai_36_per_vcpu": median / t / 36.0,
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
    return {
        "machine": machine(note="2 vCPUs shared with other jobs; figures are relative"),
        "model": {
            "fp32": fp32,
            "int8": int8,
            "torch_weights": str(checkpoint or "random"),
            "gflop_per_galaxy": ASTROMAE_GFLOP,
        },
        "settings": {
            "batch": batch,
            "samples_per_measurement": samples,
            "rounds": rounds,
            "threads": threads,
            "cpu_ghz": ghz,
            "fp32_peak_gflops_per_core": ghz * FP32_FLOP_PER_CYCLE,
        },
        "throughput": rows,
        "fresh_process": processes,
        "notes": [torch_error] if torch_error else [],
    }


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
        f"Batch {s['batch']}, {s['samples_per_measurement']} rendered test galaxies per "
        f"measurement, {s['rounds']} rounds with the configurations in a new random order each "
        "round. Speed-up = median over rounds of (configuration ÷ torch eager fp32 at the same "
        "threads, same round). Peak = "
        f"{s['fp32_peak_gflops_per_core']:.0f} fp32 GFLOP/s per core (2 AVX-512 FMA units).",
        "",
        "| engine | threads | samples/s (median) | per thread | × torch eager | GFLOP/s "
        "| of fp32 peak | × CosmicAI (36/s/vCPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["throughput"]:
        speed = r["speedup_vs_torch_eager_median_of_pairs"]
        lines.append(
            f"| {r['engine']} | {r['threads']} | {r['samples_per_s_median']:.0f} | "
            f"{r['samples_per_s_per_thread']:.0f} | "
            f"{'' if speed is None else f'{speed:.2f}'} | {r['gflop_per_s']:.0f} | "
            f"{r['fraction_of_fp32_peak']:.0%} | {r['vs_cosmicai_36_per_vcpu']:.1f} |"
        )
    lines += [
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
