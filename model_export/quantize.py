"""Static INT8 quantization of one ONNX graph into the QDQ format (QuantizeLinear/DequantizeLinear pairs),
calibrated on the calls the graph really saw on the line (model_export.int8_reader), and the fp16 variant.

QDQ graphs run on ONNX Runtime as they are and are TensorRT's explicit-quantization input, so one file serves
both. Weights are per-channel and symmetric, activations symmetric (zero point 0, as TensorRT requires).
Only the compute-heavy operators are quantized (``quantize_ops``); ``keep_float_ops`` and the first and
last convolutions stay in float, because that is where 8 bits cost the most accuracy for the least time
(docs/quantization.md). Every choice is recorded in the manifest (``QuantSettings`` + the excluded nodes).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_runtime.errors import GladEdgeError
from edge_runtime.onnx_refs import external_data_locations
from edge_runtime.precision_record import QuantResult
from model_export.int8_reader import PackReader

METHODS = ("minmax", "entropy", "percentile")


class QuantSettings(BaseModel):
    """How a graph is quantized; written into the manifest's precision plan as it was used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="activation range calibration: minmax, entropy (KL) or percentile")
    percentile: float = Field(99.999, gt=90.0, le=100.0, description="percentile method: kept fraction, in %")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    symmetric_activations: bool = Field(True, description="activation zero point 0 (TensorRT needs it)")
    quantize_ops: list[str] = Field(["Conv", "MatMul", "Gemm"], min_length=1,
                                    description="operator types whose inputs are quantized")
    keep_float_ops: list[str] = Field(
        ["Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Resize"],
        description="operator types kept in float even when listed in quantize_ops")
    keep_first_last_conv: bool = Field(True, description="keep the graph's first and last Conv in float")
    weight_only_matmul: bool = Field(True, description="quantize only MatMuls with a constant weight (attention's "
                                     "activation x activation products stay float)")
    exclude_nodes: list[str] = Field(default_factory=list, description="further node names kept in float")
    quantize_outputs: bool = Field(False, description="also quantize the outputs of quantized operators (lets "
                                   "ONNX Runtime's CPU fuse QLinearConv; off: only their inputs, TensorRT's "
                                   "placement, and a node kept float never sees a rounded input)")
    max_calls: int = Field(64, ge=1, le=10_000, description="pack calls used per graph (spread evenly)")

    @field_validator("quantize_ops", "keep_float_ops")
    @classmethod
    def _op_names(cls, v: list[str]) -> list[str]:
        bad = [op for op in v if not op.isidentifier()]
        if bad:
            raise ValueError(f"not ONNX operator names: {bad}")
        return v

    def effective_ops(self) -> list[str]:
        ops = [op for op in self.quantize_ops if op not in self.keep_float_ops]
        if not ops:
            raise GladEdgeError(f"nothing to quantize: every op of quantize_ops {self.quantize_ops} is in "
                                "keep_float_ops")
        return ops


def _method(settings: QuantSettings):  # noqa: ANN202 - onnxruntime's enum
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[settings.method]


def first_last_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the first and last Conv nodes in graph order (the exporter writes them in execution order)."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name: exclusion works by node name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization advises pre-processing on the root logger at WARNING for every graph; the
    exporter's graphs are already shape-inferred and folded, so the advice is noise here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(src: str | Path, dst: str | Path, pack: str | Path, role: str,
                   settings: QuantSettings = QuantSettings()) -> QuantResult:
    """Write ``dst``: ``src`` (an fp32 ONNX graph) quantized to INT8 QDQ, calibrated on ``pack``'s calls of
    ``role``. External weight data beside ``src`` is followed; ``dst`` keeps weights inside unless too big."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    model = _named(onnx.load(str(src)))
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise GladEdgeError(f"{src}: already fp16 or quantized; INT8 is made from an fp32 graph")
    inputs = [i.name for i in model.graph.input]
    reader = PackReader(pack, role, inputs, max_calls=settings.max_calls)
    excluded = sorted(set(settings.exclude_nodes) | set(first_last_convs(model) if settings.keep_first_last_conv
                                                        else []))
    unknown = sorted(set(settings.exclude_nodes) - {n.name for n in model.graph.node})
    if unknown:
        raise GladEdgeError(f"{src}: exclude_nodes {unknown[:5]} are not nodes of the graph")
    large = bool(external_data_locations(src))
    with tempfile.TemporaryDirectory(prefix="glad-quant-", dir=dst.parent) as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named), save_as_external_data=large, location="named.onnx.data")
        del model
        extra = {
            "ActivationSymmetric": settings.symmetric_activations,
            "WeightSymmetric": True,
            "MatMulConstBOnly": settings.weight_only_matmul,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "CalibPercentile": settings.percentile,
            # biases stay float: TensorRT's parser refuses int32 DequantizeLinear, and it fuses the float bias
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": [] if settings.quantize_outputs else settings.effective_ops(),
        }
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            try:
                quantize_static(
                    str(named), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=settings.effective_ops(), per_channel=settings.per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                    use_external_data_format=large, calibrate_method=_method(settings), extra_options=extra,
                )
            except GladEdgeError:
                raise
            except Exception as e:  # onnxruntime raises assorted types; name the graph and the first line
                raise GladEdgeError(f"{src}: INT8 quantization failed ({str(e).splitlines()[0]})") from e
    out = onnx.load(str(dst), load_external_data=False)
    quantized = {n.output[0] for n in out.graph.node if n.op_type == "DequantizeLinear"}
    consumers = sum(1 for n in out.graph.node if n.op_type in settings.effective_ops()
                    and any(i in quantized for i in n.input))
    return QuantResult(calls=len(reader.calls), timesteps=reader.timesteps, kept_float_nodes=excluded,
                       quantized_nodes=consumers)


def fp16_graph(src: str | Path, dst: str | Path) -> None:
    """Write ``dst``: ``src`` converted to fp16 weights and activations, float32 inputs and outputs."""
    from model_export.onnx_export import _to_fp16, save_graph

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix="glad-fp16-", dir=dst.parent) as tmp:
        # the converter writes a shape-inferred copy beside its input: work on a copy, never in the bundle
        local = Path(tmp) / src.name
        shutil.copy2(src, local)
        for name in external_data_locations(src):
            shutil.copy2(src.parent / name, Path(tmp) / name)
        save_graph(_to_fp16(local), dst)


__all__ = ["METHODS", "QuantResult", "QuantSettings", "first_last_convs", "fp16_graph", "quantize_graph"]
