"""The local AWS of the end-to-end tests: podman, LocalStack on loopback, SAM CLI.

``scripts/localaws/setup.sh`` installs and builds what is missing (cached under
``.localaws/``); this module starts podman's Docker API and a fresh LocalStack for a test
session, deploys the application with the commands a user runs, and stops everything at the
end. Whatever cannot be brought up raises :class:`Unavailable`, which the fixtures turn into a
skip naming the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "localaws" / "setup.sh"
LAUNCHER = REPO / "scripts" / "localaws" / "launcher.py"
REGION = "us-east-1"
#: LocalStack's fixed test account; any key pair is accepted.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
INIT_ENV = "COSMICAI_LOCALSTACK_INIT"
#: Where the prebuilt runtime init may be found beside the repository (team machines).
INIT_RELATIVE = Path("shared/tools/localstack-lambda-init/init")


class Unavailable(Exception):
    """A piece of the local AWS cannot run on this machine (the reason is the message)."""


def work_dir() -> Path:
    return Path(os.environ.get("COSMICAI_LOCALAWS_DIR", REPO / ".localaws"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_setup(timeout_s: float = 1800) -> dict[str, str]:
    """Run setup.sh; the variables of the env.sh it writes."""
    if sys.platform != "linux":
        raise Unavailable("the local AWS runs on Linux only")
    if not shutil.which("bash") or not shutil.which("flock"):
        raise Unavailable("setup needs bash and flock")
    try:
        done = subprocess.run(
            ["bash", str(SETUP)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "COSMICAI_LOCALAWS_DIR": str(work_dir())},
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"setup.sh did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no output)"]
        raise Unavailable(f"setup.sh failed ({done.returncode}): {lines[-1]}")
    env_file = Path(done.stdout.strip().splitlines()[-1])
    variables: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        variables[name] = value.strip('"')
    return variables


def find_runtime_init() -> Path | None:
    """LocalStack's Lambda runtime init: the file COSMICAI_LOCALSTACK_INIT names, else a
    prebuilt copy beside the repository; None lets LocalStack download its own."""
    named = os.environ.get(INIT_ENV)
    if named:
        if not Path(named).is_file():
            raise Unavailable(f"{INIT_ENV}={named} is not a file")
        return Path(named)
    for parent in REPO.parents:
        candidate = parent / INIT_RELATIVE
        if candidate.is_file():
            return candidate
    return None


def require_runtime_init() -> None:
    """Lambda functions can run in LocalStack only with its runtime init: a local copy, or
    GitHub reachable for LocalStack to download one."""
    if find_runtime_init() is not None:
        return
    try:
        with urllib.request.urlopen("https://github.com", timeout=10):
            return
    except OSError:
        raise Unavailable(
            f"LocalStack cannot download its Lambda runtime init (github.com unreachable) and "
            f"{INIT_ENV} names no local copy"
        ) from None


def find_sam() -> str:
    for candidate in (
        os.environ.get("COSMICAI_SAM"),
        str(REPO / ".venv-sam" / "bin" / "sam"),
        shutil.which("sam"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise Unavailable("aws-sam-cli not found: `make venv` installs it into .venv-sam")


def _wait(predicate: Any, timeout_s: float, what: str, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(0.5)
    raise Unavailable(f"{what} not ready after {timeout_s:.0f} s")


def _stop(process: subprocess.Popen[Any] | None, timeout_s: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class LocalAWS:
    """podman's Docker API and LocalStack, for one test session."""

    setup_env: dict[str, str]
    work: Path = field(default_factory=work_dir)
    port: int = 0
    podman: subprocess.Popen[bytes] | None = None
    localstack: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _lock: Any = None  # the open lock file while this session owns the work directory

    @property
    def socket_path(self) -> Path:
        return self.work / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def podman_env(self) -> dict[str, str]:
        keys = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF")
        return {**os.environ, **{k: self.setup_env[k] for k in keys}}

    def aws_env(self) -> dict[str, str]:
        """What a subprocess needs to talk to this LocalStack as if it were AWS."""
        env = {**os.environ, **CREDENTIALS}
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            DOCKER_HOST=self.docker_host,
            SAM_CLI_TELEMETRY="0",
        )
        return env

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def podman_cmd(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=self.podman_env(),
            timeout=timeout_s,
        )

    def remove_containers(self) -> None:
        """Containers LocalStack or the tests left (only in this work dir's own storage)."""
        listed = self.podman_cmd("ps", "-a", "--format", "{{.Names}}", timeout_s=60)
        names = [
            n
            for n in listed.stdout.split()
            if n.startswith(("localstack-", "cosmicai-e2e-")) or "_" in n
        ]
        if names:
            self.podman_cmd("rm", "-f", "-t", "2", *names, timeout_s=120)

    def _lock_session(self) -> None:
        import fcntl

        lock = (self.work / ".session.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Unavailable(f"another end-to-end session is using {self.work}") from None
        self._lock = lock

    def _end_strays(self) -> None:
        """Stop what a session that was killed left running (its pids are in a file)."""
        pids = self.work / "session.pids"
        if not pids.exists():
            return
        for pid in map(int, pids.read_text().split()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.work).encode() in cmdline or str(LAUNCHER).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        pids.unlink()

    def _record_pids(self) -> None:
        running = [p.pid for p in (self.podman, self.localstack) if p is not None]
        (self.work / "session.pids").write_text(" ".join(map(str, running)))

    def start(self) -> None:
        t0 = time.monotonic()
        self._lock_session()
        self._end_strays()
        self.socket_path.unlink(missing_ok=True)
        self.podman = subprocess.Popen(
            ["podman", "system", "service", "--time=0", self.docker_host],
            env=self.podman_env(),
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "podman-service.log").open("wb"),
            start_new_session=True,
        )
        self._record_pids()
        _wait(self._podman_answers, 60, "podman system service", self.podman)
        self.remove_containers()
        self._start_localstack()
        self.timings["start_s"] = time.monotonic() - t0

    def _podman_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.")

    def _start_localstack(self) -> None:
        # A fresh state every session: nothing deployed by an earlier run is seen.
        state = self.work / "state"
        shutil.rmtree(state, ignore_errors=True)
        for sub in ("fs", "volume", "tmp"):
            (state / sub).mkdir(parents=True)
        self.port = free_port()
        env = {
            **self.podman_env(),
            "OVERRIDE_IN_DOCKER": "0",
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "DNS_ADDRESS": "0",
            "FILESYSTEM_ROOT": str(state / "fs"),
            "LOCALSTACK_VOLUME_DIR": str(state / "volume"),
            "TMPDIR": str(state / "tmp"),
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "DOCKER_HOST": self.docker_host,
            "LAMBDA_RUNTIME_IMAGE_MAPPING": json.dumps(
                {"python3.12": self.setup_env["COSMICAI_LOCALAWS_LAMBDA_IMAGE"]}
            ),
            "LAMBDA_DOCKER_NETWORK": "slirp4netns",
            "HOSTNAME_FROM_LAMBDA": "10.0.2.2",
            "LAMBDA_DEV_PORT_EXPOSE": "1",
            "LAMBDA_IGNORE_ARCHITECTURE": "1",
            # A cold container copies both layers in (~170 MB): give it time on a busy machine.
            "LAMBDA_RUNTIME_ENVIRONMENT_TIMEOUT": "180",
        }
        init = find_runtime_init()
        if init is not None:
            env[INIT_ENV] = str(init)
        self.localstack = subprocess.Popen(
            [self.setup_env["COSMICAI_LOCALAWS_LOCALSTACK_PYTHON"], str(LAUNCHER)],
            env=env,
            stdout=(self.work / "localstack.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=state,
        )
        self._record_pids()
        _wait(self._localstack_ready, 180, "LocalStack", self.localstack)

    def _localstack_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=5) as r:
            return bool(r.status == 200)

    def stop(self) -> None:
        if self._lock is None:  # another session owns the work directory: leave it alone
            return
        _stop(self.localstack)
        with contextlib.suppress(Exception):
            self.remove_containers()
        _stop(self.podman)
        self.socket_path.unlink(missing_ok=True)
        (self.work / "session.pids").unlink(missing_ok=True)
        self._lock.close()
        self._lock = None

    def log_tail(self, lines: int = 40) -> str:
        path = self.work / "localstack.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the built template, and what LocalStack needs changed in it -------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !Sub, !GetAtt ...)."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        return {"Fn::GetAtt": value.split(".", 1)}
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)
    return loaded


#: Every change the harness makes to the built template before deploying it to LocalStack
#: (the README's "what differs" section lists the same).
ADAPTATIONS = (
    "DefinitionSubstitutions: Number parameters are passed through Fn::Join (LocalStack's "
    "CloudFormation turns a Ref to a Number into an integer, which its state machine "
    "provider cannot substitute)",
    "ToleratedFailurePercentage is substituted as a decimal (LocalStack's ASL parser rejects "
    "an integer there)",
)


def adapt_for_localstack(built: Path) -> Path:
    """Write template.localstack.json beside the built template, with :data:`ADAPTATIONS`."""
    template = load_template(built / "template.yaml")
    machine = template["Resources"]["PipelineStateMachine"]["Properties"]
    subs = machine["DefinitionSubstitutions"]
    subs["MaxConcurrency"] = {"Fn::Join": ["", [{"Ref": "MaxConcurrency"}]]}
    subs["ToleratedFailurePercentage"] = {
        "Fn::Join": ["", [{"Ref": "ToleratedFailurePercentage"}, ".0"]]
    }
    out = built / "template.localstack.json"
    out.write_text(json.dumps(template, indent=1))
    return out


class Relay:
    """TCP relay from an address podman's bridge network reaches to a loopback port.

    ``sam local invoke`` puts its containers on podman's default bridge (it cannot ask for
    slirp4netns), from where the host's loopback, and so LocalStack, is out of reach. The
    relay listens on the bridge's gateway address only (IP_FREEBIND: the bridge exists only
    while a container is attached to it)."""

    def __init__(self, listen_host: str, target_port: int) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
        self._server.bind((listen_host, 0))
        self._server.listen(64)
        self.host = listen_host
        self.port: int = self._server.getsockname()[1]
        self._target = ("127.0.0.1", target_port)
        self._closed = False
        import threading

        self._threading = threading
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._server.close()


if __name__ == "__main__":
    # `python -m harness.localaws adapt .aws-sam/build`: the harness's template adaptations,
    # for deploying to LocalStack by hand (docs/local-aws.md).
    if len(sys.argv) != 3 or sys.argv[1] != "adapt":
        sys.exit("usage: python -m harness.localaws adapt BUILD_DIR")
    print(adapt_for_localstack(Path(sys.argv[2])))
