"""Computed traits and scores (policies/computed_traits.yaml)."""
