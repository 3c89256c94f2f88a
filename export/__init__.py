"""reciprocam-export: cut a classifier into ``f`` and ``g`` and write the artifact.

Sources: :mod:`export.torch` (a PyTorch model) and :mod:`export.graphfile` (an ONNX or
OpenVINO IR file); each cuts and hands its graphs to :mod:`export.artifact`, the one writer.
"""

from .errors import ExportError

__all__ = ["ExportError"]
