"""Emulation: the Mininet fabric runner, run orchestration, background traffic, cleanup, state directory and fidelity guard."""
