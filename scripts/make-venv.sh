# Sourced after scripts/python.sh (by setup.sh and gpu-check.sh): creates the project's .venv from $VENV_BASE
# when python.sh chose it and it does not exist yet. Idempotent.
if [ -n "$VENV_BASE" ] && ! .venv/bin/python -c '' 2>/dev/null; then
  # --system-site-packages: what the machine already has stays usable (JetPack's CUDA torch on a Jetson; on a
  # prepared machine nothing is downloaded again), pip installs only what is missing or too old.
  if ! "$VENV_BASE" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap separately.
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "glad-edge set-up: creating the virtualenv .venv from $VENV_BASE" >&2
  "$VENV_BASE" -m venv --clear --system-site-packages .venv
fi
