"""native/titus-runc-create.c, the titus runtime's `create` (docs/launch-netns.md): table-driven
cases run in a private mount namespace with stand-in pinned namespaces (tests/support/runc_create.py),
and a differential test against the Python implementation it replaced (the oracle): for every
config both accept, the two outputs parse to the same JSON object; what one refuses the other does
too, leaving config.json as it was and never running runc."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.runc_create import (LINK, NO_USER, ORACLE, PINNED, PLAIN, build_runtime, fake_runc,
                                       in_private_mounts)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_runtime(tmp_path_factory.mktemp("runtime"))


@dataclass
class Done:
    returncode: int
    stderr: str
    config: bytes  # config.json afterwards
    runc_argv: list[str] | None  # what the fake runc was run with, None when it was not
    log: str


def create(tmp_path: Path, config: bytes, impl: Path, name: str = "run") -> Done:
    """`create` of the runtime `impl` (the front, or the oracle run as the front runs it) on a
    bundle holding `config`."""
    work = tmp_path / name
    bundle = work / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_bytes(config)
    out, log = work / "argv", work / "log.json"
    runc = fake_runc(work / "runc", out)
    args = ["--root", "/r", "--log", str(log), "create", "--bundle", str(bundle), "abc"]
    argv = ["/usr/bin/python3", "-IS", str(impl), *args] if impl == ORACLE else [str(impl), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITUS_RUNC")}
    env["TITUS_RUNC_REAL"] = str(runc)
    done = in_private_mounts(argv, env)
    assert not (bundle / "config.json.titus").exists()
    return Done(done.returncode, done.stderr, (bundle / "config.json").read_bytes(),
                out.read_text().split() if out.exists() else None, log.read_text() if log.exists() else "")


def spec(env: list[str], namespaces: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if namespaces is None:
        namespaces = [{"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "user"}]
    return {"ociVersion": "1.0.2", "process": {"user": {"uid": 0}, "args": ["sh"], "env": env,
                                               "cwd": "/"},
            "root": {"path": "/rootfs"}, "linux": {"namespaces": namespaces, "uidMappings": [1.5e3, -0, True, None]}}


def encode(value: dict[str, Any], style: int) -> bytes:
    """The same JSON written three ways: ASCII-escaped, raw UTF-8, pretty-printed."""
    if style == 0:
        return json.dumps(value).encode()
    if style == 1:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return json.dumps(value, indent=2).encode()


TRICKY = ['Q=say "hi"\\', "B=C:\\dir\\", "U=é☃😀\u0000\u001f\t\n", 'TITUS_NETNSX=not it', "TITUS_NETNS",
          " TITUS_NETNS=/x", "titus_netns=/x"]

ACCEPTED = {
    "tricky env around it": spec([*TRICKY[:3], f"TITUS_NETNS={PINNED}", *TRICKY[3:]]),
    "not last, several: the last wins": spec(["TITUS_NETNS=/tmp/nope", "A=1", f"TITUS_NETNS={PINNED}", "B=2",
                                              "TITUS_NETNS=/run/titus/netns/n1/../n1//titus-0123456789abcdef"]),
    "alone in env": spec([f"TITUS_NETNS={PINNED}"]),
    "existing path replaced": spec([f"TITUS_NETNS={PINNED}"],
                                   [{"path": "/proc/1/ns/net", "type": "network"}, {"type": "user", "path": "/x"}]),
    "no user namespace": spec([f"TITUS_NETNS={PINNED}"], [{"type": "pid"}, {"type": "network"}]),
    "no user namespace, no .user mount needed": spec([f"TITUS_NETNS={NO_USER}"], [{"type": "network"}]),
    "two network entries": spec([f"TITUS_NETNS={PINNED}"], [{"type": "network"}, {"type": "network", "x": {}}]),
    "a symlink into the root resolves": spec([f"TITUS_NETNS={LINK}"]),
}

REFUSED = {
    "no network namespace": (spec([f"TITUS_NETNS={PINNED}"], [{"type": "pid"}, {"type": "user"}]),
                             "the container has no network namespace of its own to replace"),
    "no namespaces at all": (spec([f"TITUS_NETNS={PINNED}"], []), "no network namespace of its own"),
    "user namespace without its .user mount": (spec([f"TITUS_NETNS={NO_USER}"]),
                                               f"prepared user namespace {NO_USER}.user does not exist"),
    "outside the root": (spec(["TITUS_NETNS=/tmp"]), "prepared network namespace /tmp does not exist"),
    "the host's namespace": (spec(["TITUS_NETNS=/proc/1/ns/net"]), "prepared network namespace"),
    "not a mount": (spec([f"TITUS_NETNS={PLAIN}"]), f"prepared network namespace {PLAIN} does not exist"),
    "traversal out of the root": (spec(["TITUS_NETNS=/run/titus/netns/../../proc/1/ns/net"]),
                                  "prepared network namespace"),
    "the root itself": (spec(["TITUS_NETNS=/run/titus/netns"]), "prepared network namespace"),
    "the last one is bad": (spec([f"TITUS_NETNS={PINNED}", "TITUS_NETNS=/tmp/x"]), "/tmp/x does not exist"),
    "relative": (spec(["TITUS_NETNS=titus-0123456789abcdef"]), "prepared network namespace"),
    "empty": (spec(["TITUS_NETNS="]), "prepared network namespace"),
}

MALFORMED = {
    "truncated": b'{"process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]',
    "trailing comma": b'{"process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'",]}}',
    "bad escape": b'{"process": {"env": ["A=\\x", "TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "short unicode escape": b'{"process": {"env": ["A=\\u12", "TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "raw control character": b'{"process": {"env": ["A=\x01", "TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "invalid UTF-8": b'{"process": {"env": ["A=\xc3\x28", "TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "encoded surrogate": b'{"process": {"env": ["A=\xed\xa0\x80", "TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "extra data": b'{"process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}} {}',
    "bad number": b'{"a": 01, "process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "bare word": b'{"a": nul, "process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "missing colon": b'{"a" 1, "process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "unquoted key": b'{a: 1, "process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "empty file": b"",
    "a BOM": b'\xef\xbb\xbf{"process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
    "NaN": b'{"a": NaN, "process": {"env": ["TITUS_NETNS=' + PINNED.encode() + b'"]}}',
}


def expected(value: dict[str, Any], netns: str) -> dict[str, Any]:
    out = json.loads(json.dumps(value))
    out["process"]["env"] = [e for e in out["process"]["env"] if not e.startswith("TITUS_NETNS=")]
    for n in out["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = netns
        if n["type"] == "user":
            n["path"] = netns + ".user"
    return out


@pytest.mark.parametrize("style", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted(tmp_path: Path, front: Path, case: str, style: int) -> None:
    done = create(tmp_path, encode(ACCEPTED[case], style), front)
    assert done.returncode == 0, done.stderr
    assert done.runc_argv and done.runc_argv[1:] == ["--root", "/r", "--log", str(tmp_path / "run/log.json"),
                                                     "create", "--bundle", str(tmp_path / "run/bundle"), "abc"]
    netns = PINNED if case != "no user namespace, no .user mount needed" else NO_USER
    assert json.loads(done.config) == expected(ACCEPTED[case], netns)


def test_escaped_key_and_duplicates_as_json_load_reads_them(tmp_path: Path, front: Path) -> None:
    """A key spelled with escapes is the same key; of duplicate members the last one counts."""
    raw = ('{"process": {"env": ["X=1"]}, "process": {"env": ["A=\\"", "TITUS\\u005fNETNS=' + PINNED
           + '", "\\u00e9=\\ud83d\\ude00"]}, "linux": {"namespaces": [{"type": "network", "path": "/a", '
           '"path": "/b"}, {"\\u0074ype": "user"}]}}')
    done = create(tmp_path, raw.encode(), front)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.config) == {"process": {"env": ['A="', "é=😀"]},
                                       "linux": {"namespaces": [{"type": "network", "path": PINNED},
                                                                {"type": "user", "path": PINNED + ".user"}]}}


def test_everything_not_edited_stays_byte_identical(tmp_path: Path, front: Path) -> None:
    value = spec(["PATH=/bin", f"TITUS_NETNS={PINNED}", "HOME=/"],
                 [{"type": "network"}, {"type": "user", "path": "/old"}])
    original = encode(value, 2).decode()
    done = create(tmp_path, original.encode(), front)
    assert done.returncode == 0, done.stderr
    want = (original.replace(f'      "TITUS_NETNS={PINNED}",\n', "")
            .replace('"type": "network"', f'"type": "network","path":"{PINNED}"')
            .replace('"path": "/old"', f'"path": "{PINNED}.user"'))
    assert done.config.decode() == want


@pytest.mark.parametrize("style", [0, 2])
def test_no_titus_netns_leaves_the_config_byte_identical(tmp_path: Path, front: Path, style: int) -> None:
    config = encode(spec(TRICKY), style)
    done = create(tmp_path, config, front)
    assert done.returncode == 0 and done.config == config and done.runc_argv is not None


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(tmp_path: Path, front: Path, case: str) -> None:
    value, message = REFUSED[case]
    config = encode(value, 2)
    done = create(tmp_path, config, front)
    assert done.returncode == 1 and message in done.stderr
    assert message in json.loads(done.log)["msg"] and json.loads(done.log)["level"] == "error"
    assert done.config == config and done.runc_argv is None


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json_fails_and_leaves_the_file(tmp_path: Path, front: Path, case: str) -> None:
    done = create(tmp_path, MALFORMED[case], front)
    assert done.returncode == 1 and "cannot prepare the bundle:" in done.stderr
    assert "is not valid JSON" in json.loads(done.log)["msg"]
    assert done.config == MALFORMED[case] and done.runc_argv is None


def test_a_nul_in_the_path_is_refused_not_truncated(tmp_path: Path, front: Path) -> None:
    done = create(tmp_path, encode(spec([f"TITUS_NETNS={PINNED}\u0000/x"]), 0), front)
    assert done.returncode == 1 and "embedded null byte" in done.stderr and done.runc_argv is None


def test_a_file_used_as_a_directory_is_refused(tmp_path: Path, front: Path) -> None:
    """The one known difference from the Python version, whose os.path.realpath reads `file/..`
    lexically as the file's directory; the kernel (and realpath(3)) says ENOTDIR, so does this."""
    done = create(tmp_path, encode(spec([f"TITUS_NETNS={PINNED}/../titus-0123456789abcdef"]), 0), front)
    assert done.returncode == 1 and "prepared network namespace" in done.stderr and done.runc_argv is None


def test_a_missing_bundle_fails_as_the_python_one_did(tmp_path: Path, front: Path) -> None:
    runc = fake_runc(tmp_path / "runc", tmp_path / "argv")
    env = {**os.environ, "TITUS_RUNC_REAL": str(runc)}
    done = in_private_mounts([str(front), "create", "-b", str(tmp_path / "none"), "abc"], env)
    assert done.returncode == 1 and not (tmp_path / "argv").exists()
    assert f"cannot prepare the bundle: [Errno 2] No such file or directory: '{tmp_path}/none/config.json'" \
        in done.stderr


def random_env(rng: random.Random) -> list[str]:
    alphabet = ['"', "\\", "/", "\u0000", "\n", "\u007f", "é", "☃", "😀", "\ud800", "=", "T", "a", " "]
    env = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(rng.randrange(5))]
    for _ in range(rng.randrange(1, 3)):
        env.insert(rng.randrange(len(env) + 1), "TITUS_NETNS=" + rng.choice([PINNED, LINK, NO_USER, PLAIN]))
    return env


def differential_cases() -> list[tuple[str, bytes]]:
    cases = [(f"{name}/{style}", encode(v, style)) for name, v in ACCEPTED.items() for style in (0, 1, 2)]
    cases += [(name, encode(v, 0)) for name, (v, _) in REFUSED.items()]
    cases += [(f"no TITUS_NETNS/{style}", encode(spec(TRICKY), style)) for style in (0, 2)]
    rng = random.Random(17)
    for i in range(30):
        namespaces = rng.sample([{"type": "network"}, {"type": "user"}, {"type": "pid", "path": "/p"},
                                 {"type": "network", "path": "\\x\""}], rng.randrange(1, 4))
        cases.append((f"random {i}", encode(spec(random_env(rng), namespaces), (i % 2) * 2)))
    return cases


@pytest.mark.parametrize("name,config", differential_cases(), ids=[n for n, _ in differential_cases()])
def test_same_json_as_the_python_implementation(tmp_path: Path, front: Path, name: str, config: bytes) -> None:
    c, py = create(tmp_path, config, front, "c"), create(tmp_path, config, ORACLE, "py")
    assert (c.returncode, c.runc_argv is None) == (py.returncode, py.runc_argv is None), (c.stderr, py.stderr)
    if c.returncode == 0:
        assert json.loads(c.config) == json.loads(py.config)
        if config == py.config:
            assert c.config == config  # the oracle left it alone: so does the C one, byte for byte
    else:
        assert c.config == py.config == config
        if "[Errno" not in py.stderr:  # the oracle's realpath can raise where C's just fails the check
            assert c.stderr == py.stderr


def strict_json(raw: bytes) -> bool:
    """What json.load accepts, less NaN/Infinity (not JSON; the C tokenizer refuses them)."""
    def no_constants(name: str) -> None:
        raise ValueError(name)
    try:
        json.loads(raw, parse_constant=no_constants)
    except ValueError:
        return False
    return True


def test_mutated_configs_are_read_as_json_load_reads_them(tmp_path: Path, front: Path) -> None:
    """Random byte mutations of a config: refused as malformed exactly when Python's json refuses
    it; otherwise the same outcome as the oracle, and the file untouched whenever it fails."""
    base = json.dumps(spec(['A="\\x', f"TITUS_NETNS={PINNED}", "B=é😀"],
                           [{"type": "network", "path": "/x"}, {"type": "user"}]), ensure_ascii=False).encode()
    rng = random.Random(1717)
    for i in range(150):
        raw = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(raw))
            op = rng.randrange(3)
            if op == 0:
                raw[at] = rng.choice(b'{}[]",:\\u0123456789abcdefnulltrue \xff\xc3\x00\n')
            elif op == 1:
                del raw[at]
            else:
                raw.insert(at, rng.choice(b'{}[]",:\\ue.-+'))
        c = create(tmp_path, bytes(raw), front, f"c{i}")
        assert c.returncode in (0, 1), c.stderr
        assert ("is not valid JSON" in c.stderr) == (not strict_json(bytes(raw))), (bytes(raw), c.stderr)
        if c.returncode == 1:
            assert c.config == bytes(raw) and c.runc_argv is None
        elif "is not valid JSON" not in c.stderr:
            py = create(tmp_path, bytes(raw), ORACLE, f"py{i}")
            assert py.returncode == 0 and json.loads(c.config) == json.loads(py.config), (bytes(raw), py.stderr)
