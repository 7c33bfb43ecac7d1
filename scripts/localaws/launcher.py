"""Start LocalStack on loopback, outside a container, with Lambdas in podman containers.

Run with the LocalStack environment's python (scripts/localaws/setup.sh makes it); settings
come from the environment (harness/localaws.py sets them). LocalStack assumes Docker and a
network where it can download things; on a machine with podman and no image registry a few of
its behaviours are changed here, before its main runs. They reach into LocalStack's internals,
which is why setup.sh pins its version (localstack-core 2026.3.0):

- the Docker SDK client talks to podman's Docker API (LocalStack picks its command-line client,
  which needs a ``docker`` binary, whenever it does not run in a container itself);
- a runtime image present locally is not pulled (there is no registry to pull from);
- ports published for a Lambda container bind 127.0.0.1, not every address;
- a container on slirp4netns networking is reached at 127.0.0.1 (through its published port);
- each layer of a function is copied into the container's /opt, as Lambda does (the free
  edition registers layers but does not mount them);
- the Lambda runtime init, which LocalStack downloads on first use, is taken from the file
  ``COSMICAI_LOCALSTACK_INIT`` names when that is set.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

LOG = logging.getLogger("cosmicai.localaws")


def _use_sdk_client() -> None:
    from localstack.utils import docker_utils
    from localstack.utils.container_utils.docker_sdk_client import SdkDockerClient

    docker_utils.DOCKER_CLIENT = SdkDockerClient()


def _pull_only_when_missing() -> None:
    from localstack.utils.container_utils.container_client import NoSuchImage
    from localstack.utils.container_utils.docker_sdk_client import SdkDockerClient

    pull = SdkDockerClient.pull_image

    def pull_image(self: Any, docker_image: str, *args: Any, **kwargs: Any) -> None:
        try:
            self.inspect_image(docker_image, pull=False)
        except NoSuchImage:
            pull(self, docker_image, *args, **kwargs)

    SdkDockerClient.pull_image = pull_image  # type: ignore[method-assign]


def _loopback_ports() -> None:
    from localstack.utils.container_utils import container_client

    init = container_client.PortMappings.__init__

    def __init__(self: Any, bind_host: str | None = None) -> None:
        init(self, bind_host or "127.0.0.1")

    container_client.PortMappings.__init__ = __init__  # type: ignore[method-assign]


def _slirp_address() -> None:
    from localstack.utils.container_utils.docker_sdk_client import SdkDockerClient

    lookup = SdkDockerClient.get_container_ipv4_for_network

    def get_container_ipv4_for_network(
        self: Any, container_name_or_id: str, container_network: str
    ) -> str:
        if container_network == "slirp4netns":
            return "127.0.0.1"
        return str(lookup(self, container_name_or_id, container_network))

    SdkDockerClient.get_container_ipv4_for_network = get_container_ipv4_for_network  # type: ignore[method-assign]


def _layers_into_opt() -> None:
    from localstack.services.lambda_ import hooks

    spec = hooks.start_docker_executor
    run = spec.run

    def run_with_layers(container_config: Any, function_version: Any) -> Any:
        for layer in function_version.config.layers or ():
            code = layer.code
            if code is None:
                continue
            code.prepare_for_execution()
            container_config.copy_folders.append((f"{code.get_unzipped_code_location()}/.", "/opt"))
        return run(container_config, function_version)

    spec.run = run_with_layers


def _runtime_init() -> None:
    source = os.environ.get("COSMICAI_LOCALSTACK_INIT")
    if not source:
        return
    from localstack.packages.api import InstallTarget
    from localstack.services.lambda_.packages import lambda_runtime_package

    installer = lambda_runtime_package.get_installer()
    target = installer._get_install_marker_path(installer._get_install_dir(InstallTarget.VAR_LIBS))
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(source, target)
        os.chmod(target, 0o755)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    _use_sdk_client()
    _pull_only_when_missing()
    _loopback_ports()
    _slirp_address()
    _layers_into_opt()
    _runtime_init()
    from localstack.runtime.main import main as localstack_main

    sys.exit(localstack_main())


if __name__ == "__main__":
    main()
