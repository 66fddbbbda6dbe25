"""Hashed ad audiences: emails and phone numbers normalised the way each platform asks, then
SHA-256 (lowercase hex).

- ``google`` (Customer Match): trim, lowercase; phones in E.164 with the ``+``.
- ``meta`` (Custom Audiences / Conversions API): trim, lowercase; phones as digits only,
  country code included, no ``+`` (Meta's example: (650)555-1212 → 16505551212).
- ``cm360`` (Campaign Manager 360 enhanced conversions): as Google, and the dots before
  ``@gmail.com`` / ``@googlemail.com`` removed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import phonenumbers

PLATFORMS = ("google", "meta", "cm360")
MIN_AUDIENCE = 100
"""Smallest audience an ad platform is sent (per destination: ``config.min_audience``)."""
GMAIL = ("gmail.com", "googlemail.com")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normal_email(platform: str, email: str) -> str:
    value = email.strip().lower()
    if platform == "cm360" and "@" in value:
        local, domain = value.rsplit("@", 1)
        if domain in GMAIL:
            value = local.replace(".", "") + "@" + domain
    return value


def normal_phone(platform: str, phone: str, region: str = "US") -> str | None:
    """E.164 (``+16505551212``) for Google and CM360, digits only (``16505551212``) for Meta;
    None when the number cannot be read."""
    try:
        parsed = phonenumbers.parse(phone.strip(), None if phone.strip().startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164[1:] if platform == "meta" else e164


def hashed_row(platform: str, traits: dict[str, Any], region: str = "US") -> dict[str, str]:
    """The hashed identifiers of one person (``email``, ``phone``) that could be normalised."""
    out: dict[str, str] = {}
    email = traits.get("email")
    if isinstance(email, str) and email.strip():
        out["email"] = sha256_hex(normal_email(platform, email))
    phone = traits.get("phone")
    if isinstance(phone, str):
        normal = normal_phone(platform, phone, region)
        if normal:
            out["phone"] = sha256_hex(normal)
    return out


COLUMNS = {
    "google": ("Email", "Phone"),
    "meta": ("email", "phone"),
    "cm360": ("hashedEmail", "hashedPhoneNumber"),
}
"""Column headers of the upload file per platform."""

_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_hash(value: str) -> bool:
    return bool(_HEX.match(value))
