"""Decision traces: every engine pass written down, inputs and choices, and replayed bit for bit.

With `decision_trace = "/path/file.jsonl"` each engine pass appends one JSON line: the code version,
mode, seed and caps, every host as the engine saw it (`HostInput`), the requests in order, the hard
masks (security posture) per job, and each decision (host or reasons, and the chosen host's score
terms). `titus-scheduler replay FILE` rebuilds each pass from its inputs, places again and compares:
the same assignments, bit for bit, or the first differences; `--explain TASK` prints why the host
was chosen (each fitness term). A trace written by other engine code is refused with both versions:
replaying it would not prove anything. Tracing is off by default: at 7,000 hosts a pass is ~1 MB of
JSON, written on the scheduler's loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import scheduler.engine as engine_mod
import scheduler.fitness as fitness_mod
import titus_common.constraints as constraints_mod
from scheduler.engine import B, Decision, Engine, HostInput, HostTable, Request
from scheduler.fitness import Mode
from titus_common.constraints import ConstraintsSpec
from titus_common.errors import ConfigError

__all__ = ["CODE_VERSION", "TraceWriter", "main", "replay"]

FORMAT = "titus-decision-trace/1"
log = logging.getLogger("titus.scheduler.trace")


def _code_version() -> str:
    """The engine's identity: a digest of the modules whose code decides a placement."""
    h = hashlib.sha256()
    for mod in (engine_mod, fitness_mod, constraints_mod):
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()[:16]


CODE_VERSION = _code_version()


def _mask_doc(mask: B) -> str:
    return np.packbits(mask.astype(np.uint8)).tobytes().hex()


def _mask_from(doc: str, n: int) -> B:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(doc), dtype=np.uint8))[:n]
    return bits.astype(np.bool_)


def _host_doc(h: HostInput) -> dict[str, Any]:
    d = asdict(h)
    d["images"] = sorted(h.images)
    return d


def _host_from(d: Mapping[str, Any]) -> HostInput:
    return HostInput(**{**d, "images": frozenset(d["images"])})


def _request_doc(r: Request) -> dict[str, Any]:
    d = asdict(r)
    d["constraints"] = r.constraints.model_dump()
    return d


def _request_from(d: Mapping[str, Any]) -> Request:
    return Request(**{**d, "constraints": ConstraintsSpec(**d["constraints"])})


def _decision_doc(d: Decision) -> dict[str, Any]:
    return {"task": d.task_id, "host": d.host, "reasons": [list(r) for r in d.reasons], "breakdown": d.breakdown}


class TraceWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.passes = 0
        self.failed = False
        try:  # a path that cannot be written is a configuration error, said at start
            with path.open("a"):
                pass
        except OSError as e:
            raise ConfigError(f"decision_trace: {path} cannot be written: {e.strerror or e}") from None

    def write(self, engine: Engine, table: HostTable, requests: list[Request],
              masks: Mapping[str, list[tuple[str, B]]], decisions: list[Decision], now: float) -> None:
        doc = {
            "format": FORMAT, "code": CODE_VERSION, "at": now, "mode": engine.mode.value, "seed": engine.seed,
            "jobCap": engine.job_cap, "maxTasksPerHost": table.max_tasks,
            "hosts": [_host_doc(h) for h in table.inputs],
            "requests": [_request_doc(r) for r in requests],
            "masks": {job: [[reason, _mask_doc(m)] for reason, m in ms] for job, ms in masks.items()},
            "decisions": [_decision_doc(d) for d in decisions],
        }
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(doc, separators=(",", ":")) + "\n")
        except OSError as e:  # tracing is a debugging aid: it must never stop placement
            log.error("decision trace %s cannot be written (%s): tracing is off until the next start", self.path, e)
            self.failed = True
            return
        self.passes += 1


def _passes(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    for number, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not a trace line: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"{path}:{number}: not a {FORMAT} pass")
        if doc.get("code") != CODE_VERSION:
            raise ConfigError(f"{path}:{number}: written by engine code {doc.get('code')!r}, this is {CODE_VERSION!r}: "
                              "a replay with other code proves nothing (use the scheduler version that wrote it)")
        yield number, doc


def replay_pass(doc: Mapping[str, Any]) -> tuple[list[Decision], list[Decision]]:
    """(recorded, replayed) decisions of one pass."""
    try:
        hosts = [_host_from(h) for h in doc["hosts"]]
        table = HostTable(hosts, int(doc["seed"]), int(doc["maxTasksPerHost"]))
        engine = Engine(Mode(doc["mode"]), int(doc["seed"]), int(doc["jobCap"]))
        requests = [_request_from(r) for r in doc["requests"]]
        masks = {job: [(str(reason), _mask_from(m, len(table))) for reason, m in ms] for job, ms in doc["masks"].items()}
        recorded = [Decision(d["task"], d["host"], [(str(r), int(n)) for r, n in d["reasons"]], dict(d["breakdown"]))
                    for d in doc["decisions"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"malformed trace pass: {e!r}") from None
    return recorded, engine.place_all(table, requests, masks)


def replay(path: Path, out: TextIO, explain: str | None = None) -> int:
    """Replay every pass; returns the number of decisions that differ."""
    differ = 0
    total = 0
    for number, doc in _passes(path):
        recorded, again = replay_pass(doc)
        total += len(recorded)
        bad = [(a, b) for a, b in zip(recorded, again) if (a.host, a.reasons, a.breakdown) != (b.host, b.reasons, b.breakdown)]
        bad += [(a, a) for a in recorded[len(again):]]
        differ += len(bad)
        state = "identical" if not bad else f"{len(bad)} DIFFER"
        print(f"pass {number}: mode {doc['mode']}, {len(doc['hosts'])} hosts, {len(recorded)} decisions: {state}", file=out)
        for a, b in bad[:5]:
            print(f"  task {a.task_id}: recorded {a.host or a.reasons}, replayed {b.host or b.reasons}", file=out)
        if explain is not None:
            for d in again:
                if d.task_id == explain:
                    if d.host is None:
                        print(f"  task {explain}: no host; " + "; ".join(f"{n} hosts: {r}" for r, n in d.reasons), file=out)
                    else:
                        terms = ", ".join(f"{k} {v:+.4f}" for k, v in d.breakdown.items())
                        print(f"  task {explain} -> {d.host}: score {sum(d.breakdown.values()):.4f} = {terms} "
                              "(+ a seeded tie-break below 1e-6)", file=out)
    print(f"{total} decisions replayed, {differ} differ", file=out)
    return differ


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="titus-scheduler replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path)
    p.add_argument("--explain", metavar="TASK", help="show the score breakdown of the host chosen for TASK")
    args = p.parse_args(argv)
    try:
        return 1 if replay(args.trace, sys.stdout, args.explain) else 0
    except ConfigError as e:
        print(f"titus-scheduler replay: {e}", file=sys.stderr)
        return 2
