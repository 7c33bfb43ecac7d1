"""The cost model against bills worked out by hand from the price table."""

from __future__ import annotations

import pytest

from cosmicai.cost import (
    PRICES,
    billed_ms,
    estimate_cost,
    express_break_even_s,
    express_child_cost,
)

GB_S = PRICES["lambda_gb_second_x86_64"]
TRANSITION = 0.025 / 1000


def test_billed_duration_rounds_up_to_the_millisecond() -> None:
    assert billed_ms(0.0011) == 2
    assert billed_ms(0.003) == 3  # exact milliseconds stay as they are
    assert billed_ms(0.0) == 1
    # INIT and handler are added before rounding
    assert billed_ms(0.0004, init_s=0.0004) == 1


def test_one_standard_child_by_hand() -> None:
    # GIVEN one rank of 1.2345 s at 1,024 MB, no INIT, 2 GETs and 1 PUT
    cost = estimate_cost(
        durations_s=[1.2345],
        memory_mb=1024,
        architecture="x86_64",
        world_size=1,
        s3_requests={"GET": 2, "PUT": 1},
    )
    # THEN: 1,235 ms x 1 GB; 1 request; 5 parent + 2 child transitions; S3 per request
    assert cost.billed_gb_seconds == pytest.approx(1.235)
    assert cost.lambda_compute == pytest.approx(1.235 * GB_S)
    assert cost.lambda_requests == pytest.approx(0.2e-6)
    assert cost.step_functions == pytest.approx(7 * TRANSITION)
    assert cost.s3_requests == pytest.approx(2 * 0.0004e-3 + 0.005e-3)
    assert cost.total == pytest.approx(
        1.235 * GB_S + 0.2e-6 + 7 * TRANSITION + 2 * 0.0004e-3 + 0.005e-3
    )


def test_transitions_grow_by_two_per_standard_child() -> None:
    def sfn(world: int) -> float:
        return estimate_cost(
            durations_s=[1.0] * world,
            memory_mb=2048,
            architecture="x86_64",
            world_size=world,
            s3_requests={},
        ).step_functions

    assert sfn(100) - sfn(1) == pytest.approx(99 * 2 * TRANSITION)


def test_init_is_billed_with_the_handler() -> None:
    # GIVEN two ranks at 2,048 MB: one cold (INIT 0.8004 s + 1.0 s), one warm (1.0 s)
    cost = estimate_cost(
        durations_s=[1.0, 1.0],
        init_s=[0.8004, 0.0],
        memory_mb=2048,
        architecture="arm64",
        world_size=2,
        s3_requests={},
    )
    # THEN 1,801 ms + 1,000 ms at 2 GB, at the arm64 price
    assert cost.billed_gb_seconds == pytest.approx(2.801 * 2)
    assert cost.init_gb_seconds == pytest.approx(0.8004 * 2)
    assert cost.lambda_compute == pytest.approx(2.801 * 2 * PRICES["lambda_gb_second_arm64"])
    assert cost.cold_starts == 1


def test_express_children_by_hand() -> None:
    # GIVEN 3 EXPRESS children of 0.25 s, 1.0 s and 10.01 s (64 MB each)
    cost = estimate_cost(
        durations_s=[0.25, 1.0, 10.01],
        memory_mb=1024,
        architecture="x86_64",
        world_size=3,
        s3_requests={},
        map_child_type="EXPRESS",
    )
    # THEN each bills one request and 100 ms increments of 1/16 GB: 3 + 10 + 101 increments,
    # and the Map still bills one transition per child start (5 parent + 3)
    gb_s = (3 + 10 + 101) * 0.1 / 16
    express = 3 * 1e-6 + gb_s * 0.00001667
    assert cost.step_functions == pytest.approx(8 * TRANSITION + express)
    assert express_child_cost(0.25) == pytest.approx(1e-6 + 0.3 / 16 * 0.00001667)
    assert cost.map_child_type == "EXPRESS"


def test_express_is_cheaper_only_for_short_children() -> None:
    # (0.025e-3 - 1e-6) / (0.0625 * 0.00001667) = 23.04 s
    assert express_break_even_s() == pytest.approx(23.04, abs=0.01)
    assert express_child_cost(20.0) < TRANSITION < express_child_cost(25.0)


def test_fargate_share_of_the_rendezvous_server() -> None:
    cost = estimate_cost(
        durations_s=[1.0],
        memory_mb=1024,
        architecture="x86_64",
        world_size=1,
        s3_requests={},
        rendezvous_s=3600.0,
    )
    assert cost.fargate == pytest.approx(0.25 * 0.04048 + 0.5 * 0.004445)
