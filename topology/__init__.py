"""Topology: the four-tier fat-tree description, its ID scheme and its routing function."""

from netkv.topology.fattree import FatTree, Link, LinkRates, Node, TIER_NAMES
from netkv.topology.routing import NoPathError, Routing, STRATEGIES

__all__ = ["FatTree", "Link", "LinkRates", "Node", "Routing", "NoPathError", "STRATEGIES", "TIER_NAMES"]
