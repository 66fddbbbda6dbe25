"""Normal forms of identifiers, so equal values give equal blind indexes."""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    text = str(value).strip()
    if (fast := _e164_as_parsed(text)) is not None:
        return fast
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidField("is not a phone number", field=field) from exc
    if not phonenumbers.is_possible_number(number):
        raise InvalidField("is not a possible phone number", field=field)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={number.extension}" if number.extension else e164


_PLUS_DIGITS = re.compile(r"\+[1-9][0-9]{6,15}")
"""Already E.164-shaped: a plus sign, then 7 to 16 ASCII digits (country code first)."""


@dataclass(frozen=True)
class _CallingCode:
    """What ``phonenumbers.parse`` consults for a ``+``-number of one country calling code."""

    national_prefix: re.Pattern[str] | None
    possible_lengths: frozenset[int]


_CALLING_CODES: dict[int, _CallingCode | None] = {}


def _e164_as_parsed(text: str) -> str | None:
    """For ``+`` and digits only, what ``phonenumbers`` makes of it (parse, possible, E.164),
    without its general parser (40 µs a number): the same country code (the first of 1-3
    leading digits that is one), and the number is kept as written when it cannot lose a
    national prefix, has no leading zero and has a possible length for that country. None
    whenever it would take another step (a refusal included): ``phonenumbers`` decides."""
    if _PLUS_DIGITS.fullmatch(text) is None:
        return None
    for size in (1, 2, 3):
        code = int(text[1 : 1 + size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = text[1 + size :]
    known = _CALLING_CODES.get(code)
    if known is None and code not in _CALLING_CODES:
        known = _CALLING_CODES[code] = _calling_code(code)
    if known is None or national[0] == "0" or len(national) not in known.possible_lengths:
        return None
    if known.national_prefix is not None and known.national_prefix.match(national):
        return None
    return text


def _calling_code(code: int) -> _CallingCode | None:
    """The metadata of a calling code's main region, as ``parse`` and ``is_possible_number`` read it."""
    region = phonenumbers.region_code_for_country_code(code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None or metadata.general_desc is None:
        return None
    desc = metadata.general_desc
    prefix = metadata.national_prefix_for_parsing
    return _CallingCode(
        re.compile(prefix) if prefix else None,
        frozenset(desc.possible_length or ()) | frozenset(desc.possible_length_local_only or ()),
    )


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
