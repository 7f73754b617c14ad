"""Fault injection at load time (issue 11, items 6-8): every bad bundle, config, frames folder or environment
ends a command with one line ``glad-edge <command>: error: ...`` and exit 1, no traceback; a graph that
disagrees with its manifest, or weights the manifest does not hash, are refused before the station starts;
a genuine bug keeps its traceback; under CI a skipped test fails the run.

Unreadable files are made with mode 000. The tests run as root here, and root reads any file, so the
commands that must meet a permission error run in a subprocess without the capabilities that bypass file
permissions (setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from service_helpers import station_config, write_parts

from edge_runtime import cli
from edge_runtime.bundle import MANIFEST, FileEntry, read_manifest, write_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.nesting import MAX_DEPTH
from edge_runtime.onnx_refs import external_data_locations

REPO = Path(__file__).resolve().parents[1]
DROP = "-dac_override,-dac_read_search"


# -- helpers ---------------------------------------------------------------------------------------------


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _edit_manifest(bundle: Path, edit) -> None:  # noqa: ANN001
    m = json.loads((bundle / MANIFEST).read_text())
    edit(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


def _rehash(bundle: Path, extra: tuple[str, ...] = ()) -> None:
    """Rewrite the manifest's hashes for the files as they are now (a tamperer who also edits the manifest)."""
    m = read_manifest(bundle, verify=False)
    m.files = {**m.files, **{name: FileEntry(sha256="0" * 64, size=0) for name in extra}}
    write_manifest(bundle, m)


def _cli_unprivileged(*args: str) -> subprocess.CompletedProcess:
    """The CLI as a process that file permissions apply to (see the module docstring)."""
    cmd = [sys.executable, "-m", "edge_runtime.cli", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's file-permission override"
        cmd = [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


@contextmanager
def _unreadable(path: Path) -> Iterator[Path]:
    mode = path.stat().st_mode & 0o777
    path.chmod(0)
    try:
        yield path
    finally:
        path.chmod(mode)


def _one_line(command: str, rc: int, err: str, *words: str) -> str:
    """The failure is one line naming the command, exit 1, no traceback; returns the message."""
    assert rc == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"glad-edge {command}: error: "), err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


def _inspect(capsys: pytest.CaptureFixture[str], bundle: Path, image: Path, *words: str) -> str:
    rc = cli.main(["inspect", str(bundle), str(image), "--threads", "1"])
    return _one_line("inspect", rc, capsys.readouterr().err, *words)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return tmp_path / "parts" / write_parts(tmp_path / "parts", ["smooth"])[0]


def _station(tmp_path: Path, bundle: Path, source: Path) -> Path:
    cfg = station_config(tmp_path, bundle, source, pipeline={"allow_uncalibrated": True, "threshold": 1.0})
    path = tmp_path / "station.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _check(capsys: pytest.CaptureFixture[str], config: Path, *words: str) -> str:
    rc = cli.main(["run", "--config", str(config), "--check"])
    return _one_line("run", rc, capsys.readouterr().err, *words)


# -- 6a: the graphs agree with the manifest --------------------------------------------------------------


def test_run_check_refuses_a_graph_whose_input_shape_disagrees_with_the_manifest(small_bundle, tmp_path, capsys):
    """The manifest (consistent in itself: resolution and the encoder's declared input moved together) says
    the encoder takes 32x32 images; the graph takes 64x64. Refused by run --check, naming the graph."""
    b = _copy(small_bundle, tmp_path)
    source = tmp_path / "parts"
    write_parts(source, ["smooth"])

    def edit(m: dict) -> None:
        m["glad"]["resolution"] = 32
        m["models"]["vae_encoder"]["inputs"]["image"] = [1, 3, 32, 32]
        m["models"]["dino_adaptive"]["inputs"]["image"] = ["batch", 3, 32, 32]
        m["models"]["vae_decoder"]["outputs"]["image"] = ["batch", 3, 32, 32]

    _edit_manifest(b, edit)
    line = _check(capsys, _station(tmp_path, b, source), str(b / "vae_encoder.onnx"), "input image",
                  "[1, 3, 64, 64] in the graph", "[1, 3, 32, 32]")
    assert "manifest" in line


def test_manifest_geometry_must_match_what_the_runtime_feeds(small_bundle, tmp_path, capsys):
    """Entries that agree with their graphs but not with glad.resolution: the runtime would feed other shapes."""
    b = _copy(small_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["glad"].update(resolution=128))
    source = tmp_path / "parts"
    write_parts(source, ["smooth"])
    _check(capsys, _station(tmp_path, b, source), "vae_encoder.onnx", "models.vae_encoder input image",
           "needs [1, 3, 128, 128]")


def test_graph_output_and_name_disagreements_are_refused(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["models"]["dino"]["outputs"].update(features=["batch", 4, 64, 32]))
    _inspect(capsys, b, image, "dino.onnx", "output features", "the manifest says ['batch', 4, 64, 32]")
    shutil.copy(small_bundle / MANIFEST, b / MANIFEST)
    _edit_manifest(b, lambda m: m["models"]["unet"]["inputs"].update(extra=[1]))
    _inspect(capsys, b, image, "unet.onnx", "graph inputs ['sample', 'timestep']", "'extra'")
    shutil.copy(small_bundle / MANIFEST, b / MANIFEST)  # a fixed axis where the runtime feeds batch 1 and 2
    _edit_manifest(b, lambda m: m["models"]["vae_decoder"]["inputs"].update(latent=[1, 4, 16, 16]))
    _inspect(capsys, b, image, "vae_decoder.onnx", "input latent has shape ['batch', 4, 16, 16] in the graph")


def test_graph_element_type_must_be_float32(small_bundle):
    """onnxruntime reports the graph's element types; one that is not float32 is refused (the bundle's graphs
    are all float32 at their inputs and outputs, so the loaded signature is altered here)."""
    from edge_runtime.engines.onnxruntime import OrtEngine
    from edge_runtime.graph_io import check_model

    m = read_manifest(small_bundle)
    inputs, outputs = OrtEngine(small_bundle / "unet.onnx", intra_op_threads=1).signature()
    check_model(small_bundle / "unet.onnx", "unet", m.models["unet"], m, inputs, outputs)  # as loaded: accepted
    inputs["timestep"] = (inputs["timestep"][0], "tensor(int64)")
    with pytest.raises(GladEdgeError, match=r"unet\.onnx: input timestep is tensor\(int64\)"):
        check_model(small_bundle / "unet.onnx", "unet", m.models["unet"], m, inputs, outputs)


def test_emulated_device_path_checks_the_graphs_too(small_bundle, tmp_path):
    from edge_runtime.detector import Detector

    b = _copy(small_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["models"]["unet"]["inputs"].update(timestep=[2]))
    with pytest.raises(GladEdgeError, match=r"unet\.onnx: input timestep has shape \[1\] in the graph"):
        Detector.load(b, backend="cuda-emulation", engine_options={"intra_op_threads": 1})


# -- 6b: every file a graph references is listed and hashed ----------------------------------------------


def _externalise(bundle: Path, role_file: str, location: str) -> None:
    model = onnx.load(str(bundle / role_file))
    onnx.save(model, str(bundle / role_file), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    if location != "weights.bin":  # rewrite the reference as a hand-edited graph would carry it
        header = onnx.load(str(bundle / role_file), load_external_data=False)
        for t in _get_all_tensors(header):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(header, str(bundle / role_file))


def test_external_data_not_in_the_manifest_is_refused(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    _externalise(b, "vae_encoder.onnx", "weights.bin")
    _rehash(b)  # the graph's new hash is listed; the weights file it loads is not
    _inspect(capsys, b, image, "vae_encoder.onnx", "'weights.bin'", "does not list")
    _rehash(b, extra=("weights.bin",))  # listed, so hashed: accepted
    assert read_manifest(b).files["weights.bin"].size > 1000
    assert cli.main(["inspect", str(b), str(image), "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] is None  # uncalibrated bundle: a score, no verdict
    (b / "weights.bin").write_bytes((b / "weights.bin").read_bytes()[:-4] + b"\0\0\0\0")  # now it is checked
    _inspect(capsys, b, image, "weights.bin: sha256 does not match")


def test_external_data_outside_the_bundle_is_refused(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    _externalise(b, "vae_encoder.onnx", "../weights.bin")
    shutil.move(b / "weights.bin", tmp_path / "weights.bin")
    _rehash(b)
    _inspect(capsys, b, image, "'../weights.bin' points outside the bundle")


def test_a_graph_that_is_not_protobuf_is_refused(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    (b / "dino.onnx").write_bytes((b / "dino.onnx").read_bytes()[:1000])  # cut inside a field
    _rehash(b)
    _inspect(capsys, b, image, "dino.onnx: not a readable ONNX graph")


def test_external_data_locations_agree_with_onnx(small_bundle, tmp_path):
    """The runtime's own protobuf walk finds exactly the references the onnx package finds: one file per tensor,
    including tensors held in node attributes (Constant)."""
    model = onnx.load(str(small_bundle / "unet.onnx"))
    out = tmp_path / "g" / "unet.onnx"
    out.parent.mkdir()
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=256)
    header = onnx.load(str(out), load_external_data=False)
    expected = {next(e.value for e in t.external_data if e.key == "location")
                for t in _get_all_tensors(header) if uses_external_data(t)}
    assert len(expected) > 10
    assert external_data_locations(out) == expected
    assert external_data_locations(small_bundle / "unet.onnx") == set()


def test_export_lists_what_the_graph_references(tmp_path):
    """save_graph reports the external files by reading the written graph back, so the export's manifest lists
    exactly what the runtime will look for."""
    from onnx import TensorProto, helper, numpy_helper

    from model_export import onnx_export

    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph)
    assert onnx_export.save_graph(model, tmp_path / "inline.onnx") == []
    old = onnx_export.EXTERNAL_DATA_THRESHOLD
    try:
        onnx_export.EXTERNAL_DATA_THRESHOLD = 0
        assert onnx_export.save_graph(model, tmp_path / "ext.onnx") == ["ext.onnx.data"]
    finally:
        onnx_export.EXTERNAL_DATA_THRESHOLD = old
    assert (tmp_path / "ext.onnx.data").stat().st_size == 4096 * 4


# -- 7: one line, no traceback ----------------------------------------------------------------------------


def test_unreadable_bundle_file_is_one_line(small_bundle, tmp_path, image):
    b = _copy(small_bundle, tmp_path)
    with _unreadable(b / "unet.onnx"):
        r = _cli_unprivileged("inspect", str(b), str(image), "--threads", "1")
    _one_line("inspect", r.returncode, r.stderr, f"{b / 'unet.onnx'}: cannot read", "Permission denied")


def test_unreadable_bundle_directory_and_manifest_are_one_line(small_bundle, tmp_path, image):
    b = _copy(small_bundle, tmp_path)
    config = _station(tmp_path, b, image.parent)
    with _unreadable(b):
        r = _cli_unprivileged("run", "--config", str(config), "--check")
    _one_line("run", r.returncode, r.stderr, f"{b / MANIFEST}: cannot read", "Permission denied")
    with _unreadable(b / MANIFEST):
        r = _cli_unprivileged("inspect", str(b), str(image), "--threads", "1")
    _one_line("inspect", r.returncode, r.stderr, f"{b / MANIFEST}: cannot read", "Permission denied")


@pytest.mark.parametrize("what", ["directory", "fifo"])
@pytest.mark.parametrize("name", [MANIFEST, "unet.onnx"])
def test_bundle_file_that_is_not_a_regular_file_is_one_line(small_bundle, tmp_path, capsys, image, what, name):
    """A FIFO would block the reader forever; it is refused before anything opens it."""
    b = _copy(small_bundle, tmp_path)
    (b / name).unlink()
    (b / name).mkdir() if what == "directory" else os.mkfifo(b / name)
    _inspect(capsys, b, image, f"{b / name}: not a regular file")


def test_unreadable_frames_folder_is_one_line(small_bundle, tmp_path):
    source = tmp_path / "parts"
    write_parts(source, ["smooth"])
    config = _station(tmp_path, small_bundle, source)
    with _unreadable(source):
        r = _cli_unprivileged("run", "--config", str(config), "--check")
    _one_line("run", r.returncode, r.stderr, f"camera.source: {source}: cannot list the folder", "Permission denied")


def test_frames_folder_that_is_a_file_is_one_line(small_bundle, tmp_path, capsys):
    source = tmp_path / "parts"
    source.write_bytes(b"not a folder")
    _check(capsys, _station(tmp_path, small_bundle, source), f"camera.source: {source}: not a folder")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])  # parsed then refused / past Python's recursion
def test_deeply_nested_config_is_one_line(small_bundle, tmp_path, capsys, levels):
    source = tmp_path / "parts"
    write_parts(source, ["smooth"])
    config = _station(tmp_path, small_bundle, source)
    cfg = json.loads(config.read_text())
    text = json.dumps(cfg)[:-1] + ', "x": ' + "[" * levels + "]" * levels + "}"
    config.write_text(text)
    _check(capsys, config, f"{config}: nested deeper than {MAX_DEPTH} levels")
    config.write_text(json.dumps(cfg))  # the same nesting through --set
    rc = cli.main(["run", "--config", str(config), "--check", "--set", "x=" + "[" * (MAX_DEPTH + 1) + "]" * (
        MAX_DEPTH + 1)])
    _one_line("run", rc, capsys.readouterr().err, "nested deeper than")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])
def test_deeply_nested_manifest_is_one_line(small_bundle, tmp_path, capsys, image, levels):
    b = _copy(small_bundle, tmp_path)
    text = (b / MANIFEST).read_text().rstrip()[:-1] + ', "x": ' + "[" * levels + "]" * levels + "}"
    (b / MANIFEST).write_text(text)
    _inspect(capsys, b, image, f"{b / MANIFEST}: nested deeper than {MAX_DEPTH} levels")


def test_nesting_at_the_limit_still_loads(small_bundle, tmp_path):
    """The bound refuses bombs, not manifests: MAX_DEPTH levels (the manifest's own 1 plus the rest) pass the
    nesting check and reach the schema check, which names the unknown key."""
    b = _copy(small_bundle, tmp_path)
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    (b / MANIFEST).write_text((b / MANIFEST).read_text().rstrip()[:-1] + f', "x": {nested}}}')
    with pytest.raises(GladEdgeError, match=r"x: Extra inputs are not permitted"):
        read_manifest(b)


def test_npz_posing_as_noise_is_one_line(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    noise = np.load(b / "noise.npy")
    with open(b / "noise.npy", "wb") as f:
        np.savez(f, noise=noise)  # a zip archive under the .npy name, hashed as if genuine
    _rehash(b)
    _inspect(capsys, b, image, f"{b / 'noise.npy'}: not a .npy array")


def test_noise_of_another_shape_or_dtype_is_refused_from_its_header(small_bundle, tmp_path, capsys, image):
    b = _copy(small_bundle, tmp_path)
    noise = np.load(b / "noise.npy")
    np.save(b / "noise.npy", noise.astype(np.float64))
    _rehash(b)
    _inspect(capsys, b, image, "noise float64", "does not match the manifest")
    np.save(b / "noise.npy", np.zeros((1, 4, 8, 8), np.float32))
    _rehash(b)
    _inspect(capsys, b, image, "noise float32[1, 4, 8, 8] does not match")
    np.save(b / "noise.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)  # never unpickled
    _rehash(b)
    _inspect(capsys, b, image, "does not match the manifest")


@pytest.mark.parametrize("key", ["resolution", "dino_resolution"])
def test_huge_resolution_is_one_line(small_bundle, tmp_path, capsys, image, key):
    b = _copy(small_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["glad"].update({key: 1_000_000}))
    _inspect(capsys, b, image, f"glad.{key}: Input should be less than or equal to 4096")


def test_manifest_over_its_size_limit_is_one_line(small_bundle, tmp_path, capsys, image):
    from edge_runtime.bundle import MANIFEST_MAX_BYTES

    b = _copy(small_bundle, tmp_path)
    text = (b / MANIFEST).read_text().rstrip()
    (b / MANIFEST).write_text(text[:-1] + ', "x": "' + "a" * MANIFEST_MAX_BYTES + '"}')
    _inspect(capsys, b, image, f"larger than {MANIFEST_MAX_BYTES} bytes")


# -- the CLI: expected failures are one line, a bug keeps its traceback -------------------------------------


@pytest.mark.parametrize("error, words", [
    (PermissionError(13, "Permission denied", "/var/lib/glad-edge/seq.db"), "/var/lib/glad-edge/seq.db: Permission"),
    (OSError(28, "No space left on device"), "No space left on device"),
    (sqlite3.DatabaseError("database disk image is malformed"), "database error: database disk image is malformed"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
     "cannot decode input as utf-8: invalid start byte"),
    (json.JSONDecodeError("Expecting value", "x", 0), "invalid JSON: Expecting value"),
    (GladEdgeError("limit: frame over 50 megapixels\nsecond line"), "limit: frame over 50 megapixels | second line"),
])
def test_expected_failures_are_one_line(monkeypatch, capsys, error, words):
    """The command raises what a faulty environment raises (the command itself is replaced: what is under test
    is how main() reports each kind)."""
    def fail(args):  # noqa: ANN001, ANN202
        raise error

    monkeypatch.setitem(cli.COMMANDS, "bench", fail)
    _one_line("bench", cli.main(["bench", "x"]), capsys.readouterr().err, words)


def test_yaml_errors_are_one_line(monkeypatch, capsys):
    import yaml

    def fail(args):  # noqa: ANN001, ANN202
        yaml.safe_load("a: [1, 2")

    monkeypatch.setitem(cli.COMMANDS, "bench", fail)
    _one_line("bench", cli.main(["bench", "x"]), capsys.readouterr().err, "invalid YAML")


@pytest.mark.parametrize("bug", [KeyError("k"), ZeroDivisionError("x"), AttributeError("a"), RecursionError("r")])
def test_a_genuine_bug_keeps_its_traceback(monkeypatch, bug):
    def fail(args):  # noqa: ANN001, ANN202
        raise bug

    monkeypatch.setitem(cli.COMMANDS, "bench", fail)
    with pytest.raises(type(bug)):
        cli.main(["bench", "x"])


def test_a_bug_shows_a_traceback_from_the_command_line(tmp_path):
    """End to end: an unexpected exception inside a command reaches the user as a traceback, exit 1."""
    script = tmp_path / "bug.py"
    script.write_text(textwrap.dedent("""
        import sys
        from edge_runtime import cli

        def bug(args):
            return {}["missing"]

        cli.COMMANDS["bench"] = bug
        sys.exit(cli.main(["bench", "x"]))
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "KeyError: 'missing'" in r.stderr


# -- CI: a skip without the gpu mark fails the run --------------------------------------------------------


def test_ci_fails_on_a_skip_not_marked_gpu(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        def test_runs():
            pass

        def test_tool_missing():
            pytest.skip("socat not installed")

        @pytest.mark.gpu
        def test_needs_gpu():
            pytest.skip("no CUDA device")

        @pytest.mark.xfail(reason="known")
        def test_known():
            assert False
    """))

    def run(ci: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
        if ci is not None:
            env["CI"] = ci
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)

    r = run("true")
    assert r.returncode == 1, r.stdout
    listed = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED ")]
    assert listed == ["SKIPPED test_sample.py::test_tool_missing: socat not installed"], r.stdout
    r = run(None)
    assert r.returncode == 0, r.stdout
    assert "SKIPPED test_sample.py" not in r.stdout


def test_ci_runner_sets_ci_itself():
    """.ci/run exports CI=true before it starts the suite, whatever the caller's environment says."""
    r = subprocess.run(["bash", "-c", 'sed -n "/export CI=true/,\\$p" .ci/run'], capture_output=True, text=True,
                       cwd=REPO, check=True)
    assert r.stdout.startswith("export CI=true") and "scripts/test.sh" in r.stdout
