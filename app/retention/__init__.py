"""Retention: ``policies/retention.yaml`` applied through the personal-data inventory."""
