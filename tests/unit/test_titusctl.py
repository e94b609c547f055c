import json
import socket
from pathlib import Path

import pytest

from titusctl.client import EXIT_UNREACHABLE, EXIT_USAGE
from titusctl.commands import job_spec_from_args
from titusctl.main import build_parser, main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spec_from_flags() -> None:
    args = build_parser().parse_args(
        ["job", "submit", "--image", "busybox", "--cmd", "echo 'a b'", "--count", "3", "--env", "A=1", "--retries", "2"]
    )
    spec = job_spec_from_args(args)
    assert spec["container"]["command"] == ["echo", "a b"]
    assert spec["container"]["env"] == {"A": "1"}
    assert spec["batch"] == {"size": 3, "retryPolicy": {"retries": 2}}


def test_service_and_shell() -> None:
    args = build_parser().parse_args(["job", "submit", "--image", "b", "--cmd", "exit 3", "--shell", "--service"])
    spec = job_spec_from_args(args)
    assert spec["service"] == {"desired": 1} and spec["container"]["command"] == ["/bin/sh", "-c", "exit 3"]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["job", "submit"], "give a job file"),
        (["job", "submit", "--image", "b", "--env", "NOVALUE"], "expected NAME=VALUE"),
        (["job", "submit", "/nonexistent/job.json"], "cannot read"),
    ],
)
def test_usage_errors(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--scheduler", f"http://127.0.0.1:{free_port()}", *argv])
    assert e.value.code == EXIT_USAGE
    assert words in capsys.readouterr().err


def test_bad_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "job.json"
    f.write_text("[1,")
    with pytest.raises(SystemExit) as e:
        main(["job", "submit", str(f)])
    assert e.value.code == EXIT_USAGE and "not valid JSON" in capsys.readouterr().err


def test_unreachable_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--scheduler", f"http://127.0.0.1:{free_port()}", "-o", "json", "job", "list"])
    assert e.value.code == EXIT_UNREACHABLE
    assert "cannot reach the scheduler" in capsys.readouterr().err


def test_job_and_task_verbs_against_a_real_scheduler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS, as the cell's admin (client certificate), then with a submitter's bearer token."""
    import subprocess
    import sys
    import time

    import requests

    import titusctl.client

    pki = tmp_path / "pki"
    subprocess.run([sys.executable, "-m", "scheduler.main", "ca", "init", "--pki", str(pki)], check=True,
                   capture_output=True)
    monkeypatch.setattr(titusctl.client, "DEFAULT_PKI", tmp_path / "absent")  # no fallback to the host's cell
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.main", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "s.db"),
         "--pki", str(pki)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 15
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1, verify=str(pki / "ca.crt"))
                break
            except requests.RequestException:
                assert time.time() < deadline, "scheduler did not start"
                time.sleep(0.1)

        errors: list[str] = []

        def run_as(creds: list[str], *argv: str) -> tuple[int, str]:
            with pytest.raises(SystemExit) as e:
                main(["--scheduler", url, "--ca", str(pki / "ca.crt"), *creds, *argv])
            captured = capsys.readouterr()
            errors.append(captured.err)
            return int(e.value.code or 0), captured.out.strip()

        admin = ["--cert", str(pki / "admin.crt"), "--key", str(pki / "admin.key")]

        def run(*argv: str) -> tuple[int, str]:
            return run_as(admin, *argv)

        code, job_id = run("job", "submit", "--image", "busybox", "--cmd", "true", "--count", "2")
        assert code == 0
        code, out = run("-o", "json", "task", "list", "--job", job_id)
        task_id = json.loads(out)["tasks"][0]["id"]
        assert run("task", "describe", task_id)[1].startswith("{")
        assert run("task", "kill", task_id) == (0, f"task {task_id}: Finished")
        assert run("job", "kill", job_id) == (0, f"job {job_id}: Finished")
        assert run("job", "describe", "nope")[0] == 1
        # a submitter token, minted by the admin: its own owner only
        code, token = run("admin", "token", "create", "--role", "submitter", "--name", "bob", "--owner", "bob")
        assert code == 0
        (tmp_path / "bob.token").write_text(token)
        bob = ["--token-file", str(tmp_path / "bob.token")]
        assert run_as(bob, "job", "submit", "--image", "busybox", "--cmd", "true", "--owner", "bob")[0] == 0
        assert run_as(bob, "job", "submit", "--image", "busybox", "--cmd", "true", "--owner", "eve")[0] == 1
        assert "may submit only for owner 'bob'" in errors[-1]
        # no credentials at all: 401, and the message says how to authenticate
        assert run_as([], "job", "list")[0] == 1
        assert "client certificate or a bearer token" in errors[-1]
        code, out = run("admin", "audit")
        assert "operator:bob(submitter) POST /v1/jobs 403" in out
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_run_builds_only_its_nouns_verbs() -> None:
    from titusctl.main import _noun, build_parser

    assert _noun(["--scheduler", "https://x", "-o", "json", "task", "exec", "t", "--", "id"]) == "task"
    assert _noun(["--scheduler=https://x", "admin", "app", "list"]) == "admin"
    assert _noun(["--help"]) is None
    for argv in (["task", "exec", "t1", "--", "id"], ["admin", "app", "grant", "web", "--owner", "a"],
                 ["--ca", "x", "node", "drain", "n1", "--reason", "r"], ["job", "list"]):
        args = build_parser(_noun(argv)).parse_args(argv)
        assert callable(args.fn) and vars(args) == {**vars(build_parser().parse_args(argv)), "fn": args.fn}
