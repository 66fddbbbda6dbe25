"""Mapping files: which column of an export is which identifier, trait or event property.

```yaml
kind: customers            # customers: one identify per row; events: one track per row
event: Order Completed     # events: the event name (or event_column: a column holding it)
id_column: order_line_id   # a stable row id for de-duplication (default: file hash + line)
timestamp_column: created_at
identifiers: {customer_id: "external:crm_id", email: email, mobile: phone, member: user_id}
traits: {first_name: firstName, tier: loyalty_tier, birthday: {trait: birthday, type: date}}
properties: {sku: sku, price: {property: price, type: float}, qty: {property: quantity, type: int}}
```
Without a mapping, a customers file is read by column name: ``email``, ``phone``,
``user_id``/``userId``, ``crm_id``… as identifiers, everything else as string traits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent

from app.errors import InvalidField, TooLarge
from app.vault.normalize import normalize_date

MAX_MAPPING_BYTES = 64 * 1024
"""A mapping names columns: a few KB. Larger texts are refused before they are parsed."""
MAX_NAME_LEN = 255

TYPES = ("string", "int", "float", "bool", "date", "datetime")
IDENTIFIER_KINDS = ("user_id", "anonymous_id", "email", "phone", "device_id", "wechat_openid", "wechat_unionid")
AUTO_IDENTIFIERS = {
    "user_id": "user_id",
    "userid": "user_id",
    "customer_id": "external:customer_id",
    "crm_id": "external:crm_id",
    "email": "email",
    "e-mail": "email",
    "邮箱": "email",
    "phone": "phone",
    "mobile": "phone",
    "手机": "phone",
    "手机号": "phone",
    "phone_number": "phone",
    "unionid": "wechat_unionid",
    "openid": "wechat_openid",
}


@dataclass(frozen=True)
class Column:
    name: str
    target: str
    type: str = "string"


@dataclass
class Mapping:
    kind: str = "customers"
    event: str | None = None
    event_column: str | None = None
    id_column: str | None = None
    timestamp_column: str | None = None
    identifiers: list[Column] = field(default_factory=list)
    traits: list[Column] = field(default_factory=list)
    properties: list[Column] = field(default_factory=list)
    auto: bool = False


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a mapping never needs them, and they make
    small texts expand into huge structures."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            raise InvalidField("YAML aliases are not allowed", field="mapping")
        return Composer.compose_node(self, parent, index)


def _name(value: Any, field: str) -> str:
    """A column, trait or property name: a short string (numbers are read as their text)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidField("must be a string", field=field)
    text = str(value)
    if not text.strip() or len(text) > MAX_NAME_LEN or "\x00" in text:
        raise InvalidField(f"must be 1 to {MAX_NAME_LEN} characters", field=field)
    return text


def _optional_name(raw: dict[str, Any], key: str) -> str | None:
    return None if raw.get(key) is None else _name(raw[key], key)


def _columns(spec: Any, key: str, section: str) -> list[Column]:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise InvalidField("must map column names to targets", field=section)
    cols = []
    for column, target in spec.items():
        name = _name(column, section)
        where = f"{section}.{name}" if len(name) <= 64 and name.isprintable() else section
        if isinstance(target, dict):
            ctype = target.get("type", "string")
            if ctype not in TYPES:
                raise InvalidField(f"type must be one of {', '.join(TYPES)}", field=f"{where}.type")
            cols.append(Column(name, _name(target.get(key, column), f"{where}.{key}"), ctype))
        else:
            cols.append(Column(name, _name(target, where)))
    return cols


def parse_mapping_text(text: str) -> Any:
    """The YAML document of a mapping, refused by name when too large or malformed."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MAPPING_BYTES:
        raise TooLarge(f"the mapping is larger than {MAX_MAPPING_BYTES // 1024} KB", field="mapping")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidField(f"is not valid YAML{where}", field="mapping") from exc
    except RecursionError as exc:
        raise InvalidField("is nested too deeply", field="mapping") from exc


def load_mapping(path: Path | None = None, text: str | None = None) -> Mapping:
    """Parse a mapping file (or text); None for both gives the by-column-name default."""
    if path is None and text is None:
        return Mapping(auto=True)
    raw = parse_mapping_text(text if text is not None else path.read_text(encoding="utf-8")) or {}  # type: ignore[union-attr]
    if not isinstance(raw, dict):
        raise InvalidField("must be a YAML mapping", field="mapping")
    kind = raw.get("kind", "customers")
    if kind not in ("customers", "events"):
        raise InvalidField("must be customers or events", field="kind")
    m = Mapping(
        kind=kind,
        event=_optional_name(raw, "event"),
        event_column=_optional_name(raw, "event_column"),
        id_column=_optional_name(raw, "id_column"),
        timestamp_column=_optional_name(raw, "timestamp_column"),
        identifiers=_columns(raw.get("identifiers"), "kind", "identifiers"),
        traits=_columns(raw.get("traits"), "trait", "traits"),
        properties=_columns(raw.get("properties"), "property", "properties"),
    )
    if m.kind == "events" and not (m.event or m.event_column):
        raise InvalidField("events need 'event' or 'event_column'", field="event")
    for col in m.identifiers:
        if col.target not in IDENTIFIER_KINDS and not col.target.startswith("external:"):
            raise InvalidField("is not a known identifier kind", field=f"identifiers.{col.name}"[:128])
    return m


async def load_mapping_async(text: str | None) -> Mapping:
    """:func:`load_mapping` off the event loop (YAML parsing is CPU work), size-capped first."""
    if text is None:
        return load_mapping()
    if len(text) > MAX_MAPPING_BYTES:  # refuse before handing megabytes to a thread
        raise TooLarge(f"the mapping is larger than {MAX_MAPPING_BYTES // 1024} KB", field="mapping")
    return await asyncio.to_thread(load_mapping, None, text)


def convert(value: Any, ctype: str, column: str) -> Any:
    """A cell converted to its declared type; empty cells are None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if ctype == "int":
            return int(str(value).strip().replace(",", ""))
        if ctype == "float":
            return float(str(value).strip().replace(",", ""))
        if ctype == "bool":
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "y", "是"):
                return True
            if text in ("0", "false", "no", "n", "否"):
                return False
            raise ValueError
        if ctype == "date":
            return normalize_date(value, column)
        if ctype == "datetime":
            from datetime import datetime

            return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")).isoformat()
    except ValueError as exc:
        raise InvalidField(f"is not a valid {ctype}", field=column) from exc
    return str(value).strip() if isinstance(value, str) else value


def row_to_message(m: Mapping, row: dict[str, Any], row_id: str) -> dict[str, Any]:
    """One Spec message for a row (identify for customers, track for events)."""
    identifiers = m.identifiers
    traits_cols, props_cols = m.traits, m.properties
    if m.auto:
        identifiers = [Column(c, AUTO_IDENTIFIERS[c.lower()]) for c in row if c and c.lower() in AUTO_IDENTIFIERS]
        taken = {c.name for c in identifiers}
        traits_cols = [Column(c, c) for c in row if c and c not in taken]
    msg: dict[str, Any] = {"type": "identify" if m.kind == "customers" else "track", "messageId": f"import:{row_id}"}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    for col in identifiers:
        value = convert(row.get(col.name), "string", col.name)
        if value is None:
            continue
        if col.target == "user_id":
            msg["userId"] = value
        elif col.target == "anonymous_id":
            msg["anonymousId"] = value
        elif col.target in ("email", "phone") or col.target in ("wechat_openid", "wechat_unionid"):
            traits[col.target] = value
        elif col.target == "device_id":
            context["device"] = {"id": value}
        else:
            context.setdefault("externalIds", []).append({"type": col.target.split(":", 1)[1], "id": value})
    for col in traits_cols:
        value = convert(row.get(col.name), col.type, col.name)
        if value is not None:
            traits[col.target] = value
    if m.timestamp_column and row.get(m.timestamp_column):
        msg["timestamp"] = convert(row[m.timestamp_column], "datetime", m.timestamp_column)
    if m.kind == "customers":
        msg["traits"] = traits
    else:
        msg["event"] = row.get(m.event_column) if m.event_column else m.event
        msg["properties"] = {c.target: convert(row.get(c.name), c.type, c.name) for c in props_cols}
        context["traits"] = traits  # email/phone on an order still identify the customer
    if context:
        msg["context"] = context
    return msg


_STRING_TARGETS = {"user_id": 0, "anonymous_id": 1, "email": 2, "phone": 2, "wechat_openid": 2, "wechat_unionid": 2}
_DEVICE, _EXTERNAL = 3, 4


def message_builder(m: Mapping) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """``row_to_message`` for one mapping, its columns decided once instead of for every row
    (same messages; an auto mapping, decided by each row's columns, uses ``row_to_message``)."""
    if m.auto or any(c.target not in IDENTIFIER_KINDS and ":" not in c.target for c in m.identifiers):
        return lambda row, row_id: row_to_message(m, row, row_id)
    mtype = "identify" if m.kind == "customers" else "track"
    idents = [
        (c.name, _STRING_TARGETS.get(c.target, _DEVICE if c.target == "device_id" else _EXTERNAL), c.target)
        for c in m.identifiers
    ]
    idents = [(name, code, target.split(":", 1)[1] if code == _EXTERNAL else target) for name, code, target in idents]
    traits_cols = [(c.name, c.target, c.type) for c in m.traits]
    props_cols = m.properties
    customers, ts_col = m.kind == "customers", m.timestamp_column

    def build(row: dict[str, Any], row_id: str) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": mtype, "messageId": f"import:{row_id}"}
        traits: dict[str, Any] = {}
        context: dict[str, Any] = {}
        for name, code, target in idents:
            value = row.get(name)
            if type(value) is str:
                value = value.strip()
                if not value:
                    continue
            elif value is None:
                continue
            else:
                value = convert(value, "string", name)
                if value is None:
                    continue
            if code == 2:
                traits[target] = value
            elif code == 0:
                msg["userId"] = value
            elif code == 1:
                msg["anonymousId"] = value
            elif code == _DEVICE:
                context["device"] = {"id": value}
            else:
                context.setdefault("externalIds", []).append({"type": target, "id": value})
        for name, target, ctype in traits_cols:
            value = row.get(name)
            plain = ctype == "string" and type(value) is str
            value = value.strip() or None if plain else convert(value, ctype, name)  # type: ignore[union-attr]
            if value is not None:
                traits[target] = value
        if ts_col and row.get(ts_col):
            msg["timestamp"] = convert(row[ts_col], "datetime", ts_col)
        if customers:
            msg["traits"] = traits
        else:
            msg["event"] = row.get(m.event_column) if m.event_column else m.event
            msg["properties"] = {c.target: convert(row.get(c.name), c.type, c.name) for c in props_cols}
            context["traits"] = traits
        if context:
            msg["context"] = context
        return msg

    return build
