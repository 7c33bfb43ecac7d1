"""The AWS application as the tests see it: its handlers loaded from functions/, its sample
events, its state machine definition; AWS itself is moto (fixtures in tests/aws/conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
DATA_BUCKET = "cosmicai-data"
#: Samples per test partition: small, so the moto tests stay quick.
PARTITION_SAMPLES = 40

ASL = ROOT / "statemachine" / "cosmicai.asl.json"
ROLE = "arn:aws:iam::123456789012:role/cosmicai-test"

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


def render_definition(substitutions: dict[str, str]) -> dict[str, Any]:
    """The ASL with DefinitionSubstitutions applied, as CloudFormation would."""
    text = ASL.read_text()
    for name, value in substitutions.items():
        text = text.replace("${" + name + "}", value)
    leftover = re.findall(r"\$\{(\w+)\}", text)
    assert not leftover, f"unsubstituted placeholders: {leftover}"
    definition: dict[str, Any] = json.loads(text)
    return definition


def run_execution(sfn: Any, state_machine: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start a Step Functions execution and wait (at most 120 s) until it is no longer
    RUNNING; returns ``describe_execution``'s answer."""
    execution = sfn.start_execution(stateMachineArn=state_machine, input=json.dumps(request))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution["executionArn"])
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.2)
    raise AssertionError("execution did not finish in 120 s")
