"""Collecting events: the Segment-compatible event API and its pipeline."""
