"""Charts drawn on the server as SVG (no script, no inline style: the console's CSP allows neither).

``size_chart`` draws a segment's size over time: members and usable members at each
refresh, on a time axis. A count masked for the role (``<10``) is no number: the line
breaks there and a hollow mark on the baseline says so in its tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40
SERIES = (("members", "#1f5fa8", ""), ("usable", "#2e7d32", "6 4"))
"""(key, colour, dash pattern): dashes tell the series apart without colour."""


@dataclass(frozen=True)
class Point:
    at: datetime
    values: dict[str, int | None]
    """Series key → count, or None where it is masked for the role."""


def points_of(rows: Sequence[dict[str, Any]]) -> list[Point]:
    """Chart points from the segments service's sizes (any order; masked counts are strings)."""
    out = [
        Point(
            datetime.fromisoformat(r["at"]),
            {k: r[k] if isinstance(r.get(k), int) else None for k, _c, _d in SERIES},
        )
        for r in rows
    ]
    return sorted(out, key=lambda p: p.at)


def _ceiling(n: int) -> int:
    """A round axis maximum at or above ``n`` (1, 2 or 5 times a power of ten)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if n <= step * m:
                return step * m
        step *= 10


def size_chart(points: Sequence[Point], labels: dict[str, str], title: str) -> Markup:
    """An accessible SVG line chart of ``points`` (``labels``: series key → legend text,
    plus ``empty`` and ``masked``)."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title" class="chart"><title id="chart-title">{escape(title)}</title>'
    )
    if not points:
        return Markup(
            f'{head}<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{escape(labels["empty"])}</text></svg>'
        )
    top = _ceiling(max([v for p in points for v in p.values.values() if v is not None] or [1]))
    t0, t1 = points[0].at.timestamp(), points[-1].at.timestamp()
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + (plot_w * (at.timestamp() - t0) / (t1 - t0) if t1 > t0 else plot_w / 2)

    def y(v: int) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [head, _axes(top, y, points[0].at, points[-1].at)]
    for key, colour, dash in SERIES:
        parts += _series(points, key, colour, dash, x, y, labels)
    parts.append(_legend(labels))
    return Markup("".join(parts) + "</svg>")


def _axes(top: int, y: Any, first: datetime, last: datetime) -> str:
    out = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#555"/>']
    out.append(f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#555"/>')
    for v in (0, top // 2, top):
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v}</text>')
        out.append(f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{WIDTH - RIGHT}" y2="{y(v):.1f}" stroke="#ddd"/>')
    base = HEIGHT - BOTTOM + 16
    out.append(f'<text x="{LEFT}" y="{base}" font-size="11">{first:%Y-%m-%d}</text>')
    if last != first:
        out.append(f'<text x="{WIDTH - RIGHT}" y="{base}" text-anchor="end" font-size="11">{last:%Y-%m-%d}</text>')
    return "".join(out)


def _series(
    points: Sequence[Point], key: str, colour: str, dash: str, x: Any, y: Any, labels: dict[str, str]
) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    dashed = f' stroke-dasharray="{dash}"' if dash else ""

    def flush() -> None:
        if len(run) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dashed} points="{" ".join(run)}"/>')
        run.clear()

    for p in points:
        v = p.values.get(key)
        when = f"{p.at:%Y-%m-%d %H:%M}"
        if v is None:
            flush()
            tip = escape(f"{labels[key]} {when}: {labels['masked']}")
            mark = f'cx="{x(p.at):.1f}" cy="{y(0):.1f}" r="3" fill="none" stroke="{colour}"'
            out.append(f"<circle {mark}><title>{tip}</title></circle>")
            continue
        run.append(f"{x(p.at):.1f},{y(v):.1f}")
        tip = escape(f"{labels[key]} {when}: {v}")
        out.append(f'<circle cx="{x(p.at):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{tip}</title></circle>')
    flush()
    return out


def _legend(labels: dict[str, str]) -> str:
    out = []
    for n, (key, colour, dash) in enumerate(SERIES):
        lx = LEFT + 10 + n * 160
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        line = f'x1="{lx}" y1="{TOP + 6}" x2="{lx + 24}" y2="{TOP + 6}" stroke="{colour}" stroke-width="2"{dashed}'
        out.append(f"<line {line}/>")
        out.append(f'<text x="{lx + 30}" y="{TOP + 10}" font-size="11">{escape(labels[key])}</text>')
    return "".join(out)
