"""What runs on the inspection station. Imports neither torch nor diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Detector", "InspectionResult", "Inspector", "__version__"]

if TYPE_CHECKING:
    from edge_runtime.detector import Detector
    from edge_runtime.result import InspectionResult, Inspector


def __getattr__(name: str) -> Any:  # lazy: `import edge_runtime` stays cheap for the CLI
    if name == "Detector":
        from edge_runtime.detector import Detector

        return Detector
    if name in ("InspectionResult", "Inspector"):
        from edge_runtime import result

        return getattr(result, name)
    raise AttributeError(name)
