"""The API fuzzer (schemathesis) against a real scheduler over TLS, as an admin with a bearer token
(so its authentication checks mean something: without the header, or with a bad one, it must get
401). Every check runs except `positive_data_acceptance`, which expects every schema-valid body to
be accepted; three refusals are semantic and not expressible in the schema: a CSR must be a signed
certificate request, a job needs exactly one of `batch`/`service`, and a token's required fields
depend on its kind (docs/trust.md). The run must report no server error and no schema mismatch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import free_port, wait_for

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    def trust(*argv: str) -> str:
        return subprocess.run([sys.executable, "-m", "scheduler.main", *argv], check=True, capture_output=True,
                              text=True, timeout=60).stdout.strip()

    pki, db = tmp_path / "pki", tmp_path / "s.db"
    trust("ca", "init", "--pki", str(pki))
    token = trust("token", "create", "--db", str(db), "--role", "admin", "--name", "fuzzer", "--ttl", "1h")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(tmp_path / "scheduler.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}", "--db", str(db),
                             "--pki", str(pki)], stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=2, verify=str(pki / "ca.crt")).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, 15, "scheduler /healthz")
        yield url, pki, token
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.mark.skipif(not Path(SCHEMATHESIS).exists(), reason="schemathesis not installed (pip install schemathesis)")
def test_fuzzer_finds_no_server_error_and_no_schema_mismatch(scheduler: tuple[str, Path, str]) -> None:
    url, pki, token = scheduler
    proc = subprocess.run(
        [SCHEMATHESIS, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
         "run", f"{url}/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--tls-verify", str(pki / "ca.crt"), "-H", f"Authorization: Bearer {token}", "--max-examples", "25",
         "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout
