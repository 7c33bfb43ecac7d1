"""Point the server's Route 53 A record at its own public IP, at start.

On ECS Fargate the task learns its private IPv4 (and MAC) from the container metadata endpoint
(``$ECS_CONTAINER_METADATA_URI_V4``), finds its network interface with EC2
DescribeNetworkInterfaces, reads the interface's public IP and UPSERTs the record with a low
TTL, so workers find a replaced task within that TTL. The original deployment edited the
record by hand.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from cosmicai.constants import ENV_ECS_CONTAINER_METADATA_URI_V4
from cosmicai.exceptions import DnsRegistrationError

# A child of the server's logger: its JSON lines carry ``fields`` as top-level keys.
logger = logging.getLogger("cosmicai.rendezvous.aws")

DEFAULT_TTL = 30
METADATA_TIMEOUT = 3.0


def task_network(metadata_uri: str) -> tuple[str, str | None]:
    """(private IPv4, MAC address or None) of this container's awsvpc network interface."""
    try:
        with urllib.request.urlopen(metadata_uri, timeout=METADATA_TIMEOUT) as response:
            metadata = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DnsRegistrationError(
            f"cannot read the ECS container metadata at {metadata_uri}: {exc}"
        ) from exc
    for network in metadata.get("Networks") or []:
        addresses = network.get("IPv4Addresses") or []
        if addresses:
            return str(addresses[0]), network.get("MACAddress")
    raise DnsRegistrationError(
        f"the ECS container metadata at {metadata_uri} lists no IPv4 address under Networks"
    )


def public_ip_of_interface(ec2: Any, private_ip: str, mac: str | None = None) -> str:
    """The public IPv4 of the network interface holding ``private_ip``."""
    # Lazy for cold start: boto3 is slow to import and only an AWS source or call needs it.
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = ec2.describe_network_interfaces(
            Filters=[{"Name": "addresses.private-ip-address", "Values": [private_ip]}]
        )
    except (BotoCoreError, ClientError) as exc:
        raise DnsRegistrationError(
            f"cannot describe the network interface of {private_ip}: {exc}"
        ) from exc
    interfaces = response.get("NetworkInterfaces", [])
    # Private IPs repeat across VPCs; the MAC from the metadata tells this task's interface.
    if mac is not None and len(interfaces) > 1:
        interfaces = [i for i in interfaces if i.get("MacAddress", "").lower() == mac.lower()]
    if len(interfaces) != 1:
        raise DnsRegistrationError(
            f"expected one network interface with private IP {private_ip}, found {len(interfaces)}"
        )
    public_ip = interfaces[0].get("Association", {}).get("PublicIp")
    if not public_ip:
        raise DnsRegistrationError(
            f"network interface {interfaces[0].get('NetworkInterfaceId')} ({private_ip}) has no "
            "public IP: run the task with assignPublicIp ENABLED in a public subnet"
        )
    return str(public_ip)


def upsert_a_record(route53: Any, zone_id: str, record_name: str, ip: str, ttl: int) -> str:
    """UPSERT ``record_name`` A ``ip``; returns the change id."""
    # Lazy for cold start: boto3 is slow to import and only an AWS source or call needs it.
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = route53.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={
                "Comment": "cosmicai rendezvous server self-registration",
                "Changes": [
                    {
                        "Action": "UPSERT",
                        "ResourceRecordSet": {
                            "Name": record_name,
                            "Type": "A",
                            "TTL": ttl,
                            "ResourceRecords": [{"Value": ip}],
                        },
                    }
                ],
            },
        )
    except (BotoCoreError, ClientError) as exc:
        raise DnsRegistrationError(
            f"cannot UPSERT {record_name} A {ip} in hosted zone {zone_id}: {exc}"
        ) from exc
    change_id: str = response["ChangeInfo"]["Id"]
    return change_id


def self_register(
    zone_id: str,
    record_name: str,
    *,
    ttl: int = DEFAULT_TTL,
    public_ip: str | None = None,
    metadata_uri: str | None = None,
    ec2_client: Any = None,
    route53_client: Any = None,
) -> str:
    """Point ``record_name`` at this task's public IP (or at ``public_ip``); returns the IP."""
    if public_ip is None:
        uri = metadata_uri or os.environ.get(ENV_ECS_CONTAINER_METADATA_URI_V4)
        if not uri:
            raise DnsRegistrationError(
                f"{ENV_ECS_CONTAINER_METADATA_URI_V4} is not set (not on ECS?): give the "
                "public IP explicitly to register the record"
            )
        private_ip, mac = task_network(uri)
        if ec2_client is None:
            import boto3  # lazy: see above

            ec2_client = boto3.client("ec2")
        public_ip = public_ip_of_interface(ec2_client, private_ip, mac)
    try:
        ipaddress.IPv4Address(public_ip)
    except ValueError:
        raise DnsRegistrationError(f"{public_ip!r} is not an IPv4 address") from None
    if route53_client is None:
        import boto3  # lazy: see above

        route53_client = boto3.client("route53")
    change_id = upsert_a_record(route53_client, zone_id, record_name, public_ip, ttl)
    fields = {
        "zone_id": zone_id,
        "record": record_name,
        "ip": public_ip,
        "ttl": ttl,
        "change_id": change_id,
    }
    logger.info("dns_registered", extra={"fields": fields})
    return public_ip
