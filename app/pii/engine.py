"""The PII detection engine: presidio-analyzer, fully offline, English and Chinese.

English runs presidio's recognizers with a spaCy NER model (``CONSENTRY_NER_MODEL``,
loaded by installed package name or path, never downloaded) plus street addresses and
international phone numbers. Chinese runs on a blank ``zh`` pipeline with the recognizers
in ``app.pii.recognizers`` plus the language-neutral ones (email, cards, IBAN, IP). The
language is chosen per message (any Han character: Chinese, which also covers mixed text).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # never fetch the suffix list

import spacy
import structlog
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from app.pii.recognizers import NameGazetteerRecognizer, RegexRecognizer, chinese_recognizers, english_recognizers

log = structlog.get_logger("consentry.pii")
logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # unmapped spaCy labels are dropped by us
HAN = re.compile(r"[\u4e00-\u9fff]")
ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "PERSON",
    "LOCATION",
    "STREET_ADDRESS",
    "CN_MOBILE",
    "CN_RESIDENT_ID",
    "CN_BANK_CARD",
    "CN_PASSPORT",
    "CN_USCC",
    "WECHAT_ID",
    "QQ_NUMBER",
)
THRESHOLD = 0.4
EMAIL_IN_CJK = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
"""Emails inside Chinese text: the stock pattern swallows a Chinese label before the address."""
PIPE_EXCLUDE = ["parser", "lemmatizer", "tagger", "attribute_ruler", "senter", "morphologizer"]


@dataclass(frozen=True)
class Finding:
    entity_type: str
    start: int
    end: int
    score: float
    text: str


def detect_language(text: str) -> str:
    return "zh" if HAN.search(text) else "en"


def _blank_pipeline(lang: str, nlp_dir: Path) -> str:
    path = nlp_dir / f"blank-{lang}"
    if not (path / "config.cfg").exists():
        nlp_dir.mkdir(parents=True, exist_ok=True)
        spacy.blank(lang).to_disk(path)
    return str(path)


def resolve_ner_model(name: str, nlp_dir: Path) -> tuple[str, bool]:
    """(model to load, has NER). A missing model falls back to patterns only, loudly."""
    if name and (spacy.util.is_package(name) or Path(name).exists()):
        return name, True
    if name:
        log.warning(
            "ner_model_missing",
            model=name,
            hint="install it (it is pinned in pyproject.toml) or set CONSENTRY_NER_MODEL; "
            "names and places will not be detected, patterns still are",
        )
    return _blank_pipeline("en", nlp_dir), False


def _ner_results(recognizer: SpacyRecognizer, text: str, artifacts: NlpArtifacts) -> list[RecognizerResult]:
    return list(recognizer.analyze(text, ["PERSON", "LOCATION"], artifacts))


class PiiEngine:
    """Analyse texts for personal data; build once per process (``pii_engine()``)."""

    def __init__(self, ner_model: str, nlp_dir: Path) -> None:
        model, self.has_ner = resolve_ner_model(ner_model, nlp_dir)
        self.model = model if self.has_ner else "patterns-only"
        nlp_engine = SpacyNlpEngine(
            models=[
                {"lang_code": "en", "model_name": model},
                {"lang_code": "zh", "model_name": _blank_pipeline("zh", nlp_dir)},
            ]
        )
        nlp_engine.nlp = {  # type: ignore[assignment]
            "en": spacy.load(model, exclude=PIPE_EXCLUDE),
            "zh": spacy.load(_blank_pipeline("zh", nlp_dir)),
        }
        registry = RecognizerRegistry(supported_languages=["en", "zh"])
        en: list[EntityRecognizer] = [
            EmailRecognizer(),
            CreditCardRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
            UsSsnRecognizer(),
            *english_recognizers("en"),
        ]
        if self.has_ner:
            en += [SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]), NameGazetteerRecognizer("en")]
        zh: list[EntityRecognizer] = [
            RegexRecognizer("EMAIL_ADDRESS", EMAIL_IN_CJK, 1.0, "zh", name="EmailRecognizer:zh"),
            CreditCardRecognizer(supported_language="zh"),
            IbanRecognizer(supported_language="zh"),
            IpRecognizer(supported_language="zh"),
            *chinese_recognizers("zh"),
            *english_recognizers("zh"),
        ]
        for r in [*en, *zh]:
            registry.add_recognizer(r)
        self.analyzer = AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en", "zh"])
        self.entities = {
            lang: [e for e in ENTITIES if e in self.analyzer.get_supported_entities(lang)] for lang in ("en", "zh")
        }
        self.nlp = nlp_engine

    def analyze(self, text: str, language: str | None = None) -> list[Finding]:
        return self.analyze_many([text], language)[0]

    def analyze_many(
        self, texts: Sequence[str], language: str | None = None, batch_size: int = 64
    ) -> list[list[Finding]]:
        """Findings per text, overlaps resolved (highest score, then longest span wins)."""
        out: list[list[Finding]] = [[] for _ in texts]
        by_lang: dict[str, list[int]] = {"en": [], "zh": []}
        for i, t in enumerate(texts):
            by_lang[language or detect_language(t)].append(i)
        for lang, idx in by_lang.items():
            if not idx:
                continue
            # cheap pre-filter: without digits, '@' or capitals an English text has nothing we can find
            needs_nlp = [i for i in idx if lang == "zh" or _worth_nlp(texts[i])]
            pipeline = self.nlp.nlp[lang]  # type: ignore[index]
            # escaped line breaks (exports, logs) read as real ones; same length, so offsets hold
            plain = {i: texts[i].replace("\\n", "\n ").replace("\\t", "\t ") for i in needs_nlp}
            docs = pipeline.pipe([plain[i] for i in needs_nlp], batch_size=batch_size)
            for i, doc in zip(needs_nlp, docs, strict=True):
                artifacts = self.nlp._doc_to_nlp_artifact(doc, lang)
                results = self.analyzer.analyze(
                    plain[i], language=lang, entities=list(ENTITIES), nlp_artifacts=artifacts, score_threshold=THRESHOLD
                )
                out[i] = resolve_overlaps(texts[i], results)
        return out


def _worth_nlp(text: str) -> bool:
    return any(c.isdigit() or c == "@" or c.isupper() for c in text)


def resolve_overlaps(text: str, results: Iterable[RecognizerResult]) -> list[Finding]:
    kept: list[RecognizerResult] = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        if r.entity_type not in ENTITIES:
            continue
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(r)
    return [
        Finding(r.entity_type, r.start, r.end, round(r.score, 3), text[r.start : r.end])
        for r in sorted(kept, key=lambda r: r.start)
    ]


@lru_cache(maxsize=2)
def _engine(ner_model: str, nlp_dir: str) -> PiiEngine:
    return PiiEngine(ner_model, Path(nlp_dir))


def pii_engine() -> PiiEngine:
    """The process's engine for the configured model (built at first use, ~1-2 s)."""
    from app.settings import get_settings

    s = get_settings()
    return _engine(s.ner_model, str(s.nlp_dir.resolve()))
