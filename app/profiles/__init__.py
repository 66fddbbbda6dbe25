"""Profiles: one per person, with personal data encrypted field by field."""
