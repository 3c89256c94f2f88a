"""One KServe model per artifact: ``:predict`` runs the plain classifier, ``:explain`` and v2
``infer`` run :class:`ReciproCAM`; both are compiled once, at load."""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from typing import Any

import numpy as np
from fastapi.exceptions import FastAPIDeprecationWarning
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.logging import KSERVE_LOGGER_NAME, configure_logging
from kserve.protocol.infer_type import InferRequest, InferResponse

from ..artifact import Artifact
from ..backends import Backend, BackendError
from ..explainer import ReciproCAM
from ..explanation import Explanation
from ..image_header import read_header
from ..image_reader import check_header
from ..messages import first_line
from ..preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image
from ..targets import DEFAULT_MAX_TARGETS
from . import payload
from .budget import (
    DEFAULT_DECODE_THREADS,
    DEFAULT_PROCESS_PIXELS,
    DEFAULT_REQUEST_PIXELS,
    decode_pool,
    process_budget,
)
from .payload import ImageRequest

# KServe's routes use FastAPI's deprecated ORJSONResponse: the warning, on every request, is
# KServe's to fix, not the user's; this code uses FastAPI only through KServe. Here, not in
# server.py: the --workers children import this module too.
warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)

logger = logging.getLogger(f"{KSERVE_LOGGER_NAME}.reciprocam_ir")
"""Under KServe's logger, so that its records share the server log's handler and format."""

PREDICT_TOP_K = 5
"""Classes per image that ``:predict`` returns unless ``parameters.top_k`` says otherwise."""


class ServerBusy(InvalidInput):
    """The process's pixel budget is taken by requests in flight: HTTP 429, retry later."""


class Classifier:
    """The deployed model itself: class scores without an explanation, for ``:predict``.

    Its cost is the plain model's, so that the explain/predict ratio is the price of the
    explanation: ``f`` and the pooled tail as one graph where the backend fuses them (the
    scores ``ReciproCAM`` reports come from the same graph), else ``g(f(x))``.
    """

    def __init__(self, artifact: Artifact, backend: Backend, batch_size: int = 8) -> None:
        self.preprocessing = artifact.preprocessing
        self.batch_size = batch_size
        fused = backend.compile_features_and_scores(
            backend.graph_file(artifact, "f"), backend.graph_file(artifact, "g_pooled")
        ) if artifact.g_starts_with_gap else None
        if fused is not None:
            self._scores = lambda batch: fused(batch)[1]
        else:
            f, g = (backend.compile(backend.graph_file(artifact, role)) for role in ("f", "g"))
            self._scores = lambda batch: g(f(batch))

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, num_classes) float32 scores of RGB uint8 images."""
        scores = []
        for start in range(0, len(images), self.batch_size):
            batch = np.concatenate([self.preprocessing(rgb)
                                    for rgb in images[start : start + self.batch_size]])
            scores.append(self._scores(batch))
        return np.concatenate(scores)


class ExplainerModel(Model):
    """A KServe model serving one artifact (DESIGN.md, "Serving").

    Requests run in worker threads (``ReciproCAM.explain`` is thread-safe), so the event loop
    keeps accepting requests; several images in one request go through the runtime as one
    batch. Pickled for ``--workers`` as its settings: each worker process compiles its own.
    """

    def __init__(self, name: str, artifact: Artifact, backend: str | None = None,
                 device: str | None = None, precision: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS, mask: str | None = None,
                 mask_sigma: float | None = None, mask_strength: float | None = None,
                 scores: str | None = None, max_targets: int = DEFAULT_MAX_TARGETS,
                 request_pixels: int = DEFAULT_REQUEST_PIXELS,
                 process_pixels: int = DEFAULT_PROCESS_PIXELS,
                 decode_threads: int = DEFAULT_DECODE_THREADS, decode: str = "exact") -> None:
        super().__init__(name)
        self.settings = {"name": name, "artifact": artifact, "backend": backend,
                         "device": device, "precision": precision, "max_pixels": max_pixels,
                         "mask": mask, "mask_sigma": mask_sigma, "mask_strength": mask_strength,
                         "scores": scores, "max_targets": max_targets,
                         "request_pixels": request_pixels, "process_pixels": process_pixels,
                         "decode_threads": decode_threads, "decode": decode}
        self.max_pixels = max_pixels
        self.request_pixels = request_pixels
        self.process_pixels = process_pixels
        self.decode_threads = decode_threads
        self.cam: ReciproCAM | None = None
        self.classifier: Classifier | None = None

    def load(self) -> bool:
        """Compile the explainer and the plain classifier (ArtifactError, BackendError, ...)."""
        s = self.settings
        self.cam = ReciproCAM(s["artifact"], backend=s["backend"], device=s["device"],
                              precision=s["precision"], max_pixels=s["max_pixels"],
                              mask=s["mask"], mask_sigma=s["mask_sigma"],
                              mask_strength=s["mask_strength"], scores=s["scores"],
                              max_targets=s["max_targets"], decode=s["decode"])
        self.classifier = Classifier(self.cam.artifact, self.cam.backend)
        self.ready = True
        logger.info("model %s ready in process %d: %s on %s", self.name, os.getpid(),
                    self.cam.artifact.folder, self.cam.backend)
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "latency_logging": self.enable_latency_logging}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not logging.getLogger(KSERVE_LOGGER_NAME).handlers:  # a --workers child
            configure_logging()
        self.__init__(**state["settings"])
        self.enable_latency_logging = state["latency_logging"]
        self.load()

    def get_input_types(self) -> list[dict]:
        return [{"name": payload.IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        artifact = self.cam.artifact
        _, h, w = artifact.feature_shape
        return [{"name": "scores", "datatype": "FP32", "shape": [-1, artifact.num_classes]},
                {"name": "targets", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "saliency", "datatype": "FP32", "shape": [-1, -1, h, w]}]

    def validate(self, request: Any) -> Any:
        """Nothing left to check: :meth:`preprocess` parsed and validated the request."""
        return request

    async def preprocess(self, body: Any, headers: dict[str, str] | None = None
                         ) -> ImageRequest:
        """Parse the request and check its options and its images' headers, reserve their
        pixels in the process's budget, then decode them (on the decoding threads)."""
        request = payload.v2_request(body) if isinstance(body, InferRequest) \
            else payload.v1_request(body)
        try:
            request.targets = self.cam.check_targets(
                request.targets, 1 if request.top_k is None else request.top_k)
        except ValueError as exc:
            raise InvalidInput(first_line(exc)) from None
        pixels = self._pixels(request.encoded)
        budget = process_budget(self.process_pixels)
        if not budget.reserve(pixels):
            raise ServerBusy(f"server busy: the images in flight hold {budget.used} of its "
                             f"{budget.limit} pixels, this request needs {pixels}; retry later")
        request.pixels, request.release = pixels, budget.release
        try:
            request.images = await asyncio.get_running_loop().run_in_executor(
                decode_pool(self.decode_threads), self._decode, request.encoded)
        except BaseException:
            request.done()
            raise
        request.encoded = []
        return request

    def _pixels(self, encoded: list[bytes]) -> int:
        """Pixels the images' headers state, each checked as the reader checks it; refused
        beyond the request's budget."""
        total = 0
        for i, data in enumerate(encoded):
            try:
                header = read_header(lambda offset, n, data=data: data[offset : offset + n])
                check_header(header, len(data), self.max_pixels)
            except ImageError as exc:
                raise InvalidInput(f"image {i}: {first_line(exc)}") from None
            total += header.width * header.height
        if total > self.request_pixels:
            raise InvalidInput(f"the request's {len(encoded)} images have {total} pixels, more "
                               f"than the {self.request_pixels}-pixel limit of one request")
        return total

    def _decode(self, encoded: list[bytes]) -> list[np.ndarray]:
        images = []
        for i, data in enumerate(encoded):
            try:
                images.append(decode_image(data, self.max_pixels, self.cam.min_decode_size))
            except ImageError as exc:
                raise InvalidInput(f"image {i}: {first_line(exc)}") from None
        return images

    async def predict(self, request: ImageRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None
                      ) -> dict | InferResponse:
        """v1: the top classes of each image; v2 ``infer``: scores, targets and maps."""
        try:
            if request.infer_request is not None:
                exp = await self._explain(request)
                return payload.infer_response(request.infer_request, exp, self.name)
            if request.targets is not None:
                raise InvalidInput(":predict takes parameter top_k only "
                                   "(targets are for :explain)")
            num_classes = self.cam.artifact.num_classes
            top_k = min(PREDICT_TOP_K, num_classes) if request.top_k is None \
                else request.top_k
            scores = await self._run(self.classifier, request.images)
            return payload.predictions(scores, top_k, self.cam.artifact.label)
        finally:
            request.done()

    async def explain(self, request: ImageRequest, headers: dict[str, str] | None = None
                      ) -> dict:
        """v1: per image the explained classes, their scores and saliency maps."""
        try:
            return payload.explanations(await self._explain(request))
        finally:
            request.done()

    async def _explain(self, request: ImageRequest) -> Explanation:
        top_k = 1 if request.top_k is None else request.top_k
        return await self._run(self.cam.explain, request.images, request.targets, top_k)

    @staticmethod
    async def _run(function: Any, *args: Any) -> Any:
        """Run inference in a worker thread; engine failures are one-line 500s."""
        try:
            return await asyncio.to_thread(function, *args)
        except (FloatingPointError, BackendError, RuntimeError, MemoryError) as exc:
            raise InferenceError(first_line(exc)) from None
