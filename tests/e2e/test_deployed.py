"""The deployed application in LocalStack: template.yaml built by ``sam build``, deployed by
``sam deploy``, Lambdas in podman containers importing the layers, runs started, followed and
summarized by the ``cosmicai aws`` commands a user types."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cosmicai.run_types import Summary
from harness.e2e import Dataset, Deployed, Run, cosmicai, run_deployed, write_request
from harness.localaws import LocalAWS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(2400)]


def _accuracy(output: str) -> str:
    """The Accuracy table of a printed summary."""
    match = re.search(r"^Accuracy *\n(.*?)^Performance", output, flags=re.S | re.M)
    assert match, output
    return match.group(1)


def test_deployed_run_matches_a_local_run(
    ok_run: Run,
    dataset: Dataset,
    tmp_path: Path,
    local_aws: LocalAWS,
    deployed: Deployed,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the run of the deployed state machine over the uploaded partitions
    assert ok_run.start.returncode == 0, ok_run.start.stdout + ok_run.start.stderr
    assert ok_run.execution["status"] == "SUCCEEDED"
    assert "succeeded" in ok_run.start.stdout
    assert ok_run.summary_cli.returncode == 0, ok_run.summary_cli.stderr
    assert ok_run.summary is not None and ok_run.summary.status == "ok"
    assert ok_run.summary.world_size == 2 and ok_run.summary.partitions == 4
    # WHEN the same request runs on this machine over the same files
    request = {
        "bucket": dataset.bucket,
        "data_prefix": dataset.prefix,
        "world_size": 2,
        "batch_size": 64,
        "run_id": "e2e-local",
    }
    local = cosmicai(
        dict(local_aws.aws_env()),
        "run",
        str(write_request(tmp_path, "local", request)),
        "--storage",
        str(dataset.store),
    )
    assert local.returncode == 0, local.stdout + local.stderr
    # THEN `cosmicai aws summary` prints the same accuracy as the local run
    assert _accuracy(ok_run.summary_cli.stdout) == _accuracy(local.stdout)
    local_summary = Summary.model_validate_json(
        (dataset.store / dataset.bucket / "runs/e2e-local/summary.json").read_text()
    )
    assert ok_run.summary.metrics is not None and local_summary.metrics is not None
    assert ok_run.summary.samples == local_summary.samples > 100
    for name, value in local_summary.metrics.model_dump().items():
        assert getattr(ok_run.summary.metrics, name) == pytest.approx(value, rel=1e-5), name
    with capsys.disabled():
        print(
            f"\n[e2e] deployed run e2e-ok: {ok_run.summary.samples} galaxies, MAE "
            f"{ok_run.summary.metrics.mae:.4f}; sam build {deployed.build_s:.0f} s, sam deploy "
            f"{deployed.deploy_s:.0f} s, start --watch {ok_run.seconds:.1f} s\n"
            + ok_run.summary_cli.stdout
        )


def test_same_run_id_twice_is_refused(
    ok_run: Run, local_aws: LocalAWS, deployed: Deployed, tmp_path: Path
) -> None:
    # GIVEN a finished run; WHEN its request is started again
    env = {**local_aws.aws_env(), "COSMICAI_STACK": deployed.stack.name}
    execution_input = ok_run.execution["input"]
    path = tmp_path / "again.json"
    path.write_text(execution_input)
    again = cosmicai(env, "aws", "start", str(path))
    # THEN it is refused by name (one line, exit 2), and the first run's results stand
    assert again.returncode == 2
    assert "already started" in again.stderr


def test_corrupt_partition_fails_its_rank_by_name(corrupt_run: Run) -> None:
    # THEN the run ends RanksFailed, the summary is partial and names the partition
    assert corrupt_run.execution["status"] == "FAILED"
    assert corrupt_run.execution.get("error") == "RanksFailed"
    assert corrupt_run.start.returncode == 1
    assert "RanksFailed" in corrupt_run.start.stderr
    summary = corrupt_run.summary
    assert summary is not None and summary.status == "partial"
    assert len(summary.failed_ranks) == 1
    (why,) = summary.failed_ranks.values()
    assert "3.safetensors" in why
    assert summary.ranks_ok == 1
    assert "rank" in corrupt_run.summary_cli.stdout and "failed" in corrupt_run.summary_cli.stdout


def test_bad_request_fails_at_initialize(
    local_aws: LocalAWS, deployed: Deployed, dataset: Dataset, tmp_path: Path
) -> None:
    # GIVEN a request the CLI accepts but this deployment does not (another bucket)
    request = {"bucket": "not-this-deployment", "data_prefix": dataset.prefix, "run_id": "e2e-bad"}
    # WHEN it is started
    run = run_deployed(local_aws, deployed, tmp_path, request)
    # THEN Initialize refuses it, naming the field, and nothing runs
    assert run.execution["status"] == "FAILED"
    assert run.execution.get("error") == "InvalidRequestError"
    cause = json.loads(run.execution["cause"])
    assert "bucket" in cause["errorMessage"] and "not-this-deployment" in cause["errorMessage"]
    assert run.start.returncode == 1
    history = local_aws.client("stepfunctions").get_execution_history(
        executionArn=run.execution["executionArn"], maxResults=1000
    )["events"]
    entered = [
        e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")
    ]
    assert entered == ["Initialize"]


def test_direct_communicator_run(
    local_aws: LocalAWS,
    deployed: Deployed,
    dataset: Dataset,
    ok_run: Run,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN workers told of a rendezvous server on the host (10.0.2.2 from their containers)
    request = {
        "bucket": dataset.bucket,
        "data_prefix": dataset.prefix,
        "world_size": 2,
        "batch_size": 64,
        "communicator": "direct",
        "run_id": "e2e-direct",
    }
    # WHEN the run uses the direct communicator
    run = run_deployed(local_aws, deployed, tmp_path, request)
    # THEN it succeeds with the workers' own reduction, and the same metrics as without it
    assert run.start.returncode == 0, run.start.stdout + run.start.stderr
    summary = run.summary
    assert summary is not None and summary.status == "ok"
    assert summary.communicator is not None, summary
    assert summary.communicator.mode == "direct"
    assert summary.metrics_source == "communicator", summary.communicator
    assert not summary.communicator.degraded_ranks
    # every link is either punched (tcp) or fell back to the object store
    assert set(summary.communicator.links) <= {"tcp", "store"}, summary.communicator.links
    assert sum(summary.communicator.links.values()) == 2  # one link, counted from both ends
    assert ok_run.summary is not None and ok_run.summary.metrics is not None
    assert summary.metrics is not None
    for name, value in ok_run.summary.metrics.model_dump().items():
        assert getattr(summary.metrics, name) == pytest.approx(value, rel=1e-9), name
    with capsys.disabled():
        print(f"\n[e2e] direct communicator: links {summary.communicator.links}")
