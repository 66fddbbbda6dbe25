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
    ]


class InternationalPhoneRecognizer(EntityRecognizer):
    """Phone numbers anywhere in the world (libphonenumber), in the common written formats."""

    REGIONS = ("US", "GB", "CN", "DE", "FR", "IN", "CA", "AU", "JP", "SG", "HK", "TW", "BR", "ES", "IT", "NL", "IE")
    CANDIDATE = re.compile(r"(?<![\w+])(?:\+|00)?\(?\d[\d\s().-]{6,18}\d(?![\w])")

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
            raw = m.group(0).strip()
            digits = _digits(raw)
            if not 7 <= len(digits) <= 15 or re.fullmatch(r"\d{4}-\d{2}-\d{2}|(?:\d{1,3}\.){3}\d{1,3}", raw):
                continue  # dates and IPv4 addresses are not phone numbers
            for region in self.REGIONS:
                try:
                    number = phonenumbers.parse(raw.replace("00", "+", 1) if raw.startswith("00") else raw, region)
                except phonenumbers.NumberParseException:
                    continue
                if phonenumbers.is_valid_number(number):
                    out.append(RecognizerResult("PHONE_NUMBER", m.start(), m.start() + len(m.group(0).rstrip()), 0.75))
                    break
        return out
