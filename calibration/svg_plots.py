"""Small static SVG charts for the evaluation report: no plotting library, no script, no network."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

W, H = 420, 260
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 52, 14, 26, 40
GOOD_COLOUR, BAD_COLOUR, LINE_COLOUR = "#2b8a3e", "#c92a2a", "#1c7ed6"


def _frame(title: str, x_label: str, y_label: str, body: str, x_ticks: str, y_ticks: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">'
            f'<text x="{W / 2}" y="15" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
            f'<rect x="{M_LEFT}" y="{M_TOP}" width="{W - M_LEFT - M_RIGHT}" height="{H - M_TOP - M_BOTTOM}" '
            f'fill="#fafafa" stroke="#999"/>{body}{x_ticks}{y_ticks}'
            f'<text x="{(M_LEFT + W - M_RIGHT) / 2}" y="{H - 6}" text-anchor="middle">{escape(x_label)}</text>'
            f'<text x="12" y="{(M_TOP + H - M_BOTTOM) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(M_TOP + H - M_BOTTOM) / 2})">{escape(y_label)}</text></svg>')


def _sx(x: float, lo: float, hi: float) -> float:
    return M_LEFT + (x - lo) / (hi - lo if hi > lo else 1.0) * (W - M_LEFT - M_RIGHT)


def _sy(y: float, lo: float, hi: float) -> float:
    return H - M_BOTTOM - (y - lo) / (hi - lo if hi > lo else 1.0) * (H - M_TOP - M_BOTTOM)


def _ticks(lo: float, hi: float, axis: str, n: int = 5) -> str:
    out = []
    for v in np.linspace(lo, hi, n):
        if axis == "x":
            x = _sx(v, lo, hi)
            out.append(f'<line x1="{x:.1f}" y1="{H - M_BOTTOM}" x2="{x:.1f}" y2="{H - M_BOTTOM + 4}" stroke="#666"/>'
                       f'<text x="{x:.1f}" y="{H - M_BOTTOM + 15}" text-anchor="middle">{v:.3g}</text>')
        else:
            y = _sy(v, lo, hi)
            out.append(f'<line x1="{M_LEFT - 4}" y1="{y:.1f}" x2="{M_LEFT}" y2="{y:.1f}" stroke="#666"/>'
                       f'<text x="{M_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    return "".join(out)


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    out = []
    for i, (label, colour) in enumerate(entries):
        y = M_TOP + 8 + 14 * i
        out.append(f'<rect x="{W - M_RIGHT - 120}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{W - M_RIGHT - 106}" y="{y + 1}">{escape(label)}</text>')
    return "".join(out)


def histogram(good: np.ndarray, bad: np.ndarray, threshold: float | None, bins: int = 30) -> str:
    """Score histograms of good and defective parts (as fractions of each), with the threshold line."""
    both = np.concatenate([good, bad])
    lo, hi = float(both.min()), float(both.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    hg = np.histogram(good, edges)[0] / max(1, good.size)
    hb = np.histogram(bad, edges)[0] / max(1, bad.size)
    top = float(max(hg.max(), hb.max(), 1e-9)) * 1.1
    body = []
    for h, colour in ((hg, GOOD_COLOUR), (hb, BAD_COLOUR)):
        for i, v in enumerate(h):
            if v <= 0:
                continue
            x0, x1 = _sx(edges[i], lo, hi), _sx(edges[i + 1], lo, hi)
            y = _sy(v, 0, top)
            body.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(0.5, x1 - x0):.1f}" '
                        f'height="{H - M_BOTTOM - y:.1f}" fill="{colour}" fill-opacity="0.55"/>')
    legend = [(f"good ({good.size})", GOOD_COLOUR), (f"defective ({bad.size})", BAD_COLOUR)]
    if threshold is not None:
        x = _sx(threshold, lo, hi)
        body.append(f'<line x1="{x:.1f}" y1="{M_TOP}" x2="{x:.1f}" y2="{H - M_BOTTOM}" stroke="#000" '
                    f'stroke-width="2" stroke-dasharray="5,3"/>')
        legend.append((f"threshold {threshold:.4g}", "#000"))
    return _frame("Image scores", "score", "fraction of parts", "".join(body) + _legend(legend),
                  _ticks(lo, hi, "x"), _ticks(0, top, "y"))


def curve(x: np.ndarray, y: np.ndarray, title: str, x_label: str, y_label: str, diagonal: bool = False,
          step: bool = False) -> str:
    """A curve on the unit square (ROC, precision-recall)."""
    pts = []
    for i, (a, b) in enumerate(zip(x, y, strict=True)):
        if step and i:
            pts.append(f"{_sx(float(a), 0, 1):.1f},{_sy(float(y[i - 1]), 0, 1):.1f}")
        pts.append(f"{_sx(float(a), 0, 1):.1f},{_sy(float(b), 0, 1):.1f}")
    body = f'<polyline points="{" ".join(pts)}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>'
    if diagonal:
        body = (f'<line x1="{_sx(0, 0, 1)}" y1="{_sy(0, 0, 1)}" x2="{_sx(1, 0, 1)}" y2="{_sy(1, 0, 1)}" '
                f'stroke="#aaa" stroke-dasharray="4,3"/>') + body
    return _frame(title, x_label, y_label, body, _ticks(0, 1, "x"), _ticks(0, 1, "y"))


def bars(labels: Sequence[str], values: Sequence[float], title: str, lo: float = 0.5, hi: float = 1.0) -> str:
    """Horizontal bars (per-defect AUROC) on [lo, hi]."""
    n = max(1, len(labels))
    band = (H - M_TOP - M_BOTTOM) / n
    body = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = M_TOP + i * band + band * 0.15
        x1 = _sx(min(max(v, lo), hi), lo, hi)
        body.append(f'<rect x="{M_LEFT}" y="{y:.1f}" width="{x1 - M_LEFT:.1f}" height="{band * 0.7:.1f}" '
                    f'fill="{LINE_COLOUR}" fill-opacity="0.35"/>'
                    f'<text x="{M_LEFT + 4}" y="{y + band * 0.35 + 4:.1f}" fill="#111" font-weight="bold">'
                    f'{escape(label)} {v:.3f}</text>')
    return _frame(title, "AUROC", "", "".join(body), _ticks(lo, hi, "x"), "")
