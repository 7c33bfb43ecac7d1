"""The projection simulator and the planner, on small hand-checkable cases."""

from __future__ import annotations

from typing import Any

import pytest

from cosmicai.data.format import BYTES_PER_SAMPLE
from cosmicai.projection import (
    Calibration,
    Scenario,
    lambda_architecture,
    plan_grid,
    project,
    vcpu_share,
    worker_speed,
)

MIB = 2**20
CAL = Calibration(
    cpu_s_per_sample=1 / 500, cold_start_s=1.0, rss_base_mb=300, rss_per_partition_mb=1.0
)


def test_vcpu_share_follows_memory() -> None:
    assert vcpu_share(1769) == pytest.approx(1.0)
    assert vcpu_share(10240) == 6.0 * min(1.0, 10240 / 1769 / 6)
    assert worker_speed(1 / 500, 885)[0] == pytest.approx(250, rel=0.01)
    speed, threads = worker_speed(1 / 500, 3538)
    assert threads == 2 and speed == pytest.approx(500 * 1.7)  # the second vCPU adds 0.7


def _four_partitions(**fields: Any) -> Scenario:
    """4 partitions of 10 MB on 1 vCPU workers, with no Map start, ramp or invoke overhead."""
    samples = 10 * MIB // BYTES_PER_SAMPLE
    bare = {"map_start_s": 0, "child_start_rate": 1e9, "invoke_overhead_s": 0}
    return Scenario(
        dataset_bytes=4 * samples * BYTES_PER_SAMPLE,
        partition_mb=10,
        memory_mb=1769,
        **{**bare, **fields},
    )


def test_one_wave_by_hand() -> None:
    # GIVEN 4 partitions of 10 MB, 4 ranks, 1 vCPU, no start ramp or overhead
    samples_per_partition = 10 * MIB // BYTES_PER_SAMPLE
    scenario = _four_partitions(map_child_type="STANDARD")
    cal = CAL.model_copy(update={"write_s_per_sample": 0.0, "s3_mb_per_s": 100.0})
    # WHEN projected
    p = project(scenario, cal)
    # THEN each rank: 1 s cold + 0.1 s read + samples / 500; all four at once
    rank = 1.0 + 0.1 + samples_per_partition / 500
    assert p.world_size == 4
    assert p.map_wall_s == pytest.approx(rank, rel=1e-3)
    assert p.peak_rss_mb == pytest.approx(310)
    assert p.cost.cold_starts == 4


def test_concurrency_limit_makes_waves_that_reuse_warm_workers() -> None:
    base = Scenario(dataset_bytes=40 * 10 * MIB, partition_mb=10, memory_mb=1769)
    wide = project(base.model_copy(update={"concurrency": 40}), CAL)
    narrow = project(base.model_copy(update={"concurrency": 10}), CAL)
    # 4 waves: later waves are warm, so each adds a rank's time without the 1 s cold start
    # (and without the Map's 1 s start)
    assert narrow.cost.cold_starts == 10
    samples = 40 * 10 * MIB // BYTES_PER_SAMPLE / 40
    handler = 10 / 90 + samples / 500 + samples * 2e-6  # read at 90 MB/s, infer, write
    first = 1.0 + 9 / 500 + 0.05 + 1.0 + handler  # Map start, ramp, invoke, cold start
    assert narrow.map_wall_s == pytest.approx(first + 3 * (0.05 + handler), rel=0.01)
    assert narrow.cost.billed_gb_seconds < wide.cost.billed_gb_seconds


def test_planner_meets_deadline_and_budget_cheapest_first() -> None:
    size = 659_857 * BYTES_PER_SAMPLE
    choice = plan_grid(size, CAL, deadline_s=60, budget=1.0)
    assert choice.feasible
    costs = [p.cost.total for p in choice.feasible]
    assert costs == sorted(costs)
    assert all(p.map_wall_s <= 60 and p.fits for p in choice.feasible)
    # an impossible deadline leaves nothing, but says what comes closest
    none = plan_grid(size, CAL, deadline_s=0.5, budget=1.0)
    assert not none.feasible and none.fastest is not None


def test_a_rank_with_several_partitions_reads_the_next_while_it_infers() -> None:
    # GIVEN 4 partitions of 10 MB on one rank; reads of 0.1 s, shorter than an inference
    samples = 10 * MIB // BYTES_PER_SAMPLE
    scenario = _four_partitions(world_size=1)
    cal = CAL.model_copy(update={"write_s_per_sample": 0.0, "s3_mb_per_s": 100.0})
    # WHEN projected
    p = project(scenario, cal)
    # THEN only the first read is waited for: 1 s cold + 0.1 s + 4 inferences
    assert p.map_wall_s == pytest.approx(1.0 + 0.1 + 4 * samples / 500, rel=1e-3)
    # AND with storage slower than inference, each later read waits out its excess
    slow = project(scenario, cal.model_copy(update={"s3_mb_per_s": 10 * 500 / samples}))
    read = samples / 500  # ... 10 MB at that rate takes as long as one inference
    slower = project(scenario, cal.model_copy(update={"s3_mb_per_s": 5 * 500 / samples}))
    assert slow.map_wall_s == pytest.approx(1.0 + read + 4 * read, rel=1e-3)
    assert slower.map_wall_s == pytest.approx(1.0 + 2 * read + 3 * read + 4 * read, rel=1e-3)


def test_arm64_is_priced_as_arm64_and_flagged_when_its_speed_is_borrowed() -> None:
    scenario = Scenario(dataset_bytes=40 * 10 * MIB, partition_mb=10, memory_mb=1769)
    x86 = CAL.model_copy(update={"architecture": "x86_64"})
    on_x86 = project(scenario, x86)
    on_arm = project(scenario.model_copy(update={"architecture": "arm64"}), x86)
    # the same durations, at arm64's lower GB-second price, and marked as borrowed speed
    assert on_arm.map_wall_s == on_x86.map_wall_s
    assert on_arm.cost.lambda_compute < on_x86.cost.lambda_compute
    assert on_arm.speed_borrowed and not on_x86.speed_borrowed
    # a profile measured on arm64 prices arm64 from its own speed
    arm = CAL.model_copy(update={"architecture": "arm64"})
    assert not project(scenario.model_copy(update={"architecture": "arm64"}), arm).speed_borrowed
    assert lambda_architecture("aarch64") == "arm64"
    assert lambda_architecture("Linux-6.1-x86_64-with-glibc2.36") == "x86_64"
    assert lambda_architecture("riscv64") is None
