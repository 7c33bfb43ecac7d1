"""Every metric the dashboard charts is really emitted by the deployed functions.

LocalStack does not turn Powertools' EMF records into CloudWatch metrics, so the records are
read from the functions' log groups, as CloudWatch itself would read them. AWS's own metrics
are checked where LocalStack publishes them (AWS/Lambda Invocations and Errors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness.e2e import Deployed, Run
from harness.localaws import REGION, LocalAWS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]

#: (namespace, metric name, dimensions as sorted (name, value) pairs)
MetricId = tuple[str, str, tuple[tuple[str, str], ...]]


def emf_metrics(local_aws: LocalAWS, log_group: str) -> set[MetricId]:
    """The metrics of every EMF record in a log group."""
    logs = local_aws.client("logs")
    found: set[MetricId] = set()
    for page in logs.get_paginator("filter_log_events").paginate(logGroupName=log_group):
        for event in page["events"]:
            message = event["message"].strip()
            if not message.startswith("{") or '"_aws"' not in message:
                continue
            record = json.loads(message)
            for directive in record["_aws"]["CloudWatchMetrics"]:
                for dimension_set in directive["Dimensions"]:
                    dims = tuple(sorted((d, str(record[d])) for d in dimension_set))
                    for metric in directive["Metrics"]:
                        found.add((directive["Namespace"], metric["Name"], dims))
    return found


def dashboard_metrics(body: dict[str, Any]) -> Iterator[MetricId]:
    """The metrics a dashboard body charts, with CloudWatch's '.' and '...' shorthands expanded."""
    for widget in body["widgets"]:
        previous: list[str] = []
        for row in widget["properties"].get("metrics", []):
            fields = [f for f in row if not isinstance(f, dict)]
            if not fields:  # a math expression
                continue
            if fields == ["..."]:
                fields = list(previous)
            else:
                fields = [previous[i] if f == "." else f for i, f in enumerate(fields)]
            previous = fields
            namespace, name, *dims = fields
            yield namespace, name, tuple(sorted(zip(dims[::2], dims[1::2], strict=True)))


def dashboard_body(deployed: Deployed, worker: str) -> dict[str, Any]:
    """The dashboard of the built template, substituted as CloudFormation would."""
    sub = deployed.template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    text, variables = sub
    assert set(variables) == {"StateMachine", "Worker"}
    values = {
        "AWS::Region": REGION,
        "StateMachine": deployed.stack.state_machine_arn,
        "Worker": worker,
    }
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert "${" not in text
    body: dict[str, Any] = json.loads(text)
    return body


def test_every_dashboard_metric_is_emitted(
    local_aws: LocalAWS, deployed: Deployed, ok_run: Run, corrupt_run: Run
) -> None:
    # GIVEN runs that succeeded and failed on the deployed stack
    assert ok_run.execution["status"] == "SUCCEEDED"
    assert corrupt_run.execution["status"] == "FAILED"
    resources = local_aws.client("cloudformation").describe_stack_resources(
        StackName=deployed.stack.name
    )["StackResources"]
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
    worker = physical["WorkerFunction"]
    # WHEN the functions' EMF records are read from their logs
    emitted: set[MetricId] = set()
    for function in ("InitializeFunction", "WorkerFunction", "SummarizeFunction"):
        emitted |= emf_metrics(local_aws, f"/aws/lambda/{physical[function]}")
    body = dashboard_body(deployed, worker)
    charted = set(dashboard_metrics(body))
    # THEN every custom metric the dashboard charts was emitted with its namespace/dimensions
    custom = {m for m in charted if m[0] == "cosmicai"}
    assert custom, charted
    assert custom <= emitted, f"charted but never emitted: {sorted(custom - emitted)}"
    # ... AWS's own metrics name the deployed resources
    for namespace, name, dims in charted - custom:
        assert namespace in ("AWS/Lambda", "AWS/States"), namespace
        (dim,) = dims
        expected = worker if namespace == "AWS/Lambda" else deployed.stack.state_machine_arn
        assert dim[1] in (expected, f"{expected}/DistributedTest"), (namespace, name, dims)
    # ... and those LocalStack publishes exist (it has no Duration, Throttles or AWS/States)
    cloudwatch = local_aws.client("cloudwatch")
    published = {
        (
            m["Namespace"],
            m["MetricName"],
            tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])),
        )
        for m in cloudwatch.list_metrics(Namespace="AWS/Lambda")["Metrics"]
    }
    lambda_charted = {
        m for m in charted if m[0] == "AWS/Lambda" and m[1] in ("Errors", "Invocations")
    }
    assert lambda_charted and lambda_charted <= published, (lambda_charted, published)
    # ... and CloudWatch accepts the dashboard (LocalStack's CloudFormation skips it)
    cloudwatch.put_dashboard(DashboardName="cosmicai-e2e-check", DashboardBody=json.dumps(body))
    assert cloudwatch.get_dashboard(DashboardName="cosmicai-e2e-check")["DashboardBody"]
