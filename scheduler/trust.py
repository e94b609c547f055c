"""Assemble the scheduler's trust from its configuration (docs/trust.md): the CA and the server's
TLS context from `--pki`, the trust store beside the store, the IAM role policy — or, with
`--insecure`, plain HTTP where every caller is an admin (a warning at every start)."""

from __future__ import annotations

import logging
import sqlite3
import ssl
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from scheduler.auth import Auth
from scheduler.authstore import AuthStore, auth_db_path
from scheduler.bootstrap_limit import BootstrapLimits
from scheduler.config import ServiceConfig
from scheduler.iid import IidVerifier
from titus_common.iam_policy import load_iam_policy
from scheduler.store import StoreCorrupt
from scheduler.tls import CA, server_context
from scheduler.workload import WorkloadIssuer
from titus_common.errors import ConfigError

__all__ = ["Trust", "build_trust"]

log = logging.getLogger("titus.scheduler.trust")


@dataclass
class Trust:
    auth: Auth
    ca: CA | None
    ssl: ssl.SSLContext | None
    workload: WorkloadIssuer | None = None  # task identities (docs/identity.md); None without a CA


def build_trust(config: ServiceConfig, registry: CollectorRegistry) -> Trust:
    if config.pki is None and not config.insecure:
        raise ConfigError("no --pki: create a cell CA with `titus-scheduler ca init --pki DIR` and pass --pki DIR "
                          "(or --insecure for plain HTTP without authentication, local development only)")
    if config.pki is not None and config.insecure:
        raise ConfigError("--pki and --insecure exclude each other")
    iam = load_iam_policy(config.iam_policy)
    if not iam.enforce:
        log.warning("no --iam-policy: any container.iamRole is admitted (the hosts' instance role is the only limit)")
    iid = IidVerifier.load(config.aws_imds_identity) if config.aws_imds_identity is not None else None
    if iid is not None and config.insecure:
        raise ConfigError("--aws-imds-identity needs --pki: without TLS there are no node certificates to bind")
    ca = CA.load(config.pki) if config.pki is not None else None
    context = server_context(config.pki) if config.pki is not None else None
    if config.insecure:
        log.warning("INSECURE: plain HTTP and no authentication; any process reaching %s:%d is an admin and may "
                    "register as any node", *config.listen)
    try:
        store = AuthStore(auth_db_path(config.db))
    except (sqlite3.Error, OSError) as e:  # the store's own exit code
        raise StoreCorrupt(f"{auth_db_path(config.db)}: {e}") from None
    limits = BootstrapLimits(config.bootstrap_rate, config.bootstrap_burst, config.bootstrap_source_rate,
                             config.bootstrap_source_burst)
    auth = Auth(store, iam, registry, insecure=config.insecure, node_cert_ttl=config.node_cert_ttl,
                bootstrap_limits=limits, iid=iid)
    store.apps.policy = config.app_ownership  # an app with no grant: claimed by its first owner, or refused
    workload = WorkloadIssuer(ca, config.cell, config.workload_cert_ttl, registry, store) if ca is not None else None
    return Trust(auth, ca, context, workload)
