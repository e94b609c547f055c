"""titus-canary: a black-box probe of the cell through the public job API (docs/canary.md).

`probe` submits one tiny batch job, follows it to Finished and records the SLIs; `main` runs it
every `--interval` seconds and serves them on `/metrics`.

May import: `titus_common`, the standard library and third-party packages — never `scheduler`,
`agent` or any host package: it sees the cell only as a user does, over HTTP.
"""

__all__ = ["main", "probe"]
