"""Normal forms of identifiers, so equal values give equal blind indexes."""

from __future__ import annotations

import re
from datetime import date, datetime

import phonenumbers

from app.errors import InvalidField
from app.vault.memo import memo

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(value: object, field: str = "email") -> str:
    """Trimmed, lower-cased address; rejects anything that is not one."""
    if not isinstance(value, str):
        raise InvalidField("must be a string", field=field)
    email = value.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidField("is not a valid email address", field=field)
    return email


def normalize_phone(value: object, region: str, field: str = "phone") -> str:
    """E.164 form (``+8613812345678``); numbers without a country code use ``region``.

    An extension is kept (``+14155550100;ext=12``, RFC 3966's notation): people behind
    one switchboard number are different people."""
    if not isinstance(value, str | int):
        raise InvalidField("must be a string", field=field)
    table = memo("phone")
    if table is None:
        return _parsed_phone(value, region, field)
    found: str | None = table.get((value, region))
    if found is None:  # a refused value is checked again (and refused with its own field)
        found = table[(value, region)] = _parsed_phone(value, region, field)
    return found


def _parsed_phone(value: str | int, region: str, field: str) -> str:
    try:
        number = phonenumbers.parse(str(value).strip(), region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidField("is not a phone number", field=field) from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidField("is not a possible phone number", field=field)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={number.extension}" if number.extension else e164


def normalize_date(value: object, field: str = "birthday") -> str:
    """ISO 8601 calendar date (``YYYY-MM-DD``)."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise InvalidField("must be a date string", field=field)
    text = value.strip()
    for parse in (date.fromisoformat, lambda t: datetime.fromisoformat(t).date()):
        try:
            return parse(text).isoformat()  # type: ignore[no-untyped-call]
        except ValueError:
            continue
    for fmt in ("%Y/%m/%d", "%d.%m.%Y", "%Y年%m月%d日", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise InvalidField("is not a date (use YYYY-MM-DD)", field=field)


def normalize_text(value: object, field: str, max_len: int = 1000) -> str:
    if not isinstance(value, str | int | float):
        raise InvalidField("must be a string", field=field)
    text = " ".join(str(value).split())
    if not text:
        raise InvalidField("must not be empty", field=field)
    if len(text) > max_len:
        raise InvalidField(f"is longer than {max_len} characters", field=field)
    return text
