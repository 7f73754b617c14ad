"""Is a TensorRT engine in a bundle usable by the TensorRT on this device? Checked before deserialising.

A plan from another library, TensorRT version or GPU either fails inside ``deserialize_cuda_engine`` with a
message that does not name the cause, or (worse) loads and runs wrong kernels; the manifest records what
each engine was built for (``EngineTarget``), so the runtime can refuse it with one line saying what to
rebuild. No TensorRT import here: the caller passes its module and runtime in, and finds the device's
compute capability itself.
"""

from __future__ import annotations

import re
from typing import Any

from edge_runtime.bundle import EngineTarget
from edge_runtime.errors import GladEdgeError

REBUILD = "rebuild the engines on this device: glad-edge build-engines BUNDLE"

# EngineInvalidityDiagnostics flag names -> words; a flag missing here is shown by its name.
_DIAGNOSTICS = {
    "VERSION_MISMATCH": "built by another TensorRT version",
    "UNSUPPORTED_CC": "not built for this GPU's compute capability",
    "OLD_CUDA_DRIVER": "CUDA driver too old",
    "OLD_CUDA_RUNTIME": "CUDA runtime too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "malformed engine file",
    "CUDA_ERROR": "CUDA error (no usable GPU or driver?)",
}


def normalize_cc(cc: str | int) -> str:
    """``"sm_86"`` from ``"sm_86"``, ``"SM86"``, ``"8.6"``, ``"86"`` or ``86``; ValueError otherwise."""
    text = str(cc).strip().lower()
    m = re.fullmatch(r"(?:sm_?)?(\d+)\.(\d)", text) or re.fullmatch(r"(?:sm_?)?(\d+)(\d)", text)
    if not m:
        raise ValueError(f"compute capability {cc!r}: expected a form like sm_86, 8.6 or 86")
    return f"sm_{int(m.group(1))}{m.group(2)}"


def _cc_number(cc: str) -> int:
    return int(normalize_cc(cc)[3:])


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def check_target(target: EngineTarget, *, library: str, version: str, device_cc: str | None, file: str) -> None:
    """Raise one-line GladEdgeError when the engine ``file`` was not built for this library, version and GPU.

    ``library`` / ``version``: the TensorRT module name (``tensorrt`` or ``tensorrt_rtx``) and its
    ``__version__``; ``device_cc``: the GPU's compute capability (``"sm_87"``, ``"8.7"``), or None when
    unknown (that check is then left to TensorRT).
    """
    built = f"{target.library} {target.version}"
    if target.library != library:
        raise GladEdgeError(f"{file}: engine built with {built}, this device has {library} {version}; {REBUILD}")
    if target.version != version:
        # TensorRT-RTX: engines never cross releases. TensorRT: only version-compatible plans do, and only forward.
        forward_ok = (library == "tensorrt" and target.version_compatible
                      and _version_tuple(version) >= _version_tuple(target.version))
        if not forward_ok:
            raise GladEdgeError(f"{file}: engine built with {built}, this device has {library} {version} "
                                f"(engines are tied to the version that built them); {REBUILD}")
    if device_cc is None:
        return
    cc = normalize_cc(device_cc)
    built_for = [normalize_cc(c) for c in target.compute_capabilities]
    level = target.hardware_compatibility.lower()
    if cc in built_for:
        return
    if level == "ampere_plus" and _cc_number(cc) >= 80:
        return
    raise GladEdgeError(f"{file}: engine built for {', '.join(built_for)} (hardware compatibility {level}), "
                        f"this GPU is {cc}; {REBUILD}")


def engine_validity(trt: Any, runtime: Any, data: bytes) -> str | None:
    """TensorRT's own header check of a serialised engine: None if valid (or merely suboptimal), else a reason.

    Uses ``Runtime.get_engine_validity`` (TensorRT-RTX; reads only the header, ``runtime.engine_header_size``
    bytes, so a corrupt body passes: the manifest's sha256 catches that). None where the library has no
    such call.
    """
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return None
    try:
        validity, diagnostics = check(data)
    except Exception as e:  # a binding that refuses the buffer: report it rather than crash the load
        return f"validity check failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if validity in (trt.EngineValidity.VALID, trt.EngineValidity.SUBOPTIMAL):
        return None
    flags = getattr(trt, "EngineInvalidityDiagnostics", None)
    members = dict(getattr(flags, "__members__", {}))
    reasons = [_DIAGNOSTICS.get(name, name.lower().replace("_", " "))
               for name, member in members.items() if int(diagnostics) & int(member)]
    if reasons:
        return "invalid on this system: " + ", ".join(reasons)
    # What a CPU-only machine gets for a well-formed engine: the check stops at reading the GPU's properties.
    return "invalid on this system (TensorRT gives no reason; is a GPU with a working driver present?)"


__all__ = ["check_target", "engine_validity", "normalize_cc"]
