"""The console's labels in English and Chinese: one catalog per area in ``labels/*.json``
(``{"key": {"en": "…", "zh": "…"}}``), the language from the toggle cookie or Accept-Language."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection

LANGUAGES = ("en", "zh")
LANGUAGE_COOKIE = "consentry_lang"
LABELS_DIR = Path(__file__).parent / "labels"


@cache
def catalog() -> dict[str, dict[str, str]]:
    """Every label of every catalog file (a key defined twice is an error)."""
    labels: dict[str, dict[str, str]] = {}
    for path in sorted(LABELS_DIR.glob("*.json")):
        for key, texts in json.loads(path.read_text(encoding="utf-8")).items():
            if key in labels:
                raise ValueError(f"{path.name}: label {key!r} is defined twice")
            labels[key] = texts
    return labels


def language(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """``zh`` or ``en``: the toggle cookie first, else the first of Accept-Language we speak."""
    chosen = connection.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for part in connection.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "en"


def translate(lang: str, key: str, **values: object) -> str:
    """The label in ``lang`` (English when missing), with ``{name}`` placeholders filled."""
    texts = catalog().get(key)
    if texts is None:
        return key
    text = texts.get(lang) or texts.get("en") or key
    return text.format(**values) if values else text
