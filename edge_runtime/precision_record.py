"""What ``glad-edge quantize`` recorded in a bundle's manifest (``precision_plan``, docs/quantization.md): the
precision chosen for every graph, the accuracy measured for each precision tried, and how INT8 graphs were
calibrated. The runtime does not need it to run a bundle (each model entry carries its own precision); it
documents, and lets a later run check, why the bundle computes at the precision it does."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# weight bytes per parameter: what "cheapest" means when the plan is chosen (the edge GPU's throughput and
# memory traffic scale with it; an x86 CPU without fp16 units may run fp16 slower than fp32)
PRECISION_COST = {"int8": 1, "fp16": 2, "fp32": 4}
Precision = Literal["fp32", "fp16", "int8"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PlanMetrics(_Record):
    i_auroc: float = Field(ge=0.0, le=1.0)
    p_auroc: float | None = Field(None, ge=0.0, le=1.0, description="None: the set has no pixel masks")
    ms_per_part: float = Field(ge=0.0, description="median CPU ms per part, measured interleaved with the others")
    bytes: int = Field(ge=0, description="bytes of the graph files of this plan")


class QuantResult(_Record):
    """What quantizing one graph did."""

    calls: int = Field(ge=0, description="calibration calls used")
    timesteps: list[int] = Field(default_factory=list, description="UNet timesteps the calls covered")
    kept_float_nodes: list[str] = Field(default_factory=list, description="nodes excluded by name")
    quantized_nodes: int = Field(ge=0, description="nodes that got quantized inputs")


class GraphChoice(_Record):
    precision: Precision
    tried: dict[str, PlanMetrics] = Field(default_factory=dict, description="this graph alone at each precision")
    delta_i_auroc: dict[str, float] = Field(default_factory=dict, description="I-AUROC lost vs fp32, per precision")
    delta_p_auroc: dict[str, float] = Field(default_factory=dict, description="P-AUROC lost vs fp32, per precision")
    backed_off: bool = Field(False, description="raised above its own cheapest choice so the bundle fits")
    quantization: QuantResult | None = None  # INT8 graphs only


class PrecisionPlan(_Record):
    mode: Literal["fp16", "int8", "auto"]
    created: str = Field(description="RFC 3339 UTC time")
    source_bundle: str = Field(description="the fp32 bundle's version and path it was made from")
    tolerance_i_auroc: float | None = Field(None, ge=0.0, description="auto: largest I-AUROC loss allowed vs fp32")
    validation: dict[str, Any] = Field(default_factory=dict, description="the labelled set the plan was measured on")
    quantization: dict[str, Any] = Field(default_factory=dict, description="INT8 settings (QuantSettings) and pack")
    graphs: dict[str, GraphChoice]
    fp32: PlanMetrics | None = None  # the source bundle on the validation set
    result: PlanMetrics | None = None  # the chosen plan on the validation set
