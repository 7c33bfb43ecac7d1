"""A projection of a run to AWS at full scale: a small simulator of the Distributed Map,
calibrated by the per-rank profile the sweep measured (``cosmicai bench sweep``).

Given the dataset size, partition size, worker memory, world size and concurrency limit, it
lays the Map's children out in time (start ramp, concurrency slots, cold and warm workers),
gives each its duration from the profile and the vCPU share its memory buys, and prices the
result with :mod:`cosmicai.cost`. Every figure it assumes is in :data:`ASSUMPTIONS`, with its
source, and printed with every projection.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from cosmicai.cost import CostEstimate, MapChildType, estimate_cost
from cosmicai.data.format import BYTES_PER_SAMPLE
from cosmicai.storage import DEFAULT_RANGED_GET_THRESHOLD, RANGE_PART_BYTES

MIB = 2**20

Architecture = Literal["x86_64", "arm64"]


def lambda_architecture(machine: str) -> Architecture | None:
    """The Lambda architecture of a CPU named as ``platform.machine()`` (or a platform string
    containing it) names it: x86_64 or arm64 (aarch64)."""
    if "x86_64" in machine or "amd64" in machine.lower():
        return "x86_64"
    if "aarch64" in machine or "arm64" in machine:
        return "arm64"
    return None


#: Speed each vCPU beyond the first adds (ASSUMPTIONS["thread_efficiency"]).
THREAD_EFFICIENCY = 0.7

#: What the simulator takes as given, and why.
ASSUMPTIONS: dict[str, str] = {
    "vcpu_share": "Lambda gives CPU in proportion to memory: 1,769 MB = 1 vCPU, up to 6 vCPU "
    "at 10,240 MB (AWS Lambda docs, 'Memory and computing power').",
    "thread_efficiency": "Each ONNX Runtime thread beyond the first adds 0.7 of a vCPU's "
    "speed: AstroMAE INT8 on 2 threads ran 1.69x its 1-thread rate (369 -> 622 samples/s, "
    "batch 64; 1.78x at batch 512; `cosmicai bench model` on a 2-core AVX2 AMD EPYC); a "
    "fractional vCPU runs at its share.",
    "cpu_s_per_sample": "From the sweep's profile (inference seconds / samples on one "
    "thread of this machine), or --samples-per-s-per-vcpu; a Lambda vCPU is taken as this "
    "machine's core.",
    "s3_read": "90 MB/s per worker from S3 (a commonly measured single-stream GET rate "
    "from Lambda; objects above 16 MiB are fetched by concurrent 8 MiB ranged GETs, so "
    "this is conservative); not measured here (no AWS account).",
    "prefetch": "A rank with several partitions reads the next one while it infers the "
    "current one (the worker does: cosmicai.pipeline), so it waits on S3 for its first "
    "partition and then only where a read takes longer than an inference. The reading "
    "thread's CPU is already in cpu_s_per_sample: the sweep measures the process's CPU time "
    "while it infers.",
    "cold_start": "The sweep's measured cold start (process start + imports + model load, "
    "in CPU seconds so that a busy machine does not stretch it) for each worker's first "
    "rank; warm reuse for later waves. Billed as INIT since 2025-08-01.",
    "map_start": "The Map state starts children after 1.0 s and at most 500 per second "
    "(assumption; the only public anchor is CosmicAI's 28.08 s Map state against a 25.0 s "
    "per-worker duration at 100 MB partitions, about 3 s of start-up and stragglers).",
    "invoke_overhead": "0.05 s per child between the child's start and the handler's "
    "(Step Functions task dispatch and Lambda invoke; assumption).",
    "architecture": "A projection for an architecture other than the one the profile was "
    "measured on takes the measured speed per vCPU as is (arm64's is not measured here): "
    "only its price changes. The output says so; calibrate with a sweep on an arm64 machine "
    "(Graviton) to plan arm64 from its own speed.",
    "concurrency": "Lambda scales a function by 1,000 concurrent executions every 10 s and "
    "accounts start with 1,000 concurrent executions (AWS Lambda scaling docs): above "
    "1,000 the simulator adds 1,000 slots per 10 s.",
    "memory": "Peak RSS = the profile's worker footprint + its bytes per partition MB (a "
    "straight line fitted over the sweep's cells); a configuration whose peak exceeds 90% "
    "of its memory is refused.",
    "stages": "Initialize 1 s and Summarize 1 s + 5 ms per rank at the worker memory; S3: "
    "per rank 3 GETs (plan, previous result, ...) + partitions (1 GET each up to 16 MiB, "
    "else 1 HEAD + 8 MiB ranged GETs) + 2 PUTs; Initialize 1 LIST + 1 GET + 3 PUTs; "
    "Summarize 2 GETs per rank + 4 PUTs.",
}


class Calibration(BaseModel):
    """The per-rank profile a projection runs on (from a sweep, or given)."""

    cpu_s_per_sample: float = Field(gt=0)
    cold_start_s: float = Field(ge=0)
    rss_base_mb: float = Field(ge=0)
    rss_per_partition_mb: float = Field(ge=0)
    write_s_per_sample: float = Field(default=2e-6, ge=0)
    s3_mb_per_s: float = Field(default=90.0, gt=0)
    source: str = ""
    #: The Lambda architecture the profile's CPU stands for (None: not known).
    architecture: Architecture | None = None


class Scenario(BaseModel):
    dataset_bytes: int
    partition_mb: float
    memory_mb: int = Field(ge=128, le=10240)
    world_size: int | None = None  # None: one rank per partition
    concurrency: int = 1000
    map_child_type: MapChildType = "EXPRESS"
    architecture: Architecture = "x86_64"
    map_start_s: float = 1.0
    child_start_rate: float = 500.0
    invoke_overhead_s: float = 0.05


class Projection(BaseModel):
    scenario: Scenario
    partitions: int
    world_size: int
    vcpu: float
    threads: int
    samples_per_s_per_worker: float
    rank_s_p50: float
    rank_s_max: float
    map_wall_s: float
    peak_rss_mb: float
    fits: bool
    cost: CostEstimate
    gbit_per_s: float
    #: The profile was measured on another architecture: its speed per vCPU is taken as is.
    speed_borrowed: bool = False


def vcpu_share(memory_mb: int) -> float:
    return min(6.0, memory_mb / 1769)


def worker_speed(cpu_s_per_sample: float, memory_mb: int) -> tuple[float, int]:
    """Samples/s of one worker at ``memory_mb``, and the ORT threads it would run."""
    vcpu = vcpu_share(memory_mb)
    threads = max(1, math.ceil(vcpu - 1e-9))
    per_vcpu = 1 / cpu_s_per_sample
    if vcpu <= 1:
        return per_vcpu * vcpu, threads
    return per_vcpu * (1 + THREAD_EFFICIENCY * (vcpu - 1)), threads


def rank_seconds(
    partitions: int, read_s: float, infer_s: float, samples: float, calibration: Calibration
) -> float:
    """A rank's handler time for ``partitions`` partitions of equal size: the worker reads the
    next partition while it infers the current one (``ASSUMPTIONS["prefetch"]``), so it waits
    on storage for the first one and then only where a read outlasts an inference."""
    if partitions <= 0:
        return 0.0
    waits = read_s + (partitions - 1) * max(0.0, read_s - infer_s)
    return waits + partitions * (infer_s + samples * calibration.write_s_per_sample)


def _s3_requests(partition_bytes: int, partitions: int, world: int) -> dict[str, int]:
    if partition_bytes > DEFAULT_RANGED_GET_THRESHOLD:
        gets = partitions * math.ceil(partition_bytes / RANGE_PART_BYTES)
        heads = partitions
    else:
        gets, heads = partitions, 0
    return {
        "GET": gets + 3 * world + 1 + 2 * world,
        "HEAD": heads,
        "PUT": 2 * world + 3 + 4,
        "LIST": 1,
    }


def project(scenario: Scenario, calibration: Calibration) -> Projection:
    """Simulate one run on AWS."""
    partition_bytes = int(scenario.partition_mb * MIB)
    partitions = max(1, math.ceil(scenario.dataset_bytes / partition_bytes))
    world = min(scenario.world_size or partitions, partitions)
    total_samples = scenario.dataset_bytes // BYTES_PER_SAMPLE
    speed, threads = worker_speed(calibration.cpu_s_per_sample, scenario.memory_mb)
    base, extra = divmod(partitions, world)
    durations: list[float] = []
    samples_per_partition = total_samples / partitions
    read = partition_bytes / MIB / calibration.s3_mb_per_s
    infer = samples_per_partition / speed
    for rank in range(world):
        count = base + (1 if rank < extra else 0)
        durations.append(rank_seconds(count, read, infer, samples_per_partition, calibration))
    # Lay the children out: they start at the Map's rate into free concurrency slots; a slot
    # whose worker finished is warm for the next child.
    slots: list[tuple[float, bool]] = []  # (free at, warm)
    ends: list[float] = []
    inits: list[float] = []
    for rank, handler in enumerate(durations):
        ready = scenario.map_start_s + rank / scenario.child_start_rate
        limit = min(scenario.concurrency, 1000 + 1000 * int(ready // 10))
        if len(slots) < limit:
            start, warm = ready, False
        else:
            free, warm = heapq.heappop(slots)
            start = max(ready, free)
        cold = 0.0 if warm else calibration.cold_start_s
        end = start + scenario.invoke_overhead_s + cold + handler
        heapq.heappush(slots, (end, True))
        ends.append(end)
        inits.append(cold)
    map_wall = max(ends)
    peak = calibration.rss_base_mb + calibration.rss_per_partition_mb * scenario.partition_mb
    summarize_s = 1.0 + 0.005 * world
    cost = estimate_cost(
        durations_s=[*durations, 1.0, summarize_s],
        init_s=inits,
        memory_mb=scenario.memory_mb,
        architecture=scenario.architecture,
        world_size=world,
        s3_requests=_s3_requests(partition_bytes, partitions, world),
        map_child_type=scenario.map_child_type,
        child_durations_s=[
            d + i + scenario.invoke_overhead_s for d, i in zip(durations, inits, strict=True)
        ],
    )
    ordered = sorted(d + i for d, i in zip(durations, inits, strict=True))
    return Projection(
        scenario=scenario,
        partitions=partitions,
        world_size=world,
        vcpu=vcpu_share(scenario.memory_mb),
        threads=threads,
        samples_per_s_per_worker=speed,
        rank_s_p50=ordered[len(ordered) // 2],
        rank_s_max=ordered[-1],
        map_wall_s=map_wall,
        peak_rss_mb=peak,
        fits=peak <= 0.9 * scenario.memory_mb,
        cost=cost,
        gbit_per_s=scenario.dataset_bytes * 8 / 1e9 / map_wall,
        speed_borrowed=calibration.architecture not in (None, scenario.architecture),
    )


#: Datasets the projection reports by default: CosmicAI's test set and 1 TB of the same.
DATASETS: dict[str, int] = {
    "CosmicAI 12.6 GB (659,857 galaxies)": 659_857 * BYTES_PER_SAMPLE,
    "1 TB": 10**12,
}

#: The planner's grid.
PARTITION_MB = (10, 25, 50, 75, 100)
MEMORY_MB = (1024, 1769, 2048, 3008, 3538, 5307, 7076, 10240)
CHILD_TYPES: tuple[MapChildType, ...] = ("EXPRESS", "STANDARD")


class PlanChoice(BaseModel):
    feasible: list[Projection]
    considered: int
    fastest: Projection | None
    cheapest: Projection | None


def plan_grid(
    dataset_bytes: int,
    calibration: Calibration,
    *,
    deadline_s: float,
    budget: float,
    concurrency: int = 1000,
    architecture: Architecture = "x86_64",
) -> PlanChoice:
    """Every partition size x memory x world size x child type that meets the deadline and
    budget, cheapest first (then fastest); also the fastest and cheapest that fit in memory."""
    options: list[Projection] = []
    for partition_mb in PARTITION_MB:
        partitions = max(1, math.ceil(dataset_bytes / (partition_mb * MIB)))
        worlds = sorted({partitions, math.ceil(partitions / 2), math.ceil(partitions / 4)})
        for memory_mb in MEMORY_MB:
            for world in worlds:
                for child in CHILD_TYPES:
                    p = project(
                        Scenario(
                            dataset_bytes=dataset_bytes,
                            partition_mb=partition_mb,
                            memory_mb=memory_mb,
                            world_size=world,
                            concurrency=concurrency,
                            map_child_type=child,
                            architecture=architecture,
                        ),
                        calibration,
                    )
                    if p.fits and not (child == "EXPRESS" and p.rank_s_max > 300):
                        options.append(p)
    feasible = [p for p in options if p.map_wall_s <= deadline_s and p.cost.total <= budget]
    feasible.sort(key=lambda p: (round(p.cost.total, 6), p.map_wall_s))
    return PlanChoice(
        feasible=feasible,
        considered=len(options),
        fastest=min(options, key=lambda p: p.map_wall_s, default=None),
        cheapest=min(options, key=lambda p: p.cost.total, default=None),
    )


def calibration_from_sweep(path: str) -> Calibration:
    """The profile a sweep measured (``sweep.json``)."""
    import json

    data = json.loads(Path(path).read_text())
    p = data["profile"]
    return Calibration(
        cpu_s_per_sample=p["cpu_s_per_sample"],
        cold_start_s=p["cold_start_s"],
        rss_base_mb=p["rss_base_mb"],
        rss_per_partition_mb=max(0.0, p["rss_per_partition_mb"]),
        write_s_per_sample=p["write_s_per_sample"],
        source=f"sweep {path} (model {data['config']['model']}, {data['machine']['cpu_model']})",
        architecture=lambda_architecture(
            data["machine"].get("architecture") or data["machine"].get("platform", "")
        ),
    )


#: AstroMAE before its model lands here: this project's measurements of an untrained copy
#: (INT8 dynamic, MatMul/Gemm only, ORT arena off), on a 2-core Intel Xeon (AVX-512 VNNI,
#: AMX): 2.2-2.7x torch eager's 141-194 samples/s at 1 thread, i.e. about 310-520; 450 is
#: taken. Peak RSS of a fresh process (import, load, 10x512 batches): 285-335 MB, arena off.
ASTROMAE_INT8 = Calibration(
    cpu_s_per_sample=1 / 450,
    cold_start_s=1.0,
    rss_base_mb=335.0,
    rss_per_partition_mb=1.3,
    architecture="x86_64",
    source="AstroMAE INT8 figures measured on this machine kind before the model landed: "
    "450 samples/s per vCPU, 1.0 s cold start (import 0.2 s load + ~0.8 s process and "
    "package imports), 335 MB worker footprint",
)
