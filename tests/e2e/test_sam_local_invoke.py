"""`sam local invoke -e events/<event>.json <Function>` for every sample event, through
podman's Docker API and the Lambda-like image, the functions reading and writing LocalStack's
S3 (the same data layout the events name: bucket cosmicai-data, prefixes 25MB and 100MB)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.localaws import REPO, LocalAWS, Relay, find_sam

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

BUCKET = "cosmicai-data"


@dataclass(frozen=True)
class SamLocal:
    template: Path
    env_vars: Path
    relay: Relay


@pytest.fixture(scope="module")
def sam_local(
    local_aws: LocalAWS, built: tuple[Path, float], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SamLocal]:
    from cosmicai.data.synth import synthesize
    from cosmicai.storage import parse_location
    from harness.localaws import load_template

    # GIVEN the events' bucket in LocalStack with small datasets under both events' prefixes
    s3 = local_aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    data = tmp_path_factory.mktemp("events-data")
    synthesize(parse_location(str(data)), size_bytes=2 * 2**20, partition_bytes=2**20, processes=1)
    for prefix in ("25MB", "100MB"):
        for path in sorted(data.iterdir()):
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
    # ... LocalStack reachable from podman's bridge, where SAM CLI puts its containers
    inspected = local_aws.podman_cmd("network", "inspect", "podman")
    assert inspected.returncode == 0, inspected.stderr
    gateway = json.loads(inspected.stdout)[0]["subnets"][0]["gateway"]
    relay = Relay(gateway, local_aws.port)
    # ... and the built template, with AWS_ENDPOINT_URL declared so --env-vars may set it
    build_dir, _ = built
    template = load_template(build_dir / "template.yaml")
    template["Globals"]["Function"]["Environment"]["Variables"]["AWS_ENDPOINT_URL"] = ""
    adapted = build_dir / "template.samlocal.json"
    adapted.write_text(json.dumps(template, indent=1))
    env_vars = tmp_path_factory.mktemp("sam") / "env.json"
    env_vars.write_text(
        json.dumps({"Parameters": {"AWS_ENDPOINT_URL": f"http://{gateway}:{relay.port}"}})
    )
    try:
        yield SamLocal(adapted, env_vars, relay)
    finally:
        relay.close()


def invoke(local_aws: LocalAWS, sam_local: SamLocal, function: str, event: str) -> Any:
    done = subprocess.run(
        [
            find_sam(),
            "local",
            "invoke",
            function,
            "-e",
            str(REPO / "events" / event),
            "--template",
            str(sam_local.template),
            "--skip-pull-image",
            "--env-vars",
            str(sam_local.env_vars),
            "--region",
            "us-east-1",
            "--parameter-overrides",
            f"DataBucketName={BUCKET}",
        ],
        capture_output=True,
        text=True,
        env=local_aws.aws_env(),
        cwd=sam_local.template.parent,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The function's response is the last line of stdout; logs go to stderr.
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_initialize_event(local_aws: LocalAWS, sam_local: SamLocal) -> None:
    response = invoke(local_aws, sam_local, "InitializeFunction", "initialize.json")
    assert response["run_id"] == "example-run"
    assert response["world_size"] == 2 and response["partitions"] == 2
    listed = local_aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="runs/example-run/")
    keys = {o["Key"] for o in listed["Contents"]}
    assert {"runs/example-run/plan.json", "runs/example-run/manifest.json"} <= keys


def test_worker_event(local_aws: LocalAWS, sam_local: SamLocal) -> None:
    response = invoke(local_aws, sam_local, "WorkerFunction", "worker.json")
    assert response["rank"] == 0 and response["status"] == "ok"
    assert response["samples"] > 0


def test_summarize_event(local_aws: LocalAWS, sam_local: SamLocal) -> None:
    # worker.json ran rank 0 only: the summary names rank 1 as missing
    response = invoke(local_aws, sam_local, "SummarizeFunction", "summarize.json")
    assert response["run_id"] == "example-run"
    assert response["status"] == "partial"
    assert list(response["failed_ranks"]) == ["1"]
    assert response["metrics"]["samples"] > 0


@pytest.mark.parametrize("event", ["state-machine.json", "cosmicai-original.json"])
def test_state_machine_inputs_through_initialize(
    local_aws: LocalAWS, sam_local: SamLocal, event: str
) -> None:
    response = invoke(local_aws, sam_local, "InitializeFunction", event)
    request = json.loads((REPO / "events" / event).read_text())
    assert response["bucket"] == BUCKET
    assert response["partitions"] == 2
    assert response["run_prefix"].startswith(request.get("result_path", "runs"))
