"""Journeys: triggered messages (welcome, abandoned cart, birthday, re-engagement)."""
