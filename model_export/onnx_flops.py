"""FLOPs of an ONNX graph, counted from its nodes after shape inference.

The count is a static property of the graph at one batch size (the manifest stores it per batch
size), so benchmarks can report achieved FLOP/s without a profiler. The rules:

- ``Conv``: 2 * MACs = 2 * numel(output) * (C_in / groups) * prod(kernel). Bias adds are not counted.
- ``ConvTranspose``: 2 * numel(input) * (C_out / groups) * prod(kernel) (each input element is
  scattered through one kernel per output channel of its group). Bias adds are not counted.
- ``MatMul`` (any rank, numpy broadcasting): 2 * numel(output) * K, K the contracted size.
- ``Gemm``: 2 * M * N * K, plus M * N when C is present (the alpha/beta scalings are not counted).
- ``Einsum``: 2 * product of the sizes of all distinct indices (the naive loop nest).
- Elementwise ops (``ELEMENTWISE``: arithmetic, activations, comparisons): one FLOP per output element.
- Normalisations, softmax and reductions (``PER_INPUT_ELEMENT``): one FLOP per input element — a
  documented approximation; their true cost is a few operations per element.
- Everything else (reshapes, transposes, slices, gathers, casts, concatenation, Resize, constants,
  shape arithmetic) counts zero.

Shapes come from ``onnx.shape_inference`` with data propagation, on a copy of the graph whose symbolic
batch dimension is fixed. Exporters leave shape arithmetic that inference cannot see through (torch's
``expand`` emits ConstantOfShape -> Equal -> Where for its target shape), so small constant
subgraphs (``Shape`` of a known shape included) are folded into ``Constant`` nodes, alternating with
inference until nothing changes; folded nodes are shape arithmetic and count zero. A node whose
shapes stay unknown is reported in ``FlopCount.unknown``; ``count_flops(..., strict=True)`` raises
instead (use it for graphs that must be fully counted).
Models above 2 GB: pass ``onnx.load(path, load_external_data=False)``: inference needs the initializers'
dims, not their data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper, shape_inference

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt", "Exp", "Log",
    "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "HardSigmoid",
    "HardSwish", "Softplus", "Softsign", "Mish", "Sin", "Cos", "Tan", "Atan", "Floor", "Ceil", "Round",
    "Sign", "Clip", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
})  # fmt: skip
PER_INPUT_ELEMENT = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "BatchNormalization", "LpNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
})  # fmt: skip
MATRIX = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
FOLD_MAX_ELEMENTS = 1 << 16  # constant folding only evaluates nodes on tensors up to this size
_NO_FOLD = MATRIX | {"If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}


@dataclass
class FlopCount:
    total: int = 0
    by_op: Counter = field(default_factory=Counter)  # op_type -> FLOPs
    unknown: list[str] = field(default_factory=list)  # nodes whose shapes inference left open


def fix_dims(model: ModelProto, dims: dict[str, int]) -> ModelProto:
    """A copy with the named symbolic dims of the graph inputs/outputs set, intermediate shapes dropped."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for value in list(fixed.graph.input) + list(fixed.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = int(dims[dim.dim_param])  # clears dim_param (oneof)
    return fixed


def _shapes(model: ModelProto) -> dict[str, list[int] | None]:
    """Name -> shape for every value; None (or None dims skipped) where not fully known."""
    out: dict[str, list[int] | None] = {}
    g = model.graph
    for init in g.initializer:
        out[init.name] = list(init.dims)
    for value in list(g.input) + list(g.value_info) + list(g.output):
        t = value.type.tensor_type
        if not t.HasField("shape"):
            out.setdefault(value.name, None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[value.name] = None if any(d is None for d in dims) else dims
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = list(a.t.dims)
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _einsum_flops(equation: str, shapes: list[list[int]]) -> int:
    lhs = equation.replace(" ", "").split("->")[0]
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs.split(","), shapes, strict=True):
        if "..." in term:  # expand the ellipsis into placeholder indices, aligned from the right
            n_ell = len(shape) - (len(term) - 3)
            term = term.replace("...", "".join(chr(0x100 + i) for i in range(n_ell)))
        for letter, size in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    return 2 * math.prod(sizes.values())


def _node_flops(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> int | None:
    """FLOPs of one node, None when a shape it needs is unknown."""
    op = node.op_type

    def shape(i: int, outputs: bool = False) -> list[int] | None:
        names = node.output if outputs else node.input
        if i >= len(names) or not names[i]:
            return None
        return shapes.get(names[i])

    if op in ELEMENTWISE:
        s = shape(0, outputs=True)
        return None if s is None else math.prod(s)
    if op in PER_INPUT_ELEMENT:
        s = shape(0)
        return None if s is None else math.prod(s)
    if op == "Conv":
        out, w = shape(0, outputs=True), shape(1)
        if out is None or w is None:
            return None
        return 2 * math.prod(out) * math.prod(w[1:])  # w: [C_out, C_in/groups, *k]
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None:
            return None
        return 2 * math.prod(x) * math.prod(w[1:])  # w: [C_in, C_out/groups, *k]
    if op == "MatMul":
        a, out = shape(0), shape(0, outputs=True)
        if a is None or out is None:
            return None
        return 2 * math.prod(out) * a[-1]
    if op == "Gemm":
        a, out = shape(0), shape(0, outputs=True)
        if a is None or out is None:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        return 2 * math.prod(out) * k + bias
    if op == "Einsum":
        equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        operand_shapes = [shape(i) for i in range(len(node.input))]
        if not equation or any(s is None for s in operand_shapes):
            return None
        return _einsum_flops(equation, operand_shapes)  # type: ignore[arg-type]
    return 0


def _small_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        external = init.data_location == onnx.TensorProto.EXTERNAL
        if not external and np.prod(init.dims, dtype=np.int64) <= FOLD_MAX_ELEMENTS:
            consts[init.name] = numpy_helper.to_array(init)
    return consts


def _fold_once(model: ModelProto, shapes: dict[str, list[int] | None]) -> bool:
    """Replace nodes computable from small constants (or known shapes) by Constant nodes, in place."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = _small_constants(graph)
    changed = False
    for i, node in enumerate(graph.node):
        value: np.ndarray | None = None
        if node.op_type == "Constant":
            attrs = {a.name: a for a in node.attribute}
            if "value" in attrs and np.prod(attrs["value"].t.dims, dtype=np.int64) <= FOLD_MAX_ELEMENTS:
                consts[node.output[0]] = numpy_helper.to_array(attrs["value"].t)
            continue
        if node.op_type == "Shape" and shapes.get(node.input[0]) is not None:
            full = shapes[node.input[0]]
            start, end = _attr(node, "start", 0), _attr(node, "end", len(full))
            value = np.array(full[start:end], dtype=np.int64)
        elif (
            node.op_type not in _NO_FOLD
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and all(name in consts for name in node.input if name)
        ):
            try:
                (value,) = ReferenceEvaluator(node).run(None, {n: consts[n] for n in node.input if n})
            except Exception:  # an op the reference evaluator lacks: leave it, inference may still cope
                value = None
            if value is not None and np.asarray(value).size > FOLD_MAX_ELEMENTS:
                value = None
        if value is None:
            continue
        value = np.asarray(value)
        consts[node.output[0]] = value
        graph.node[i].CopyFrom(
            helper.make_node("Constant", [], [node.output[0]], name=node.name,
                             value=numpy_helper.from_array(value, name=node.output[0]))
        )
        changed = True
    return changed


def infer_shapes_folded(model: ModelProto, max_rounds: int = 8) -> ModelProto:
    """Shape inference (with data propagation) alternating with small-constant folding."""
    current = model
    for _ in range(max_rounds):
        inferred = shape_inference.infer_shapes(current, check_type=False, strict_mode=False, data_prop=True)
        if not _fold_once(inferred, _shapes(inferred)):
            return inferred
        del inferred.graph.value_info[:]
        current = inferred
    return shape_inference.infer_shapes(current, check_type=False, strict_mode=False, data_prop=True)


def count_flops(model: ModelProto, dims: dict[str, int] | None = None, *, strict: bool = False) -> FlopCount:
    """FLOPs of ``model`` with symbolic dims (e.g. ``{"batch": 2}``) fixed; see the module docstring."""
    inferred = infer_shapes_folded(fix_dims(model, dims or {}))
    shapes = _shapes(inferred)
    result = FlopCount()
    _count_graph(inferred.graph, shapes, result)
    if strict and result.unknown:
        raise ValueError(f"FLOPs not countable, unknown shapes at nodes {result.unknown[:8]}")
    return result


def _count_graph(graph: onnx.GraphProto, shapes: dict[str, list[int] | None], result: FlopCount) -> None:
    for i, node in enumerate(graph.node):
        flops = _node_flops(node, shapes)
        if flops is None:
            result.unknown.append(node.name or f"{node.op_type}#{i}")
            continue
        if flops:
            result.total += flops
            result.by_op[node.op_type] += flops
        for a in node.attribute:  # If/Loop bodies: counted once, as written
            if a.type == onnx.AttributeProto.GRAPH:
                _count_graph(a.g, shapes, result)


def flops_by_batch(model: ModelProto, batches: tuple[int, ...] = (1, 2), dim: str = "batch") -> dict[str, float]:
    """The manifest's ``flops`` field: {"1": F1, "2": F2}, strict counting."""
    return {str(b): float(count_flops(model, {dim: b}, strict=True).total) for b in batches}

