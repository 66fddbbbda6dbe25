"""Masked renderings of personal data for roles that may see that a value exists, not what it is."""

from __future__ import annotations

from typing import Any


def mask_value(category: str, value: Any) -> str:
    """``a***@example.com``, ``+86*******5678``, ``张*``, ``J***``, ``****-**-**`` or ``***``."""
    if not isinstance(value, str) or not value:
        return "***"
    if category == "user.contact.email" and "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if category == "user.contact.phone_number":
        if len(value) <= 6:
            return "*" * len(value)
        return value[:3] + "*" * (len(value) - 7) + value[-4:]
    if category == "user.demographic.date_of_birth":
        return "****-**-**"
    if category == "user.name":
        return value[:1] + "*" * min(max(len(value) - 1, 1), 3)
    return "***"
