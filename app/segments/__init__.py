"""Segments: condition trees over people, consent-aware counts, saved memberships."""
