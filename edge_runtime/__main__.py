"""`python -m edge_runtime` is the `glad-edge` command (scripts/demo.sh runs it with the project's Python)."""

import sys

from edge_runtime.cli import main

sys.exit(main())
