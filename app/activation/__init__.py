"""Activation: destinations, runs that send segments to them, and proof of what went where."""
