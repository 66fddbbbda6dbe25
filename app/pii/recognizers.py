"""Recognizers presidio lacks: Chinese identifiers, names and addresses; English street
addresses and international phone numbers.

Python's ``\\b`` treats Chinese characters as word characters, so digit runs are bounded
with ``(?<!\\d)``/``(?!\\d)`` lookarounds instead. Context words are matched in a window of
raw text before the candidate (a character tokenizer gives presidio no context to boost).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import phonenumbers
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from app.pii.checksums import luhn_valid, resident_id_valid, uscc_valid

SURNAMES_FILE = Path(__file__).with_name("zh_surnames.txt")


class RegexRecognizer(EntityRecognizer):
    """A regex with an optional validator and optional required context words before it."""

    def __init__(
        self,
        entity: str,
        pattern: str,
        score: float,
        language: str,
        *,
        validator: Callable[[str], bool] | None = None,
        context: tuple[str, ...] = (),
        context_required: bool = False,
        window: int = 12,
        group: int = 0,
        flags: int = 0,
        name: str | None = None,
    ) -> None:
        self.regex = re.compile(pattern, flags)
        self.score, self.validator, self.group = score, validator, group
        self.context_words, self.context_required, self.window = context, context_required, window
        super().__init__(supported_entities=[entity], supported_language=language, name=name or f"{entity}:{language}")

    def load(self) -> None:
        return None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        out = []
        lowered = text.lower()
        for m in self.regex.finditer(text):
            start, end = m.span(self.group)
            value = text[start:end]
            if self.validator is not None and not self.validator(value):
                continue
            score = self.score
            if self.context_words:
                before = lowered[max(0, start - self.window) : start]
                has_context = any(w in before for w in self.context_words)
                if self.context_required and not has_context:
                    continue
                if has_context:
                    score = min(1.0, score + 0.35)
            out.append(RecognizerResult(self.supported_entities[0], start, end, score))
        return out


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _cn_bank_card(value: str) -> bool:
    return luhn_valid(_digits(value))


def _surnames() -> str:
    names = [n.strip() for n in SURNAMES_FILE.read_text(encoding="utf-8").split() if n.strip()]
    return "|".join(sorted(names, key=len, reverse=True))


BANK_CARD = r"(?<!\d)(?:62\d{14,17}|\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?|\d{16,19})(?!\d)"
NAME_CUES = r"(?:我叫|我是|(?:姓名|名字|联系人|收件人|收货人|客户)[:：]?\s*)"
NAME_TITLES = r"(?:先生|女士|小姐|老师|经理|同学)"


def chinese_recognizers(language: str) -> list[EntityRecognizer]:
    """Recognizers for mainland identifiers, names and addresses (run on Chinese and mixed text)."""
    surname = f"(?:{_surnames()})"
    given = r"[\u4e00-\u9fa5]{1,2}"
    return [
        RegexRecognizer("CN_MOBILE", r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)", 0.85, language),
        RegexRecognizer(
            "CN_RESIDENT_ID", r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])", 0.95, language, validator=resident_id_valid
        ),
        RegexRecognizer(
            "CN_USCC",
            r"(?<![0-9A-Z])[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}(?![0-9A-Z])",
            0.9,
            language,
            validator=uscc_valid,
        ),
        RegexRecognizer(
            "CN_BANK_CARD",
            BANK_CARD,
            0.6,
            language,
            validator=_cn_bank_card,
            context=("卡号", "银行卡", "储蓄卡", "信用卡", "card", "账号", "卡"),
        ),
        RegexRecognizer(
            "CN_PASSPORT",
            r"(?<![A-Za-z0-9])[EGDSPHegdsph]\d{8}(?!\d)",
            0.5,
            language,
            context=("护照", "passport"),
            context_required=True,
        ),
        RegexRecognizer(
            "WECHAT_ID",
            r"(?<![A-Za-z0-9_-])[A-Za-z][A-Za-z0-9_-]{5,19}(?![A-Za-z0-9_-])",
            0.6,
            language,
            context=("微信", "wechat", "weixin", "vx", "wx"),
            context_required=True,
            window=8,
        ),
        RegexRecognizer(
            "QQ_NUMBER",
            r"(?<!\d)[1-9]\d{4,11}(?!\d)",
            0.6,
            language,
            context=("qq", "扣扣"),
            context_required=True,
            window=8,
        ),
        RegexRecognizer("PERSON", rf"{NAME_CUES}({surname}{given})", 0.85, language, group=1, name="CN_NAME_CONTEXT"),
        RegexRecognizer(
            "PERSON", rf"({surname}[\u4e00-\u9fa5]{{0,2}}?){NAME_TITLES}", 0.75, language, group=1, name="CN_NAME_TITLE"
        ),
        RegexRecognizer(
            "STREET_ADDRESS",
            r"(?:[\u4e00-\u9fa5]{2,8}?(?:省|自治区|特别行政区))?(?:[\u4e00-\u9fa5]{2,8}?(?:市|州|盟))?"
            r"[\u4e00-\u9fa5]{1,8}?(?:区|县|旗|镇|乡)"
            r"(?:[\u4e00-\u9fa5A-Za-z0-9]{1,15}?(?:路|街|道|巷|弄|胡同|大道|村))?"
            r"(?:\s*\d{1,5}(?:-\d{1,5})?号)?(?:\s*[\dA-Za-z\-]{1,6}(?:栋|幢|楼|单元|室|号楼))*",
            0.7,
            language,
            validator=lambda v: sum(v.count(k) for k in "省市区县镇路街道巷弄号栋楼室") >= 2,
            name="CN_ADDRESS",
        ),
    ]


STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail|Crescent|Close|Row|Alley)"
)


def english_recognizers(language: str) -> list[EntityRecognizer]:
    """Street addresses and phone numbers in international formats."""
    return [
        RegexRecognizer(
            "STREET_ADDRESS",
            rf"\b\d{{1,6}}[A-Za-z]?\s+(?:[A-Z][A-Za-z'.-]*\s+){{0,4}}{STREET_SUFFIX}\b\.?"
            r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w-]+)?",
            0.9,
            language,
            flags=re.IGNORECASE,
            name="StreetAddressRecognizer",
        ),
        InternationalPhoneRecognizer(language),
        payment_card_recognizer(language),
    ]


POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE
POSSIBLE_LOCAL = phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY


class InternationalPhoneRecognizer(EntityRecognizer):
    """Phone numbers in the common written formats, checked with libphonenumber.

    Numbers written with ``+``/``00`` are checked against their own country; others only
    against a few home regions, so that order numbers, postcodes and SSNs stay out.
    """

    REGIONS = ("US", "GB", "CN", "IN", "DE", "FR", "FI", "BE", "AU")
    CANDIDATE = re.compile(r"(?<![\w+.:-])(?:\+|00)?\(?\d[\d \t().-]{5,18}\d(?![\w:]|\.\d)")
    EXTENSION = re.compile(r"\s*(?:x|ext\.?|#)\s*\d{1,5}\b", re.IGNORECASE)
    CONTEXT = (
        "phone",
        "tel",
        "call",
        "mobile",
        "cell",
        "fax",
        "office",
        "home",
        "number",
        "text me",
        "sms",
        "whatsapp",
        "registered",
        "messages to",
        "reach me",
        "answering",
        "电话",
        "手机",
    )
    NOT_CONTEXT = re.compile(r"address|apt\.?|suite|card|\bcc\b|iban|account|zip|postcode|postal", re.IGNORECASE)
    STREET_AFTER = re.compile(
        rf"\s+(?:{STREET_SUFFIX}|Rue|Via|Calle|Rua|Strasse|Straße|Gade|Vej|Boulevard)\b", re.IGNORECASE
    )
    NOT_PHONE = re.compile(r"\d{4}-\d{2}-\d{2}.*|(?:\d{1,3}\.){3}\d{1,3}|\d{3}-\d{2}-\d{4}|\d+\.\d+")

    def __init__(self, language: str) -> None:
        super().__init__(
            supported_entities=["PHONE_NUMBER"], supported_language=language, name=f"InternationalPhone:{language}"
        )

    def load(self) -> None:
        return None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        out = []
        for m in self.CANDIDATE.finditer(text):
            raw = m.group(0).rstrip()
            digits = _digits(raw)
            if not 7 <= len(digits) <= 15 or self.NOT_PHONE.fullmatch(raw):
                continue  # dates, IPv4 addresses, SSNs and decimals are not phone numbers
            international = raw.startswith(("+", "00"))
            candidate = "+" + raw[2:] if raw.startswith("00") else raw
            end = m.start() + len(raw)
            ext = self.EXTENSION.match(text, end)
            if ext:
                end = ext.end()
            near = text[max(0, m.start() - 24) : end + 12].lower()
            if self.NOT_CONTEXT.search(text[max(0, m.start() - 24) : m.start()]) or self.STREET_AFTER.match(text, end):
                continue  # house numbers and postcodes in addresses, card numbers
            has_context = any(w in near for w in self.CONTEXT)
            for region in (None,) if international else self.REGIONS:
                try:
                    number = phonenumbers.parse(candidate, region)
                except phonenumbers.NumberParseException:
                    continue
                if phonenumbers.is_valid_number(number):
                    out.append(RecognizerResult("PHONE_NUMBER", m.start(), end, 0.75))
                    break
                reason = phonenumbers.is_possible_number_with_reason(number)
                if has_context and reason in (POSSIBLE, POSSIBLE_LOCAL):
                    # a local or unassigned number, but labelled as a phone by the words around it
                    out.append(RecognizerResult("PHONE_NUMBER", m.start(), end, 0.6))
                    break
        return out


CARD = r"(?<![\d-])[2-6]\d{3}(?:[ -]?\d{4}){2}(?:[ -]?\d{0,7})(?![\d-])"


def _card(value: str) -> bool:
    digits = _digits(value)
    return 12 <= len(digits) <= 19 and luhn_valid(digits)


def payment_card_recognizer(language: str) -> EntityRecognizer:
    """Luhn-valid card numbers of every network (presidio's pattern misses 2-series and 19-digit ones)."""
    return RegexRecognizer(
        "CREDIT_CARD",
        CARD,
        0.6,
        language,
        validator=_card,
        context=("card", "credit", "debit", "visa", "mastercard", "amex", "卡"),
        name=f"PaymentCard:{language}",
    )


class NameGazetteerRecognizer(EntityRecognizer):
    """Given name followed by a family name, from Faker's name lists for many locales
    (catches lower-case and foreign names a small NER model misses)."""

    LOCALES = (
        "en_US",
        "en_GB",
        "de_DE",
        "fr_FR",
        "it_IT",
        "es_ES",
        "da_DK",
        "nl_NL",
        "pl_PL",
        "sv_SE",
        "no_NO",
        "cs_CZ",
        "hu_HU",
        "fi_FI",
        "pt_PT",
        "en_IN",
        "is_IS",
        "et_EE",
    )
    WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
    STOP = frozenset(
        {
            "will",
            "may",
            "june",
            "april",
            "august",
            "grant",
            "bill",
            "mark",
            "rose",
            "summer",
            "star",
            "the",
            "and",
            "my",
            "is",
            "in",
            "on",
            "at",
            "to",
            "of",
            "a",
            "an",
            "by",
            "for",
            "new",
            "long",
            "young",
            "king",
            "street",
            "road",
            "lane",
            "park",
            "hill",
        }
    )

    def __init__(self, language: str) -> None:
        from faker import Faker

        first: set[str] = set()
        last: set[str] = set()
        for loc in self.LOCALES:
            provider = next(p for p in Faker(loc).providers if "person" in type(p).__module__)
            first |= {n.lower() for n in getattr(provider, "first_names", ())}
            last |= {n.lower() for n in getattr(provider, "last_names", ())}
        self.first, self.last = first - self.STOP, last - self.STOP
        super().__init__(supported_entities=["PERSON"], supported_language=language, name=f"NameGazetteer:{language}")

    def load(self) -> None:
        return None

    COMMON = frozenset(
        {
            "grace",
            "hope",
            "faith",
            "joy",
            "iris",
            "amber",
            "ruby",
            "pearl",
            "dawn",
            "sky",
            "river",
            "china",
            "paris",
            "london",
            "jersey",
            "georgia",
            "virginia",
            "carolina",
            "austin",
            "dallas",
            "lincoln",
            "jordan",
            "chase",
            "hunter",
            "miles",
            "price",
            "page",
            "guy",
            "sunday",
            "monday",
            "friday",
            "january",
            "march",
            "sale",
            "thank",
            "thanks",
            "please",
            "hello",
            "what",
            "when",
        }
    )
    CUES = re.compile(
        r"(?:my name is|name:|calls? me|i'm|i am|hi|hello|dear|tell|told|said|asked|named|thanks,?)\s+$", re.IGNORECASE
    )

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        words = list(self.WORD.finditer(text))
        out = []
        for i, a in enumerate(words):
            first = a.group(0)
            if first.lower() not in self.first:
                continue
            j = i + 1
            if j < len(words) and len(words[j].group(0)) == 1 and text[words[j].end() : words[j].end() + 1] in ". ":
                j += 1  # a middle initial
            b = words[j] if j < len(words) else None
            if b is not None and not text[a.end() : b.start()].strip(" .") and "\\" not in text[a.end() : b.start()]:
                last = b.group(0)
                known = last.lower() in self.last
                capitalised = first[0].isupper() and last[0].isupper() and last.lower() not in self.STOP
                if known or capitalised:
                    out.append(RecognizerResult("PERSON", a.start(), b.end(), 0.75 if known else 0.6))
                    continue
            if first[0].isupper() and self.CUES.search(text[max(0, a.start() - 16) : a.start()]):
                out.append(RecognizerResult("PERSON", a.start(), a.end(), 0.6))
            elif first[0].isupper() and len(first) > 3 and first.lower() not in self.COMMON:
                out.append(RecognizerResult("PERSON", a.start(), a.end(), 0.45))  # a known given name alone
        return out
