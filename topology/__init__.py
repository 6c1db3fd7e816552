"""Topology: the four-tier fat-tree description, its ID scheme and its routing function."""

from netkv.topology.fattree import TIER_NAMES, FatTree, Link, LinkRates, Node
from netkv.topology.routing import STRATEGIES, NoPathError, Routing

__all__ = ["FatTree", "Link", "LinkRates", "Node", "Routing", "NoPathError", "STRATEGIES", "TIER_NAMES"]
