"""Entities beyond the person: accounts and households (Segment group calls) and products."""
