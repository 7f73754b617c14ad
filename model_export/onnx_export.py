"""Export a GLAD checkpoint to an ONNX bundle (manifest + graphs + fixed noise), verified before writing.

Each graph computes exactly what one ``GladReference`` model call computes (docs/reference.md):

============== ============================== =============================================================
file           inputs                         outputs
============== ============================== =============================================================
unet.onnx      sample [1,C,h,w], timestep [1] eps [1,C,h,w]: eps_u + g (eps_c - eps_u), both prompt
                                              embeddings and g baked in, the UNet run at batch 2 inside
               (``unet_guidance="batch2"``)   eps_pair [2,C,h,w]: (eps_u, eps_c); the runtime combines them
vae_encoder    image [1,3,R,R] in [-1, 1]     latent [1,C,h,w] = s * posterior mean
vae_decoder    latent [B,C,h,w] (scaled)      image [B,3,R,R], raw decoder output of latent / s, unclamped
dino           image [B,3,R_d,R_d] (ImageNet) features [B,L,P,D]: L2-normalised patch tokens of
                                              glad.dino_layers (CLS dropped, before the final norm)
dino_adaptive  image [B,3,R,R] (raw decoder)  features [B,P_R,D]: same, block glad.adaptive_layer of
                                              dino_adaptive (dino when absent)
============== ============================== =============================================================

B is the dynamic axis ``"batch"``; every other dimension is fixed, and the DINO position embeddings
are precomputed for their grid. Graphs come from torch's TorchScript exporter (``dynamo=False``: the
dynamo exporter needs onnxscript, which the export environment does not carry).

Before anything is written, every graph is run with onnxruntime (CPUExecutionProvider) on random inputs
of its shapes (batch 1 and, for dynamic graphs, batch 2) and compared with the ``GladReference`` call it
replaces; an export whose graph differs by more than ``VERIFY_TOLERANCE[precision] * max(1, max|ref|)``
is refused. The bundle is assembled in a hidden sibling directory and renamed into place only when
everything passed, so a failed export leaves nothing behind.

Graphs over ``EXTERNAL_DATA_THRESHOLD`` bytes (the SD UNet in fp32 is 3.4 GB; protobuf stops at 2 GB)
keep their weights in ``<file>.data`` beside the graph; the manifest lists that file so it is hashed.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edge_runtime.bundle import (
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    ModelEntry,
    NoiseEntry,
    ScheduleParams,
    read_manifest,
    write_manifest,
)
from edge_runtime.errors import GladEdgeError
from edge_runtime.onnx_refs import external_data_locations
from edge_runtime.sampler import sampler_params
from model_export.checkpoint import Checkpoint, encode_mean, load_checkpoint
from model_export.dino import DinoViT
from model_export.onnx_flops import count_flops
from model_export.staging import refuse_existing, staged

PRECISIONS = ("fp32", "fp16")
UNET_GUIDANCE = ("graph", "batch2")
BATCH = "batch"
# max |onnx - torch| allowed, relative to max(1, max |torch|). Measured worst (always the unet: guidance
# multiplies the UNet's error by ~2g+1): fp32 7.5e-6 on the small test checkpoint, 1.1e-5 with a random
# SD-1.x-sized UNet at latent 32; fp16 4.2e-3 and 6.8e-3 there, from rounding weights and activations to
# 11 significant bits, accumulated over the network and again multiplied by the guidance scale. The fp16
# bound catches broken conversions (overflow, NaN, a wrong op); fp16's accuracy cost is measured on scores.
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of tensors above which weights go to <file>.data


# -- the graphs ------------------------------------------------------------------------------------
def single_pass(guidance_scale: float) -> bool:
    """At g = 1 the guided eps is eps_c whatever uncond is: one UNet pass on cond gives it."""
    return float(guidance_scale) == 1.0


class GuidedUnet(nn.Module):
    """eps = eps_u + g (eps_c - eps_u) from one batch-2 UNet call with the two prompt embeddings baked in;
    at g = 1 (a guidance-folded student, or the demo model) a batch-1 call on cond alone."""

    def __init__(self, unet: nn.Module, uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float,
                 combine: bool = True) -> None:
        super().__init__()
        self.unet = unet
        self.single = single_pass(guidance_scale)
        embeds = cond if self.single else torch.cat([uncond, cond])
        self.register_buffer("embeds", embeds.float().detach().clone())
        self.g = float(guidance_scale)
        self.combine = combine

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.single:
            return self.unet(sample, timestep, encoder_hidden_states=self.embeds, return_dict=False)[0]
        out = self.unet(torch.cat([sample, sample]), torch.cat([timestep, timestep]),
                        encoder_hidden_states=self.embeds, return_dict=False)[0]
        if not self.combine:
            return out  # [eps_u, eps_c]
        eps_u, eps_c = out[:1], out[1:]
        return eps_u + self.g * (eps_c - eps_u)


class VaeEncoder(nn.Module):
    """s * posterior mean (no sampling, so only the mean half of the moments is computed)."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(scaling_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.scale * encode_mean(self.vae, image)


class VaeDecoder(nn.Module):
    """Raw decoder output of scaled latents: D(latent / s), not clamped."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae = vae
        self.scale = float(scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scale, return_dict=False)[0]


class DinoFeatures(nn.Module):
    """L2-normalised patch tokens of chosen blocks at one input size, position embedding precomputed."""

    def __init__(self, dino: DinoViT, layers: list[int], resolution: int, stack: bool) -> None:
        super().__init__()
        grid = resolution // dino.config.patch_size
        self.patch_embed = dino.patch_embed
        self.cls_token = dino.cls_token
        self.block_of = {layer: dino.block_for(layer) for layer in layers}  # a teacher's layer is its block
        self.blocks = nn.ModuleList(dino.blocks[: max(self.block_of.values())])
        # a student's per-layer heads to the teacher's width (none for a teacher: dino.project is the identity)
        self.heads = getattr(dino, "heads", nn.ModuleDict())
        with torch.no_grad():
            self.register_buffer("pos", dino.pos_embed_for(grid, grid).detach().clone())
        self.layers = list(layers)
        self.stack = stack

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(image)
        tokens = torch.cat([self.cls_token.expand(image.shape[0], -1, -1), tokens], dim=1) + self.pos
        wanted = set(self.block_of.values())
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if i in wanted:
                kept[i] = tokens[:, 1:]
        feats = []
        for layer in self.layers:  # a head acts before the normalisation, as in the reference
            f = kept[self.block_of[layer]]
            feats.append(F.normalize(self.heads[str(layer)](f) if str(layer) in self.heads else f, dim=-1))
        return torch.stack(feats, dim=1) if self.stack else feats[0]


@dataclass
class GraphSpec:
    role: str
    module: nn.Module
    inputs: dict[str, list[int | str]]  # name -> shape, BATCH for the dynamic axis
    outputs: dict[str, list[int | str]]
    reference: Callable[..., torch.Tensor]  # the GladReference call the graph replaces
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]  # random inputs at a batch size
    dynamic: bool = field(init=False)

    def __post_init__(self) -> None:
        self.dynamic = any(BATCH in shape for shape in self.inputs.values())

    @property
    def file(self) -> str:
        return f"{self.role}.onnx"

    @property
    def batches(self) -> tuple[int, ...]:
        return (1, 2) if self.dynamic else (1,)


def graph_specs(ckpt: Checkpoint, unet_guidance: str = "graph") -> list[GraphSpec]:
    """The five graphs of a bundle, each with the reference call it must reproduce."""
    from model_export.reference import GladReference

    ref = GladReference(ckpt, device="cpu")
    c = ckpt.config
    _, ch, h, w = ckpt.latent_shape
    r, rd = c.resolution, c.dino_resolution
    s = ckpt.scaling_factor
    dino, dino_a = ref.dino, ref.dino_adaptive
    p, p_a = dino.config.patch_size, dino_a.config.patch_size
    n_layers = len(c.dino_layers)

    def randn(*shape: int) -> Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]:
        return lambda b, gen: (torch.randn(b, *shape, generator=gen),)

    def uniform(*shape: int, lo: float, hi: float) -> Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]:
        return lambda b, gen: (torch.rand(b, *shape, generator=gen) * (hi - lo) + lo,)

    def unet_inputs(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        t = torch.randint(1, 1000, (1,), generator=gen).float()
        return torch.randn(1, ch, h, w, generator=gen), t

    def unet_pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.long().expand(2)
        return ref.unet(x.expand(2, -1, -1, -1), tt, encoder_hidden_states=ref.embeds).sample

    if unet_guidance == "graph" or single_pass(c.guidance_scale):  # one pass has no pair to hand over
        unet_out: dict[str, list[int | str]] = {"eps": [1, ch, h, w]}
        unet_ref: Callable[..., torch.Tensor] = lambda x, t: ref.guided_eps(x, int(t.item()))  # noqa: E731
    else:
        unet_out, unet_ref = {"eps_pair": [2, ch, h, w]}, unet_pair
    return [
        GraphSpec(
            "vae_encoder", VaeEncoder(ref.vae, s), {"image": [1, 3, r, r]}, {"latent": [1, ch, h, w]},
            ref.encode, uniform(3, r, r, lo=-1.0, hi=1.0),
        ),
        GraphSpec(
            "unet", GuidedUnet(ref.unet, ckpt.uncond, ckpt.cond, c.guidance_scale, combine=unet_guidance == "graph"),
            {"sample": [1, ch, h, w], "timestep": [1]}, unet_out, unet_ref, unet_inputs,
        ),
        GraphSpec(
            "vae_decoder", VaeDecoder(ref.vae, s), {"latent": [BATCH, ch, h, w]}, {"image": [BATCH, 3, r, r]},
            ref.decode, randn(ch, h, w),
        ),
        GraphSpec(
            "dino", DinoFeatures(dino, c.dino_layers, rd, stack=True), {"image": [BATCH, 3, rd, rd]},
            {"features": [BATCH, n_layers, (rd // p) ** 2, dino.feature_dim]},
            lambda x: torch.stack(ref.patch_features(dino, x, c.dino_layers), dim=1), randn(3, rd, rd),
        ),
        GraphSpec(
            "dino_adaptive", DinoFeatures(dino_a, [c.adaptive_layer], r, stack=False), {"image": [BATCH, 3, r, r]},
            {"features": [BATCH, (r // p_a) ** 2, dino_a.feature_dim]},
            lambda x: ref.patch_features(dino_a, x, [c.adaptive_layer])[0], uniform(3, r, r, lo=-1.1, hi=1.1),
        ),
    ]


# -- export, conversion, saving ------------------------------------------------------------------
@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The TorchScript exporter warns about the fixed-shape asserts it traces (intended here: the shapes
    are fixed) and about being the legacy exporter; neither is actionable for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        yield


def _torch_export(spec: GraphSpec, path: Path, opset: int) -> None:
    example = spec.sample(1, torch.Generator().manual_seed(0))
    dynamic_axes = {name: {0: BATCH} for name, shape in {**spec.inputs, **spec.outputs}.items() if BATCH in shape}
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            spec.module.eval(), example, str(path),
            input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_axes=dynamic_axes or None, opset_version=opset, dynamo=False, do_constant_folding=True,
        )


def _to_fp16(raw: Path) -> onnx.ModelProto:
    """fp16 weights and activations, float32 inputs/outputs (onnxruntime's converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    inferred = raw.with_name(raw.stem + ".shapes.onnx")  # path-based inference also works above 2 GB
    onnx.shape_inference.infer_shapes_path(str(raw), str(inferred))
    model = onnx.load(str(inferred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values out of fp16 range were clamped": the verification judges
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    toposort(converted.graph)  # the converter appends its input casts last; ONNX (and TensorRT) want order
    return converted


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically in place (stable: keeps the original order where it can)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in available})[:5]
            raise GladEdgeError(f"graph has a cycle or undefined inputs {missing}")
        pending = rest
    new_nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(new_nodes, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _tensor_bytes(model: onnx.ModelProto) -> int:
    total = sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                total += len(a.t.raw_data) or a.t.ByteSize()
    return total


def save_graph(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save a graph; above EXTERNAL_DATA_THRESHOLD its tensors go to ``<name>.data`` beside it.

    Returns the names (relative to ``path``'s directory) of the extra files the written graph references, read
    back from it as the runtime reads them (edge_runtime.onnx_refs): the bundle must list every one, or the
    runtime refuses it."""
    if _tensor_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        onnx.save(model, str(path))
    else:
        location = path.name + ".data"
        (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                  size_threshold=1024)
        os.chmod(path.parent / location, path.stat().st_mode & 0o777)  # onnx creates it 0600; match the graph
    return sorted(external_data_locations(path))


def _io_shapes(values: list[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in values
    }


def stamp_io_shapes(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Write the spec's input/output shapes into the graph: the exporter leaves outputs it could not
    infer statically with made-up symbolic dims (``Mullatent_dim_0``); verification checks the real ones."""
    for values, shapes in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        names = [v.name for v in values]
        if names != list(shapes):
            raise GladEdgeError(f"{spec.file}: graph has {names}, expected {list(shapes)}")
        for value in values:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[value.name]:
                if isinstance(d, str):
                    dims.add().dim_param = d
                else:
                    dims.add().dim_value = d


# -- verification ----------------------------------------------------------------------------------
@dataclass
class Verification:
    role: str
    max_abs_diff: float
    bound: float
    ref_max_abs: float
    batch: int

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.bound)  # False for NaN


def verify_graph(spec: GraphSpec, path: Path, precision: str, seed: int = 0) -> Verification:
    """Run the graph with onnxruntime (CPU) and the reference call on the same random inputs.

    Returns the worst case over the graph's batch sizes; the bound is VERIFY_TOLERANCE[precision] *
    max(1, max|reference|)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 on CPU warns per node it cannot constant-fold; errors still raise
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst: Verification | None = None
    gen = torch.Generator().manual_seed(seed)
    for b in spec.batches:
        inputs = spec.sample(b, gen)
        with torch.no_grad():
            expected = spec.reference(*inputs).float().numpy()
        (got,) = session.run(None, {name: x.numpy() for name, x in zip(spec.inputs, inputs, strict=True)})
        (declared,) = spec.outputs.values()
        declared = [b if d == BATCH else d for d in declared]
        if list(got.shape) != list(expected.shape) or list(got.shape) != declared:
            raise GladEdgeError(
                f"{spec.file}: output shape {list(got.shape)}, reference {list(expected.shape)}, declared {declared}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
        ref_max = float(np.max(np.abs(expected)))
        v = Verification(spec.role, diff, VERIFY_TOLERANCE[precision] * max(1.0, ref_max), ref_max, b)
        if worst is None or not v.ok or (worst.ok and v.max_abs_diff / v.bound > worst.max_abs_diff / worst.bound):
            worst = v
    assert worst is not None
    return worst


# -- the bundle ------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import onnxruntime

    import edge_runtime

    return {"glad_edge": edge_runtime.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _schedule(ckpt: Checkpoint) -> ScheduleParams:
    sc = ckpt.scheduler_config or {}
    ckpt.alphas_cumprod()  # refuses schedules other than scaled_linear
    default = ScheduleParams()
    return ScheduleParams(
        beta_start=float(sc.get("beta_start", default.beta_start)),
        beta_end=float(sc.get("beta_end", default.beta_end)),
        num_train_timesteps=int(sc.get("num_train_timesteps", default.num_train_timesteps)),
    )


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc="export", unit="model", file=sys.stderr, disable=not enabled, leave=False)


def export_bundle(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp32",
    sampler: str = "exact",
    steps: int | None = None,
    check_every: int | None = None,
    opset: int = 17,
    progress: bool = True,
    unet_guidance: str = "graph",
    overwrite: bool = False,
    selftest: bool = True,
) -> Path:
    """Export ``checkpoint_dir`` to an ONNX bundle at ``out_dir``; returns ``out_dir``.

    ``selftest`` adds the golden self-test (edge_runtime.updates.selftest) a station runs before switching
    to the bundle by update.

    ``unet_guidance="graph"`` (default) bakes the guidance combination into unet.onnx (output ``eps``);
    ``"batch2"`` exports the batch-2 UNet (output ``eps_pair``, uncond first) for the runtime to combine.
    Refuses (GladEdgeError) when a graph does not match the PyTorch reference; nothing is written then.
    """
    if precision not in PRECISIONS:
        raise GladEdgeError(f"precision {precision!r} is not supported for ONNX export (choose from {PRECISIONS})")
    if unet_guidance not in UNET_GUIDANCE:
        raise GladEdgeError(f"unet_guidance {unet_guidance!r}: choose from {UNET_GUIDANCE}")
    out = Path(out_dir)
    refuse_existing(out, overwrite)
    ckpt = load_checkpoint(checkpoint_dir)
    glad = ckpt.config
    try:
        sampler_cfg = sampler_params(glad, sampler, steps, check_every)
    except ValueError as e:
        raise GladEdgeError(f"sampler: {e}") from None
    schedule = _schedule(ckpt)
    specs = graph_specs(ckpt, unet_guidance)

    with staged(out) as tmp:
        tmp.mkdir()
        models, extra_files, verification = _write_graphs(specs, tmp, precision, opset, progress)
        noise = ckpt.default_noise().astype(np.float32)
        np.save(tmp / "noise.npy", noise, allow_pickle=False)
        source = {
            "checkpoint": str(Path(checkpoint_dir).resolve()),
            **_versions(),
            "opset": opset,
            "exporter": "torch.onnx (TorchScript)",
            "unet_guidance": unet_guidance,
            "unet_passes": 1 if single_pass(glad.guidance_scale) else 2,
            "verification": verification,
        }
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            source=source,
            glad=glad,
            sampler=sampler_cfg,
            schedule=schedule,
            latent_shape=list(ckpt.latent_shape),
            vae_scaling_factor=ckpt.scaling_factor,
            patch_size=ckpt.dino.config.patch_size,
            adaptive_patch_size=(ckpt.dino_adaptive or ckpt.dino).config.patch_size,
            noise=NoiseEntry(file="noise.npy", seed=glad.noise_seed, shape=list(noise.shape)),
            threshold=None,
            models=models,
            # placeholders: write_manifest hashes every name listed here
            files={name: FileEntry(sha256="0" * 64, size=0) for name in extra_files},
        )
        write_manifest(tmp, manifest)
        if selftest:
            from edge_runtime.updates.selftest import make_selftest

            manifest.selftest = make_selftest(tmp, manifest)
            write_manifest(tmp, manifest)
        read_manifest(tmp)  # the bundle as the device will read it: schema and every hash
    return out


def _write_graphs(
    specs: list[GraphSpec], bundle: Path, precision: str, opset: int, progress: bool
) -> tuple[dict[str, ModelEntry], list[str], dict[str, dict[str, float]]]:
    models: dict[str, ModelEntry] = {}
    extra_files: list[str] = []
    verification: dict[str, dict[str, float]] = {}
    scratch = bundle / ".raw"
    with _progress(len(specs), progress) as bar:
        for spec in specs:
            bar.set_postfix_str(spec.role)
            raw_dir = scratch / spec.role  # the exporter may write one file per tensor above 2 GB
            raw_dir.mkdir(parents=True)
            raw = raw_dir / spec.file
            try:
                _torch_export(spec, raw, opset)
            except Exception as e:  # torch raises many types; name the model and the first line
                raise GladEdgeError(f"{spec.file}: torch.onnx export failed ({str(e).splitlines()[0]})") from e
            model = _to_fp16(raw) if precision == "fp16" else onnx.load(str(raw))
            stamp_io_shapes(model, spec)
            extras = save_graph(model, bundle / spec.file)
            del model
            shutil.rmtree(raw_dir)
            check = verify_graph(spec, bundle / spec.file, precision)
            if not check.ok:
                raise GladEdgeError(
                    f"{spec.file} does not match the PyTorch reference: max |diff| {check.max_abs_diff:.3g} > "
                    f"allowed {check.bound:.3g} at batch {check.batch} ({precision}); bundle not written"
                )
            header = onnx.load(str(bundle / spec.file), load_external_data=False)
            flops = {str(b): float(count_flops(header, {BATCH: b}, strict=True).total) for b in spec.batches}
            models[spec.role] = ModelEntry(
                file=spec.file, format="onnx", precision=precision, backend="onnxruntime",
                inputs=_io_shapes(list(header.graph.input)), outputs=_io_shapes(list(header.graph.output)),
                flops=flops,
            )
            extra_files += extras
            verification[spec.role] = {"max_abs_diff": check.max_abs_diff, "allowed": check.bound}
            size = sum((bundle / f).stat().st_size for f in [spec.file, *extras])
            if progress:
                tqdm.write(
                    f"{spec.file}: {size / 1e6:.1f} MB {precision}, max |diff| {check.max_abs_diff:.2e} "
                    f"(allowed {check.bound:.1e}), {flops['1'] / 1e9:.3g} GFLOP at batch 1",
                    file=sys.stderr,
                )
            bar.update(1)
    shutil.rmtree(scratch, ignore_errors=True)
    return models, extra_files, verification


__all__ = ["VERIFY_TOLERANCE", "export_bundle", "graph_specs", "save_graph", "verify_graph"]
