"""`cosmicai aws start / watch / summary` against a stack in moto (CloudFormation outputs,
the real ASL in moto's interpreter, our handlers in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from cosmicai.cli import app
from harness.aws import PARTITION_SAMPLES, event


def _stack(state_machine: str, bucket: str) -> None:
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {
            "StateMachineArn": {"Value": state_machine},
            "DataBucket": {"Value": bucket},
            "DashboardUrl": {"Value": "https://example.invalid/dashboard"},
        },
    }
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="cosmicai-test", TemplateBody=json.dumps(template)
    )


@pytest.mark.slow
def test_start_watch_and_summary(state_machine: str, data_bucket: Any, tmp_path: Path) -> None:
    # GIVEN a deployed stack and a request naming its run
    _stack(state_machine, "cosmicai-data")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({**event("state-machine.json"), "run_id": "cli-aws-run"}))
    runner = CliRunner()
    # WHEN the run is started and followed
    started = runner.invoke(
        app, ["aws", "start", str(request), "--stack", "cosmicai-test", "--watch"]
    )
    # THEN it ends successfully, and its summary prints accuracy and cost
    assert started.exit_code == 0, started.output
    assert "Started run cli-aws-run" in started.output
    assert "Run cli-aws-run succeeded" in started.output
    summary = runner.invoke(app, ["aws", "summary", "cli-aws-run", "--stack", "cosmicai-test"])
    assert summary.exit_code == 0, summary.output
    assert "MAE" in summary.output and "AWS cost" in summary.output
    assert f"{2 * PARTITION_SAMPLES + PARTITION_SAMPLES:,}" in summary.output
    # and the same run id cannot be started again (exit 2, one line)
    again = runner.invoke(app, ["aws", "start", str(request), "--stack", "cosmicai-test"])
    assert again.exit_code == 2, again.output
    assert "run 'cli-aws-run' was already started" in again.output


def test_unknown_stack_is_a_clear_error(state_machine: str, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(event("state-machine.json")))
    result = CliRunner().invoke(app, ["aws", "start", str(request), "--stack", "nope"])
    assert result.exit_code == 1
    assert "stack 'nope'" in result.output and "Traceback" not in result.output


def test_bad_request_is_refused_before_anything_starts(state_machine: str, tmp_path: Path) -> None:
    _stack(state_machine, "cosmicai-data")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"batch_size": 0}))
    result = CliRunner().invoke(app, ["aws", "start", str(request), "--stack", "cosmicai-test"])
    assert result.exit_code == 2
    assert "bucket: required field is missing" in result.output
    executions = boto3.client("stepfunctions", region_name="us-east-1").list_executions(
        stateMachineArn=state_machine
    )["executions"]
    assert executions == []
