#!/usr/bin/env bash
# Installs everything glad-edge needs on a fresh machine (Python packages, and the Debian
# services the tests start). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
# The CPU build of torch 2.13.0 must come first: any other spec pulls several GB of CUDA packages.
if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[export,dev]"
# Debian packages the tests use: mosquitto (tests/test_mqtt_outbox.py starts its own broker on a free
# 127.0.0.1 port) and socat. A broker service that this step installs is stopped and disabled at once, so
# nothing holds port 1883; a mosquitto that was installed before is left alone.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
if ! have mosquitto || ! have socat; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  had_mosquitto=0; have mosquitto && had_mosquitto=1
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto socat >/dev/null
  if [ "$had_mosquitto" = 0 ]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/mosquitto ]; then
      $SUDO /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
      $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
  fi
fi
# systemd-analyze (Debian package systemd): tests/test_service_systemd.py checks systemd/glad-edge.service
# with `systemd-analyze verify`. Only the tool is needed; nothing is started.
if ! command -v systemd-analyze >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# chromium (Debian package): tests/test_eval.py opens the eval report in headless Chromium.
if ! command -v chromium >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
