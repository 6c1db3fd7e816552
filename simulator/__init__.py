"""Flow-level simulator of the testbed's experiments (same topology, routing, models, policies)."""
