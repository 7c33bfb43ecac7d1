"""What a run costs on AWS, from what was measured.

Lambda bills the *configured* memory times the billed duration (rounded up to 1 ms), plus a
fee per request; CosmicAI's published costs multiplied CPU time by the memory actually used,
which comes out about 3x lower than the bill. Prices: us-east-1, from the AWS pricing pages
for Lambda, Step Functions, S3 and Fargate as read on 2026-11-26 (see ../DESIGN notes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel

PRICES_DATE = "2026-11-26"
PRICES_REGION = "us-east-1"
PRICES: dict[str, float] = {
    "lambda_gb_second_x86_64": 0.0000166667,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1_000_000,
    "sfn_standard_transition": 0.025 / 1_000,
    "s3_get": 0.0004 / 1_000,  # GET, HEAD and other reads
    "s3_put": 0.005 / 1_000,  # PUT, COPY, POST, LIST
    "fargate_vcpu_hour": 0.04048,
    "fargate_gb_hour": 0.004445,
}

#: State transitions of the parent execution: Initialize, Distributed Test, Summarize.
PARENT_TRANSITIONS = 3
#: A Distributed Map bills one transition per child execution plus the child's own states
#: (one Task state running the worker).
TRANSITIONS_PER_CHILD = 2


class CostEstimate(BaseModel):
    lambda_compute: float
    lambda_requests: float
    step_functions: float
    s3_requests: float
    total: float
    billed_gb_seconds: float
    prices_date: str = PRICES_DATE
    region: str = PRICES_REGION


def billed_ms(seconds: float) -> int:
    """Lambda's billed duration: rounded up to the next millisecond."""
    return max(1, math.ceil(seconds * 1000))


def estimate_cost(
    *,
    durations_s: Iterable[float],
    memory_mb: int,
    architecture: Literal["x86_64", "arm64"],
    world_size: int,
    s3_requests: Mapping[str, int],
) -> CostEstimate:
    """The bill of one run whose Lambda invocations took ``durations_s`` (every stage)."""
    durations = list(durations_s)
    gb_seconds = sum(billed_ms(d) for d in durations) / 1000 * memory_mb / 1024
    compute = gb_seconds * PRICES[f"lambda_gb_second_{architecture}"]
    requests = len(durations) * PRICES["lambda_request"]
    transitions = PARENT_TRANSITIONS + TRANSITIONS_PER_CHILD * world_size
    sfn = transitions * PRICES["sfn_standard_transition"]
    reads = s3_requests.get("GET", 0) + s3_requests.get("HEAD", 0)
    writes = s3_requests.get("PUT", 0) + s3_requests.get("LIST", 0)
    s3 = reads * PRICES["s3_get"] + writes * PRICES["s3_put"]
    return CostEstimate(
        lambda_compute=compute,
        lambda_requests=requests,
        step_functions=sfn,
        s3_requests=s3,
        total=compute + requests + sfn + s3,
        billed_gb_seconds=gb_seconds,
    )
