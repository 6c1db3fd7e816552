"""Decode-selection policies, one per module, found through the registry."""

from netkv.scheduler.policies import registry
from netkv.scheduler.policies.base import Policy, Query

__all__ = ["Policy", "Query", "registry"]
