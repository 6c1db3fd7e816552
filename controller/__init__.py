"""Controller: multipath routing rules, port-counter telemetry and the REST cost oracle (Ryu app over plain logic)."""
