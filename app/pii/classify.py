"""Proposing a data category for a structured field from its name and sample values."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from app.pii.checksums import luhn_valid, resident_id_valid

NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"e-?mail|邮箱|邮件", "user.contact.email"),
    (r"phone|mobile|tel(?:ephone)?\b|cell|手机|电话|联系方式", "user.contact.phone_number"),
    (r"id_?card|national_?id|身份证|ssn|passport|护照|社保", "user.government_id"),
    (r"birth|dob|生日|出生", "user.demographic.date_of_birth"),
    (r"address|street|addr|地址|住址", "user.contact.address"),
    (
        r"^(?:first|last|full|given|family|real|customer|user|contact|nick)?_?name$|^(?:first|last)name$|姓名|名字",
        "user.name",
    ),
    (r"(?:^|_)ip(?:_address)?$|ip地址", "user.device.ip_address"),
    (r"card_?(?:no|number)|bank_?card|银行卡|卡号|iban", "user.financial"),
    (r"wechat|weixin|微信|openid|unionid|qq", "user.social"),
)
VALUE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"), "user.contact.email"),
    (re.compile(r"^(?:\+?86[- ]?)?1[3-9]\d{9}$"), "user.contact.phone_number"),
    (re.compile(r"^\+\d[\d\s().-]{7,18}\d$"), "user.contact.phone_number"),
    (re.compile(r"^\d{17}[\dXx]$"), "user.government_id"),
    (re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$"), "user.device.ip_address"),
)


def _value_category(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    for pattern, category in VALUE_RULES:
        if pattern.match(v):
            if category == "user.government_id" and not resident_id_valid(v):
                continue
            return category
    digits = re.sub(r"[\s-]", "", v)
    if digits.isdigit() and 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "user.financial"
    return None


def classify_field(name: str, samples: Sequence[Any] = ()) -> str | None:
    """A fideslang data category for a field, or None if it looks like no personal data.

    Values outvote the name: most samples matching one category decide; otherwise the name does.
    """
    votes: dict[str, int] = {}
    for v in samples:
        cat = _value_category(v)
        if cat:
            votes[cat] = votes.get(cat, 0) + 1
    if votes:
        best, n = max(votes.items(), key=lambda kv: kv[1])
        if n * 2 >= len(samples):
            return best
    return _name_category(name)


@lru_cache(maxsize=4096)
def _name_category(name: str) -> str | None:
    lowered = name.lower()
    for pattern, category in NAME_RULES:
        if re.search(pattern, lowered):
            return category
    return None


def classify_property(name: str, value: Any) -> str | None:
    """Fast check for one event property: is it undeclared personal data?

    A bare ``name`` is left alone (Segment's e-commerce spec uses it for products).
    """
    category = None if name.lower() in ("name", "title") else _name_category(name)
    if category is None and isinstance(value, str) and ("@" in value or any(c.isdigit() for c in value)):
        category = _value_category(value)
    return category
