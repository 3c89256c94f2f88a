"""The serving contract's wire formats (DESIGN.md, "Serving"): requests in, responses out.

v1 (``:predict``, ``:explain``): ``{"instances": [{"image_bytes": {"b64": ...}}, ...],
"parameters": {"top_k": K} | {"targets": [c, ...]}}``. v2 (``/v2/models/NAME/infer``): one
BYTES input ``image`` of base64 strings, shape [B] or [B, 1]; request parameters ``top_k``
(int) or ``targets`` (an int, ``"all"`` or ``"c1,c2,..."`` in ASCII digits: v2 parameters
are scalars), and the binary extension's ``binary_data_output``; requested ``outputs`` pick
the tensors answered. Unknown parameters and outputs are refused on both protocols. Every
refusal is a :class:`kserve.errors.InvalidInput` (HTTP 400) with one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (
    InferOutput,
    InferRequest,
    InferResponse,
    to_http_parameters,
)
from kserve.utils.utils import generate_uuid

from ..explanation import Explanation

IMAGE_INPUT = "image"
OUTPUTS = ("scores", "targets", "saliency")
V1_PARAMETERS = ("top_k", "targets")
V2_PARAMETERS = ("top_k", "targets", "binary_data_output")
"""v2 request parameters: ours, and the binary-data extension's."""
CLASS_INDEX = re.compile(r"[0-9]{1,9}")
INSTANCE_FORM = '{"image_bytes": {"b64": "<base64 image>"}}'

Targets = int | list[int] | str | None


@dataclass
class ImageRequest:
    """A parsed request: encoded images and the explanation options it asked for.

    ``top_k`` is None when the request did not set it (each verb has its own default);
    ``infer_request`` is the v2 request a v2 response answers, None for v1.
    """

    encoded: list[bytes]
    targets: Targets = None
    top_k: int | None = None
    infer_request: InferRequest | None = None
    images: list[np.ndarray] = field(default_factory=list)
    pixels: int = 0
    """Pixels reserved for its images in the process's budget, given back by :meth:`done`."""
    release: Callable[[int], None] | None = None

    def done(self) -> None:
        """Give back the reserved pixels (once) and drop the decoded images."""
        if self.release is not None:
            self.release(self.pixels)
            self.release = None
        self.images = []


def decode_base64(text: Any, where: str) -> bytes:
    """Strict base64 (line breaks and spaces allowed, as ``base64`` wraps its output)."""
    if isinstance(text, str):
        text = "".join(text.split())
    elif isinstance(text, bytes):
        text = b"".join(text.split())
    else:
        raise InvalidInput(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: not valid base64") from None
    if not data:
        raise InvalidInput(f"{where}: empty image")
    return data


def element_bytes(item: Any, where: str) -> bytes:
    """One v2 BYTES element: base64 text, or, where it comes as bytes (gRPC contents and
    ``raw_input_contents``), the image file itself when it is not base64 (the decoder then
    judges it)."""
    if isinstance(item, bytes):
        try:
            return decode_base64(item, where)
        except InvalidInput:
            if item:
                return item
            raise
    return decode_base64(item, where)


def v1_request(body: Any) -> ImageRequest:
    """``{"instances": [...], "parameters": {...}}`` → an :class:`ImageRequest`.

    A body KServe left undecoded (sent without ``Content-Type: application/json``, as
    ``curl -d`` does) is read as JSON here.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"request body must be a JSON object with \"instances\": "
                           f"[{INSTANCE_FORM}, ...]")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f"\"instances\" must be a non-empty list of {INSTANCE_FORM}")
    encoded = []
    for i, instance in enumerate(instances):
        image = instance.get("image_bytes") if isinstance(instance, dict) else None
        if not isinstance(image, dict) or "b64" not in image:
            raise InvalidInput(f"instance {i}: expected {INSTANCE_FORM}")
        encoded.append(decode_base64(image["b64"], f"image {i}"))
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("\"parameters\" must be a JSON object")
    unknown = sorted(set(parameters) - set(V1_PARAMETERS))
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r} (known: {', '.join(V1_PARAMETERS)})")
    return ImageRequest(encoded, *explain_options(parameters.get("targets"),
                                                  parameters.get("top_k")))


def v2_request(request: InferRequest) -> ImageRequest:
    """A v2 inference request with one BYTES input ``image`` → an :class:`ImageRequest`."""
    names = [tensor.name for tensor in request.inputs]
    if names != [IMAGE_INPUT]:
        raise InvalidInput(f"expected one input named {IMAGE_INPUT!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {IMAGE_INPUT!r} must have datatype BYTES (base64 strings), "
                           f"got {tensor.datatype}")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidInput(f"input {IMAGE_INPUT!r} must have shape [B] or [B, 1] with B >= 1, "
                           f"got {shape}")
    try:
        data = tensor.as_numpy().ravel()
    except (ValueError, TypeError):
        raise InvalidInput(f"input {IMAGE_INPUT!r}: data does not match its shape {shape}") \
            from None
    encoded = [element_bytes(item, f"image {i}") for i, item in enumerate(data)]
    parameters = to_http_parameters(request.parameters) if request.parameters else {}
    unknown = sorted(set(parameters) - set(V2_PARAMETERS))
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0][:40]!r} "
                           f"(known: {', '.join(V2_PARAMETERS)})")
    asked = sorted({output.name for output in request.request_outputs or []} - set(OUTPUTS))
    if asked:
        raise InvalidInput(f"unknown output {asked[0][:40]!r} (outputs: {', '.join(OUTPUTS)})")
    targets = parameters.get("targets")
    if isinstance(targets, str) and targets != "all":
        targets = class_list(targets)
    return ImageRequest(encoded, *explain_options(targets, parameters.get("top_k")),
                        infer_request=request)


def class_list(text: str) -> list[int]:
    """``"c1,c2,..."`` → class indices: ASCII digits only (no ``_``, signs or other scripts'
    digits, which ``int`` would take)."""
    parts = text.split(",")
    if not all(CLASS_INDEX.fullmatch(part.strip(" ")) for part in parts):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidInput(f"parameter targets must be a class index, 'all' or 'c1,c2,...' "
                           f"(ASCII digits), got {shown!r}")
    return [int(part) for part in parts]


def explain_options(targets: Any, top_k: Any) -> tuple[Targets, int | None]:
    """(targets, top_k) as asked; the ranges are checked by ``ReciproCAM.check_targets``."""
    if targets is not None and top_k is not None:
        raise InvalidInput("give parameter top_k or targets, not both")
    return targets, top_k


def predictions(scores: np.ndarray, top_k: int, label: Callable[[int], str]) -> dict:
    """v1 ``:predict``: the ``top_k`` best classes of each image with labels and scores."""
    entries = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[:top_k]
        entries.append({"classes": order.tolist(), "labels": [label(int(c)) for c in order],
                        "scores": row[order].tolist()})
    return {"predictions": entries}


def explanations(exp: Explanation) -> dict:
    """v1 ``:explain``: per image the explained classes, their scores and K×h×w maps."""
    return {"explanations": [
        {"targets": exp.targets[i].tolist(),
         "labels": [exp.label(int(c)) for c in exp.targets[i]],
         "scores": exp.scores[i, exp.targets[i]].tolist(),
         "saliency": exp.saliency[i].tolist()}
        for i in range(len(exp))]}


def infer_response(request: InferRequest, exp: Explanation, model_name: str) -> InferResponse:
    """v2: tensors ``scores`` (B, num_classes), ``targets`` (B, K), ``saliency`` (B, K, h, w),
    only those the request's ``outputs`` name when it names some (REST and gRPC alike)."""
    arrays = {"scores": exp.scores.astype(np.float32), "targets": exp.targets.astype(np.int64),
              "saliency": exp.saliency.astype(np.float32)}
    asked = {output.name for output in request.request_outputs or []}
    outputs = []
    for name in (name for name in OUTPUTS if not asked or name in asked):
        array = arrays[name]
        output = InferOutput(name=name, shape=list(array.shape),
                             datatype="INT64" if array.dtype == np.int64 else "FP32")
        output.set_data_from_numpy(array, binary_data=request.use_binary_outputs)
        outputs.append(output)
    return InferResponse(response_id=request.id or generate_uuid(), model_name=model_name,
                         infer_outputs=outputs, use_binary_outputs=request.use_binary_outputs,
                         requested_outputs=request.request_outputs)
