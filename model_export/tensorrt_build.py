"""TensorRT engines from a bundle's ONNX graphs, written into the bundle beside them.

One builder for both NVIDIA libraries:

- ``tensorrt`` (TensorRT 10+, x86 or JetPack): builds for the GPU it runs on. Engines are tied to that GPU
  and TensorRT version, so on a Jetson they are built on the device, from the ONNX bundle.
- ``tensorrt_rtx`` (the ``tensorrt-rtx`` wheel, x86-64): builds ahead of time without a GPU, for a list
  of compute capabilities (RTX GPUs; kernels are specialised on the device when first run). CI builds with
  it on CPU, so the code below (parse, profiles, strongly typed networks, timing cache, serialisation,
  manifest target) really runs there.

Precision comes from the graph: networks are strongly typed wherever the library has the flag (TensorRT-RTX
has nothing else), so an fp16 engine is built from an fp16 ONNX graph (an fp32 bundle is converted on the
fly with the exporter's converter; inputs and outputs stay float32). Only a TensorRT without
STRONGLY_TYPED gets the fp32 graph with BuilderFlag.FP16. INT8 comes from the QuantizeLinear/DequantizeLinear
nodes of a bundle made by ``glad-edge quantize`` (explicit quantization; neither library's current version
has calibrators): ``precision="int8"`` builds every graph at its own precision, the QDQ ones in INT8, so a
mixed-precision plan keeps its fp16 and fp32 graphs as chosen (docs/quantization.md).

Graphs are static except the leading batch axis of vae_decoder, dino and dino_adaptive, which gets one
optimisation profile, batch 1..2 (what the runtime uses), optimised for 2.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from edge_runtime.bundle import (
    MANIFEST,
    MODEL_ROLES,
    EngineTarget,
    KernelEntry,
    Manifest,
    ModelEntry,
    read_manifest,
    write_manifest,
)
from edge_runtime.engine_target import normalize_cc
from edge_runtime.errors import GladEdgeError

LIBRARIES = ("tensorrt", "tensorrt_rtx")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_DIR = "engines"
KERNEL_DIR = "kernels"
ENGINE_SUFFIX = ".engine"
BATCH_PROFILE = (1, 2, 2)  # min, opt, max of the dynamic batch axis: the runtime runs batches 1 and 2
INSTALL_HINT = (
    "install TensorRT's Python package: on a Jetson JetPack's `sudo apt install python3-libnvinfer` (and a venv "
    "with --system-site-packages), on x86 `pip install tensorrt` (NVIDIA GPU) or `pip install tensorrt-rtx` "
    "(RTX GPUs; builds engines without a GPU)"
)

Log = Callable[[str], None]


# -- the library -----------------------------------------------------------------------------------
def import_tensorrt(prefer: str | None = None) -> ModuleType:
    """The TensorRT module: ``prefer`` (default ``$GLAD_EDGE_TENSORRT``) first when given, else ``tensorrt`` then
    ``tensorrt_rtx``."""
    prefer = prefer or os.environ.get("GLAD_EDGE_TENSORRT") or None
    if prefer is not None and prefer not in LIBRARIES:
        raise GladEdgeError(f"unknown TensorRT library {prefer!r} (choose from {', '.join(LIBRARIES)})")
    order = [prefer, *(name for name in LIBRARIES if name != prefer)] if prefer else list(LIBRARIES)
    failures = []
    for name in order:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the package is there but something it needs is not
                failures.append(f"{name}: {e}")
        except (ImportError, OSError) as e:  # e.g. a wheel whose CUDA libraries do not load
            failures.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    found = f" ({'; '.join(failures)})" if failures else ""
    raise GladEdgeError(f"no TensorRT Python library could be imported{found}; {INSTALL_HINT}")


def library_name(trt: ModuleType) -> str:
    return trt.__name__.split(".")[0]


def _flag(enum: Any, name: str) -> Any | None:
    return getattr(enum, name, None) if enum is not None else None


def is_strongly_typed(trt: Any) -> bool:
    return _flag(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED") is not None


def network_flags(trt: Any) -> int:
    """Network creation flags, each bit taken from the library's own enum (values differ between versions).

    STRONGLY_TYPED wherever it exists; EXPLICIT_BATCH only on a TensorRT without it (8.x, where ONNX needs
    it; TensorRT 10 deprecates it and is always explicit-batch)."""
    enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly = _flag(enum, "STRONGLY_TYPED")
    if strongly is not None:
        return 1 << int(strongly)
    explicit = _flag(enum, "EXPLICIT_BATCH")
    return 1 << int(explicit) if explicit is not None else 0


def default_timing_cache(trt: ModuleType) -> Path:
    """``$GLAD_EDGE_CACHE/tensorrt/<library>-<version>.timing-cache`` (default root ~/.cache/glad-edge)."""
    root = os.environ.get("GLAD_EDGE_CACHE") or Path.home() / ".cache" / "glad-edge"
    return Path(root) / "tensorrt" / f"{library_name(trt)}-{trt.__version__}.timing-cache"


# -- one engine ------------------------------------------------------------------------------------
def _make_logger(trt: Any, log: Log | None, errors: list[str]) -> Any:
    rtx = library_name(trt) == "tensorrt_rtx"

    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        """Errors are kept for the one-line message; warnings go to ``log``; TensorRT's chatter is dropped."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                errors.append(msg)
            elif severity == trt.ILogger.WARNING and log is not None:
                if rtx and "timing cache" in msg.lower():
                    return  # TensorRT-RTX ignores timing caches and says so on every build
                log(f"TensorRT: {msg}")

    return _Logger()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"


@contextmanager
def _no_rtx_timing_cache_warning() -> Iterator[None]:
    # TensorRT-RTX keeps the timing-cache API as no-ops that warn on every call; the same code serves
    # TensorRT, where the cache saves most of the build time.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Tt]iming cache.*", category=DeprecationWarning)
        yield


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_bytes(path: Path | None) -> bytes:
    try:
        return path.read_bytes() if path is not None else b""
    except FileNotFoundError:
        return b""


def _noop_note(trt: Any) -> str:
    return " (TensorRT-RTX: not used)" if library_name(trt) == "tensorrt_rtx" else ""


def _attach_timing_cache(trt: Any, config: Any, path: Path, log: Log | None) -> Any:
    data = _read_bytes(path)
    with _no_rtx_timing_cache_warning():
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            if log is not None and data:
                log(f"timing cache: read {len(data)} bytes from {path}{_noop_note(trt)}")
            return cache
        # another GPU, TensorRT version or a damaged file: start a new cache rather than fail the build
        if log is not None:
            log(f"timing cache {path} does not fit this GPU / TensorRT version; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        return cache


def _save_timing_cache(trt: Any, config: Any, path: Path, log: Log | None) -> None:
    with _no_rtx_timing_cache_warning():
        cache = config.get_timing_cache()
        if cache is None:
            return
        # Merge into what is on disk now: a build running in parallel may have written entries meanwhile.
        merged = config.create_timing_cache(_read_bytes(path))
        if merged is None or not merged.combine(cache, False):
            merged = cache  # the file is from another GPU / version: replace it
        data = bytes(merged.serialize())
    _atomic_write(path, data)
    if log is not None:
        log(f"timing cache: wrote {len(data)} bytes to {path}{_noop_note(trt)}")


def _default_rtx_targets(trt: Any) -> list[Any]:
    # What TensorRT-RTX targets when none are set (its docs: Ampere and later, no Turing by default).
    # Listed explicitly so the manifest names them; taken from the enum so a newer wheel adds its own.
    members = getattr(trt.ComputeCapability, "__members__", {})
    return [m for name, m in members.items() if name.startswith("SM") and int(m) >= 80]


def _cc_name(cc: str) -> str:
    try:
        return normalize_cc(cc)
    except ValueError as e:
        raise GladEdgeError(str(e)) from None


def _cc_member(trt: Any, cc: str) -> Any:
    name = "SM" + _cc_name(cc)[3:]
    member = getattr(trt.ComputeCapability, name, None)
    if member is None:
        known = [n for n in getattr(trt.ComputeCapability, "__members__", {}) if n.startswith("SM")]
        raise GladEdgeError(f"compute capability {cc}: {library_name(trt)} {trt.__version__} builds for "
                            f"{', '.join('sm_' + n[2:] for n in known)}")
    return member


def build_gpu_compute_capability() -> str | None:
    """The compute capability of the GPU a (non-RTX) TensorRT builds on: CUDA device 0 as the driver
    numbers them (CUDA_VISIBLE_DEVICES applies), or None without a usable driver."""
    from model_export.cuda_kernels import device_compute_capability

    return device_compute_capability()


def _set_targets(trt: Any, config: Any, compute_capabilities: Sequence[str] | None) -> list[str]:
    """Tell the builder which GPUs to build for; returns them in ``sm_XY`` form for the manifest."""
    aot = hasattr(trt, "ComputeCapability") and hasattr(config, "set_compute_capability")
    if aot:
        members = ([_cc_member(trt, cc) for cc in compute_capabilities] if compute_capabilities
                   else _default_rtx_targets(trt))
        members = list({int(m): m for m in members}.values())  # sm_86 and 8.6 are one target
        config.num_compute_capabilities = len(members)
        for i, member in enumerate(members):
            if not config.set_compute_capability(member, i):
                raise GladEdgeError(f"{library_name(trt)} refused compute capability {member.name}")
        return [f"sm_{int(m)}" for m in members]
    device = build_gpu_compute_capability()
    if device is None:
        raise GladEdgeError(f"{library_name(trt)} builds for the GPU it runs on, and no CUDA GPU was found here")
    wanted = sorted({_cc_name(cc) for cc in compute_capabilities or []})
    if wanted and wanted != [device]:
        raise GladEdgeError(f"{library_name(trt)} {trt.__version__} builds only for this GPU ({device}), not "
                            f"{', '.join(wanted)}: build on the target device")
    return [device]


def _add_profile(trt: Any, builder: Any, network: Any, config: Any, onnx_path: Path) -> None:
    """One optimisation profile when any input has a dynamic dimension (only the leading batch axis may)."""
    dynamic = False
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if -1 not in shape:
            continue
        if -1 in shape[1:]:
            raise GladEdgeError(f"{onnx_path}: input {tensor.name!r} {shape} has a dynamic axis other than the "
                                "leading batch axis (no range is known for it)")
        dynamic = True
        lo, opt, hi = ([b, *shape[1:]] for b in BATCH_PROFILE)
        profile.set_shape(tensor.name, lo, opt, hi)
    if dynamic:
        config.add_optimization_profile(profile)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    compute_capabilities: Sequence[str] | None = None,
    workspace_mb: int | None = None,
    log: Log | None = None,
    trt: ModuleType | None = None,
) -> EngineTarget:
    """Build one engine from an ONNX file (its external data beside it) and write it atomically.

    ``precision`` is what the engine computes in: with a strongly typed network that is the graph's own
    types (pass an fp16 graph for fp16); without STRONGLY_TYPED, fp16 sets BuilderFlag.FP16.
    ``timing_cache``: a file read before and merged into after the build (None: no cache).
    ``compute_capabilities``: TensorRT-RTX's ahead-of-time targets (default: its portable set); TensorRT
    builds for its own GPU and accepts only that. Returns what the manifest records about the engine.
    """
    if precision not in PRECISIONS:
        raise GladEdgeError(f"precision {precision!r} is not built here (choose from {', '.join(PRECISIONS)})")
    trt = trt or import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    errors: list[str] = []
    logger = _make_logger(trt, log, errors)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): it resolves <graph>.onnx.data relative to the graph's directory
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else None
        if first is not None:
            node = first.node()
            where = f"node {node} ({first.node_operator()} {first.node_name()!r}): " if node >= 0 else ""
            reason = where + _first_line(first.desc())
        else:
            reason = _first_line(errors[0]) if errors else "no parser error given"
        raise GladEdgeError(f"{onnx_path}: TensorRT could not parse the ONNX graph ({reason})")

    config = builder.create_builder_config()
    strongly = is_strongly_typed(trt)
    if not strongly and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly and precision == "int8":  # a weakly typed TensorRT needs the flag to honour Q/DQ in INT8
        config.set_flag(trt.BuilderFlag.INT8)
    tf32 = _flag(getattr(trt, "BuilderFlag", None), "TF32")
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # on by default; fp32 means fp32 here, like the reference (TF32 off)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    targets = _set_targets(trt, config, compute_capabilities)
    _add_profile(trt, builder, network, config, onnx_path)
    cache = _attach_timing_cache(trt, config, timing_cache, log) if timing_cache is not None else None

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = _first_line(errors[0]) if errors else "no error message"
        raise GladEdgeError(f"{onnx_path}: TensorRT engine build failed ({reason})")
    if cache is not None and timing_cache is not None:
        _save_timing_cache(trt, config, timing_cache, log)
    _atomic_write(engine_path, memoryview(plan).tobytes())

    level = "none"
    if library_name(trt) == "tensorrt":  # TensorRT-RTX has no hardware-compatibility levels (and warns)
        level = config.hardware_compatibility_level.name.lower()
    version_flag = _flag(getattr(trt, "BuilderFlag", None), "VERSION_COMPATIBLE")
    return EngineTarget(
        library=library_name(trt), version=trt.__version__, compute_capabilities=targets,
        hardware_compatibility=level,
        version_compatible=bool(version_flag is not None and config.get_flag(version_flag)),
        strongly_typed=strongly, precision=precision,
    )


# -- a bundle's engines ----------------------------------------------------------------------------
def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the SD UNet's fp32 weights are 3.4 GB; a hard link costs nothing
    except OSError:
        shutil.copy2(src, dst)


def _fp16_graph(bundle: Path, entry: ModelEntry, extra_files: Sequence[str], scratch: Path) -> Path:
    """An fp16 copy of an fp32 graph (the exporter's converter: fp32 inputs/outputs), in ``scratch``."""
    try:
        from model_export.onnx_export import _to_fp16, save_graph
    except ImportError as e:
        raise GladEdgeError(f"converting the fp32 graphs to fp16 needs the export dependencies ({e}): "
                            "pip install 'glad-edge[export]', or export the bundle with --precision fp16") from None
    src = scratch / "fp32"
    src.mkdir(parents=True, exist_ok=True)
    # _to_fp16 writes a shape-inferred copy beside its input: work on links, never inside the bundle
    _link_or_copy(bundle / entry.file, src / Path(entry.file).name)
    for name in extra_files:
        if name.startswith(entry.file + "."):  # <graph>.onnx.data
            _link_or_copy(bundle / name, src / Path(name).name)
    out = scratch / "fp16" / Path(entry.file).name
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _to_fp16(src / Path(entry.file).name)
    save_graph(model, out)
    del model
    shutil.rmtree(src)
    return out


def _graph_for(trt: Any, role: str, entry: ModelEntry, precision: str) -> str:
    """'as is' or 'fp16': which graph builds an engine of ``precision`` from this ONNX entry. An int8 build takes
    every graph as it is (QDQ graphs in INT8, the others at the precision the plan kept them in)."""
    if entry.precision == precision or precision == "int8":
        return "as is"
    if entry.precision == "fp32" and precision == "fp16":
        return "fp16" if is_strongly_typed(trt) else "as is"  # weakly typed: BuilderFlag.FP16 does it
    raise GladEdgeError(f"{role}: an {precision} engine cannot be built from the bundle's {entry.precision} "
                        f"ONNX graph; export the bundle with --precision {precision}")


def build_engines(
    bundle_dir: str | Path,
    *,
    precision: str = "fp16",
    timing_cache: str | Path | bool = True,
    compute_capabilities: Sequence[str] | None = None,
    workspace_mb: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    library: str | None = None,
    kernels: str | Path | bool = True,
) -> Manifest:
    """Build ``engines/<role>.engine`` for every model of the bundle and list them in its manifest.

    ``kernels``: True compiles the scoring and sampler kernels with nvcc into ``kernels/glad_kernels.fatbin``
    for the targets the installed nvcc supports (``model_export.cuda_kernels.select_targets``: the wanted
    ``TARGETS``, this machine's GPU, PTX for the newest; chosen before any engine is built); the manifest
    lists what the fatbin holds; a path ships that prebuilt fatbin instead; False ships none (the TensorRT
    backend then refuses the bundle).

    The bundle is verified first (every sha256). Engines are built in a sibling directory and moved in
    only when all of them built; the manifest is rewritten last. Any failure leaves the bundle as it was.
    ``timing_cache``: True for the default file (``default_timing_cache``), False for none, or a path.
    Returns the new manifest.
    """
    if precision not in PRECISIONS:
        raise GladEdgeError(f"precision {precision!r} is not built here (choose from {', '.join(PRECISIONS)})")
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    if manifest.engines and not overwrite:
        raise GladEdgeError(f"{bundle}: already has engines (built with "
                            f"{_describe(manifest.engines)}); use --overwrite to rebuild them")
    if (bundle / ENGINE_DIR).exists() and not manifest.engines and not overwrite:
        raise GladEdgeError(f"{bundle / ENGINE_DIR}: exists but the manifest lists no engines; remove it or "
                            "use --overwrite")
    missing = [role for role in MODEL_ROLES if role not in manifest.models]
    if missing:
        raise GladEdgeError(f"{bundle / MANIFEST}: models {missing} missing")
    trt = import_tensorrt(library)
    # refuse what would fail later before building anything
    for role in MODEL_ROLES:
        _graph_for(trt, role, manifest.models[role], precision)
    if precision == "int8" and not any(m.precision == "int8" for m in manifest.models.values()):
        raise GladEdgeError(f"{bundle}: no INT8 (QDQ) graph to build an INT8 engine from; make one with "
                            "glad-edge quantize --precision int8|auto")
    if compute_capabilities and hasattr(trt, "ComputeCapability"):
        for cc in compute_capabilities:
            _cc_member(trt, cc)
    kernel_targets = None
    if kernels is True:  # an nvcc that cannot build them fails here, not after minutes of engine builds
        from model_export.cuda_kernels import select_targets

        kernel_targets = select_targets()
    cache: Path | None
    if timing_cache is True:
        cache = default_timing_cache(trt)
    elif timing_cache is False:
        cache = None
    else:
        cache = Path(timing_cache)

    work = bundle.parent / f".{bundle.name}.engines-{uuid.uuid4().hex[:8]}"
    staged = work / ENGINE_DIR
    staged.mkdir(parents=True)
    extras = [name for name in manifest.files if name.endswith(".data")]
    engines: dict[str, ModelEntry] = {}
    try:
        say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else None
        with tqdm(total=len(MODEL_ROLES), desc=f"engines ({library_name(trt)})", unit="model", file=sys.stderr,
                  disable=not progress, leave=False) as bar:
            for role in MODEL_ROLES:
                bar.set_postfix_str(role)
                entry = manifest.models[role]
                t0 = time.perf_counter()
                graph = bundle / entry.file
                if _graph_for(trt, role, entry, precision) == "fp16":
                    graph = _fp16_graph(bundle, entry, extras, work / "graphs" / role)
                name = f"{role}{ENGINE_SUFFIX}"
                own = entry.precision if precision == "int8" else precision
                target = build_engine(graph, staged / name, precision=own, timing_cache=cache,
                                      compute_capabilities=compute_capabilities, workspace_mb=workspace_mb,
                                      log=say, trt=trt)
                engines[role] = ModelEntry(
                    file=f"{ENGINE_DIR}/{name}", format="tensorrt", precision=own, backend="tensorrt",
                    target=target, inputs=entry.inputs, outputs=entry.outputs, flops=entry.flops,
                )
                if say is not None:
                    size = (staged / name).stat().st_size
                    say(f"{ENGINE_DIR}/{name}: {size / 1e6:.1f} MB {own}, "
                        f"{', '.join(target.compute_capabilities)}, {time.perf_counter() - t0:.1f} s")
                bar.update(1)
        shutil.rmtree(work / "graphs", ignore_errors=True)
        kernel_entry = _stage_kernels(kernels, work / KERNEL_DIR, say, kernel_targets)
        updated = manifest.model_copy(update={"engines": engines, "kernels": kernel_entry})
        moves = [(staged, bundle / ENGINE_DIR)]
        if kernel_entry is not None:
            moves.append((work / KERNEL_DIR, bundle / KERNEL_DIR))
        _commit(bundle, moves, updated, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return read_manifest(bundle, verify=False)


def _describe(engines: dict[str, ModelEntry]) -> str:
    targets = {(e.target.library, e.target.version, e.precision) for e in engines.values() if e.target}
    return "; ".join(f"{lib} {ver} {prec}" for lib, ver, prec in sorted(targets)) or "unknown"


def _stage_kernels(kernels: str | Path | bool, staged: Path, say: Log | None,
                   targets: tuple[list[str], str | None] | None = None) -> KernelEntry | None:
    """The kernel fatbin for the bundle, compiled (or copied) into ``staged`` and checked: every kernel the
    runtime launches must be in it."""
    if kernels is False:
        return None
    from edge_runtime.kernels import launch as kl
    from model_export import cuda_kernels

    staged.mkdir(parents=True, exist_ok=True)
    out = staged / kl.FATBIN_NAME
    t0 = time.perf_counter()
    if kernels is True:
        cubins, ptx_target = targets if targets is not None else cuda_kernels.select_targets()
        cuda_kernels.compile_fatbin(out, cubins, ptx_target)
    else:
        src = Path(kernels)
        if not src.is_file():
            raise GladEdgeError(f"{src}: kernel fatbin not found")
        shutil.copyfile(src, out)
    images = cuda_kernels.read_fatbin(out.read_bytes())
    for image in images:
        lacking = sorted(set(kl.SIGNATURES) - image.kernels) if image.kernels else []
        if lacking:
            raise GladEdgeError(f"{out.name}: the {image.target} image lacks kernels {lacking}")
    targets = sorted({i.target for i in images if i.kind == "elf"}, key=lambda t: int(t.split("_")[1]))
    ptx = next((i.target for i in images if i.kind == "ptx"), None)
    if not targets and ptx is None:
        raise GladEdgeError(f"{out.name}: no cubin or PTX in the fatbin")
    if say is not None:
        say(f"{KERNEL_DIR}/{out.name}: {out.stat().st_size / 1e3:.0f} kB, {', '.join(targets)}"
            f"{' + ' + ptx if ptx else ''}, {time.perf_counter() - t0:.1f} s")
    return KernelEntry(file=f"{KERNEL_DIR}/{kl.FATBIN_NAME}", targets=targets, ptx=ptx,
                       source_sha256=kl.source_hash())


def _commit(bundle: Path, moves: list[tuple[Path, Path]], manifest: Manifest, work: Path) -> None:
    """Move the staged folders in and rewrite the manifest; on any failure put everything back."""
    old_manifest = (bundle / MANIFEST).read_bytes()
    done: list[tuple[Path, Path | None]] = []  # (live folder now in place, where its predecessor went)
    try:
        for i, (staged, live) in enumerate(moves):
            previous = None
            if live.exists():
                previous = work / f"previous-{i}"
                shutil.move(live, previous)  # a rename, unless the bundle is a mount point of its own
            done.append((live, previous))
            shutil.move(staged, live)
        write_manifest(bundle, manifest)
        read_manifest(bundle)  # the bundle as the device will read it: schema and every hash
    except BaseException:
        for live, previous in reversed(done):
            shutil.rmtree(live, ignore_errors=True)
            if previous is not None and previous.exists():
                shutil.move(previous, live)
        if (bundle / MANIFEST).read_bytes() != old_manifest:
            _atomic_write(bundle / MANIFEST, old_manifest)
        (bundle / MANIFEST).with_suffix(".tmp").unlink(missing_ok=True)
        raise


def export_with_engines(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp16",
    timing_cache: str | Path | bool = True,
    compute_capabilities: Sequence[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    library: str | None = None,
    kernels: str | Path | bool = True,
    **export_options: Any,
) -> Path:
    """``export_bundle`` at ``precision`` and then ``build_engines`` at it, as one step: the bundle appears
    at ``out_dir`` only when both succeeded."""
    from model_export.onnx_export import export_bundle
    from model_export.staging import refuse_existing, staged

    out = Path(out_dir)
    refuse_existing(out, overwrite)
    import_tensorrt(library)  # before minutes of export, not after
    with staged(out) as tmp:
        export_bundle(checkpoint_dir, tmp, precision=precision, progress=progress, **export_options)
        build_engines(tmp, precision=precision, timing_cache=timing_cache,
                      compute_capabilities=compute_capabilities, progress=progress, library=library,
                      kernels=kernels)
    return out


__all__ = [
    "BATCH_PROFILE",
    "build_engine",
    "build_engines",
    "default_timing_cache",
    "export_with_engines",
    "import_tensorrt",
    "network_flags",
]
