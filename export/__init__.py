"""reciprocam-export: cut a PyTorch classifier into ``f`` and ``g`` and write the artifact."""

from .errors import ExportError

__all__ = ["ExportError"]
