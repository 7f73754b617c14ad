"""The systemd unit (verified with systemd-analyze where it exists) and the install script."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "glad-edge.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def test_unit_settings() -> None:
    s = unit_entries()
    service = dict(s["Service"])  # last value wins, as in systemd (DeviceAllow checked separately)
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure" and service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "glad-edge" and service["DevicePolicy"] == "closed"
    assert service["NoNewPrivileges"] == "yes" and service["ExecStart"].endswith(
        "glad-edge run --config /etc/glad-edge/station.yaml")
    allowed = [v.split()[0] for k, v in s["Service"] if k == "DeviceAllow"]
    for needed in ("char-video4linux", "char-ttyUSB", "char-ttyS", "char-ttyTHS", "char-nvidia*", "char-nvhost*",
                   "/dev/nvhost-ctrl", "/dev/nvmap"):
        assert needed in allowed, needed
    assert dict(s["Install"])["WantedBy"] == "multi-user.target"
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (scripts/setup.sh installs it)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` with ExecStart pointed at an executable that exists here: no warning at all
    (unknown keys, bad values and bad device specifiers are only warnings, so the output must be empty)."""
    unit = tmp_path / "glad-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/glad-edge/venv/bin/glad-edge", sys.executable))
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    ours = [line for line in out.splitlines() if "glad-edge" in line]
    assert proc.returncode == 0 and not ours, out


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_install_script_dry_run() -> None:
    script = REPO / "scripts" / "install-service.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run(["bash", str(script), "--dry-run", "--no-jetson", "--prefix", "/opt/ge"],
                          capture_output=True, text=True, timeout=60, check=True)
    steps = proc.stdout
    assert "useradd --system" in steps and "/opt/ge/venv" in steps
    assert "systemd-analyze verify /etc/systemd/system/glad-edge.service" in steps
    assert "glad-edge run --config /etc/glad-edge/station.yaml --check" in steps
    jetson = subprocess.run(["bash", str(script), "--dry-run", "--jetson", "--no-start"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "--system-site-packages" in jetson and "uninstall --quiet -y opencv-python-headless" in jetson
    assert "+ systemctl restart" not in jetson
    bad = subprocess.run(["bash", str(script), "--nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
