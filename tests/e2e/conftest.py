"""Session fixtures of the end-to-end tests: one LocalStack, one deployment, one dataset.

They run when COSMICAI_E2E=1 (``make e2e``, and ``make test`` on a machine that can: root with
apt); otherwise, or when a piece of the local AWS cannot be brought up, they skip with the
reason. Everything started here is stopped at the end of the session.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmicai.aws.runs import describe_stack
from harness.e2e import (
    DATA_BYTES,
    DATA_PREFIX,
    E2E_ENV,
    PARTITION_BYTES,
    STACK,
    Dataset,
    Deployed,
    Rendezvous,
    Run,
    run_deployed,
    sam_build,
)
from harness.localaws import (
    LocalAWS,
    Unavailable,
    adapt_for_localstack,
    find_sam,
    free_port,
    require_runtime_init,
    run_setup,
)


@pytest.fixture(scope="session")
def local_aws() -> Iterator[LocalAWS]:
    if os.environ.get(E2E_ENV) != "1":
        pytest.skip(
            f"end-to-end tests run with `make e2e` ({E2E_ENV}=1): they install podman, build "
            "images and start LocalStack"
        )
    aws: LocalAWS | None = None
    try:
        aws = LocalAWS(run_setup())
        aws.start()
    except Unavailable as exc:
        if aws is not None:
            aws.stop()
        pytest.skip(f"local AWS unavailable: {exc}")
    try:
        yield aws
    finally:
        aws.stop()


@pytest.fixture(scope="session")
def rendezvous(local_aws: LocalAWS) -> Iterator[Rendezvous]:
    """A rendezvous server on the host's loopback; Lambda containers reach it at 10.0.2.2."""
    port, health_port = free_port(), free_port()
    secret = secrets.token_urlsafe(32)
    log = (local_aws.work / "rendezvous.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cosmicai",
            "rendezvous",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--health-port",
            str(health_port),
        ],
        env={**os.environ, "COSMICAI_RENDEZVOUS_SECRET": secret},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("the rendezvous server did not start: see .localaws/rendezvous.log")
            time.sleep(0.3)
    try:
        yield Rendezvous(port, health_port, secret, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def built(local_aws: LocalAWS) -> tuple[Path, float]:
    return sam_build(local_aws)


@pytest.fixture(scope="session")
def deployed(local_aws: LocalAWS, rendezvous: Rendezvous, built: tuple[Path, float]) -> Deployed:
    """template.yaml built and deployed with ``sam deploy``, the endpoint at LocalStack."""
    from harness.localaws import load_template

    try:
        require_runtime_init()
    except Unavailable as exc:
        pytest.skip(str(exc))
    build_dir, build_s = built
    template_file = adapt_for_localstack(build_dir)
    secret_arn = local_aws.client("secretsmanager").create_secret(
        Name=f"{STACK}-rendezvous", SecretString=rendezvous.secret
    )["ARN"]
    artifacts = f"{STACK}-artifacts"
    local_aws.client("s3").create_bucket(Bucket=artifacts)
    t0 = time.monotonic()
    deploy = subprocess.run(
        [
            find_sam(),
            "deploy",
            "--template-file",
            str(template_file),
            "--stack-name",
            STACK,
            "--s3-bucket",
            artifacts,
            "--region",
            "us-east-1",
            "--no-confirm-changeset",
            "--capabilities",
            "CAPABILITY_IAM",
            "CAPABILITY_AUTO_EXPAND",
            "--no-fail-on-empty-changeset",
            "--no-progressbar",
            "--parameter-overrides",
            f"NamePrefix={STACK}",
            "RendezvousEnabled=true",
            f"RendezvousEndpoint=10.0.2.2:{rendezvous.port}",
            f"RendezvousSecretArn={secret_arn}",
        ],
        capture_output=True,
        text=True,
        env=local_aws.aws_env(),
        cwd=build_dir,
        timeout=900,
    )
    deploy_s = time.monotonic() - t0
    assert deploy.returncode == 0, (
        deploy.stdout[-4000:] + deploy.stderr[-4000:] + "\n--- LocalStack:\n" + local_aws.log_tail()
    )
    stack = describe_stack(STACK, cloudformation=local_aws.client("cloudformation"))
    local_aws.timings.update(build_s=build_s, deploy_s=deploy_s)
    return Deployed(stack, load_template(build_dir / "template.yaml"), build_dir, deploy_s, build_s)


@pytest.fixture(scope="session")
def dataset(
    deployed: Deployed, local_aws: LocalAWS, tmp_path_factory: pytest.TempPathFactory
) -> Dataset:
    """Rendered test galaxies, in a local store and uploaded to the stack's bucket."""
    from cosmicai.data.synth import synthesize
    from cosmicai.storage import parse_location

    bucket = deployed.stack.bucket
    store = tmp_path_factory.mktemp("store")
    root = store / bucket / DATA_PREFIX
    synthesize(
        parse_location(str(root)),
        size_bytes=DATA_BYTES,
        partition_bytes=PARTITION_BYTES,
        processes=1,
    )
    s3 = local_aws.client("s3")
    keys = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = path.relative_to(store / bucket).as_posix()
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return Dataset(store, bucket, DATA_PREFIX, keys)


@pytest.fixture(scope="session")
def ok_run(
    local_aws: LocalAWS,
    deployed: Deployed,
    dataset: Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    request = {
        "bucket": dataset.bucket,
        "data_prefix": dataset.prefix,
        "world_size": 2,
        "batch_size": 64,
        "run_id": "e2e-ok",
    }
    return run_deployed(local_aws, deployed, tmp_path_factory.mktemp("ok"), request)


@pytest.fixture(scope="session")
def corrupt_run(
    local_aws: LocalAWS,
    deployed: Deployed,
    dataset: Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    # GIVEN a copy of the dataset whose third partition is not a partition at all
    s3 = local_aws.client("s3")
    prefix = "data/e2e-corrupt"
    for key in dataset.keys:
        target = prefix + key.removeprefix(dataset.prefix)
        s3.copy_object(
            Bucket=dataset.bucket, Key=target, CopySource={"Bucket": dataset.bucket, "Key": key}
        )
    s3.put_object(Bucket=dataset.bucket, Key=f"{prefix}/3.safetensors", Body=b"\x00" * 4096)
    request = {
        "bucket": dataset.bucket,
        "data_prefix": prefix,
        "world_size": 2,
        "run_id": "e2e-corrupt",
    }
    return run_deployed(local_aws, deployed, tmp_path_factory.mktemp("corrupt"), request)
