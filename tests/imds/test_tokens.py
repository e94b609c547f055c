from __future__ import annotations

import pytest

from imds.tokens import MAX_TTL, TokenSigner, parse_ttl

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0


def test_issue_and_validate() -> None:
    s = TokenSigner(KEY)
    tok = s.issue("task-a", 60, NOW)
    assert s.valid("task-a", tok, NOW)
    assert s.valid("task-a", tok, NOW + 59)
    assert s.issue("task-a", 60, NOW) != tok  # nonce


def test_bound_to_task_and_key() -> None:
    s = TokenSigner(KEY)
    tok = s.issue("task-a", 60, NOW)
    assert not s.valid("task-b", tok, NOW)
    assert not TokenSigner(b"x" * 32).valid("task-a", tok, NOW)


def test_expiry() -> None:
    s = TokenSigner(KEY)
    tok = s.issue("task-a", 1, NOW)
    assert s.valid("task-a", tok, NOW + 0.5)
    assert not s.valid("task-a", tok, NOW + 1)
    assert not s.valid("task-a", tok, NOW + 3600)


@pytest.mark.parametrize("mutate", [
    lambda t: t + "x",
    lambda t: t.replace("1.", "2.", 1),
    lambda t: "1." + str(int(t.split(".")[1]) + 100) + "." + ".".join(t.split(".")[2:]),
    lambda t: t.rsplit(".", 1)[0],
    lambda t: "",
    lambda t: "a" * 4000,
    lambda t: "1.-5.ab.cd",
    lambda t: "1.99999999999.ab.cd",
])
def test_tampered(mutate: object) -> None:
    s = TokenSigner(KEY)
    tok = s.issue("task-a", 600, NOW)
    assert not s.valid("task-a", mutate(tok), NOW)  # type: ignore[operator]


def test_short_key_refused() -> None:
    with pytest.raises(ValueError):
        TokenSigner(b"short")


@pytest.mark.parametrize("value,expected", [
    ("1", 1), ("21600", 21600), ("60", 60), ("00060", 60),
    (None, None), ("", None), ("0", None), ("21601", None), ("-1", None), ("abc", None),
    ("1.5", None), (" 60", None), ("+60", None), ("999999", None), ("６０", None),
])
def test_parse_ttl(value: str | None, expected: int | None) -> None:
    assert parse_ttl(value) == expected
    assert MAX_TTL == 21600
