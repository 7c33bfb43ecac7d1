"""The OS/container boundary for the AWS tests: an ECS container metadata endpoint on
loopback (ECS serves it to every task; here a tiny HTTP server does). AWS itself is moto."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def container_metadata_endpoint(private_ip: str, mac: str) -> Iterator[str]:
    """Serve the container metadata v4 document of an awsvpc task; yields the URI that ECS
    would put in ECS_CONTAINER_METADATA_URI_V4."""
    document: dict[str, Any] = {
        "DockerId": "ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66",
        "Name": "rendezvous",
        "Networks": [
            {
                "NetworkMode": "awsvpc",
                "IPv4Addresses": [private_ip],
                "AttachmentIndex": 0,
                "MACAddress": mac,
                "IPv4SubnetCIDRBlock": "10.0.1.0/24",
                "PrivateDNSName": f"ip-{private_ip.replace('.', '-')}.ec2.internal",
            }
        ],
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/v4/task-container":
                self.send_error(404)
                return
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v4/task-container"
    finally:
        server.shutdown()
        server.server_close()


def make_task_interface(ec2: Any) -> tuple[str, str, str]:
    """A Fargate-like ENI in a public subnet with a public IP: (private IP, MAC, public IP)."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.0.1.25")
    interface = eni["NetworkInterface"]
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(
        AllocationId=allocation["AllocationId"],
        NetworkInterfaceId=interface["NetworkInterfaceId"],
    )
    return interface["PrivateIpAddress"], interface["MacAddress"], allocation["PublicIp"]
