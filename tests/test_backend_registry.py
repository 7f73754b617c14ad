"""The backend registry (edge_runtime/engines/): every backend module declares its key, its typed options and
whether it needs a GPU; the CLI and the service config offer exactly the registered keys; Detector.load checks
options against the chosen backend; ``auto`` says what it chose and why it fell back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from edge_runtime.engines import BACKEND_CHOICES, BACKENDS, backend_module, choose_auto, unavailable_reason
from edge_runtime.errors import GladEdgeError


@pytest.mark.parametrize("key", list(BACKENDS))
def test_each_backend_module_declares_key_options_and_gpu(key: str) -> None:
    module = backend_module(key)
    assert module.KEY == key and isinstance(module.GPU, bool)
    assert issubclass(module.Options, BaseModel)
    module.Options()  # every option has a default
    with pytest.raises(ValidationError):
        module.Options(not_an_option=1)
    assert callable(module.open_device) and callable(module.is_available)


def test_cli_and_service_config_offer_the_registered_backends() -> None:
    from edge_runtime.cli import build_parser
    from edge_runtime.service.config import DetectorConfig

    assert BACKEND_CHOICES == ("auto", *BACKENDS)
    parser = build_parser()
    for key in BACKEND_CHOICES:
        assert parser.parse_args(["inspect", "--backend", key, "m", "x.png"]).backend == key
        assert DetectorConfig(backend=key).backend == key
    with pytest.raises(SystemExit):
        parser.parse_args(["inspect", "--backend", "onnx-gpu", "m", "x.png"])
    with pytest.raises(ValidationError, match="cuda-emulation"):
        DetectorConfig(backend="onnx-gpu")


def test_unknown_option_is_one_clear_error(small_bundle: Path) -> None:
    from edge_runtime import Detector

    with pytest.raises(GladEdgeError, match=r"backend onnxruntime: unknown option schedule_seed \(known: intra_op"):
        Detector.load(small_bundle, backend="onnxruntime", schedule_seed=3)
    with pytest.raises(GladEdgeError, match="backend cuda-emulation: option schedule_seed: .*greater than or equal"):
        Detector.load(small_bundle, backend="cuda-emulation", schedule_seed=-1)
    with pytest.raises(GladEdgeError, match="backend onnxruntime: option graph_optimization"):
        Detector.load(small_bundle, backend="onnxruntime", graph_optimization="max")
    with pytest.raises(GladEdgeError, match="unknown backend 'onnx'"):
        Detector.load(small_bundle, backend="onnx")


def test_typed_options_reach_the_engines(small_bundle: Path) -> None:
    from edge_runtime import Detector

    det = Detector.load(small_bundle, backend="onnxruntime", intra_op_threads=1, inter_op_threads=2)
    from edge_runtime.kernels.numpy_kernels import NumpyKernels

    assert isinstance(det.pipeline.device.kernels, NumpyKernels)  # onnxruntime never builds the emulated kernels
    session = det.pipeline.device.engines["unet"].session
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().inter_op_num_threads == 2


def test_caller_settings_for_other_backends_are_dropped_not_refused(small_bundle: Path) -> None:
    """The CLI and the service pass their ONNX Runtime tuning whatever backend auto picks (``engine_options``);
    a name the chosen backend does not declare is dropped there, while a keyword option is checked strictly."""
    from edge_runtime import Detector

    det = Detector.load(small_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1, "device_index": 0})
    assert det.backend == "onnxruntime"
    with pytest.raises(GladEdgeError, match="unknown option device_index"):
        Detector.load(small_bundle, backend="onnxruntime", device_index=0)


def test_auto_logs_its_choice_and_why_it_fell_back(small_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edge_runtime import Detector

    with caplog.at_level(logging.INFO, logger="glad_edge.engines"):
        det = Detector.load(small_bundle, backend="auto", intra_op_threads=1)
    assert det.backend == "onnxruntime" and det.fallback_reason == "the bundle has no TensorRT engines"
    assert any("chose onnxruntime" in r.getMessage() and "no TensorRT engines" in r.getMessage()
               and r.levelno == logging.INFO for r in caplog.records)  # nothing to warn about: a CPU bundle

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="glad_edge.engines"):
        chosen, why = choose_auto(True, small_bundle)  # a bundle with engines
    reason = unavailable_reason("tensorrt")
    if reason is None:  # a GPU box: no fallback
        assert (chosen, why) == ("tensorrt", None)
    else:  # here: the reason TensorRT cannot run is named, in the log too
        assert chosen == "onnxruntime" and why is not None and reason in why
        assert any(reason in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
