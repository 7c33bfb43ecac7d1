"""AWS boundaries with moto: the deployment secret from SSM / Secrets Manager, and Route 53
self-registration from the ECS task metadata, in-process and through the real server process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosmicai.constants import ENV_ECS_CONTAINER_METADATA_URI_V4
from cosmicai.exceptions import DnsRegistrationError, RendezvousConfigError
from cosmicai.rendezvous.aws.route53 import self_register
from cosmicai.rendezvous.aws.secret import load_secret
from harness.ecs_metadata import container_metadata_endpoint, make_task_interface
from harness.rendezvous import ServerProcess, async_test

pytestmark = pytest.mark.timeout(60)

RECORD = "rendezvous.cosmicai.example.org."


@pytest.fixture
def aws(aws_env: None) -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


def a_records(zone_id: str) -> dict[str, Any]:
    import boto3

    sets = boto3.client("route53").list_resource_record_sets(HostedZoneId=zone_id)
    return {s["Name"]: s for s in sets["ResourceRecordSets"] if s["Type"] == "A"}


def make_zone() -> str:
    import boto3

    zone = boto3.client("route53").create_hosted_zone(
        Name="cosmicai.example.org", CallerReference="rendezvous-test"
    )
    zone_id: str = zone["HostedZone"]["Id"].split("/")[-1]
    return zone_id


# -- the secret -------------------------------------------------------------------------


def test_secret_from_ssm_parameter(aws: None) -> None:
    import boto3

    boto3.client("ssm").put_parameter(
        Name="/cosmicai/rendezvous", Value="s" * 32, Type="SecureString"
    )
    assert load_secret(ssm_parameter="/cosmicai/rendezvous") == b"s" * 32


def test_secret_from_secrets_manager_and_ssm_arns(aws: None) -> None:
    import boto3

    arn = boto3.client("secretsmanager").create_secret(Name="rv", SecretString="m" * 40)["ARN"]
    assert load_secret(secret_arn=arn) == b"m" * 40
    boto3.client("ssm").put_parameter(Name="rv-param", Value="p" * 20, Type="SecureString")
    parameter_arn = "arn:aws:ssm:us-east-1:123456789012:parameter/rv-param"
    assert load_secret(secret_arn=parameter_arn) == b"p" * 20


def test_missing_secret_is_named(aws: None) -> None:
    with pytest.raises(RendezvousConfigError, match="cannot read SSM parameter /nope"):
        load_secret(ssm_parameter="/nope")


def test_secret_file_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("f" * 24 + "\n")
    assert load_secret(file=path) == b"f" * 24


def test_one_secret_source_only(tmp_path: Path) -> None:
    with pytest.raises(RendezvousConfigError, match="not secret and secret file"):
        load_secret(value="v" * 20, file=tmp_path / "x")


# -- Route 53 ---------------------------------------------------------------------------


def test_self_registration_points_the_record_at_the_tasks_public_ip(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    # GIVEN a task ENI with a public IP, the task's metadata endpoint, and a hosted zone
    private_ip, mac, public_ip = make_task_interface(boto3.client("ec2"))
    zone_id = make_zone()
    with container_metadata_endpoint(private_ip, mac) as uri:
        monkeypatch.setenv(ENV_ECS_CONTAINER_METADATA_URI_V4, uri)
        # WHEN the server registers itself
        registered = self_register(zone_id, RECORD, ttl=15)
    # THEN the A record holds the public IP with the low TTL
    assert registered == public_ip
    record = a_records(zone_id)[RECORD]
    assert record["TTL"] == 15
    assert record["ResourceRecords"] == [{"Value": public_ip}]


def test_interface_without_public_ip_is_explained(aws: None) -> None:
    import boto3

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.9.1.9")
    with (
        container_metadata_endpoint("10.9.1.9", eni["NetworkInterface"]["MacAddress"]) as uri,
        pytest.raises(DnsRegistrationError, match="has no public IP: run the task with"),
    ):
        self_register(make_zone(), RECORD, metadata_uri=uri)


def test_unreachable_metadata_endpoint_is_named(aws: None) -> None:
    with pytest.raises(DnsRegistrationError, match="cannot read the ECS container metadata"):
        self_register(make_zone(), RECORD, metadata_uri="http://127.0.0.1:1/v4/x")


def test_outside_ecs_an_explicit_ip_is_needed(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ECS_CONTAINER_METADATA_URI_V4, raising=False)
    zone_id = make_zone()
    with pytest.raises(DnsRegistrationError, match="not on ECS"):
        self_register(zone_id, RECORD)
    assert self_register(zone_id, RECORD, public_ip="198.51.100.4") == "198.51.100.4"
    assert a_records(zone_id)[RECORD]["ResourceRecords"] == [{"Value": "198.51.100.4"}]


@pytest.fixture
def moto_endpoint(aws_env: None) -> Iterator[str]:
    """moto as a server on loopback, for the server process (it cannot share our mock)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.slow
@async_test
async def test_serve_registers_its_record_at_start(moto_endpoint: str) -> None:
    import boto3

    # GIVEN moto holding the task's ENI and the zone, and the task's metadata endpoint
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint)
    route53 = boto3.client("route53", endpoint_url=moto_endpoint)
    private_ip, mac, public_ip = make_task_interface(ec2)
    zone = route53.create_hosted_zone(Name="cosmicai.example.org", CallerReference="serve")
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    with container_metadata_endpoint(private_ip, mac) as uri:
        # WHEN the server process starts with Route 53 self-registration
        server = await ServerProcess.start(
            "--route53-zone-id", zone_id, "--route53-record-name", RECORD,
            env={
                ENV_ECS_CONTAINER_METADATA_URI_V4: uri,
                "AWS_ENDPOINT_URL": moto_endpoint,
                **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
            },
        )  # fmt: skip
        await server.wait_for("listening")
        registered = await server.wait_for("dns_registered")
    # THEN the record points at the task's public IP, and the server still stops cleanly
    assert registered["ip"] == public_ip
    sets = await asyncio.to_thread(route53.list_resource_record_sets, HostedZoneId=zone_id)
    values = [s["ResourceRecords"] for s in sets["ResourceRecordSets"] if s["Name"] == RECORD]
    assert values == [[{"Value": public_ip}]]
    assert await server.stop(signal.SIGTERM) == 0
