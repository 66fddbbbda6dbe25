"""Periodic work (checkpoints; later segment refresh, retention, DSR deadlines), run exactly once
per due time across any number of service processes."""
