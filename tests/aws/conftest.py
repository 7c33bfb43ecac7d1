"""Fixtures for the AWS application: handlers loaded from functions/, a seeded moto bucket."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
EVENTS = ROOT / "events"
DATA_BUCKET = "cosmicai-data"
#: Samples per test partition: small, so the moto tests stay quick.
PARTITION_SAMPLES = 40

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class FakeLambdaContext:
    """What Powertools reads from a Lambda context."""

    function_name: str = "cosmicai-test"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:cosmicai-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"


def load_function(stage: str) -> ModuleType:
    """``functions/<stage>/app.py``, imported from its file as Lambda would."""
    spec = importlib.util.spec_from_file_location(
        f"cosmicai_function_{stage}", ROOT / "functions" / stage / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


@pytest.fixture
def powertools_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "cosmicai")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "cosmicai-test")


@pytest.fixture
def log_stream() -> io.StringIO:
    """Where the handlers' JSON log lines go during a test."""
    return io.StringIO()


@pytest.fixture
def handlers(powertools_env: None, log_stream: io.StringIO) -> dict[str, Handler]:
    loaded: dict[str, Handler] = {}
    for stage in ("initialize", "worker", "summarize"):
        module = load_function(stage)
        # Powertools' Logger writes to the stdout it saw when first created, which pytest's
        # capture swaps between tests; point it at this test's stream instead.
        stream_handler = module.logger.registered_handler
        assert isinstance(stream_handler, logging.StreamHandler)
        stream_handler.setStream(log_stream)
        loaded[stage] = module.lambda_handler
    return loaded


@pytest.fixture
def data_bucket(s3_client: Any) -> Any:
    """The bucket the sample events name, with partitions under 25MB/ and 100MB/."""
    from cosmicai.data.format import BYTES_PER_SAMPLE
    from cosmicai.data.synth import synthesize
    from cosmicai.storage import Location, S3Storage

    s3_client.create_bucket(Bucket=DATA_BUCKET)
    storage = S3Storage(s3_client)
    for prefix in ("25MB/", "100MB/"):
        synthesize(
            Location(storage, DATA_BUCKET, prefix),
            size_bytes=3 * PARTITION_SAMPLES * BYTES_PER_SAMPLE,
            partition_bytes=PARTITION_SAMPLES * BYTES_PER_SAMPLE,
            processes=1,
        )
    return s3_client
