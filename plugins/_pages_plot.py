"""Line charts as inline SVG, drawn on the server.

The pages show a compute plan's performances per round: one line for the
federated model and one per organization's local-only model. The chart is
plain SVG markup (no script, nothing fetched from the network), so it renders
inside the Airflow UI's iframe and in any browser, and tests read it from the
DOM: each series is a ``<g class="series" data-series="...">`` holding one
``<polyline>`` and one ``<circle>`` per point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "line_chart_svg"]

_WIDTH = 720
_HEIGHT = 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 176, 16, 44
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_FEDERATED_COLOR = "#0b3d91"


@dataclass(frozen=True)
class Series:
    """One line: a name, whether it is the federated model, its points."""

    name: str
    points: tuple[tuple[int, float], ...]
    federated: bool = False


def _nice_step(span: float, target_ticks: int = 5) -> float:
    raw = span / target_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10.0 * magnitude


def _value_ticks(low: float, high: float) -> list[float]:
    if math.isclose(low, high):
        low, high = low - 0.5, high + 0.5
    step = _nice_step(high - low)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _round_ticks(first: int, last: int) -> list[int]:
    span = max(last - first, 1)
    step = max(1, math.ceil(span / 10))
    return list(range(first, last + 1, step))


def _format(value: float) -> str:
    return f"{value:.4g}"


class _Frame:
    """Maps rounds and values to pixel positions inside the plot area."""

    def __init__(self, rounds: tuple[int, int], values: tuple[float, float]) -> None:
        self.r0, self.r1 = rounds
        self.v0, self.v1 = values

    def x(self, round_index: int) -> float:
        span = max(self.r1 - self.r0, 1)
        inner = _WIDTH - _LEFT - _RIGHT
        return _LEFT + (round_index - self.r0) / span * inner

    def y(self, value: float) -> float:
        inner = _HEIGHT - _TOP - _BOTTOM
        return _TOP + (self.v1 - value) / (self.v1 - self.v0) * inner


def _axes(frame: _Frame, value_ticks: list[float], metric: str) -> list[str]:
    bottom = _HEIGHT - _BOTTOM
    right = _WIDTH - _RIGHT
    parts = [
        f'<line class="axis" x1="{_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}"/>',
    ]
    for tick in value_ticks:
        y = frame.y(tick)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{_format(tick)}</text>'
        )
    for round_index in _round_ticks(frame.r0, frame.r1):
        x = frame.x(round_index)
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" '
            f'text-anchor="middle">{round_index}</text>'
        )
    parts.append(
        f'<text class="label" x="{(_LEFT + right) / 2:.1f}" y="{_HEIGHT - 6}" '
        'text-anchor="middle">round</text>'
        f'<text class="label" x="14" y="{(_TOP + bottom) / 2:.1f}" '
        f'text-anchor="middle" transform="rotate(-90 14 {(_TOP + bottom) / 2:.1f})">'
        f"{escape(metric)}</text>"
    )
    return parts


def _series_markup(series: Series, color: str, frame: _Frame) -> str:
    coords = [(frame.x(r), frame.y(v)) for r, v in series.points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dash = "" if series.federated else ' stroke-dasharray="6 4"'
    width = 3 if series.federated else 1.8
    name = escape(series.name)
    markers = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3.5 if series.federated else 2.5}" '
        f'fill="{color}" data-round="{r}" data-value="{v!r}">'
        f"<title>{name}, round {r}: {_format(v)}</title></circle>"
        for (x, y), (r, v) in zip(coords, series.points, strict=True)
    )
    return (
        f'<g class="series" data-series="{name}" data-federated='
        f'"{str(series.federated).lower()}">'
        f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} '
        f'points="{path}"/>{markers}</g>'
    )


def _legend(series: Sequence[Series], colors: list[str]) -> str:
    x = _WIDTH - _RIGHT + 16
    rows = []
    for index, (item, color) in enumerate(zip(series, colors, strict=True)):
        y = _TOP + 8 + index * 18
        dash = "" if item.federated else ' stroke-dasharray="6 4"'
        rows.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{color}" '
            f'stroke-width="{3 if item.federated else 1.8}"{dash}/>'
            f'<text class="legend-label" x="{x + 28}" y="{y + 4}">'
            f"{escape(item.name)}</text>"
        )
    return f'<g class="legend">{"".join(rows)}</g>'


def line_chart_svg(metric: str, series: Sequence[Series]) -> str:
    """An SVG chart of ``metric`` by round, one line per series.

    The federated series is drawn solid and thick, the others dashed. An empty
    sequence (or series without points) gives a chart that says so.
    """
    drawn = [s for s in series if s.points]
    title = escape(f"{metric} by round")
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" height="{_HEIGHT}" '
        f'data-metric="{escape(metric)}" aria-label="{title}"><title>{title}</title>'
    )
    if not drawn:
        return (
            f'{head}<text class="empty" x="{_WIDTH / 2}" y="{_HEIGHT / 2}" '
            'text-anchor="middle">no performance recorded yet</text></svg>'
        )
    rounds = [r for s in drawn for r, _ in s.points]
    values = [v for s in drawn for _, v in s.points]
    ticks = _value_ticks(min(values), max(values))
    frame = _Frame((min(rounds), max(rounds)), (ticks[0], ticks[-1]))
    colors = []
    local_index = 0
    for item in drawn:
        if item.federated:
            colors.append(_FEDERATED_COLOR)
        else:
            colors.append(_PALETTE[local_index % len(_PALETTE)])
            local_index += 1
    body = _axes(frame, ticks, metric)
    body.extend(_series_markup(s, c, frame) for s, c in zip(drawn, colors, strict=True))
    body.append(_legend(drawn, colors))
    return head + "".join(body) + "</svg>"
