"""EC2 instance metadata (IMDS) and IAM credential proxy for tasks.

One `MetadataService` serves every task of the host. The agent hands it, per task, listening sockets
that live in that task's network path; the task is identified by the socket that accepted the
connection, never by a source address. See docs/imds.md.
"""

from imds.credentials import CredentialBroker, CredentialError, Credentials, RoleArn, parse_role_arn
from imds.identity import TaskIdentity
from imds.service import MetadataService
from imds.thread import ServiceThread

__all__ = [
    "CredentialBroker",
    "CredentialError",
    "Credentials",
    "MetadataService",
    "RoleArn",
    "ServiceThread",
    "TaskIdentity",
    "parse_role_arn",
]
