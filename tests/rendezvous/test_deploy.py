"""The container image and its ECS Fargate template, checked without Docker or AWS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosmicai import constants

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "rendezvous" / "Dockerfile"
TEMPLATE = ROOT / "rendezvous" / "template.yaml"


def load_template() -> dict[str, Any]:
    class CfnLoader(yaml.SafeLoader):
        pass

    def tagged(loader: Any, tag_suffix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {tag_suffix: value}

    CfnLoader.add_multi_constructor("!", tagged)
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    return template


@pytest.mark.slow
def test_template_passes_cfn_lint() -> None:
    cfnlint_api = pytest.importorskip(
        "cfnlint.api", reason="cfn-lint is not installed (pip install -e '.[dev]')"
    )
    matches = cfnlint_api.lint(
        TEMPLATE.read_text(),
        config=cfnlint_api.ManualArgs(regions=["us-east-1"], include_checks=["I"]),
    )
    assert [str(m) for m in matches] == []


def test_only_the_rendezvous_port_is_public_and_tcpunch_is_off_by_default() -> None:
    # The health port listens on the task's loopback (its health check runs in the container):
    # open to the world, idle sockets could starve it and get the task replaced.
    template = load_template()
    resources = template["Resources"]
    ingress = resources["SecurityGroup"]["Properties"]["SecurityGroupIngress"]
    opened = {(rule["FromPort"]["Ref"], rule["ToPort"]["Ref"]) for rule in ingress}
    assert opened == {("RendezvousPort", "RendezvousPort")}
    assert all(rule["IpProtocol"] == "tcp" for rule in ingress)
    container = resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert [m["ContainerPort"] for m in container["PortMappings"]] == [{"Ref": "RendezvousPort"}]
    environment = {env["Name"]: env["Value"] for env in container["Environment"]}
    assert environment[constants.ENV_RENDEZVOUS_HEALTH_HOST] == "127.0.0.1"
    assert template["Parameters"]["EnableTCPunch"]["Default"] == "false"


def test_task_gets_a_public_ip_the_secret_and_only_known_settings() -> None:
    resources = load_template()["Resources"]
    network = resources["Service"]["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "ENABLED"
    container = resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["Secrets"] == [
        {"Name": constants.ENV_RENDEZVOUS_SECRET, "ValueFrom": {"Ref": "Secret"}}
    ]
    known = {value for name, value in vars(constants).items() if name.startswith("ENV_")}
    assert {env["Name"] for env in container["Environment"]} <= known
    assert container["HealthCheck"]["Command"][1:] == healthcheck_command()


def test_task_role_may_only_upsert_its_zone_and_describe_interfaces() -> None:
    resources = load_template()["Resources"]
    statements = resources["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    actions = [statements[0]["Action"], statements[1]["If"][1]["Action"]]
    assert actions == ["ec2:DescribeNetworkInterfaces", "route53:ChangeResourceRecordSets"]
    zone_arn = statements[1]["If"][1]["Resource"]["Sub"]
    assert zone_arn.endswith(":route53:::hostedzone/${HostedZoneId}")


def healthcheck_command() -> list[str]:
    match = re.search(r"HEALTHCHECK .*?CMD \[(.*?)\]", DOCKERFILE.read_text(), re.DOTALL)
    assert match, "the Dockerfile has a HEALTHCHECK"
    return [part.strip().strip('"') for part in match.group(1).split(",")]


def test_dockerfile_runs_the_server_as_a_non_root_user_with_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.12-slim\s*$", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0:", "0")), user
    assert healthcheck_command() == ["python", "-m", "cosmicai.rendezvous", "healthcheck"]
    exposed = re.findall(r"^EXPOSE (.*)$", text, re.MULTILINE)
    # The health port listens on the container's loopback: nothing to expose.
    assert exposed == [f"{constants.DEFAULT_RENDEZVOUS_PORT}/tcp"]


def test_dockerfile_copies_only_what_exists_and_its_ignore_file_keeps() -> None:
    # The build context is the repository root; every COPY source must be there and kept.
    text = DOCKERFILE.read_text()
    sources = [
        source
        for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.MULTILINE)
        for source in line.split()[:-1]
    ]
    assert sources == ["pyproject.toml", "README.md", "LICENSE", "src"]
    kept = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert f"!{source}" in kept, source
