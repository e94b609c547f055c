"""titusctl's HTTP side: `Api` (the scheduler), `ask_agent` and `agent_health` (the local agent),
the default URLs, `CliError` and the exit codes.

Exit codes scripts can rely on: 0 ok · 1 the request was refused or the object not found ·
2 bad usage or input file · 3 the scheduler cannot be reached · 4 `--wait` ended with a task not normal.
Every failure reaches `main` as a `CliError` carrying one of them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import requests

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TASK_NOT_NORMAL = 0, 1, 2, 3, 4
DEFAULT_URL = os.environ.get("TITUS_SCHEDULER", "https://127.0.0.1:7100")
# On the scheduler's host: the cell's files (`titus-scheduler ca init`), used when nothing else is given.
DEFAULT_PKI = Path(os.environ.get("TITUS_PKI", "/var/lib/titus/pki"))
DEFAULT_AGENT_URL = os.environ.get("TITUS_AGENT", "http://127.0.0.1:7101")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Credentials(NamedTuple):
    """How titusctl proves who it is (docs/trust.md): the cell CA to verify the scheduler, and a
    client certificate (cert + key) or a bearer token. Flags, else TITUS_CA, TITUS_CERT, TITUS_KEY,
    TITUS_TOKEN (the token itself) or TITUS_TOKEN_FILE; else, on the scheduler's host, the cell's
    ca.crt and admin.crt/admin.key in TITUS_PKI (default /var/lib/titus/pki) when readable."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Credentials:
        def path(flag: str, env: str) -> Path | None:
            value = getattr(args, flag, None) or os.environ.get(env)
            return Path(value) if value else None

        token = os.environ.get("TITUS_TOKEN")
        token_file = path("token_file", "TITUS_TOKEN_FILE")
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as e:
                raise CliError(f"token file {token_file}: {e.strerror or e}", EXIT_USAGE) from None
        creds = cls(path("ca", "TITUS_CA"), path("cert", "TITUS_CERT"), path("key", "TITUS_KEY"), token)
        if creds.ca is None and os.access(DEFAULT_PKI / "ca.crt", os.R_OK):
            creds = cls(DEFAULT_PKI / "ca.crt", creds.cert, creds.key, creds.token)
        if creds.cert is None and creds.token is None and os.access(DEFAULT_PKI / "admin.key", os.R_OK):
            creds = cls(creds.ca, DEFAULT_PKI / "admin.crt", DEFAULT_PKI / "admin.key", None)
        if (creds.cert is None) != (creds.key is None):
            raise CliError("a client certificate needs both --cert and --key (TITUS_CERT, TITUS_KEY)", EXIT_USAGE)
        return creds


class Api:
    """The scheduler's JSON API over requests. `requests` is imported on the first call, not at
    start-up: `titusctl task exec` never needs it (its start-up is part of the exec's latency)."""

    def __init__(self, base_url: str, timeout: float = 30.0, credentials: Credentials | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        creds = credentials or Credentials()
        self.credentials = creds
        # Given per request: a session's `verify` loses to REQUESTS_CA_BUNDLE in the environment.
        self.verify: str | bool = str(creds.ca) if creds.ca is not None else True
        self._http: requests.Session | None = None

    @property
    def http(self) -> requests.Session:
        if self._http is None:
            import requests

            self._http = requests.Session()
            if self.credentials.cert is not None and self.credentials.key is not None:
                self._http.cert = (str(self.credentials.cert), str(self.credentials.key))
            if self.credentials.token:
                self._http.headers["Authorization"] = f"Bearer {self.credentials.token}"
        return self._http

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        import requests

        try:
            r = self.http.request(method, self.base + path, json=body, timeout=self.timeout, headers=headers,
                                  verify=self.verify)
        except requests.exceptions.SSLError as e:
            raise CliError(
                f"TLS with the scheduler at {self.base} failed: {e}; is --ca (TITUS_CA) the cell CA, and the "
                "client certificate valid and not expired?", EXIT_UNREACHABLE,
            ) from None
        except requests.RequestException as e:
            raise CliError(
                f"cannot reach the scheduler at {self.base} ({e.__class__.__name__}); is titus-scheduler "
                "running? (set --scheduler or TITUS_SCHEDULER)",
                EXIT_UNREACHABLE,
            ) from None
        try:
            doc = r.json()
        except ValueError:
            raise CliError(f"{method} {path}: HTTP {r.status_code} with a non-JSON answer", EXIT_UNREACHABLE) from None
        if r.status_code >= 400:
            err = doc.get("error", {}) if isinstance(doc, dict) else {}
            lines = [f"error: {err.get('message', f'HTTP {r.status_code}')}"]
            if r.status_code == 401:
                lines.append("  (authenticate with --cert/--key or --token-file; TITUS_CERT/TITUS_KEY, TITUS_TOKEN)")
            for p in err.get("problems", []):
                lines.append(f"  {p.get('field') or '(job)'}: {p.get('message')}")
            raise CliError("\n".join(lines), EXIT_REFUSED)
        return doc


def ask_agent(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """A host diagnostic: asked of the local agent (`--agent`), never through the scheduler."""
    import requests

    url = args.agent.rstrip("/") + path
    try:
        r = requests.get(url, timeout=10)
        doc = r.json()
    except requests.RequestException as e:
        raise CliError(f"cannot reach the agent at {args.agent} ({e.__class__.__name__}); set --agent", EXIT_UNREACHABLE) from None
    except ValueError:
        raise CliError(f"GET {url}: HTTP {r.status_code} with a non-JSON answer", EXIT_UNREACHABLE) from None
    if r.status_code >= 400:
        raise CliError(f"error: {doc.get('error', {}).get('message', f'HTTP {r.status_code}')}", EXIT_REFUSED)
    return dict(doc)


def agent_health(agent_url: str) -> dict[str, Any]:
    """The local agent's /healthz, or why it could not be had; never raises (only meaningful on
    the host itself, so an absent agent is a fact to report, not an error)."""
    import requests

    url = agent_url.rstrip("/")
    agent: dict[str, Any] = {"url": url, "reachable": False}
    try:
        r = requests.get(url + "/healthz", timeout=3)
        agent.update(reachable=True, healthz=r.json())
    except (requests.RequestException, ValueError) as e:
        agent["error"] = e.__class__.__name__
        return agent
    try:  # the host health checks (absent on an agent without them: 404)
        h = requests.get(url + "/v1/health", timeout=3)
        if h.status_code == 200:
            agent["health"] = h.json()
    except (requests.RequestException, ValueError):
        pass
    return agent
