"""Image provenance (docs/provenance.md): which CI build of which commit a task runs, shared by the
scheduler (validates and records it), the agent (labels the container, serves it to the task) and
titusctl (shows it).

A job states its provenance in four optional `attributes`, validated at submit:
`source.commit` (a git commit, 7–64 hex digits), `source.repo` (an http(s)/git/ssh URL or
`git@host:path`), `build.id` (a CI build's id), `build.url` (an http(s) URL of the build). The
registry digest of the image is not the user's to state: the scheduler resolves it (at submit, else
the agent's first launch) and pins it on the job.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = [
    "LABEL_IMAGE_DIGEST", "LABEL_IMAGE_REF", "PROVENANCE_KEYS", "check_provenance", "container_labels",
    "digest_reference", "is_digest", "provenance_of", "split_reference",
]

SOURCE_COMMIT = "source.commit"
SOURCE_REPO = "source.repo"
BUILD_ID = "build.id"
BUILD_URL = "build.url"
PROVENANCE_KEYS = (SOURCE_COMMIT, SOURCE_REPO, BUILD_ID, BUILD_URL)

MAX_REPO = 512
MAX_BUILD_URL = 1024
MAX_BUILD_ID = 128

LABEL_IMAGE_REF = "titus.image.ref"  # the reference the job asked for (a tag, usually)
LABEL_IMAGE_DIGEST = "titus.image.digest"  # the manifest digest the container runs

_COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")
_BUILD_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:#/+-]{{0,{MAX_BUILD_ID - 1}}}$")
_SCP_REPO = re.compile(r"^[A-Za-z0-9_.-]{1,64}@[A-Za-z0-9.-]{1,253}:[A-Za-z0-9_./~-]{1,400}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
                   r"|^\[[0-9a-fA-F:]+\]$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO_SCHEMES = ("https", "http", "git", "ssh", "git+ssh")
_URL_SCHEMES = ("https", "http")


def _url_problem(value: str, schemes: tuple[str, ...], limit: int, allow_user: bool) -> str | None:
    if len(value) > limit:
        return f"at most {limit} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme.lower() not in schemes:
        return f"scheme {parts.scheme or '(none)'!r} is not one of {'/'.join(schemes)}"
    if parts.password is not None or (parts.username is not None and not allow_user):
        # A label and the metadata service would publish it: no credentials in provenance.
        return "must not carry credentials (user:password@)"
    host = parts.hostname or ""
    if not host or not _HOST.match(host if ":" not in host else f"[{host}]"):
        return "has no valid host"
    return None


def check_provenance(attributes: dict[str, str]) -> list[tuple[str, str]]:
    """(attribute key, problem) for each provenance attribute that is malformed."""
    problems: list[tuple[str, str]] = []
    commit = attributes.get(SOURCE_COMMIT)
    if commit is not None and not _COMMIT.match(commit):
        problems.append((SOURCE_COMMIT, "expected a git commit: 7 to 64 hexadecimal digits"))
    repo = attributes.get(SOURCE_REPO)
    if repo is not None and not (len(repo) <= MAX_REPO and _SCP_REPO.match(repo)):
        problem = _url_problem(repo, _REPO_SCHEMES, MAX_REPO, allow_user=True)
        if problem is not None:
            problems.append((SOURCE_REPO, f"{problem}; expected an https/http/git/ssh URL or git@host:path "
                                          f"(at most {MAX_REPO} characters)"))
    build_id = attributes.get(BUILD_ID)
    if build_id is not None and not _BUILD_ID.match(build_id):
        problems.append((BUILD_ID, f"letters, digits and _.:#/+- only, starting with a letter or digit, "
                                   f"at most {MAX_BUILD_ID} characters"))
    url = attributes.get(BUILD_URL)
    if url is not None:
        problem = _url_problem(url, _URL_SCHEMES, MAX_BUILD_URL, allow_user=False)
        if problem is not None:
            problems.append((BUILD_URL, f"{problem}; expected an http(s) URL of at most {MAX_BUILD_URL} characters"))
    return problems


def provenance_of(attributes: dict[str, str]) -> dict[str, str]:
    """The provenance attributes of a job (only those it set)."""
    return {k: attributes[k] for k in PROVENANCE_KEYS if k in attributes}


def container_labels(image_ref: str, digest: str | None, provenance: dict[str, str]) -> dict[str, str]:
    """The labels a task's container carries: `titus.image.ref`, `titus.image.digest`,
    `titus.source.commit`, `titus.source.repo`, `titus.build.id`, `titus.build.url`."""
    labels = {LABEL_IMAGE_REF: image_ref}
    if digest:
        labels[LABEL_IMAGE_DIGEST] = digest
    labels.update({f"titus.{k}": v for k, v in provenance.items() if k in PROVENANCE_KEYS})
    return labels


def is_digest(value: str) -> bool:
    return bool(DIGEST.match(value))


def split_reference(ref: str) -> tuple[str, str, str | None, str | None]:
    """(registry host, repository path, tag, digest) of a validated image reference; a reference
    without a registry host is Docker Hub's (`docker.io`, `library/` for one-component names)."""
    rest, _, digest = ref.partition("@")
    slash = rest.find("/")
    first = rest[:slash] if slash >= 0 else ""
    if slash >= 0 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, rest[slash + 1:]
    else:
        host, path = "docker.io", rest if "/" in rest else f"library/{rest}"
    name, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        name, tag = path, ""
    return host, name, (tag or None), (digest or None)


def digest_reference(ref: str, digest: str) -> str:
    """`ref` pinned to `digest`: name@digest (the tag dropped: the engine pulls by digest)."""
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    return f"{name}@{digest}"
