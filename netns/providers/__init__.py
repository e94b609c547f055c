"""Where container IPs come from. One interface (`base.Provider`), two implementations: `local`
(a host-local pretend VPC over a configured CIDR; the default) and `aws` (EC2 ENIs via boto3)."""

from netns.providers.base import EniInfo, Provider

__all__ = ["EniInfo", "Provider"]
