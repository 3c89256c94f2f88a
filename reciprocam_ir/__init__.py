"""reciprocam_ir: gradient-free ReciproCAM explanations on OpenVINO and ONNX Runtime.

Data flow: image → preprocess → f → masks → g → normalise → map → overlay.
"""

from .artifact import Artifact, ArtifactError
from .backends import BackendError, available_backends, create_backend
from .explainer import ReciproCAM
from .explanation import Explanation
from .preprocess import ImageError, Preprocessing, decode_image, read_image

__version__ = "0.1.0"

__all__ = [
    "Artifact", "ArtifactError", "BackendError", "Explanation", "ImageError", "Preprocessing",
    "ReciproCAM", "available_backends", "create_backend", "decode_image", "read_image",
    "__version__",
]
