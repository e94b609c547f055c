"""Issue 5's escape-attempt suite outside pytest: the attempts of `tests/escape_attempts.py` (the same
table `tests/integration/test_escape.py` asserts), each run in a container titus launched through its own
scheduler + agent (tests/harness.py Platform) and in a plain `docker run` container with Docker's
defaults, in the same run.

    python bench/escape.py            # every attempt, the fork and memory bombs, the perf variant
    python bench/escape.py --quick    # the same: the whole suite takes ~15 s, well within a minute

Prints the table (attempt | titus | Docker default) and ends with
`RESULT escape attempts=… denied=… docker_default_denied=…` (rows allowed by design — the kept
NET_BIND_SERVICE, the granted perf variant — are shown but not counted). Exit status 1 if any attempt
was not denied by titus with its specific denial. Everything started is removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import escape_attempts as E
from tests.harness import Platform


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the bench convention; the whole suite already ends within a minute, so nothing is skipped")
    ap.parse_args()
    t0 = time.monotonic()
    engine = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="titus-escape-") as tmp:
        p = Platform(Path(tmp), engine)
        try:
            E.start_platform(p)
            helper = E.build_helper(Path(tmp))
            ctx = E.host_context(p)
            results = E.run_exec_attempts(p, engine, helper, ctx)
            results.append(E.run_fork_bomb(p, engine, helper))
            results.append(E.run_memory_bomb(p, engine))
            results.append(E.run_perf_variant(p, engine, helper, ctx))
            E.perf_refused_for_others(p)
        finally:
            p.close()
            E.remove_leftovers(engine, p.node_id)
    print(E.table(results))
    failures = [r for r in results if not r.titus_specific]
    for r in failures:
        print(f"NOT AS EXPECTED under titus: {r.attempt.name}: {r.titus_output!r}")
    for r in results:
        if r.attempt.key == "fork-bomb":
            f = r.facts
            print(f"fork bomb: stopped after {f['forked_before_stop']} children (pids limit {f['pids_limit']}, "
                  f"host kernel.pid_max {f['host_pid_max']}); host can fork: {f['host_can_fork']}")
    attempts, denied, docker_denied = E.summary(results)
    print(f"({time.monotonic() - t0:.0f}s)")
    print(f"RESULT escape attempts={attempts} denied={denied} docker_default_denied={docker_denied}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
