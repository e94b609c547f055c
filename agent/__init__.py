"""titus-agent: runs tasks as Docker containers on one host, for the titus scheduler."""

__version__ = "0.1.0"
