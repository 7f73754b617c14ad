#!/usr/bin/env bash
# Installs everything glad-edge needs on a fresh machine (Python packages, and the Debian
# services the tests start). Idempotent: a second run installs nothing new. Outside a virtualenv the Python
# packages go into the project's .venv (scripts/python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
. scripts/python.sh
. scripts/make-venv.sh
if [ "$(uname -m)" = aarch64 ]; then
  # Jetson: torch with CUDA comes from NVIDIA's JetPack wheels (PyPI's aarch64 torch has no Jetson CUDA, so the
  # GPU benchmark's reference would run on the CPU). Keep the torch that is there, pinned, so pip cannot swap it.
  if ! torch_version=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "setup.sh: no torch importable by $PY on this aarch64 machine: install NVIDIA's PyTorch for JetPack" \
         "(docs/operations.md, Jetson), then run this again" >&2
    exit 1
  fi
  pin=$(mktemp)
  trap 'rm -f "$pin"' EXIT
  echo "torch==$torch_version" >"$pin"
  echo "setup.sh: aarch64: keeping the system torch $torch_version"
  "$PY" -m pip install --quiet -e ".[export,dev]" -c "$pin"
else
  # The CPU build of torch 2.13.0 must come first: any other spec pulls several GB of CUDA packages.
  if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
  fi
  "$PY" -m pip install --quiet -e ".[export,dev]"
fi
# Debian packages the tests use; under CI a test that skips for want of one fails the run (tests/ci_skips.py):
# - mosquitto: tests start their own broker on a free 127.0.0.1 port (tests/service_helpers.py Broker). A broker
#   service that this step installs is stopped and disabled at once, so nothing holds port 1883; a mosquitto
#   that was installed before is left alone.
# - socat: pseudo-terminal pairs standing in for the serial line (tests/test_service_outputs.py)
# - systemd (only its systemd-analyze; nothing is started): `systemd-analyze verify` of systemd/glad-edge.service
# - g++: the host build of the CUDA kernels (tests/test_cuda_kernels.py, tests/test_host_emulation.py)
# - util-linux (setpriv): tests/test_faults_load.py drops root's file-permission override to meet real
#   permission errors
# - e2fsprogs, mount (mkfs.ext4, e2fsck, mount, findmnt): tests/test_faults_storage.py mounts a small tmpfs and an
#   ext4 image on a loop device to meet a full and a read-only disk
# cuobjdump comes from PyPI (nvidia-cuda-cuobjdump, in the dev extra above); nvcc from the CUDA toolkit.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
missing=()
have mosquitto || missing+=(mosquitto)
have socat || missing+=(socat)
have systemd-analyze || missing+=(systemd)
have g++ || have c++ || have clang++ || missing+=(g++)
have setpriv && have findmnt || missing+=(util-linux)
have mkfs.ext4 && have e2fsck || missing+=(e2fsprogs)
have mount || missing+=(mount)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  had_mosquitto=0; have mosquitto && had_mosquitto=1
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ "$had_mosquitto" = 0 ]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/mosquitto ]; then
      $SUDO /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
      $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
  fi
fi
# chromium (Debian package): tests/test_eval.py opens the eval report in headless Chromium.
if ! command -v chromium >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
