"""The distillation harness: resumable (a killed run resumed ends where an uninterrupted run ends),
data-parallel under a real ``torchrun`` with two CPU processes (gloo), mixed precision, a saved state of
another run (other settings or model) not resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model_export.distill.harness import TrainSettings, lr_at, train
from tests.distill_helpers import tiny_loss, tiny_model

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "distill_helpers.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_train_lowers_the_loss_and_returns_eval_model(tmp_path: Path) -> None:
    before = tiny_loss()(tiny_model(), torch.Generator().manual_seed(99)).item()
    model = train("t", tiny_model(), tiny_loss(), TrainSettings(steps=60, lr=1e-2, progress=False), tmp_path)
    after = tiny_loss()(model, torch.Generator().manual_seed(99)).item()
    assert after < 0.5 * before and not model.training
    meta = json.loads((tmp_path / "t" / "state.json").read_text())
    assert meta["step"] == 60


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    steps, every = 12, 3
    whole = train("tiny", tiny_model(), tiny_loss(), TrainSettings(steps=steps, batch=8, lr=1e-2, save_every=every,
                                                                   progress=False), tmp_path / "whole")
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HELPER), str(work), str(tmp_path / "x.pt"), str(steps), str(every),
                             "0.3"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = work / "tiny" / "state.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (meta.is_file() and json.loads(meta.read_text())["step"] >= 2 * every):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(meta.read_text())["step"]
    assert every <= saved < steps  # killed mid-run, after a save
    resumed = train("tiny", tiny_model(), tiny_loss(), TrainSettings(steps=steps, batch=8, lr=1e-2, save_every=every,
                                                                     progress=False), work)
    assert torch.equal(_params(resumed), _params(whole))
    assert json.loads(meta.read_text())["step"] == steps


def _tiny_run(work: Path, steps: int, lr: float = 1e-2, job: str = "", width: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 3))
    return train("tiny", model, tiny_loss(), TrainSettings(steps=steps, lr=lr, job=job, progress=False), work)


def test_state_of_another_run_is_not_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A changed recipe (other lr, other options, a narrower model) starts over instead of resuming a state
    that is not its own, or crashing on one whose shapes differ."""
    def saved_step() -> int:
        return int(json.loads((tmp_path / "tiny" / "state.json").read_text())["step"])

    _tiny_run(tmp_path, 2)
    for i, changed in enumerate(({"lr": 5e-3}, {"job": "other options"}, {"width": 8})):
        fresh = _params(_tiny_run(tmp_path / f"fresh{i}", 3, **changed))
        capsys.readouterr()
        assert torch.equal(_params(_tiny_run(tmp_path, 3, **changed)), fresh), changed  # a fresh 3-step run
        assert saved_step() == 3 and "from another run" in capsys.readouterr().err
        _tiny_run(tmp_path, 2)  # the first run's settings again: the saved state is not its own either
        assert saved_step() == 2 and "from another run" in capsys.readouterr().err
    _tiny_run(tmp_path, 4)  # the same run with more steps resumes
    assert saved_step() == 4 and "from another run" not in capsys.readouterr().err


def test_torchrun_two_processes_keep_one_model(tmp_path: Path) -> None:
    out = tmp_path / "final.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HELPER), str(tmp_path / "work"), str(out), "20", "10"],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    r0, r1 = (torch.load(out.with_name(f"final.rank{r}.pt"), weights_only=True) for r in (0, 1))
    start = tiny_model().state_dict()
    for key in r0:
        assert torch.equal(r0[key], r1[key])  # DDP averaged the gradients: both ranks hold the same weights
        assert not torch.equal(r0[key], start[key])
    meta = json.loads((tmp_path / "work" / "tiny" / "state.json").read_text())
    assert meta["fingerprint"]["world_size"] == 2 and meta["step"] == 20
    single = train("tiny", tiny_model(), tiny_loss(), TrainSettings(steps=20, lr=1e-2, progress=False), tmp_path / "s")
    # two ranks draw different batches, so the data-parallel run is not the single-process one
    assert not torch.equal(_params(single), torch.cat([v.flatten() for v in r0.values()]))


def test_amp_bf16_on_cpu_trains(tmp_path: Path) -> None:
    before = tiny_loss()(tiny_model(), torch.Generator().manual_seed(99)).item()
    model = train("amp", tiny_model(), tiny_loss(), TrainSettings(steps=60, lr=1e-2, amp=True, progress=False),
                  tmp_path)
    assert tiny_loss()(model, torch.Generator().manual_seed(99)).item() < 0.5 * before
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32


def test_lr_schedule_warms_up_and_decays() -> None:
    lrs = [lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] < lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.1 and min(lrs) >= 0.05 - 1e-9
