"""Decode-selection policies, one per module, found through the registry."""

from . import registry
from .base import Policy, Query

__all__ = ["Policy", "Query", "registry"]
