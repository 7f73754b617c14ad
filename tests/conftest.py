from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from service_helpers import MOSQUITTO, Broker

pytest_plugins = ["ci_skips"]  # CI=true: a skip without the gpu mark fails the run


@pytest.fixture(scope="session")
def small_ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random checkpoint (resolution 64, latent 16x16, DINO grid 8x8) shared by tests."""
    from model_export.factory import make_random_checkpoint

    d = tmp_path_factory.mktemp("ckpt") / "small"
    make_random_checkpoint(d)
    return d


@pytest.fixture
def part_image() -> np.ndarray:
    """A smooth 'part' with a dark blob, at a size that is not the model resolution."""
    h, w = 50, 70
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).astype(np.float64)
    img[(yy - 20) ** 2 + (xx - 30) ** 2 < 60] = 20
    return np.clip(img, 0, 255).astype(np.uint8)


# -- parity cases (tests/parity_cases.py), shared by the reference and Detector parity tests ----------


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from oracle_glad import oracle_inspect
    from parity_cases import CASES, DELTA_FROM_TRACE, choose_later_delta, parity_noise

    from model_export.factory import make_random_checkpoint

    root = tmp_path_factory.mktemp("parity")
    out = {}
    for name, (kwargs, _) in CASES.items():
        make_random_checkpoint(root / name, **kwargs)
        out[name] = root / name
    for name in DELTA_FROM_TRACE:  # rewrite the threshold from the oracle's own per-step scores
        d = out[name]
        trace = oracle_inspect(d, CASES[name][1], parity_noise(d))["ads_trace"]
        assert len(trace) == 5, trace  # huge delta, min_step 0: ADS checked at every step
        delta, _ = choose_later_delta(trace)
        cfg = json.loads((d / "glad.json").read_text())
        cfg["input_threshold"] = delta
        (d / "glad.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


@pytest.fixture(scope="session")
def oracle_results(ckpts: dict[str, Path]) -> dict[str, dict]:
    from oracle_glad import oracle_inspect
    from parity_cases import CASES, parity_noise

    return {name: oracle_inspect(d, CASES[name][1], parity_noise(d)) for name, d in ckpts.items()}


@pytest.fixture(scope="session")
def bundles(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The parity checkpoints exported to ONNX bundles (default options)."""
    from model_export.onnx_export import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {name: export_bundle(d, root / name, progress=False) for name, d in ckpts.items()}


@pytest.fixture(scope="session")
def small_bundle(small_ckpt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small checkpoint exported with default options."""
    from model_export.onnx_export import export_bundle

    return export_bundle(small_ckpt_dir, tmp_path_factory.mktemp("bundle") / "small", progress=False)


@pytest.fixture(scope="session")
def score_threshold(small_bundle: Path) -> float:
    """A decision threshold for ``small_bundle`` (uncalibrated) that rejects 'dark' parts and passes
    'smooth' / 'noise' ones (tests/service_helpers.py)."""
    from service_helpers import separating_threshold

    from edge_runtime.detector import Detector

    return separating_threshold(Detector.load(small_bundle, engine_options={"intra_op_threads": 1}))


# -- a private Mosquitto broker (shared by the MQTT link tests and the service integration test) ---------
# tests/test_mqtt_outbox.py defines the same fixture locally; its copy shadows this one there.

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (scripts/setup.sh installs the Debian package 'mosquitto')")
    root = tmp_path / "broker"
    root.mkdir()
    b = Broker(root)
    b.start()
    try:
        yield b
    finally:
        b.stop()
