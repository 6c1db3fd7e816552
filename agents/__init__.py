"""Agents: prefill and decode instances running inside Mininet hosts, moving KV over real TCP."""
