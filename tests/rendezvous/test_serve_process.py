"""``python -m cosmicai.rendezvous serve`` as a real process: start, serve, SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cosmicai.constants import ENV_RENDEZVOUS_SECRET
from cosmicai.exceptions import RendezvousRefusedError
from cosmicai.rendezvous.cli import app
from cosmicai.rendezvous.client import RendezvousClient
from cosmicai.rendezvous.wire.messages import ErrorCode
from cosmicai.rendezvous.wire.tcpunch import RECORD_SIZE
from harness.rendezvous import (
    LOOPBACK,
    SECRET,
    ServerProcess,
    async_test,
    connect,
    read_to_eof,
)

pytestmark = pytest.mark.timeout(60)

SECRET_ENV = ENV_RENDEZVOUS_SECRET


@pytest.mark.slow  # a server process
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@async_test
async def test_signal_stops_the_server_cleanly_and_tells_waiting_clients(
    signum: signal.Signals,
) -> None:
    # GIVEN a running server with a TCPunch client and a native rank waiting
    server = await ServerProcess.start()
    listening = await server.wait_for("listening")
    assert listening["auth"] is True and listening["tcpunch"] is True
    port = listening["port"]
    tcpunch_reader, tcpunch_writer = await connect(port)
    tcpunch_writer.write(b"waiting-pair")
    await tcpunch_reader.readexactly(RECORD_SIZE)
    rank = await RendezvousClient.connect(LOOPBACK, port, secret=SECRET)
    await rank.request_world("job", 2, 0)
    # WHEN the process is signalled
    server.process.send_signal(signum)
    # THEN it tells the native client, closes the TCPunch one, and exits 0
    with pytest.raises(RendezvousRefusedError) as refused:
        await rank.wait_world()
    assert refused.value.code == ErrorCode.SHUTTING_DOWN
    await rank.close()
    assert await read_to_eof(tcpunch_reader) == b""
    assert await server.wait_exit() == 0
    requested = next(e for e in server.log if e["event"] == "shutdown_requested")
    assert requested["signal"] == signum.name
    stopped = server.log[-1]
    assert stopped["event"] == "stopped" and stopped["waiting_at_shutdown"] == 2
    tcpunch_writer.close()


@pytest.mark.slow  # a server process
@async_test
async def test_healthcheck_command_against_a_running_server() -> None:
    server = await ServerProcess.start()
    listening = await server.wait_for("listening")
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cosmicai.rendezvous", "healthcheck",
        "--health-port", str(listening["health_port"]),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await check.communicate()
    assert check.returncode == 0, out
    assert b"/healthz: ok" in out
    assert await server.stop(signal.SIGTERM) == 0


def test_healthcheck_fails_when_nothing_answers() -> None:
    result = CliRunner().invoke(app, ["healthcheck", "--health-port", "1", "--timeout", "1"])
    assert result.exit_code == 1
    assert "http://127.0.0.1:1/healthz" in result.output


def test_serve_without_a_secret_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--health-port", "0"])
    assert result.exit_code == 2
    assert "no rendezvous secret" in result.output and "--no-auth" in result.output


def test_serve_refuses_half_a_route53_configuration() -> None:
    result = CliRunner().invoke(app, ["serve", "--route53-zone-id", "Z1"])
    assert result.exit_code == 2
    assert "--route53-record-name" in result.output


def test_serve_refuses_a_short_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "short")
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--health-port", "0"])
    assert result.exit_code == 2
    assert "needs at least 16" in result.output


def test_the_server_imports_nothing_of_the_inference_stack() -> None:
    # The container installs the package without numpy, onnxruntime and pydantic (and the
    # server needs boto3 only for AWS features), so none of them may be imported on the way.
    blocked = ["numpy", "onnxruntime", "pydantic", "boto3", "botocore", "rich.console"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import cosmicai.rendezvous, cosmicai.rendezvous.cli, cosmicai.rendezvous.server\n"
        "import cosmicai.rendezvous.aws.route53, cosmicai.rendezvous.aws.secret\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_client_loads_no_server_module() -> None:
    # GIVEN a fresh interpreter, WHEN a worker imports the clients (and the communicator's
    # hole punching, which builds on them), THEN no module of the server
    # is loaded: the server builds on the wire, not on the client, and only the cli joins them.
    code = (
        "import sys\n"
        "import cosmicai.rendezvous.client, cosmicai.comm.punch\n"
        "loaded = sorted(m for m in sys.modules if m == 'cosmicai.rendezvous.cli'"
        " or m.startswith('cosmicai.rendezvous.server'))\n"
        "assert not loaded, loaded\n"
        "assert 'cosmicai.rendezvous.wire' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
