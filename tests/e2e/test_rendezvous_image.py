"""rendezvous/Dockerfile built with podman and run: health check, a TCPunch pair and a native
world through the published port, a clean stop on SIGTERM, a non-root user."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator

import pytest

from cosmicai.rendezvous.client import RendezvousClient, WorldResult, tcpunch_pair
from cosmicai.rendezvous.wire import Endpoint
from harness.localaws import REPO, LocalAWS, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

IMAGE = "localhost/cosmicai-rendezvous:e2e"
CONTAINER = "cosmicai-e2e-rendezvous"


@pytest.fixture(scope="module")
def image(local_aws: LocalAWS) -> str:
    # Docker format keeps the HEALTHCHECK instruction (OCI image configs have no such field).
    built = local_aws.podman_cmd(
        "build", "--format", "docker", "--network", "host", "-f", "rendezvous/Dockerfile",
        "-t", IMAGE, str(REPO),
        timeout_s=1200,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


@pytest.fixture
def server(local_aws: LocalAWS, image: str) -> Iterator[tuple[int, str]]:
    # Only the rendezvous port is published: the health endpoint listens on the container's
    # loopback, for its own health check, and strangers cannot reach (or starve) it.
    port = free_port()
    secret = secrets.token_urlsafe(32)
    local_aws.podman_cmd("rm", "-f", CONTAINER)
    started = local_aws.podman_cmd(
        "run", "-d", "--name", CONTAINER, "-p", f"127.0.0.1:{port}:10000",
        "-e", f"COSMICAI_RENDEZVOUS_SECRET={secret}", image,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 90
    while local_aws.podman_cmd("healthcheck", "run", CONTAINER).returncode != 0:
        if time.monotonic() > deadline:
            logs = local_aws.podman_cmd("logs", CONTAINER)
            pytest.fail(f"the container's health check never passed: {logs.stderr[-2000:]}")
        time.sleep(1)
    try:
        yield port, secret
    finally:
        local_aws.podman_cmd("rm", "-f", "-t", "5", CONTAINER)


def test_image_runs_as_non_root_without_the_inference_stack(
    local_aws: LocalAWS, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inspected = json.loads(local_aws.podman_cmd("image", "inspect", image).stdout)[0]
    assert inspected["Config"]["User"] == "10001:10001"
    healthcheck = inspected.get("Healthcheck") or inspected["Config"].get("Healthcheck")
    assert healthcheck and healthcheck["Test"][-1] == "healthcheck", inspected
    whoami = local_aws.podman_cmd("run", "--rm", "--entrypoint", "id", image, "-u")
    assert whoami.stdout.strip() == "10001"
    # the inference stack is not in the image (pydantic is: typer >= 0.2x depends on it)
    probe = local_aws.podman_cmd(
        "run", "--rm", "--entrypoint", "python", image, "-c",
        "import importlib.util as u; print([m for m in ('numpy', 'onnxruntime', 'safetensors') "
        "if u.find_spec(m)])",
    )  # fmt: skip
    assert probe.stdout.strip() == "[]", probe.stderr
    base = json.loads(local_aws.podman_cmd("image", "inspect", "python:3.12-slim").stdout)[0]
    with capsys.disabled():
        print(
            f"\n[e2e] rendezvous image: {inspected['Size'] / 1e6:.0f} MB, of which "
            f"{base['Size'] / 1e6:.0f} MB is the python:3.12-slim stand-in"
        )


def test_container_serves_tcpunch_and_native_clients_then_stops_on_sigterm(
    local_aws: LocalAWS, server: tuple[int, str]
) -> None:
    port, secret = server
    # GIVEN the running container, its health check passing (the fixture waited for it)

    # WHEN two TCPunch clients and a native world of three ranks use the published port
    async def rank(r: int) -> WorldResult:
        async with await RendezvousClient.connect("127.0.0.1", port, secret=secret) as rv:
            return await rv.register("e2e-world", world_size=3, rank=r, deadline=30)

    async def clients() -> tuple[list[tuple[Endpoint, Endpoint]], list[WorldResult]]:
        pair = asyncio.gather(
            tcpunch_pair("127.0.0.1", port, b"e2e-pair", timeout=30),
            tcpunch_pair("127.0.0.1", port, b"e2e-pair", timeout=30),
        )
        world = asyncio.gather(*(rank(r) for r in range(3)))
        pairs, worlds = await asyncio.gather(pair, world)
        return list(pairs), list(worlds)

    (a, b), worlds = asyncio.run(clients())
    # THEN the pair sees each other and every rank gets the whole world
    assert a[1] == b[0] and b[1] == a[0]
    assert [w.rank for w in worlds] == [0, 1, 2]
    assert all(len(w.peers) == 3 for w in worlds)
    assert worlds[0].peers == worlds[2].peers
    # and it is still healthy after serving them (within the image's 3 retries: a busy
    # machine can take one check past its 5 s timeout)
    for _ in range(3):
        checked = local_aws.podman_cmd("healthcheck", "run", CONTAINER)
        if checked.returncode == 0:
            break
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # WHEN it is stopped (SIGTERM, the image's STOPSIGNAL); THEN it exits cleanly, in time
    t0 = time.monotonic()
    stopped = local_aws.podman_cmd("stop", "-t", "20", CONTAINER)
    assert stopped.returncode == 0, stopped.stderr
    assert time.monotonic() - t0 < 15
    state = json.loads(local_aws.podman_cmd("inspect", CONTAINER).stdout)[0]["State"]
    assert state["ExitCode"] == 0, local_aws.podman_cmd("logs", CONTAINER).stderr[-2000:]
