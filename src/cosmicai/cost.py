"""What a run costs on AWS, from what was measured: everything the bill would hold.

- Lambda bills the *configured* memory times the billed duration, rounded up to 1 ms, plus a
  fee per request. Since 2025-08-01 the INIT phase (a cold start: process start, imports,
  model load) of on-demand functions on managed runtimes is billed like handler time, so a
  cold invocation bills ``ceil(init + handler)`` ms. CosmicAI's published costs multiplied
  duration by the memory actually *used*, which comes out about 3x lower than the bill.
- Step Functions STANDARD bills state transitions. A Distributed Map bills one transition per
  child execution it starts; a STANDARD child also bills its own transitions (one Task state
  here), an EXPRESS child instead bills one request plus its duration (rounded up to 100 ms)
  times its memory (64 MB chunks; a child holding only our small item uses the 64 MB
  minimum). EXPRESS children are cheaper while a child runs under about 23 s at 64 MB (see
  :func:`express_break_even_s`); STANDARD children may run up to the worker's 15 minutes,
  EXPRESS ones at most 5 minutes.
- S3 bills per request: reads (GET, HEAD) and writes (PUT, COPY, POST, LIST).
- A run that uses the rendezvous server bills the Fargate task's vCPU and GB hours for the
  run's wall-clock (the task's share of the time it is up for that run).

Every price is in :data:`PRICES`, us-east-1, with its source in :data:`PRICE_SOURCES`, as
read on :data:`PRICES_DATE`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel

PRICES_DATE = "2026-11-26"
PRICES_REGION = "us-east-1"
PRICES: dict[str, float] = {
    "lambda_gb_second_x86_64": 0.0000166667,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1_000_000,
    "sfn_standard_transition": 0.025 / 1_000,
    "sfn_express_request": 1.00 / 1_000_000,
    "sfn_express_gb_second": 0.00001667,  # first 1,000 GB-hours of a month
    "s3_get": 0.0004 / 1_000,  # GET, HEAD and other reads
    "s3_put": 0.005 / 1_000,  # PUT, COPY, POST, LIST
    "fargate_vcpu_hour": 0.04048,  # Linux/x86_64
    "fargate_gb_hour": 0.004445,
}
PRICE_SOURCES: dict[str, str] = {
    "lambda": "https://aws.amazon.com/lambda/pricing/ (INIT billed since 2025-08-01: "
    "https://aws.amazon.com/blogs/compute/aws-lambda-standardizes-billing-for-init-phase/)",
    "sfn": "https://aws.amazon.com/step-functions/pricing/ and the Distributed Map billing "
    "note in the Step Functions developer guide",
    "s3": "https://aws.amazon.com/s3/pricing/ (S3 Standard requests)",
    "fargate": "https://aws.amazon.com/fargate/pricing/",
}

MapChildType = Literal["STANDARD", "EXPRESS"]
Architecture = Literal["x86_64", "arm64"]

#: State transitions of the parent execution: Initialize, Distributed Test, Summarize, the
#: Choice and its end state.
PARENT_TRANSITIONS = 5
#: Transitions a Distributed Map bills per child execution it starts (either child type).
MAP_TRANSITIONS_PER_CHILD = 1
#: A STANDARD child's own transitions: its one Task state running the worker.
STANDARD_CHILD_TRANSITIONS = 1
#: Kept for readers of older code: what one STANDARD child bills in transitions all told.
TRANSITIONS_PER_CHILD = MAP_TRANSITIONS_PER_CHILD + STANDARD_CHILD_TRANSITIONS
#: An EXPRESS execution's memory is billed in 64 MB chunks, 64 MB at least; a child holding
#: one small work item stays at the minimum.
EXPRESS_CHILD_MEMORY_MB = 64
#: EXPRESS duration is billed in 100 ms increments.
EXPRESS_BILLING_MS = 100
#: The rendezvous task of rendezvous/template.yaml (its Cpu and Memory defaults).
RENDEZVOUS_VCPU = 0.25
RENDEZVOUS_GB = 0.5


class CostEstimate(BaseModel):
    lambda_compute: float
    lambda_requests: float
    step_functions: float
    s3_requests: float
    total: float
    billed_gb_seconds: float
    #: Part of ``billed_gb_seconds`` that is INIT (cold start) time.
    init_gb_seconds: float = 0.0
    cold_starts: int = 0
    fargate: float = 0.0
    map_child_type: MapChildType = "STANDARD"
    architecture: Architecture = "x86_64"
    prices_date: str = PRICES_DATE
    region: str = PRICES_REGION


def billed_ms(seconds: float, init_s: float = 0.0) -> int:
    """Lambda's billed duration of one invocation: INIT plus handler, rounded up to 1 ms."""
    # The rounding guards against float noise turning an exact 3 ms into 4 ms.
    return max(1, math.ceil(round((seconds + init_s) * 1000, 6)))


def express_child_cost(duration_s: float, memory_mb: int = EXPRESS_CHILD_MEMORY_MB) -> float:
    """An EXPRESS child's own bill: one request plus its GB-seconds (100 ms, 64 MB chunks)."""
    chunks = max(1, math.ceil(memory_mb / 64))
    increments = max(1, math.ceil(round(duration_s * 1000, 6) / EXPRESS_BILLING_MS))
    gb_s = increments * EXPRESS_BILLING_MS / 1000 * chunks * 64 / 1024
    return PRICES["sfn_express_request"] + gb_s * PRICES["sfn_express_gb_second"]


def express_break_even_s(memory_mb: int = EXPRESS_CHILD_MEMORY_MB) -> float:
    """Child duration below which an EXPRESS child costs less than a STANDARD one."""
    standard = STANDARD_CHILD_TRANSITIONS * PRICES["sfn_standard_transition"]
    per_s = math.ceil(memory_mb / 64) * 64 / 1024 * PRICES["sfn_express_gb_second"]
    return (standard - PRICES["sfn_express_request"]) / per_s


def estimate_cost(
    *,
    durations_s: Iterable[float],
    memory_mb: int,
    architecture: Architecture,
    world_size: int,
    s3_requests: Mapping[str, int],
    init_s: Sequence[float] = (),
    map_child_type: MapChildType = "STANDARD",
    child_durations_s: Sequence[float] | None = None,
    rendezvous_s: float = 0.0,
) -> CostEstimate:
    """The bill of one run.

    ``durations_s`` are the handler durations of every Lambda invocation (every stage);
    ``init_s`` the INIT durations, paired with the first invocations (0 for a warm one).
    ``child_durations_s`` are the Map's child durations (default: the first ``world_size``
    invocations); they matter only for EXPRESS children. ``rendezvous_s`` is the time the
    rendezvous server was up for this run (0 when the run does not use it).
    """
    durations = list(durations_s)
    inits = list(init_s) + [0.0] * max(0, len(durations) - len(init_s))
    per_gb = memory_mb / 1024
    total_ms = sum(billed_ms(d, i) for d, i in zip(durations, inits, strict=False))
    gb_seconds = total_ms / 1000 * per_gb
    init_gb_seconds = sum(inits) * per_gb
    compute = gb_seconds * PRICES[f"lambda_gb_second_{architecture}"]
    requests = len(durations) * PRICES["lambda_request"]
    transitions = PARENT_TRANSITIONS + MAP_TRANSITIONS_PER_CHILD * world_size
    if map_child_type == "STANDARD":
        transitions += STANDARD_CHILD_TRANSITIONS * world_size
        express = 0.0
    else:
        children = list(child_durations_s) if child_durations_s is not None else durations
        children = (children + [0.0] * world_size)[:world_size]
        express = sum(express_child_cost(d) for d in children)
    sfn = transitions * PRICES["sfn_standard_transition"] + express
    reads = s3_requests.get("GET", 0) + s3_requests.get("HEAD", 0)
    writes = sum(s3_requests.get(k, 0) for k in ("PUT", "COPY", "POST", "LIST"))
    s3 = reads * PRICES["s3_get"] + writes * PRICES["s3_put"]
    fargate = (
        rendezvous_s
        / 3600
        * (
            RENDEZVOUS_VCPU * PRICES["fargate_vcpu_hour"]
            + RENDEZVOUS_GB * PRICES["fargate_gb_hour"]
        )
    )
    return CostEstimate(
        lambda_compute=compute,
        lambda_requests=requests,
        step_functions=sfn,
        s3_requests=s3,
        fargate=fargate,
        total=compute + requests + sfn + s3 + fargate,
        billed_gb_seconds=gb_seconds,
        init_gb_seconds=init_gb_seconds,
        cold_starts=sum(1 for i in inits if i > 0),
        map_child_type=map_child_type,
        architecture=architecture,
    )
