"""Envelope encryption of personal data: per-subject data keys, AEAD fields, blind indexes."""
