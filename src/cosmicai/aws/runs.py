"""Driving a deployed stack: start a run, follow it, fetch its summary.

A run's Step Functions execution is named by its run id, so the run id is all a user needs to
find it again (execution names are unique per state machine for 90 days, which also makes
starting the same request twice a clear error rather than two runs writing one prefix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cosmicai.exceptions import CosmicAIError, ObjectNotFoundError, RunExistsError
from cosmicai.request import RunRequest, parse_request
from cosmicai.run_types import Summary
from cosmicai.storage import S3Storage

if TYPE_CHECKING:
    from collections.abc import Callable


class StackError(CosmicAIError):
    """The named stack does not exist or is not a cosmicai stack."""


@dataclass(frozen=True)
class Stack:
    name: str
    state_machine_arn: str
    bucket: str
    dashboard_url: str | None = None

    def execution_arn(self, run_id: str) -> str:
        # arn:aws:states:REGION:ACCOUNT:stateMachine:NAME -> ...:execution:NAME:RUN_ID
        prefix, _, name = self.state_machine_arn.rpartition(":stateMachine:")
        return f"{prefix}:execution:{name}:{run_id}"


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    status: str  # RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED
    ranks_total: int
    ranks_succeeded: int
    ranks_failed: int
    ranks_running: int
    error: str | None = None
    cause: str | None = None
    output: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status != "RUNNING"


def describe_stack(name: str, cloudformation: Any = None) -> Stack:
    """The outputs of a deployed cosmicai stack."""
    from botocore.exceptions import ClientError

    if cloudformation is None:
        import boto3

        cloudformation = boto3.client("cloudformation")
    try:
        (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        raise StackError(f"stack {name!r}: {exc.response['Error']['Message']}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [k for k in ("StateMachineArn", "DataBucket") if k not in outputs]
    if missing:
        raise StackError(
            f"stack {name!r} has no output(s) {', '.join(missing)}: is it a cosmicai stack "
            f"(deployed from template.yaml) that finished deploying? status "
            f"{stack.get('StackStatus')}"
        )
    return Stack(
        name=name,
        state_machine_arn=outputs["StateMachineArn"],
        bucket=outputs["DataBucket"],
        dashboard_url=outputs.get("DashboardUrl"),
    )


def start_run(stack: Stack, request: RunRequest, stepfunctions: Any = None) -> str:
    """Start one execution for ``request``; returns its ARN."""
    from botocore.exceptions import ClientError

    if stepfunctions is None:
        import boto3

        stepfunctions = boto3.client("stepfunctions")
    payload = request.model_dump(mode="json", exclude_unset=True, exclude={"ignored_fields"})
    payload["run_id"] = request.run_id
    try:
        started = stepfunctions.start_execution(
            stateMachineArn=stack.state_machine_arn,
            name=request.run_id,
            input=json.dumps(payload),
        )
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "ExecutionAlreadyExists":
            raise RunExistsError(
                f"run {request.run_id!r} was already started on {stack.name}; give a new run_id"
            ) from None
        raise CosmicAIError(f"could not start the run: {exc}") from None
    arn: str = started["executionArn"]
    return arn


def run_progress(stack: Stack, run_id: str, stepfunctions: Any = None) -> RunProgress:
    """Where a run stands: its execution status and the Map's item counts."""
    from botocore.exceptions import ClientError

    if stepfunctions is None:
        import boto3

        stepfunctions = boto3.client("stepfunctions")
    arn = stack.execution_arn(run_id)
    try:
        execution = stepfunctions.describe_execution(executionArn=arn)
        map_runs = stepfunctions.list_map_runs(executionArn=arn)["mapRuns"]
    except ClientError as exc:
        raise CosmicAIError(f"run {run_id!r} on {stack.name}: {exc}") from None
    counts: dict[str, int] = {}
    if map_runs:
        described = stepfunctions.describe_map_run(mapRunArn=map_runs[0]["mapRunArn"])
        counts = described["itemCounts"]
    output = json.loads(execution["output"]) if execution.get("output") else None
    return RunProgress(
        run_id=run_id,
        status=execution["status"],
        ranks_total=counts.get("total", 0),
        ranks_succeeded=counts.get("succeeded", 0),
        ranks_failed=counts.get("failed", 0) + counts.get("timedOut", 0) + counts.get("aborted", 0),
        ranks_running=counts.get("running", 0),
        error=execution.get("error"),
        cause=execution.get("cause"),
        output=output,
    )


def watch_run(
    stack: Stack,
    run_id: str,
    *,
    on_progress: Callable[[RunProgress], None],
    interval_s: float = 2.0,
    timeout_s: float = 24 * 3600,
    stepfunctions: Any = None,
    sleep: Callable[[float], None] | None = None,
) -> RunProgress:
    """Poll until the run ends (or ``timeout_s``), reporting each reading."""
    import time

    pause = sleep or time.sleep
    deadline = time.monotonic() + timeout_s
    while True:
        progress = run_progress(stack, run_id, stepfunctions)
        on_progress(progress)
        if progress.done:
            return progress
        if time.monotonic() > deadline:
            raise CosmicAIError(f"run {run_id!r} still {progress.status} after {timeout_s:.0f} s")
        pause(interval_s)


def fetch_summary(stack: Stack, run_id: str, stepfunctions: Any = None, s3: Any = None) -> Summary:
    """The summary Summarize wrote for ``run_id`` (found from the execution's input)."""
    from botocore.exceptions import ClientError

    if stepfunctions is None:
        import boto3

        stepfunctions = boto3.client("stepfunctions")
    try:
        execution = stepfunctions.describe_execution(executionArn=stack.execution_arn(run_id))
    except ClientError as exc:
        raise CosmicAIError(f"run {run_id!r} on {stack.name}: {exc}") from None
    request = parse_request(json.loads(execution["input"]))
    storage = S3Storage(s3)
    key = f"{request.run_prefix}summary.json"
    try:
        return Summary.model_validate_json(storage.get(request.bucket, key))
    except ObjectNotFoundError:
        raise CosmicAIError(
            f"run {run_id!r} has no summary yet (execution {execution['status']}); "
            f"expected s3://{request.bucket}/{key}"
        ) from None
