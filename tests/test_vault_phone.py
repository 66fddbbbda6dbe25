"""Phone numbers already in E.164 form skip phonenumbers' general parser and still get exactly
what it gives (the same normal form, the same refusals)."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from app.errors import InvalidField
from app.vault import normalize
from app.vault.normalize import normalize_phone


def _by_phonenumbers(text: str, region: str) -> str:
    """What ``normalize_phone`` gave before the fast path: phonenumbers alone."""
    try:
        number = phonenumbers.parse(text.strip(), region)
    except phonenumbers.NumberParseException:
        return "refused: not a phone number"
    if not phonenumbers.is_possible_number(number):
        return "refused: not a possible phone number"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={number.extension}" if number.extension else e164


def _normalized(text: str, region: str) -> str:
    try:
        return normalize_phone(text, region)
    except InvalidField as exc:
        return "refused: " + str(exc.args[0]).removeprefix("is ")


def _examples() -> list[str]:
    """Every region's example numbers of every type in E.164 form, and each with one digit changed."""
    rng = random.Random(9)
    types = [t for t in vars(PhoneNumberType).values() if isinstance(t, int) and t >= 0]
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in types:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            digits = list(e164[1:])
            for _ in range(3):
                changed = digits.copy()
                changed[rng.randrange(len(str(example.country_code)), len(digits))] = rng.choice("0123456789")
                out.append("+" + "".join(changed))
            out.append(e164)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            out.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return sorted(set(out))


ODD_FORMS = [
    "+14155550123",
    " +14155550123 ",
    "+1 415 555 0123",
    "+1-415-555-0123",
    "(415) 555-0123",
    "4155550123",
    "+14155550123 ext. 12",
    "+14155550123;ext=12",
    "+114155550123",  # a national prefix after the country code
    "+4407911123456",  # the UK's trunk 0 written after +44
    "+447911123456",
    "+390612345678",  # Italy: the leading zero is part of the number
    "+3906123456789012",
    "+8613812345678",
    "+86013812345678",
    "+861381234567",
    "+0014155550123",
    "+999123456789",  # no such country code
    "+1415555",
    "+12",
    "+",
    "+1415555012345678901",
    "＋14155550123",  # full-width plus
    "+١٤١٥٥٥٥٠١٢٣",  # Arabic-Indic digits
    "tel:+1-415-555-0123",
    "+80012345678",  # international freephone (non-geographic)
    "+88213912345",
    "+979123456789",
    "+7 912 345 67 89",
    "+79123456789",
    "+89123456789",
    "abc",
    "",
]


@pytest.mark.parametrize("region", ["US", "CN", "GB", "IT", "DE"])
def test_phone_numbers_get_what_phonenumbers_gives_whatever_their_form(region: str) -> None:
    forms = ODD_FORMS + _examples()
    differ = [(f, _by_phonenumbers(f, region), _normalized(f, region)) for f in forms]
    assert [d for d in differ if d[1] != d[2]] == []
    fast = sum(normalize._e164_as_parsed(f.strip()) is not None for f in forms)
    assert fast > len(forms) // 2  # most E.164 examples took the fast path


def test_random_plus_digit_strings_get_what_phonenumbers_gives() -> None:
    rng = random.Random(3)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    forms = []
    for _ in range(20_000):
        prefix = str(rng.choice(codes)) if rng.random() < 0.8 else ""
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 15)))
        forms.append("+" + prefix + rng.choice(["", "0", "1", "00", "8"]) + body)
    assert [(f, a) for f in forms if (a := _by_phonenumbers(f, "US")) != _normalized(f, "US")] == []
