"""Precision per graph, chosen by measurement: every graph of a bundle is available at fp32, fp16 and INT8,
one loaded Detector swaps them per role, and a labelled image set scores each combination.

``measure`` runs several plans side by side: for every image, every plan in turn (the order rotates per image),
so CPU load from elsewhere hits all plans alike and the per-part times are comparable. ``choose_auto`` keeps,
for each graph, the cheapest precision whose own I-AUROC loss stays within the tolerance, then checks the
combination and raises the precision of the worst graph until the whole bundle is within it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from calibration.metrics import i_auroc, p_auroc, resize_mask_nearest
from calibration.tuning import LabelledSet
from edge_runtime.bundle import MODEL_ROLES, Manifest, SamplerParams, load_noise
from edge_runtime.detector import Detector
from edge_runtime.device import HostDevice
from edge_runtime.device_pipeline import DevicePipeline
from edge_runtime.engines.onnxruntime import OrtEngine
from edge_runtime.precision_record import PRECISION_COST, GraphChoice, PlanMetrics

Plan = dict[str, str]  # role -> precision


def uniform(precision: str, roles: Sequence[str] = MODEL_ROLES) -> Plan:
    return {role: precision for role in roles}


def single(role: str, precision: str, roles: Sequence[str] = MODEL_ROLES) -> Plan:
    """fp32 everywhere but ``role``."""
    return {r: precision if r == role else "fp32" for r in roles}


class PlanBench:
    """The bundle's fp32 graphs plus variants (role -> precision -> ONNX file), loaded once; ``detector(plan)``
    returns the one Detector running ``plan``'s graphs."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, variants: Mapping[str, Mapping[str, Path]],
                 engine_options: dict | None = None, sampler: SamplerParams | None = None) -> None:
        from edge_runtime.kernels.numpy_kernels import NumpyKernels

        opts = dict(engine_options or {})
        if sampler is not None:
            manifest = manifest.model_copy(update={"sampler": sampler})
        self.device = HostDevice(bundle_dir, manifest.models, opts, kernels=NumpyKernels(), name="host")
        self.engines: dict[str, dict[str, object]] = {r: {"fp32": e} for r, e in self.device.engines.items()}
        for role, by_precision in variants.items():
            for precision, path in by_precision.items():
                self.engines[role][precision] = OrtEngine(path, **opts)
        self.sizes = {role: {"fp32": (bundle_dir / manifest.models[role].file).stat().st_size,
                             **{p: Path(f).stat().st_size for p, f in variants.get(role, {}).items()}}
                      for role in manifest.models}
        pipeline = DevicePipeline(self.device, manifest, load_noise(bundle_dir, manifest))
        self._det = Detector(bundle_dir, manifest, pipeline, "onnxruntime")

    def precisions(self, role: str) -> list[str]:
        return sorted(self.engines[role], key=PRECISION_COST.__getitem__)

    def detector(self, plan: Plan) -> Detector:
        for role, precision in plan.items():
            self.device.engines[role] = self.engines[role][precision]
        return self._det

    def bytes_of(self, plan: Plan) -> int:
        return sum(self.sizes[role][plan.get(role, "fp32")] for role in self.sizes)


@dataclass
class Measured:
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)


def measure(bench: PlanBench, plans: Mapping[str, Plan], data: LabelledSet, progress: bool = False,
            desc: str = "plans") -> dict[str, PlanMetrics]:
    """I-AUROC, P-AUROC (where ``data`` has masks) and median ms per part of every plan, run interleaved."""
    names = list(plans)
    got = {name: Measured() for name in names}
    for i, image in enumerate(tqdm(data.images, desc=desc, disable=not progress, unit="img", leave=False)):
        k = i % len(names)
        for name in names[k:] + names[:k]:  # rotate: no plan always runs first (cold caches) or last
            det = bench.detector(plans[name])
            t0 = time.perf_counter()
            r = det.inspect(image)
            got[name].ms.append((time.perf_counter() - t0) * 1e3)
            got[name].scores.append(float(r.score))
            got[name].maps.append(r.anomaly_map)
    labels = np.asarray(data.labels)
    out = {}
    for name in names:
        m = got[name]
        pa = None
        if data.masks and any(mask is not None for mask in data.masks):
            size = m.maps[0].shape
            masks = np.stack([np.zeros(size, bool) if mask is None else resize_mask_nearest(mask, size)
                              for mask in data.masks])
            pa = float(p_auroc(np.stack(m.maps), masks))
        out[name] = PlanMetrics(i_auroc=float(i_auroc(np.asarray(m.scores), labels)), p_auroc=pa,
                                ms_per_part=float(np.median(m.ms)), bytes=bench.bytes_of(plans[name]))
    return out


Evaluate = Callable[[Mapping[str, Plan]], dict[str, PlanMetrics]]


def loss(base: PlanMetrics, other: PlanMetrics) -> float:
    """I-AUROC lost against fp32 (negative: the variant scored higher)."""
    return base.i_auroc - other.i_auroc


def choose_auto(evaluate: Evaluate, options: Mapping[str, Sequence[str]], tolerance: float
                ) -> tuple[Plan, dict[str, GraphChoice], PlanMetrics, PlanMetrics]:
    """(plan, per-graph record, fp32 metrics, the plan's metrics). ``options``: role -> precisions tried besides
    fp32. ``evaluate`` scores several named plans in one run."""
    roles = list(options)
    plans: dict[str, Plan] = {"fp32": uniform("fp32", roles)}
    for role, precisions in options.items():
        for p in precisions:
            plans[f"{role}:{p}"] = single(role, p, roles)
    measured = evaluate(plans)
    base = measured["fp32"]
    record: dict[str, GraphChoice] = {}
    plan: Plan = {}
    for role, precisions in options.items():
        tried = {p: measured[f"{role}:{p}"] for p in precisions}
        ok = [p for p in tried if loss(base, tried[p]) <= tolerance]
        plan[role] = min(ok + ["fp32"], key=PRECISION_COST.__getitem__)
        record[role] = GraphChoice(precision=plan[role], tried={"fp32": base, **tried},
                                   delta_i_auroc={p: loss(base, m) for p, m in tried.items()},
                                   delta_p_auroc={p: (base.p_auroc - m.p_auroc) for p, m in tried.items()
                                                  if base.p_auroc is not None and m.p_auroc is not None})
    combined = base
    while any(p != "fp32" for p in plan.values()):
        combined = evaluate({"plan": plan})["plan"]
        if loss(base, combined) <= tolerance:
            break
        # the graph whose own loss is largest gives way first, to its next more precise option within tolerance
        worst = max((r for r in plan if plan[r] != "fp32"), key=lambda r: record[r].delta_i_auroc[plan[r]])
        dearer = [p for p in options[worst] if PRECISION_COST[p] > PRECISION_COST[plan[worst]]
                  and record[worst].delta_i_auroc[p] <= tolerance]
        plan[worst] = min(dearer + ["fp32"], key=PRECISION_COST.__getitem__)
        record[worst].precision = plan[worst]
        record[worst].backed_off = True
    else:
        combined = base
    return plan, record, base, combined
