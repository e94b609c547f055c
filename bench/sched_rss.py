"""The scheduler's memory given back, without the engine: a real scheduler process (no agent), a
warm-up job of 100 tasks, then `--rounds` jobs of 10,000 unplaceable tasks, each submitted, killed,
evicted after its retention and read back once from the store (GET /v1/jobs/{id}). The settled RSS
after each round is compared with the one after the warm-up (issue #18: within 20 %).

    python -m bench.sched_rss --quick      # two rounds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import cast

import docker

from bench.footprint import RETENTION, scheduler_job, settled_rss
from tests.harness import Platform


def rss_by_kind(pid: int) -> str:
    """RSS by mapping kind (glibc's [heap], anonymous maps: pymalloc arenas, other arenas, stacks;
    files: .so, the SQLite -shm), to tell fragmentation from a cache. pymalloc: its 256 KiB arena maps
    (adjacent ones merge into one map, counted as anon)."""
    kinds: dict[str, int] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            kind = ("heap" if path == "[heap]" else ("pymalloc" if hi - lo == 256 * 1024 else "anon") if not path
                    else path if path.startswith("[")
                    else "so" if ".so" in path else Path(path).name)
        elif head[0] == "Rss:":
            kinds[kind] = kinds.get(kind, 0) + int(head[1])
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:5]
    return " ".join(f"{k}={v / 1024:.1f}" for k, v in top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="two rounds (the default is four)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--smaps", action="store_true", help="print RSS by mapping kind after each step")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    afters: list[float] = []
    with tempfile.TemporaryDirectory(prefix="titus-schedrss-") as tmp:
        # No agent, no container: the engine client is never used (nothing to clean up in it).
        p = Platform(Path(tmp), cast(docker.DockerClient, None))
        try:
            p.start_scheduler("--finished-job-retention", str(RETENTION))
            assert p.scheduler is not None
            spid = p.scheduler.p.pid
            scheduler_job(p, 100)
            time.sleep(RETENTION + 2)
            before = settled_rss(spid)
            if args.smaps:
                print(f"baseline: {rss_by_kind(spid)}", flush=True)
            for i in range(rounds):
                peak = scheduler_job(p, 10_000, spid)
                time.sleep(RETENTION + 2)
                afters.append(settled_rss(spid))
                print(f"round {i}: before {before:.1f} peak {peak:.1f} after {afters[-1]:.1f} "
                      f"ratio {afters[-1] / before:.2f}", flush=True)
                if args.smaps:
                    print(f"round {i}: {rss_by_kind(spid)}", flush=True)
        finally:
            if p.scheduler is not None:
                p.scheduler.stop()
    print(f"RESULT sched_rss before_mb={before:.1f} after_1_mb={afters[0]:.1f} after_last_mb={afters[-1]:.1f} "
          f"ratio_1={afters[0] / before:.2f} ratio_last={afters[-1] / before:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
