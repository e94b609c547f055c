"""Prometheus metrics of the metadata proxy. Label values are bounded: a path *class*, a status code,
an endpoint kind and a known STS error code (anything else is "Other"); never raw paths, role names or
task ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# STS error codes kept as label values; anything else is counted as "Other".
KNOWN_STS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "UnauthorizedOperation",
        "RegionDisabledException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "MalformedAnswer",
        "ShortLived",
        "Timeout",
        "Connection",
    }
)


class ImdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(
            "titus_imds_requests",
            "Metadata requests by endpoint, path class and status code",
            ["endpoint", "path_class", "code"],
            registry=r,
        )
        self.credential_age = Histogram(
            "titus_imds_credential_age_seconds",
            "Age of the credentials handed out (now - STS issue time)",
            buckets=(1, 10, 60, 300, 600, 1200, 1800, 2400, 3000, 3600),
            registry=r,
        )
        self.credential_remaining = Histogram(
            "titus_imds_credential_remaining_seconds",
            "Lifetime left on the credentials handed out",
            buckets=(900, 1200, 1500, 1800, 2100, 2400, 2700, 3000, 3300, 3600),
            registry=r,
        )
        self.sts_calls = Counter("titus_imds_sts_calls", "STS AssumeRole calls", ["result"], registry=r)
        self.sts_errors = Counter("titus_imds_sts_errors", "STS AssumeRole failures by code", ["code"], registry=r)
        self.sts_latency = Histogram(
            "titus_imds_sts_seconds",
            "STS AssumeRole latency",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.refresh_lag = Histogram(
            "titus_imds_refresh_lag_seconds",
            "Delay between the planned refresh time (or task add) and fresh credentials being cached",
            buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.unavailable = Counter(
            "titus_imds_credentials_unavailable",
            "Credential requests answered with an error (no usable cached credentials)",
            ["code"],
            registry=r,
        )
        self.tasks = Gauge("titus_imds_tasks", "Tasks served", registry=r)
        self.client_errors = Counter(
            "titus_imds_client_errors",
            "Malformed HTTP from tasks by kind (aiohttp's parse error: LineTooLong, BadStatusLine, …; else Other)",
            ["kind"],
            registry=r,
        )
        self._children: dict[tuple[str, str, int], Counter] = {}

    def request(self, endpoint: str, path_class: str, code: int) -> None:
        key = (endpoint, path_class, code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, path_class, str(code))
        child.inc()

    def client_error(self, kind: str) -> None:
        self.client_errors.labels(kind).inc()

    @staticmethod
    def sts_code(code: str) -> str:
        return code if code in KNOWN_STS_CODES else "Other"
