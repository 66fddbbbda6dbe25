"""The segment builder's form: a condition tree as flat form fields, and back.

Each node of the builder has a path (``t`` the root, ``t.0`` its first child, ``t.0.2`` …)
and its fields are named ``{path}.{field}``: ``kind`` (``all``/``any`` for a group, else a
condition kind), ``not`` (``1`` when negated) and the kind's own fields (``FIELDS``). The
form is read leniently into ``Box`` values (a half-filled condition is kept as typed, so
the page can be re-rendered while the marketer edits), edited by ``edit`` (add, remove,
group), and turned into the segment tree by ``to_tree``, which names the form path of a
missing or malformed field (never the value). ``from_tree`` loads a saved segment's tree;
what the form has no fields for (funnels, accounts, products, several ``where`` rows…)
stays editable as a ``json`` condition. The segments service checks the tree itself.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import InvalidField

GROUPS = ("all", "any")
LEAVES = ("trait", "computed", "event", "consent", "segment", "age", "tag", "json")
FIELDS: dict[str, tuple[str, ...]] = {
    "trait": ("name", "op", "value"),
    "computed": ("name", "op", "value"),
    "event": ("name", "wprop", "wop", "wvalue", "count_op", "count", "within"),
    "consent": ("purpose", "state"),
    "segment": ("segment",),
    "age": ("low", "high"),
    "tag": ("tag",),
    "json": ("value",),
}
OPS: tuple[str, ...] = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "contains")
OPS += ("starts_with", "ends_with", "before", "after", "date_between", "includes", "exists")
DEFAULTS: dict[str, dict[str, str]] = {
    "trait": {"op": "eq"},
    "computed": {"op": "gte"},
    "event": {"wop": "eq", "count_op": "gte", "count": "1", "within": "90"},
    "consent": {"state": "granted"},
    "age": {"low": "18", "high": "30"},
}
MAX_BOXES = 200
PATH = re.compile(r"^t(\.\d{1,3}){0,16}$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass
class Box:
    """One node of the builder as the form holds it (values as typed)."""

    kind: str
    negated: bool = False
    values: dict[str, str] = field(default_factory=dict)
    children: list[Box] = field(default_factory=list)

    def value(self, name: str) -> str:
        return self.values.get(name, "").strip()


def new_box(kind: str) -> Box:
    """An empty node of a kind (groups start with no conditions)."""
    if kind not in GROUPS + LEAVES:
        raise InvalidField(f"expects one of {', '.join(GROUPS + LEAVES)}", field="act")
    return Box(kind, values=dict(DEFAULTS.get(kind, {})))


# --- form -> boxes (lenient) --------------------------------------------------------------


def read_form(form: Mapping[str, str]) -> Box:
    """The builder's boxes from its form fields (unknown fields ignored; no field: an empty ``all``)."""
    count = [0]

    def read(path: str, depth: int) -> Box:
        count[0] += 1
        kind = form.get(f"{path}.kind", "all")
        if kind not in GROUPS + LEAVES or count[0] > MAX_BOXES or depth > 16:
            raise InvalidField("is not a condition the builder knows", field=f"{path}.kind")
        box = Box(kind, form.get(f"{path}.not") == "1")
        if kind in GROUPS:
            n = 0
            while f"{path}.{n}.kind" in form:
                box.children.append(read(f"{path}.{n}", depth + 1))
                n += 1
        else:
            box.values = {k: form.get(f"{path}.{k}", "")[:2000] for k in FIELDS[kind]}
        return box

    return read("t", 0)


def fields_of(box: Box, path: str = "t") -> dict[str, str]:
    """The form fields a tree of boxes is rendered with (the inverse of ``read_form``)."""
    out = {f"{path}.kind": box.kind}
    if box.negated:
        out[f"{path}.not"] = "1"
    for k, v in box.values.items():
        out[f"{path}.{k}"] = v
    for n, child in enumerate(box.children):
        out |= fields_of(child, f"{path}.{n}")
    return out


# --- structural edits ----------------------------------------------------------------------


def _locate(root: Box, path: str) -> tuple[Box | None, int, Box]:
    """(parent, index in parent, node) at a path; the root has no parent."""
    if not PATH.match(path):
        raise InvalidField("expects a builder path", field="act")
    parent, index, node = None, -1, root
    for part in path.split(".")[1:]:
        i = int(part)
        if node.kind not in GROUPS or i >= len(node.children):
            raise InvalidField("names no condition of the builder", field="act")
        parent, index, node = node, i, node.children[i]
    return parent, index, node


def edit(root: Box, act: str) -> Box:
    """Apply one builder action: ``add:PATH:KIND`` (a condition or group inside the group at
    PATH), ``remove:PATH``, ``group:PATH`` (wrap a condition in an ``all`` group), ``not:PATH``
    (negate or un-negate)."""
    verb, _, rest = act.partition(":")
    path, _, kind = rest.partition(":")
    parent, index, node = _locate(root, path)
    if verb == "add":
        if node.kind not in GROUPS:
            raise InvalidField("conditions are added to a group", field="act")
        if _size(root) >= MAX_BOXES:
            raise InvalidField(f"a tree has at most {MAX_BOXES} conditions", field="act")
        node.children.append(new_box(kind))
    elif verb == "remove":
        if parent is None:
            return Box("all")
        del parent.children[index]
    elif verb == "group":
        wrapped = Box("all", children=[node])
        if parent is None:
            return wrapped
        parent.children[index] = wrapped
    elif verb == "not":
        node.negated = not node.negated
    else:
        raise InvalidField("expects add, remove, group or not", field="act")
    return root


def _size(box: Box) -> int:
    return 1 + sum(_size(c) for c in box.children)


# --- boxes -> tree (strict) -----------------------------------------------------------------


def to_tree(box: Box, path: str = "t") -> dict[str, Any]:
    """The segment tree the boxes describe; a missing or malformed field is a 422 naming its
    form path (``t.1.value``). An empty group is refused (the tree needs a condition)."""
    if box.kind in GROUPS:
        if not box.children:
            raise InvalidField("add a condition to this group", field=f"{path}.kind")
        items = [to_tree(c, f"{path}.{n}") for n, c in enumerate(box.children)]
        node: dict[str, Any] = {box.kind: items}
    else:
        node = _LEAF[box.kind](box, path)
    return {"not": node} if box.negated else node


def _need(box: Box, name: str, path: str) -> str:
    v = box.value(name)
    if not v:
        raise InvalidField("is required", field=f"{path}.{name}")
    return v


def _whole(box: Box, name: str, path: str, required: bool = True) -> int | None:
    v = box.value(name)
    if not v and not required:
        return None
    if not re.fullmatch(r"\d{1,9}", v):
        raise InvalidField("expects a whole number", field=f"{path}.{name}")
    return int(v)


def _num(text: str, at: str) -> int | float:
    if not NUMBER.match(text):
        raise InvalidField("expects a number", field=at)
    n = float(text)
    return int(n) if n.is_integer() and math.isfinite(n) and abs(n) < 2**53 else n


def _scalar(text: str) -> str | int | float | bool:
    """A typed value: a number when it reads as one, true/false, else the text (quotes keep text)."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if NUMBER.match(text):
        return _num(text, "")
    if text in ("true", "false"):
        return text == "true"
    return text


def _operand(op: str, text: str, at: str) -> Any:
    """The value of a comparison from its text, typed by the operator."""
    parts = [p.strip() for p in text.split(",")]
    if op in ("gt", "gte", "lt", "lte"):
        return _num(text, at)
    if op == "between":
        if len(parts) != 2:
            raise InvalidField("expects two numbers separated by a comma", field=at)
        return [_num(p, at) for p in parts]
    if op == "date_between":
        if len(parts) != 2:
            raise InvalidField("expects two dates separated by a comma", field=at)
        return parts
    if op in ("in", "not_in"):
        given = [p for p in parts if p]
        values = [_scalar(p) for p in given]
        if all(isinstance(v, int | float) for v in values):
            return values
        return [v if isinstance(v, str) else p for v, p in zip(values, given, strict=True)]
    if op == "exists":
        if text not in ("true", "false"):
            raise InvalidField("expects true or false", field=at)
        return text == "true"
    if op in ("eq", "ne", "includes"):
        return _scalar(text)
    return text


def _op(box: Box, name: str, path: str) -> str:
    op = box.value(name)
    if op not in OPS:
        raise InvalidField(f"expects one of {', '.join(OPS)}", field=f"{path}.{name}")
    return op


def _compare(box: Box, path: str, key: str) -> dict[str, Any]:
    op = _op(box, "op", path)
    value = box.value("value") if op != "exists" else box.value("value") or "true"
    if not value and op not in ("eq", "ne"):
        raise InvalidField("is required", field=f"{path}.value")
    return {key: _need(box, "name", path), op: _operand(op, value, f"{path}.value")}


def _event(box: Box, path: str) -> dict[str, Any]:
    node: dict[str, Any] = {"event": _need(box, "name", path)}
    if box.value("wprop"):
        wop = _op(box, "wop", path)
        node["where"] = {box.value("wprop"): {wop: _operand(wop, box.value("wvalue"), f"{path}.wvalue")}}
    count = _whole(box, "count", path, required=False)
    if count is not None and (count, box.value("count_op")) != (1, "gte"):
        cop = box.value("count_op")
        if cop not in ("gte", "lte"):
            raise InvalidField("expects gte or lte", field=f"{path}.count_op")
        node["count"] = {cop: count}
    days = _whole(box, "within", path, required=False)
    if days is not None:
        node["within"] = {"days": days}
    return node


def _age(box: Box, path: str) -> dict[str, Any]:
    low, high = _whole(box, "low", path, required=False), _whole(box, "high", path, required=False)
    if low is None and high is None:
        raise InvalidField("give a lowest or highest age", field=f"{path}.low")
    if low is not None and high is not None:
        return {"age": {"between": [low, high]}}
    return {"age": {"gte": low} if low is not None else {"lte": high}}


def _json(box: Box, path: str) -> dict[str, Any]:
    try:
        node = json.loads(_need(box, "value", path))
    except ValueError:
        raise InvalidField("expects a JSON condition", field=f"{path}.value") from None
    if not isinstance(node, dict):
        raise InvalidField("expects a JSON condition object", field=f"{path}.value")
    return node


_LEAF = {
    "trait": lambda b, p: _compare(b, p, "trait"),
    "computed": lambda b, p: _compare(b, p, "computed"),
    "event": _event,
    "consent": lambda b, p: {"consent": _need(b, "purpose", p), "state": b.value("state") or "granted"},
    "segment": lambda b, p: {"segment": _need(b, "segment", p)},
    "age": _age,
    "tag": lambda b, p: {"tag": _need(b, "tag", p)},
    "json": _json,
}


# --- tree -> boxes ----------------------------------------------------------------------------


def from_tree(tree: Any) -> Box:
    """The boxes showing a tree (a saved segment's); what the form cannot show is a ``json`` box."""
    if isinstance(tree, dict) and set(tree) == {"not"} and isinstance(tree["not"], dict):
        inner = from_tree(tree["not"])
        if not inner.negated:
            return replace(inner, negated=True)
    if isinstance(tree, dict) and len(tree) == 1 and next(iter(tree)) in GROUPS:
        items = next(iter(tree.values()))
        if isinstance(items, list) and items:
            return Box(next(iter(tree)), children=[from_tree(t) for t in items])
    box = _leaf_box(tree) if isinstance(tree, dict) else None
    if box is not None and to_tree(box) == tree:
        return box
    return Box("json", values={"value": json.dumps(tree, ensure_ascii=False)})


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ", ".join(_text(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, str) and (NUMBER.match(v) or v in ("true", "false")):
        return f'"{v}"'
    return str(v)


def _leaf_box(tree: dict[str, Any]) -> Box | None:
    for key in ("trait", "computed"):
        if key in tree and len(tree) == 2:
            op, value = next((k, v) for k, v in tree.items() if k != key)
            return Box(key, values={"name": str(tree[key]), "op": str(op), "value": _text(value)})
    if "event" in tree and set(tree) <= {"event", "where", "count", "within"}:
        return _event_box(tree)
    if "consent" in tree:
        return Box("consent", values={"purpose": str(tree["consent"]), "state": str(tree.get("state", "granted"))})
    if "age" in tree and isinstance(tree["age"], dict):
        spec = tree["age"]
        low, high = spec.get("between", [spec.get("gte", ""), spec.get("lte", "")])
        return Box("age", values={"low": _text(low), "high": _text(high)})
    for key in ("segment", "tag"):
        if key in tree and len(tree) == 1:
            return Box(key, values={key: str(tree[key])})
    return None


def _event_box(tree: dict[str, Any]) -> Box | None:
    values = dict(DEFAULTS["event"], name=str(tree["event"]), within="")
    where = tree.get("where", {})
    if not isinstance(where, dict) or len(where) > 1:
        return None
    for prop, ops in where.items():
        if not isinstance(ops, dict) or len(ops) != 1:
            return None
        ((op, v),) = ops.items()
        values |= {"wprop": str(prop), "wop": str(op), "wvalue": _text(v)}
    count = tree.get("count", {"gte": 1})
    if not isinstance(count, dict) or len(count) != 1:
        return None
    ((cop, n),) = count.items()
    values |= {"count_op": str(cop), "count": _text(n)}
    within = tree.get("within")
    if within is not None:
        if not isinstance(within, dict) or set(within) != {"days"}:
            return None
        values["within"] = _text(within["days"])
    return Box("event", values=values)
