"""The self-contained HTML report of ``glad-edge eval``: inline SVG charts and inline PNG images, no script,
no stylesheet or font from anywhere else, so it opens from a file on a machine with no network."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from calibration import svg_plots
from calibration.image_sets import load_image
from calibration.metrics import image_curves

if TYPE_CHECKING:
    from calibration.evaluate import Outcome

THUMB = 192  # px, the side of each picture in the case galleries

CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:12px}.cases{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #ddd;padding:6px;background:#fff}figcaption{font-size:12px;max-width:400px}
.note{color:#555;font-size:13px}.bad{color:#c92a2a}.good{color:#2b8a3e}
"""


def _png(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, mask: np.ndarray | None) -> np.ndarray:
    """The part with its anomaly map as a JET heatmap (scaled to [0, vmax]) and the true defect outlined."""
    img = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(np.clip(amap / max(vmax, 1e-12), 0, 1).astype(np.float32), (THUMB, THUMB),
                      interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = (0.55 * img + 0.45 * colour).astype(np.uint8)
    if mask is not None and mask.any():
        m = cv2.resize(mask.astype(np.uint8), (THUMB, THUMB), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def _metric_table(metrics: dict[str, Any]) -> str:
    names = ["i_auroc", "p_auroc", "pro", "i_ap", "p_ap", "i_f1max", "p_f1max"]
    head = "".join(f"<th>{n}</th>" for n in names)
    rows = [f"<tr><td>all</td>{''.join(f'<td>{metrics[n]:.4f}</td>' for n in names)}<td>"
            f"{metrics['counts']['defective']}</td></tr>"]
    for defect, m in metrics["per_defect"].items():
        rows.append(f"<tr><td>{escape(defect)}</td>{''.join(f'<td>{m[n]:.4f}</td>' for n in names)}"
                    f"<td>{m['n']}</td></tr>")
    return f"<table><tr><th>defect</th>{head}<th>parts</th></tr>{''.join(rows)}</table>"


def _operating_table(op: dict[str, Any] | None) -> str:
    if op is None:
        return '<p class="note">The bundle has no calibrated threshold: no operating point (glad-edge calibrate).</p>'
    c = op["confusion"]
    return (f"<table><tr><th>threshold</th><th>false-reject rate</th><th>escape rate</th><th>true rejects</th>"
            f"<th>escapes</th><th>false rejects</th><th>true passes</th></tr><tr><td>{op['threshold']:.6g}</td>"
            f"<td class='{'bad' if c['false_reject'] else 'good'}'>{op['frr']:.4f} ({c['false_reject']} of "
            f"{op['n_good']})</td><td class='{'bad' if c['escape'] else 'good'}'>{op['escape_rate']:.4f} "
            f"({c['escape']} of {op['n_defective']})</td><td>{c['true_reject']}</td><td>{c['escape']}</td>"
            f"<td>{c['false_reject']}</td><td>{c['true_pass']}</td></tr></table>"
            '<p class="note">A part is rejected when its score is above the threshold; equal passes.</p>')


def _cases(out: Outcome, indices: list[int], vmax: float, threshold: float | None) -> str:
    if not indices:
        return '<p class="note">None.</p>'
    figs = []
    for i in indices:
        it = out.items[i]
        image = load_image(it.path)
        mask = load_image(it.mask_path)[..., 0] > 127 if it.mask_path is not None else None
        side = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        pic = np.concatenate([side, np.full((THUMB, 4, 3), 255, np.uint8),
                              overlay(image, out.maps[i], vmax, mask)], axis=1)
        verdict = "" if threshold is None else (" reject" if out.scores[i] > threshold else " pass")
        figs.append(f'<figure><img src="{_png(pic)}" width="{2 * THUMB + 4}" height="{THUMB}" '
                    f'alt="{escape(it.rel)}"><figcaption>{escape(it.rel)}: score {out.scores[i]:.4g}{verdict}'
                    f"</figcaption></figure>")
    return f'<div class="cases">{"".join(figs)}</div>'


def worst_cases(out: Outcome, threshold: float | None, n: int) -> tuple[list[int], list[int], str, str]:
    """(escapes, false rejects, their titles): defective parts that passed, lowest score first, and good parts
    rejected, highest first. Without a threshold: the lowest defective and highest good scores."""
    labels = np.array([it.label for it in out.items])
    bad = np.flatnonzero(labels == 1)
    good = np.flatnonzero(labels == 0)
    bad = bad[np.argsort(out.scores[bad], kind="stable")]
    good = good[np.argsort(-out.scores[good], kind="stable")]
    if threshold is None:
        return (bad[:n].tolist(), good[:n].tolist(), "Lowest-scored defective parts", "Highest-scored good parts")
    escapes = [int(i) for i in bad if out.scores[i] <= threshold][:n]
    false_rejects = [int(i) for i in good if out.scores[i] > threshold][:n]
    return escapes, false_rejects, "Worst escapes (defective, passed)", "Worst false rejects (good, rejected)"


def write_report(path: Path, out: Outcome, metrics: dict[str, Any], worst: int = 6) -> None:
    labels = np.array([it.label for it in out.items])
    threshold = metrics["bundle"]["threshold"] if "bundle" in metrics else None
    curves = image_curves(out.scores, labels)
    per = metrics["per_defect"]
    charts = [
        svg_plots.histogram(out.scores[labels == 0], out.scores[labels == 1], threshold),
        svg_plots.curve(curves["fpr"], curves["tpr"], f"ROC (I-AUROC {metrics['i_auroc']:.3f})",
                        "false-positive rate", "true-positive rate", diagonal=True),
        svg_plots.curve(curves["recall"][::-1], curves["precision"][::-1], f"Precision-recall (I-AP "
                        f"{metrics['i_ap']:.3f})", "recall", "precision", step=True),
        svg_plots.bars(list(per), [m["i_auroc"] for m in per.values()], "I-AUROC per defect type",
                       lo=min([0.5] + [np.floor(m["i_auroc"] * 10) / 10 for m in per.values()])),
    ]
    escapes, false_rejects, t_esc, t_fr = worst_cases(out, threshold, worst)
    shown = escapes + false_rejects
    vmax = float(max([out.maps[i].max() for i in shown] + [1e-12]))
    b = metrics.get("bundle", {})
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>glad-edge eval report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>glad-edge eval</h1>
<p>Bundle <code>{escape(str(b.get('path', '')))}</code> (version {escape(str(b.get('version', '')))},
{escape(str(b.get('sampler', {}).get('name', '')))} sampler), dataset <code>{escape(str(metrics.get('dataset', '')))}
</code>: {metrics['counts']['good']} good and {metrics['counts']['defective']} defective parts.</p>
<h2>At the bundle's threshold</h2>{_operating_table(metrics['operating_point'])}
<h2>Ranking metrics</h2>{_metric_table(metrics)}
<p class="note">Pixel metrics on the anomaly map's grid; PRO integrated to a false-positive rate of 0.3.</p>
<div class="charts">{''.join(charts)}</div>
<h2>{t_esc}</h2><p class="note">Each: the part, then its anomaly map over it (blue low, red high, one scale
for all pictures: 0 to {vmax:.3g}); the true defect outlined in white.</p>{_cases(out, escapes, vmax, threshold)}
<h2>{t_fr}</h2>{_cases(out, false_rejects, vmax, threshold)}
</body></html>
"""
    path.write_text(html)
