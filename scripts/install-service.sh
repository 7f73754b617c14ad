#!/usr/bin/env bash
# Install glad-edge as a systemd service on a station (x86 box or Jetson). Idempotent: run it again to
# upgrade the code; an existing /etc/glad-edge/station.yaml is never overwritten.
#
#   sudo scripts/install-service.sh [--config station.yaml] [--prefix /opt/glad-edge] [--jetson|--no-jetson]
#                                   [--no-start] [--dry-run]
#
# What it does (docs/operations.md, "Install"):
#   1. system user glad-edge (groups video, dialout), no login shell;
#   2. a virtual environment in <prefix>/venv with this checkout installed (not editable). On a Jetson the
#      venv sees the system site-packages, so JetPack's TensorRT and its GStreamer-enabled OpenCV are used
#      (pip's opencv-python-headless, which has no GStreamer, is removed from the venv);
#   3. /etc/glad-edge/station.yaml (from --config, or the USB camera example as a template to edit);
#   4. the unit systemd/glad-edge.service (ExecStart pointed at the venv), verified with systemd-analyze,
#      enabled and (unless --no-start) started.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PREFIX=/opt/glad-edge
CONFIG=
START=1
DRY=0
JETSON=auto
PY=${PYTHON:-python3}

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --jetson) JETSON=1; shift ;;
    --no-jetson) JETSON=0; shift ;;
    --no-start) START=0; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-service.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$JETSON" = auto ]; then
  if [ -f /etc/nv_tegra_release ]; then JETSON=1; else JETSON=0; fi
fi
if [ -n "$CONFIG" ] && [ ! -f "$CONFIG" ]; then
  echo "install-service.sh: $CONFIG: file not found" >&2; exit 1
fi

run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }
if [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "install-service.sh: run as root (sudo), or with --dry-run to see the steps" >&2; exit 1
fi

# 1. user
if ! id glad-edge >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/glad-edge --no-create-home --shell /usr/sbin/nologin glad-edge
fi
for g in video dialout; do
  if getent group "$g" >/dev/null; then run usermod -a -G "$g" glad-edge; fi
done

# 2. code
VENV_OPTS=()
if [ "$JETSON" = 1 ]; then VENV_OPTS+=(--system-site-packages); fi
[ -x "$PREFIX/venv/bin/python" ] || run "$PY" -m venv "${VENV_OPTS[@]}" "$PREFIX/venv"
run "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install --quiet "$REPO"
if [ "$JETSON" = 1 ]; then
  run "$PREFIX/venv/bin/python" -m pip uninstall --quiet -y opencv-python-headless || true
  if [ "$DRY" = 0 ] && ! "$PREFIX/venv/bin/python" -c 'import cv2, re, sys; sys.exit(not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))'; then
    echo "install-service.sh: warning: the OpenCV seen by the venv has no GStreamer (apt install python3-opencv from JetPack)" >&2
  fi
  if [ "$DRY" = 0 ] && ! "$PREFIX/venv/bin/python" -c 'import tensorrt' 2>/dev/null; then
    echo "install-service.sh: warning: TensorRT's Python module is not importable (JetPack: apt install python3-libnvinfer)" >&2
  fi
  # the TensorRT backend drives the GPU through pycuda, built against JetPack's CUDA toolkit
  if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null; then
    run bash "$REPO/scripts/install-pycuda.sh" "$PREFIX/venv/bin/python" \
      || echo "install-service.sh: warning: pycuda did not build; backend tensorrt will not load (onnxruntime still works)" >&2
  else
    echo "install-service.sh: warning: no nvcc (JetPack's cuda-toolkit), so no pycuda: backend tensorrt will not load" >&2
  fi
fi
run mkdir -p "$PREFIX/docs"
run cp "$REPO/docs/operations.md" "$PREFIX/docs/operations.md"

# 3. config
run install -d -m 0750 -o root -g glad-edge /etc/glad-edge
if [ ! -f /etc/glad-edge/station.yaml ]; then
  SRC=${CONFIG:-$REPO/examples/station-usb-camera.yaml}
  run install -m 0640 -o root -g glad-edge "$SRC" /etc/glad-edge/station.yaml
  if [ -z "$CONFIG" ]; then
    echo "install-service.sh: edit /etc/glad-edge/station.yaml (a template), then: systemctl restart glad-edge"
  fi
elif [ -n "$CONFIG" ]; then
  echo "install-service.sh: /etc/glad-edge/station.yaml exists; left unchanged (not replaced by $CONFIG)"
fi

# 4. unit
UNIT=/etc/systemd/system/glad-edge.service
if [ "$DRY" = 1 ]; then
  echo "+ sed 's#/opt/glad-edge#$PREFIX#g' systemd/glad-edge.service > $UNIT"
else
  sed "s#/opt/glad-edge#$PREFIX#g" "$REPO/systemd/glad-edge.service" > "$UNIT.tmp"
  chmod 0644 "$UNIT.tmp"
  mv "$UNIT.tmp" "$UNIT"
fi
run systemd-analyze verify "$UNIT"
run systemctl daemon-reload
run systemctl enable glad-edge.service
if [ "$START" = 1 ]; then
  run "$PREFIX/venv/bin/glad-edge" run --config /etc/glad-edge/station.yaml --check \
    || { echo "install-service.sh: the config check failed; fix /etc/glad-edge/station.yaml and: systemctl restart glad-edge" >&2; exit 1; }
  run systemctl restart glad-edge.service
  echo "install-service.sh: started; follow it with: journalctl -u glad-edge -f"
fi
