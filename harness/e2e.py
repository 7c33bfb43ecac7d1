"""Shared pieces of the end-to-end tests (tests/e2e): the deployment, its data and runs,
and the commands a user types, used by the fixtures in tests/e2e/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cosmicai.aws.runs import Stack
from cosmicai.run_types import Summary
from harness.localaws import (
    REPO,
    LocalAWS,
    Unavailable,
    find_sam,
)

E2E_ENV = "COSMICAI_E2E"
STACK = "cosmicai-e2e"
DATA_PREFIX = "data/e2e"
#: Four partitions of about 1 MB (~50 galaxies each), two ranks.
DATA_BYTES = 4 * 2**20
PARTITION_BYTES = 2**20


def _python312_bin(local_aws: LocalAWS) -> str:
    return local_aws.setup_env["COSMICAI_LOCALAWS_PYTHON312"]


def cosmicai(
    env: dict[str, str], *args: str, timeout_s: float = 900
) -> subprocess.CompletedProcess[str]:
    """The ``cosmicai`` command, as a user runs it (wide, so tables do not wrap)."""
    return subprocess.run(
        [sys.executable, "-m", "cosmicai", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        timeout=timeout_s,
        cwd=REPO,
    )


@dataclass(frozen=True)
class Rendezvous:
    port: int
    health_port: int
    secret: str
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class Deployed:
    stack: Stack
    template: dict[str, Any]
    build_dir: Path
    deploy_s: float
    build_s: float


def sam_build(local_aws: LocalAWS) -> tuple[Path, float]:
    """``sam build`` of template.yaml, as ``make sam-build`` runs it."""
    try:
        sam = find_sam()
    except Unavailable as exc:
        pytest.skip(str(exc))
    build_dir = local_aws.work / "sam-build"
    env = local_aws.aws_env()
    env["PATH"] = f"{_python312_bin(local_aws)}{os.pathsep}{env['PATH']}"
    t0 = time.monotonic()
    built = subprocess.run(
        [
            sam,
            "build",
            "--template",
            str(REPO / "template.yaml"),
            "--build-dir",
            str(build_dir),
            "--cached",
            "--cache-dir",
            str(local_aws.work / "sam-cache"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1200,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return build_dir, time.monotonic() - t0


@dataclass(frozen=True)
class Dataset:
    store: Path  # a local store: its sub-folder named like the stack's bucket holds the data
    bucket: str
    prefix: str
    keys: list[str]


def write_request(directory: Path, name: str, request: dict[str, Any]) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(request))
    return path


@dataclass(frozen=True)
class Run:
    run_id: str
    start: Any  # CompletedProcess of `cosmicai aws start --watch`
    summary_cli: Any  # CompletedProcess of `cosmicai aws summary`
    summary: Summary | None
    execution: dict[str, Any]
    seconds: float  # wall time of `cosmicai aws start --watch`


def _summary(local_aws: LocalAWS, bucket: str, run_id: str) -> Summary | None:
    s3 = local_aws.client("s3")
    try:
        body = s3.get_object(Bucket=bucket, Key=f"runs/{run_id}/summary.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return Summary.model_validate_json(body)


def run_deployed(
    local_aws: LocalAWS,
    deployed: Deployed,
    directory: Path,
    request: dict[str, Any],
) -> Run:
    """`cosmicai aws start --watch` then `cosmicai aws summary`, as a user runs them."""
    env = {**local_aws.aws_env(), "COSMICAI_STACK": deployed.stack.name}
    path = write_request(directory, request["run_id"], request)
    t0 = time.monotonic()
    started = cosmicai(env, "aws", "start", str(path), "--watch", timeout_s=1200)
    seconds = time.monotonic() - t0
    summary_cli = cosmicai(env, "aws", "summary", request["run_id"])
    execution = local_aws.client("stepfunctions").describe_execution(
        executionArn=deployed.stack.execution_arn(request["run_id"])
    )
    return Run(
        request["run_id"],
        started,
        summary_cli,
        _summary(local_aws, deployed.stack.bucket, request["run_id"]),
        execution,
        seconds,
    )
