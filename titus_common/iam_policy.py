"""Who may use which IAM role (docs/trust.md): a JSON file of grants, checked by the scheduler at
submit and again by the agent before its metadata proxy hands out the role (defence in depth).

    {"grants": [{"owner": "tests", "app": "*", "roles": ["arn:aws:iam::*:role/itest-*"]}]}

`owner`, `app` and `roles` are fnmatch patterns. A job asking for `container.iamRole` outside every
grant of its owner/app is refused at submit (403 naming container.iamRole), nothing stored. Without
a file the scheduler admits any role and warns at start (the hosts' instance role is then the only
limit)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from titus_common.errors import ConfigError

__all__ = ["IamPolicy", "load_iam_policy"]


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    owner: str = Field(min_length=1)
    app: str = "*"
    roles: list[str] = Field(min_length=1)


class IamPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    grants: list[Grant] = Field(default_factory=list)
    enforce: bool = True

    def refusal(self, owner: str, app: str, role: str) -> str | None:
        """None if granted, else why not."""
        if not self.enforce:
            return None
        for g in self.grants:
            if fnmatch.fnmatchcase(owner, g.owner) and fnmatch.fnmatchcase(app, g.app) and any(
                fnmatch.fnmatchcase(role, r) for r in g.roles
            ):
                return None
        return f"container.iamRole: {role!r} is not granted to owner {owner!r} app {app!r} by the IAM role policy"


def load_iam_policy(path: Path | None) -> IamPolicy:
    if path is None:
        return IamPolicy(enforce=False)
    try:
        return IamPolicy.model_validate(json.loads(path.read_text()))
    except OSError as e:
        raise ConfigError(f"IAM role policy {path}: cannot read: {e.strerror or e}") from None
    except (ValueError, ValidationError) as e:
        raise ConfigError(f"IAM role policy {path}: {e}") from None
