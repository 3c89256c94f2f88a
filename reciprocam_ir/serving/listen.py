"""KServe's model server, listening where ``--host`` says, answering with its own headers.

KServe 0.21 binds every interface (HTTP ``0.0.0.0``, gRPC ``[::]``) and its ``:explain``
answers with the request's headers (its data plane reuses the request-header dict:
``Set-Cookie``, ``Authorization``, ``Content-Encoding`` came back). These subclasses change
only that, and add the binary-extension middleware and the 429 for a busy process.
"""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

from fastapi.responses import JSONResponse
from grpc import aio
from kserve import ModelServer
from kserve.model import InferenceVerb
from kserve.model_server import args as kserve_args
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess
from kserve.protocol.rest.server import RESTServer

from .binary import BinaryRequests
from .model import ServerBusy

APP = "kserve.model_server:app"


class OwnHeadersDataPlane(DataPlane):
    """KServe's data plane, but ``:explain`` answers with the model's headers only."""

    async def explain(self, model_name: str, request: Any,
                      headers: dict[str, str] | None = None) -> tuple[Any, dict[str, str]]:
        model = await self.get_model(model_name)
        response, own = await model(request, verb=InferenceVerb.EXPLAIN, headers=headers)
        return response, dict(own)


async def busy_handler(_: Any, exc: ServerBusy) -> JSONResponse:
    return JSONResponse(status_code=429, content={"error": str(exc)})


class HostRESTServer(RESTServer):
    """KServe's REST server on ``host``, with the binary-extension middleware and 429s."""

    def __init__(self, host: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host

    def _add_middlewares(self, app: Any) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BinaryRequests)

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(ServerBusy, busy_handler)


class HostGRPCServer(GRPCServer):
    """KServe's gRPC server (same servicer, interceptors and options) on ``host``."""

    def __init__(self, host: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[(option, self._kwargs.get(key)) for option, key in (
                ("grpc.max_send_message_length", "grpc_max_send_message_length"),
                ("grpc.max_receive_message_length", "grpc_max_receive_message_length"))])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(self._address)
        await self._server.start()
        await self._server.wait_for_termination()


class HostModelServer(ModelServer):
    """KServe's ``ModelServer`` listening on ``host`` for HTTP and gRPC."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.dataplane = OwnHeadersDataPlane(model_registry=self.registered_models)

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        rest = (self.host, APP, self.dataplane, self.model_repository_extension,
                self.http_port)
        options = {"access_log_format": self.access_log_format, "workers": self.workers,
                   "grace_period": self.grace_period, "event_loop": self.event_loop,
                   "timeout_keep_alive": self.timeout_keep_alive}
        if self.workers > 1:
            self._rest_multiprocess_server = RESTServerMultiProcess(
                *rest[1:], log_config_file=kserve_args.log_config_file, **options)
            self._rest_multiprocess_server._rest_server = HostRESTServer(*rest, **options)
            self.servers.append(self._rest_multiprocess_server.start())
        else:
            self._rest_server = HostRESTServer(*rest, **options)
            self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = HostGRPCServer(
                self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_args), grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
