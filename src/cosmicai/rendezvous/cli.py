"""``cosmicai rendezvous ...``: run the rendezvous server, check its health, try a pairing.

Every option also reads an environment variable (named in ``--help``), so the container is
configured by its task definition alone. The secret itself is read only from the environment
(``COSMICAI_RENDEZVOUS_SECRET``) or a named source, never from the command line, where other
users of the machine could read it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from cosmicai import constants as c
from cosmicai.exceptions import CosmicAIError
from cosmicai.rendezvous.aws.route53 import self_register
from cosmicai.rendezvous.aws.secret import load_secret
from cosmicai.rendezvous.client.tcpunch import tcpunch_pair
from cosmicai.rendezvous.server import RendezvousServer, ServerConfig
from cosmicai.rendezvous.server.logs import configure_logging, log_event

app = typer.Typer(
    help="The rendezvous server: pairs workers (TCPunch and native protocol) for hole punching.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: File descriptors kept for the listeners, the health port, logs and AWS calls.
RESERVED_FDS = 64
_DEFAULTS = ServerConfig()


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar=c.ENV_RENDEZVOUS_HOST, help="Address to listen on.")
    ] = _DEFAULTS.host,
    port: Annotated[
        int, typer.Option(envvar=c.ENV_RENDEZVOUS_PORT, help="Rendezvous port (both protocols).")
    ] = _DEFAULTS.port,
    health_host: Annotated[
        str,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_HEALTH_HOST,
            help="Health address: loopback, for the health check run inside the container. "
            "Exposing it lets anyone read the counters.",
        ),
    ] = _DEFAULTS.health_host,
    health_port: Annotated[
        int,
        typer.Option(envvar=c.ENV_RENDEZVOUS_HEALTH_PORT, help="Port of GET /healthz, /metrics."),
    ] = _DEFAULTS.health_port,
    secret_file: Annotated[
        Path | None,
        typer.Option(envvar=c.ENV_RENDEZVOUS_SECRET_FILE, help="Read the secret from this file."),
    ] = None,
    secret_ssm_parameter: Annotated[
        str | None,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_SECRET_SSM_PARAMETER,
            help="Read the secret from this SSM parameter (SecureString).",
        ),
    ] = None,
    secret_arn: Annotated[
        str | None,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_SECRET_ARN,
            help="Read the secret from this Secrets Manager secret (or SSM parameter ARN).",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            envvar=c.ENV_RENDEZVOUS_NO_AUTH,
            help="Serve native clients without a secret (local use only).",
        ),
    ] = False,
    tcpunch: Annotated[
        bool,
        typer.Option(
            "--tcpunch/--no-tcpunch",
            envvar=c.ENV_RENDEZVOUS_TCPUNCH,
            help="Also serve TCPunch clients (unauthenticated by nature).",
        ),
    ] = _DEFAULTS.tcpunch,
    max_connections: Annotated[
        int, typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_CONNECTIONS, min=1)
    ] = _DEFAULTS.max_connections,
    max_connections_per_address: Annotated[
        int,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_MAX_CONNECTIONS_PER_ADDRESS,
            min=1,
            help="Connections per source IP (a NAT gateway's workers share one).",
        ),
    ] = _DEFAULTS.max_connections_per_address,
    max_unauthenticated: Annotated[
        int,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_MAX_UNAUTHENTICATED,
            min=1,
            help="Connections not yet authenticated (TCPunch ones included); the rest of "
            "--max-connections is kept for authenticated clients.",
        ),
    ] = _DEFAULTS.max_unauthenticated,
    max_unauthenticated_per_address: Annotated[
        int,
        typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_UNAUTHENTICATED_PER_ADDRESS, min=1),
    ] = _DEFAULTS.max_unauthenticated_per_address,
    max_waiting: Annotated[
        int,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_MAX_WAITING,
            min=1,
            help="Waiting entries of authenticated clients (pairs and world ranks).",
        ),
    ] = _DEFAULTS.max_waiting,
    max_tcpunch_waiting: Annotated[
        int,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_MAX_TCPUNCH_WAITING,
            min=1,
            help="Waiting TCPunch clients (a budget apart from authenticated clients').",
        ),
    ] = _DEFAULTS.max_tcpunch_waiting,
    max_tcpunch_waiting_per_address: Annotated[
        int,
        typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_TCPUNCH_WAITING_PER_ADDRESS, min=1),
    ] = _DEFAULTS.max_tcpunch_waiting_per_address,
    max_waiting_per_address: Annotated[
        int,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_MAX_WAITING_PER_ADDRESS,
            min=1,
            help="Waiting entries per source IP (a NAT gateway's workers share one).",
        ),
    ] = _DEFAULTS.max_waiting_per_address,
    max_world_size: Annotated[
        int, typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_WORLD_SIZE, min=1)
    ] = _DEFAULTS.max_world_size,
    max_frame_bytes: Annotated[
        int, typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_FRAME_BYTES, min=64)
    ] = _DEFAULTS.max_frame_bytes,
    hello_timeout: Annotated[
        float,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_HELLO_TIMEOUT, help="Seconds to send a name or preamble."
        ),
    ] = _DEFAULTS.hello_timeout,
    idle_timeout: Annotated[
        float, typer.Option(envvar=c.ENV_RENDEZVOUS_IDLE_TIMEOUT, help="Seconds, native only.")
    ] = _DEFAULTS.idle_timeout,
    tcpunch_wait: Annotated[
        float,
        typer.Option(envvar=c.ENV_RENDEZVOUS_TCPUNCH_WAIT, help="Seconds a TCPunch client waits."),
    ] = _DEFAULTS.tcpunch_wait,
    max_pair_wait: Annotated[
        float, typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_PAIR_WAIT)
    ] = _DEFAULTS.max_pair_wait,
    max_world_deadline: Annotated[
        float, typer.Option(envvar=c.ENV_RENDEZVOUS_MAX_WORLD_DEADLINE)
    ] = _DEFAULTS.max_world_deadline,
    auth_window: Annotated[
        float,
        typer.Option(envvar=c.ENV_RENDEZVOUS_AUTH_WINDOW, help="Allowed clock skew, seconds."),
    ] = _DEFAULTS.auth_window,
    route53_zone_id: Annotated[
        str | None,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_ROUTE53_ZONE_ID,
            help="Hosted zone of the record to point at this server at start.",
        ),
    ] = None,
    route53_record_name: Annotated[
        str | None, typer.Option(envvar=c.ENV_RENDEZVOUS_ROUTE53_RECORD_NAME)
    ] = None,
    route53_ttl: Annotated[int, typer.Option(envvar=c.ENV_RENDEZVOUS_ROUTE53_TTL, min=1)] = 30,
    public_ip: Annotated[
        str | None,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_PUBLIC_IP,
            help="Register this IP instead of asking ECS and EC2 for the task's.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar=c.ENV_RENDEZVOUS_LOG_LEVEL)] = "INFO",
    event_loop: Annotated[
        str,
        typer.Option(
            envvar=c.ENV_RENDEZVOUS_EVENT_LOOP,
            help="auto (uvloop if installed: cosmicai[rendezvous]), uvloop or asyncio.",
        ),
    ] = "auto",
) -> None:
    """Run the rendezvous server until SIGTERM or SIGINT."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}")
    loop_factory = _loop_factory(event_loop)
    if bool(route53_zone_id) != bool(route53_record_name):
        _fail("Route 53 self-registration needs both --route53-zone-id and --route53-record-name")
    configure_logging(log_level)
    try:
        secret = load_secret(
            value=os.environ.get(c.ENV_RENDEZVOUS_SECRET),
            file=secret_file,
            ssm_parameter=secret_ssm_parameter,
            secret_arn=secret_arn,
        )
    except CosmicAIError as exc:
        _fail(str(exc))
    if secret is None and not no_auth:
        _fail(
            f"no rendezvous secret: set {c.ENV_RENDEZVOUS_SECRET}, --secret-file, "
            "--secret-ssm-parameter or --secret-arn, or pass --no-auth to serve without one"
        )
    if secret is not None and no_auth:
        _fail("--no-auth and a secret were both given; choose one")
    fd_limit = raise_open_file_limit()
    if max_connections > fd_limit - RESERVED_FDS:
        log_event(
            logging.WARNING,
            "max_connections_lowered",
            requested=max_connections,
            open_file_limit=fd_limit,
        )
        max_connections = max(1, fd_limit - RESERVED_FDS)
    if max_unauthenticated > max_connections:
        # Keep a quarter for authenticated clients rather than refuse to start.
        max_unauthenticated = max(1, max_connections * 3 // 4)
    try:
        config = ServerConfig(
            host=host,
            port=port,
            health_host=health_host,
            health_port=health_port,
            secret=secret,
            tcpunch=tcpunch,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            max_unauthenticated=max_unauthenticated,
            max_unauthenticated_per_address=max_unauthenticated_per_address,
            max_waiting=max_waiting,
            max_tcpunch_waiting=max_tcpunch_waiting,
            max_tcpunch_waiting_per_address=max_tcpunch_waiting_per_address,
            max_waiting_per_address=max_waiting_per_address,
            max_world_size=max_world_size,
            max_frame_bytes=max_frame_bytes,
            hello_timeout=hello_timeout,
            idle_timeout=idle_timeout,
            tcpunch_wait=tcpunch_wait,
            max_pair_wait=max_pair_wait,
            max_world_deadline=max_world_deadline,
            auth_window=auth_window,
        )
    except CosmicAIError as exc:
        _fail(str(exc))
    registration = None
    if route53_zone_id and route53_record_name:
        registration = (route53_zone_id, route53_record_name, route53_ttl, public_ip)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(config, registration))
    except CosmicAIError as exc:
        log_event(logging.ERROR, "failed", error=str(exc), error_type=type(exc).__name__)
        raise typer.Exit(1) from None
    except OSError as exc:
        log_event(logging.ERROR, "failed", error=str(exc), error_type=type(exc).__name__)
        raise typer.Exit(1) from None


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop roughly doubles how many connections a second one core can serve."""
    if name not in ("auto", "uvloop", "asyncio"):
        _fail(f"--event-loop must be auto, uvloop or asyncio, not {name!r}")
    if name == "asyncio":
        return None
    try:
        import uvloop  # optional: the cosmicai[rendezvous] extra
    except ImportError:
        if name == "uvloop":
            _fail("--event-loop uvloop needs uvloop: pip install 'cosmicai[rendezvous]'")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve(
    config: ServerConfig, registration: tuple[str, str, int, str | None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def request_stop(signum: signal.Signals) -> None:
        received.append(signum.name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    server = RendezvousServer(config)
    await server.start()
    try:
        if registration is not None:
            zone_id, record_name, ttl, public_ip = registration
            # After listening, so the record never points at an address nobody answers on.
            await asyncio.to_thread(
                self_register, zone_id, record_name, ttl=ttl, public_ip=public_ip
            )
        await stop.wait()
        log_event(logging.INFO, "shutdown_requested", signal=received[0])
    finally:
        await server.close()


@app.command()
def healthcheck(
    health_port: Annotated[
        int, typer.Option(envvar=c.ENV_RENDEZVOUS_HEALTH_PORT)
    ] = _DEFAULTS.health_port,
    host: Annotated[str, typer.Option(help="Where the server's health port is.")] = "127.0.0.1",
    timeout: float = 3.0,
) -> None:
    """Exit 0 if the server's /healthz answers 200 (the container's HEALTHCHECK)."""
    url = f"http://{host}:{health_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        _fail(f"{url}: {exc}", 1)
    if status != 200:
        _fail(f"{url} answered {status}", 1)
    typer.echo(f"{url}: ok")


@app.command("tcpunch-pair")
def tcpunch_pair_command(
    name: Annotated[str, typer.Argument(help="Pairing name (1..100 bytes).")],
    host: Annotated[str, typer.Option(envvar=c.ENV_RENDEZVOUS_HOST)] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=c.ENV_RENDEZVOUS_PORT)] = _DEFAULTS.port,
    timeout: float = 30.0,
) -> None:
    """Pair once as a TCPunch client would, and print both public endpoints (smoke test)."""
    try:
        own, peer = asyncio.run(tcpunch_pair(host, port, name.encode(), timeout=timeout))
    except (CosmicAIError, ValueError) as exc:
        _fail(str(exc), 1)
    typer.echo(f"own public endpoint {own}, peer public endpoint {peer}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside the server's own handler
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
