"""Journal log signals against a real systemd-journald: started in a private mount namespace (its
own tmpfs /run/systemd, /run/log and /var/log/journal, kernel log reading off), so the host's state
is untouched; dockerd-tagged lines written with systemd-cat reach the rule engine through
systemd-python's reader, other identifiers do not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

JOURNALD = Path("/lib/systemd/systemd-journald")

SCRIPT = textwrap.dedent("""
    import asyncio, json, os, subprocess, sys, time
    from pathlib import Path
    conf = Path(sys.argv[1])
    for where in ("/run/systemd", "/run/log", "/var/log/journal"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", where], check=True)
    subprocess.run(["mount", "--bind", str(conf), "/etc/systemd/journald.conf"], check=True)
    os.makedirs("/run/systemd/journal", exist_ok=True)
    journald = subprocess.Popen([sys.argv[2]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not Path("/run/systemd/journal/socket").exists():
            assert time.monotonic() < deadline, "journald did not start"
            time.sleep(0.05)
        from health.journal import JournalReader
        from health.logsignal import SHIPPED_JOURNAL_RULES, LogSignals, load_rules

        async def main():
            rules = load_rules(SHIPPED_JOURNAL_RULES)
            signals = LogSignals(rules, name="journal-log")
            reader = JournalReader(signals.feed, rules.identifiers)
            reader.start()
            before = await signals.run()
            def cat(ident, line):
                subprocess.run(["systemd-cat", "-t", ident], input=line.encode(), check=True)
            cat("someone-else", 'level=fatal msg="not dockerd"')
            cat("dockerd", 'time="2026-12-02T01:00:00Z" level=fatal msg="containerd did not exit successfully"')
            deadline = time.monotonic() + 20
            while signals.lines < 1:
                assert time.monotonic() < deadline, "no journal line reached the rules"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the other identifier's line, if it were to come, would be here now
            after = await signals.run()
            reader.stop()
            return {"before": before.reason, "after": [after.status.value, after.reason, after.message],
                    "lines": signals.lines, "entries": reader.entries}
        print(json.dumps(asyncio.run(main())))
    finally:
        journald.terminate()
        journald.wait(10)
""")


@pytest.mark.skipif(not JOURNALD.exists() or shutil.which("unshare") is None or shutil.which("systemd-cat") is None,
                    reason="needs systemd-journald, unshare and systemd-cat")
def test_journal_rule_hit_from_a_real_journald(tmp_path: Path) -> None:
    conf = tmp_path / "journald.conf"
    conf.write_text("[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToKMsg=no\n"
                    "ForwardToConsole=no\nForwardToWall=no\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT, str(conf), str(JOURNALD)],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["before"] == "NoLogSignals"
    assert doc["after"][:2] == ["failed", "DockerdFatal"], doc
    assert "containerd did not exit successfully" in doc["after"][2]
    assert doc["lines"] == 1 and doc["entries"] == 1  # the other identifier's entry was filtered out
