"""The cheap pattern pass: the PII engine's pattern detectors without spaCy, for every
string value that arrives in an event, trait or import cell, and for every log line.

It reuses the recognizers of :mod:`app.pii.recognizers` (Chinese mobiles, resident ids
with their check digit, bank cards with Luhn, international phones checked with
libphonenumber, street addresses, Chinese names after a cue such as ``收货人``) and adds
the language-neutral ones the engine takes from presidio (email, IBAN with mod-97, IPv4/IPv6,
US SSN) as precompiled regexes. Strings are gated first, so most values cost a few
character tests: a detector runs only on text that has what it needs (``@``, seven
digits, a Han character, a dotted or coloned number). Names and places in English prose
need the NER model and stay with ``/v1/texts``.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass

from presidio_analyzer import EntityRecognizer, RecognizerResult

from app.pii.recognizers import (
    InternationalPhoneRecognizer,
    RegexRecognizer,
    chinese_recognizers,
    payment_card_recognizer,
)

CATEGORY = {
    "EMAIL_ADDRESS": "user.contact.email",
    "PHONE_NUMBER": "user.contact.phone_number",
    "CN_MOBILE": "user.contact.phone_number",
    "CREDIT_CARD": "user.financial.credit_card",
    "CN_BANK_CARD": "user.financial.bank_account",
    "IBAN_CODE": "user.financial.bank_account",
    "US_SSN": "user.government_id",
    "CN_RESIDENT_ID": "user.government_id",
    "CN_PASSPORT": "user.government_id",
    "IP_ADDRESS": "user.device.ip_address",
    "PERSON": "user.name",
    "STREET_ADDRESS": "user.contact.address",
    "WECHAT_ID": "user.social",
    "QQ_NUMBER": "user.social",
}
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
IBAN = re.compile(r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Z0-9])")
HAN = re.compile(r"[\u4e00-\u9fff]")
STREET_HINT = re.compile(r"\d.*\b[A-Za-z]{2,}", re.DOTALL)
MIN_LENGTH = 6
"""Shorter strings hold no detectable personal data (``a@b.cn`` is the shortest email)."""


@dataclass(frozen=True)
class Hit:
    entity: str
    start: int
    end: int

    @property
    def category(self) -> str:
        return CATEGORY.get(self.entity, "user.unknown")


def _iban_valid(value: str) -> bool:
    v = value.replace(" ", "")
    if not 15 <= len(v) <= 34:
        return False
    moved = v[4:] + v[:4]
    digits = "".join(str(int(c, 36)) for c in moved)
    return int(digits) % 97 == 1


def _ssn_valid(m: re.Match[str]) -> bool:
    area, group, serial = m.group(1), m.group(2), m.group(3)
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


class QuickScanner:
    """Pattern-only detection, built once per process (:func:`quick_scanner`)."""

    def __init__(self) -> None:
        cn: dict[str, EntityRecognizer] = {}
        for r in chinese_recognizers("zh"):
            cn[str(getattr(r, "name", ""))] = r
        self.digit_recognizers: list[EntityRecognizer] = [
            cn["CN_MOBILE:zh"],
            cn["CN_RESIDENT_ID:zh"],
            cn["CN_BANK_CARD:zh"],
            payment_card_recognizer("en"),
            InternationalPhoneRecognizer("en"),
        ]
        self.han_recognizers: list[EntityRecognizer] = [
            cn["CN_NAME_CONTEXT"],
            cn["CN_ADDRESS"],
            cn["WECHAT_ID:zh"],
            cn["QQ_NUMBER:zh"],
            cn["CN_PASSPORT:zh"],
        ]
        self.street = RegexRecognizer(
            "STREET_ADDRESS",
            r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][A-Za-z'.-]*\s+){0,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|"
            r"Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail|"
            r"Crescent|Close|Row|Alley)\b\.?",
            0.9,
            "en",
            flags=re.IGNORECASE,
        )

    def scan(self, text: str) -> list[Hit]:
        """Every finding in ``text`` (may overlap; callers wanting spans use :meth:`spans`)."""
        if len(text) < MIN_LENGTH:
            return []
        hits: list[Hit] = []
        if "@" in text:
            hits += [Hit("EMAIL_ADDRESS", m.start(), m.end()) for m in EMAIL.finditer(text)]
        digits = sum(map(str.isdigit, text))
        has_han = HAN.search(text) is not None
        if digits >= 7:
            for r in self.digit_recognizers:
                hits += [Hit(x.entity_type, x.start, x.end) for x in _run(r, text)]
            if "-" in text:
                hits += [Hit("US_SSN", m.start(), m.end()) for m in SSN.finditer(text) if _ssn_valid(m)]
            if digits >= 4 and any(c.isupper() for c in text):
                hits += [Hit("IBAN_CODE", m.start(), m.end()) for m in IBAN.finditer(text) if _iban_valid(m.group(0))]
        if digits >= 4 and "." in text:
            hits += [Hit("IP_ADDRESS", m.start(), m.end()) for m in IPV4.finditer(text) if _ip(m.group(0))]
        if text.count(":") >= 2:
            hits += [Hit("IP_ADDRESS", m.start(), m.end()) for m in IPV6.finditer(text) if _ipv6(m.group(0))]
        if digits and STREET_HINT.search(text):
            hits += [Hit(x.entity_type, x.start, x.end) for x in _run(self.street, text)]
        if has_han:
            for r in self.han_recognizers:
                hits += [Hit(x.entity_type, x.start, x.end) for x in _run(r, text)]
        return hits

    def category(self, text: str) -> str | None:
        """The category of the first finding in ``text``, or None."""
        hits = self.scan(text)
        return min(hits, key=lambda h: h.start).category if hits else None

    def spans(self, text: str) -> list[Hit]:
        """Non-overlapping findings, longest first where they overlap, in text order."""
        kept: list[Hit] = []
        for h in sorted(self.scan(text), key=lambda h: (h.start, -(h.end - h.start))):
            if not kept or h.start >= kept[-1].end:
                kept.append(h)
            elif h.end > kept[-1].end:
                kept[-1] = Hit(kept[-1].entity, kept[-1].start, h.end)
        return kept


def _run(recognizer: EntityRecognizer, text: str) -> list[RecognizerResult]:
    """A pattern recognizer on its own (no NLP artifacts: none of ours needs them)."""
    return list(recognizer.analyze(text, [], None))  # type: ignore[arg-type]


def _ip(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _ipv6(value: str) -> bool:
    if value.count(":") < 2 or len(value.strip(":")) < 3:
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


_scanner: QuickScanner | None = None
_building = threading.local()


def quick_scanner() -> QuickScanner:
    """The process's scanner (built at first use)."""
    global _scanner
    if _scanner is None:
        _building.active = True
        try:
            _scanner = QuickScanner()
        finally:
            _building.active = False
    return _scanner


def ready_scanner() -> QuickScanner | None:
    """The scanner, or None while this thread is building it (log lines written during
    the build are scrubbed by the plain email and phone patterns instead)."""
    if getattr(_building, "active", False):
        return None
    return quick_scanner()
