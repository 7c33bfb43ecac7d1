"""Fixtures for the AWS application: handlers loaded from functions/, a seeded moto bucket,
Step Functions running in moto."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from harness.aws import (
    DATA_BUCKET,
    PARTITION_SAMPLES,
    ROLE,
    FakeLambdaContext,
    Handler,
    load_function,
    render_definition,
)


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


def _invoke_in_process(handlers: dict[str, Handler]) -> Any:
    def invoke(
        self: Any,
        function_name: str,
        qualifier: Any,
        body: Any,
        headers: Any,
        response_headers: Any,
    ) -> bytes:
        stage = function_name.rsplit(":", 1)[-1].removeprefix("cosmicai-")
        try:
            result = handlers[stage](json.loads(body), FakeLambdaContext())
        except Exception as exc:  # what Lambda does with an unhandled error
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode()
        return json.dumps(result).encode()

    return invoke


@pytest.fixture
def sfn(
    aws_env: None, handlers: dict[str, Handler], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    from moto import mock_aws
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", _invoke_in_process(handlers))
    # moto's ListMapRuns and DescribeMapRun read an execution's interpreter state, which moto
    # clears (env None) when the execution ends in another thread: a poll racing the end of a
    # run raises AttributeError inside moto about one time in four. AWS keeps map runs after
    # the end; the test answers as if the execution were settled.
    original_executions = StepFunctionsParserBackend._get_executions
    original_list = StepFunctionsParserBackend.list_map_runs

    def settled_executions(self: Any, *args: Any, **kwargs: Any) -> Any:
        return [
            e
            for e in original_executions(self, *args, **kwargs)
            if getattr(getattr(e, "exec_worker", None), "env", None) is not None
        ]

    def list_map_runs(self: Any, execution_arn: str) -> Any:
        try:
            return original_list(self, execution_arn)
        except AttributeError:
            return {"mapRuns": []}

    monkeypatch.setattr(StepFunctionsParserBackend, "_get_executions", settled_executions)
    monkeypatch.setattr(StepFunctionsParserBackend, "list_map_runs", list_map_runs)
    config: Any = {
        "stepfunctions": {"execute_state_machine": True},
        "lambda": {"use_docker": False},
    }
    with mock_aws(config=config):
        yield boto3.client("stepfunctions", region_name="us-east-1")


@pytest.fixture
def s3_client(sfn: Any) -> Any:
    # Overrides the root fixture: the bucket must live inside the same mock as the functions.
    return boto3.client("s3", region_name="us-east-1")


@pytest.fixture(params=["STANDARD", "EXPRESS"])
def state_machine(
    request: pytest.FixtureRequest, sfn: Any, data_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The production ASL with either child type; every state-machine test runs both."""
    child_type: str = request.param
    lam = boto3.client("lambda", region_name="us-east-1")
    boto3.client("iam").create_role(
        RoleName="cosmicai-test",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                    }
                ],
            }
        ),
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    arns = {}
    for stage in ("initialize", "worker", "summarize"):
        arns[f"{stage.capitalize()}FunctionArn"] = lam.create_function(
            FunctionName=f"cosmicai-{stage}",
            Runtime="python3.12",
            Role=ROLE,
            Handler="app.lambda_handler",
            Code={"ZipFile": archive.getvalue()},
        )["FunctionArn"]
    definition = render_definition(
        {
            **arns,
            "MaxConcurrency": "4",
            "MapChildType": child_type,
            "ToleratedFailurePercentage": "0",
        }
    )
    processor = definition["States"]["Distributed Test"]["ItemProcessor"]["ProcessorConfig"]
    assert processor["ExecutionType"] == child_type
    # moto's interpreter runs only STANDARD children: the EXPRESS definition's children run
    # as STANDARD there, while the functions are told EXPRESS (as the template tells them) so
    # Summarize prices them as such.
    processor["ExecutionType"] = "STANDARD"
    monkeypatch.setenv("COSMICAI_MAP_CHILD_TYPE", child_type)
    # moto's interpreter reads an integer ToleratedFailurePercentage as invalid; Step
    # Functions accepts both, so the test hands it a float.
    distributed = definition["States"]["Distributed Test"]
    distributed["ToleratedFailurePercentage"] = float(distributed["ToleratedFailurePercentage"])
    arn: str = sfn.create_state_machine(
        name="cosmicai-pipeline", definition=json.dumps(definition), roleArn=ROLE
    )["stateMachineArn"]
    return arn
