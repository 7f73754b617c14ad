# Sourced by setup.sh, test.sh and demo.sh: sets PY to the Python that glad-edge is installed into.
# Inside a virtualenv (an active one, or $PYTHON pointing into one) that is used as it is. Anywhere else the
# project's own .venv is: Debian 12's and Ubuntu 24.04's system Python refuse `pip install` outside a
# virtualenv (PEP 668, "externally-managed-environment"), and a user's interpreter is better left untouched.
# VENV_BASE is then the interpreter setup.sh creates .venv from.
PY=${PYTHON:-python3}
VENV_BASE=
if [ -z "${VIRTUAL_ENV:-}" ] && "$PY" -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)'; then
  VENV_BASE=$PY
  PY=.venv/bin/python
fi
