"""Scheduler: policies over one interface, the cluster view, network cost oracles, decisions."""
