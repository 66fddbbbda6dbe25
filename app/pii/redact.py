"""Redaction with stable typed placeholders: the same value gets the same ``<TYPE_n>``."""

from __future__ import annotations

from dataclasses import dataclass

from app.pii.engine import Finding


@dataclass(frozen=True)
class Redaction:
    placeholder: str
    entity_type: str
    value: str


def redact(text: str, findings: list[Finding]) -> tuple[str, list[Redaction]]:
    """The text with each finding replaced, and the distinct (placeholder, type, value) triples."""
    numbers: dict[str, int] = {}
    by_value: dict[tuple[str, str], Redaction] = {}
    parts, pos = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        key = (f.entity_type, f.text)
        if key not in by_value:
            numbers[f.entity_type] = numbers.get(f.entity_type, 0) + 1
            by_value[key] = Redaction(f"<{f.entity_type}_{numbers[f.entity_type]}>", f.entity_type, f.text)
        parts += [text[pos : f.start], by_value[key].placeholder]
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), list(by_value.values())


def restore(redacted: str, values: dict[str, str]) -> str:
    """Put the original values back (``values`` maps placeholder to value)."""
    for placeholder, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        redacted = redacted.replace(placeholder, value)
    return redacted
