"""A small IMDSv2 server for one simulated instance: tokens required (401 without), TTL checked
(400), PUT with X-Forwarded-For refused (403), unknown paths 404. Its answers come from moto's
DescribeInstances/DescribeNetworkInterfaces at request time, so attached ENIs appear in
`network/interfaces/macs/` as on EC2. The identity document is laid out as EC2's (its pendingTime
is moto's LaunchTime) and, given a `signer`, `dynamic/instance-identity/signature` is its real RSA
signature (tests/ec2sim/iid.py)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ec2sim.iid import IidAuthority, identity_document


class FakeImds:
    def __init__(self, client: Any, instance_id: str, account_id: str = "123456789012",
                 host: str = "127.0.0.1", role: str | None = None, signer: IidAuthority | None = None) -> None:
        self.client = client
        # Signs the identity document (`dynamic/instance-identity/signature`); None: no signature served.
        self.signer = signer
        self.role = role  # the instance's IAM role (None: it has none)
        self.instance_id = instance_id
        self.account_id = account_id
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                imds.requests.append(("PUT", self.path))
                if self.path != "/latest/api/token":
                    return self._send(404)
                if self.headers.get("X-Forwarded-For"):
                    return self._send(403)
                try:
                    ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
                except ValueError:
                    return self._send(400)
                if not 1 <= ttl <= 21600:
                    return self._send(400)
                token = secrets.token_urlsafe(24)
                imds.tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                imds.requests.append(("GET", self.path))
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    return self._send(401)
                answer = imds.answer(self.path.removeprefix("/latest/"))
                self._send(404) if answer is None else self._send(200, answer)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeImds:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _instance(self) -> dict[str, Any]:
        doc = self.client.describe_instances(InstanceIds=[self.instance_id])
        return dict(doc["Reservations"][0]["Instances"][0])

    def _enis(self) -> list[dict[str, Any]]:
        doc = self.client.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [self.instance_id]}])
        return [dict(e) for e in doc["NetworkInterfaces"]]

    def answer(self, path: str) -> str | None:
        creds = "meta-data/iam/security-credentials/"
        if path.startswith(creds):
            if self.role is None:
                return None
            if path == creds:
                return self.role
            return json.dumps({"Code": "Success", "AccessKeyId": "ASIAFAKE", "SecretAccessKey": "x", "Token": "t",
                               "Expiration": "2099-01-01T00:00:00Z"}) if path == creds + self.role else None
        inst = self._instance()
        az = inst["Placement"]["AvailabilityZone"]
        enis = {e["MacAddress"].lower(): e for e in self._enis()}
        primary = next((e for e in enis.values() if e["Attachment"]["DeviceIndex"] == 0), None)
        if path in ("dynamic/instance-identity/document", "dynamic/instance-identity/signature"):
            launched = inst.get("LaunchTime")
            document = identity_document(
                self.instance_id, region=az[:-1], account=self.account_id, instance_type=inst["InstanceType"],
                private_ip=inst["PrivateIpAddress"], pending=launched if isinstance(launched, dt.datetime) else None)
            if path.endswith("/document"):
                return document
            return self.signer.sign(document) if self.signer is not None else None
        if path == "meta-data/mac":
            return primary["MacAddress"].lower() if primary else None
        if path == "meta-data/network/interfaces/macs/":
            return "\n".join(f"{m}/" for m in enis)
        prefix = "meta-data/network/interfaces/macs/"
        if path.startswith(prefix):
            mac, _, key = path[len(prefix):].partition("/")
            eni = enis.get(mac)
            if eni is None:
                return None
            return {"vpc-id": eni["VpcId"], "subnet-id": eni["SubnetId"], "interface-id": eni["NetworkInterfaceId"],
                    "device-number": str(eni["Attachment"]["DeviceIndex"])}.get(key)
        if path == "meta-data/instance-id":
            return self.instance_id
        return None
