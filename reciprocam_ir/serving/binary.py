"""The v2 REST binary-data extension for requests: image bytes after the JSON header.

Triton-style clients send a BYTES tensor as ``Inference-Header-Content-Length: N``, N bytes
of JSON, then each input's ``binary_data_size`` bytes: per element a 4-byte little-endian
length and the element's bytes (here the encoded image itself). KServe 0.21 cannot decode
such BYTES (it answers 500 with the payload in the message), so this ASGI middleware turns
the request into the JSON form, base64 strings, before KServe sees it; a malformed one is
refused with a one-line 400 that never quotes the payload.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER

HEADER = INFERENCE_CONTENT_LENGTH_HEADER.encode()
DIGITS = re.compile(rb"[0-9]{1,12}")
BYTES_FORM = "per element a 4-byte little-endian length, then the image bytes"


class BinaryRequestError(ValueError):
    """A binary-extension request that cannot be read (the message names the part)."""


def elements(data: bytes, name: str) -> list[bytes]:
    """The elements of a BYTES tensor in the binary form."""
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise BinaryRequestError(f"input {name!r}: binary data is not BYTES elements "
                                     f"({BYTES_FORM})")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise BinaryRequestError(f"input {name!r}: binary data is not BYTES elements "
                                     f"({BYTES_FORM}): an element of {length} bytes is longer "
                                     "than the data left")
        items.append(data[offset : offset + length])
        offset += length
    return items


def as_json(body: bytes, header_length: bytes) -> bytes:
    """A binary-extension request body as the equivalent JSON request body."""
    if not DIGITS.fullmatch(header_length.strip()) or int(header_length) > len(body):
        raise BinaryRequestError(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be the length of the "
                                 f"JSON header, at most the body's {len(body)} bytes")
    split = int(header_length)
    try:
        request = json.loads(body[:split])
    except (ValueError, UnicodeDecodeError):
        raise BinaryRequestError("the JSON header of the binary request is not JSON") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list):
        raise BinaryRequestError("the JSON header of the binary request has no \"inputs\" list")
    offset = split
    for tensor in inputs:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        name = str(tensor.get("name"))[:40]
        size = parameters.pop("binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(body):
            raise BinaryRequestError(f"input {name!r}: binary_data_size must be a byte count")
        if tensor.get("datatype") != "BYTES":
            raise BinaryRequestError(f"input {name!r} must have datatype BYTES (image bytes), "
                                     f"got {str(tensor.get('datatype'))[:20]}")
        if offset + size > len(body):
            raise BinaryRequestError(f"input {name!r}: binary_data_size {size} runs past the end "
                                     "of the body")
        data = body[offset : offset + size]
        offset += size
        tensor["data"] = [base64.b64encode(item).decode() for item in elements(data, name)]
        if not parameters:
            del tensor["parameters"]
    if offset != len(body):
        raise BinaryRequestError(f"{len(body) - offset} bytes after the inputs' binary data")
    return json.dumps(request).encode()


class BinaryRequests:
    """ASGI middleware: binary-extension requests reach KServe as JSON requests."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = scope.get("headers", []) if scope["type"] == "http" else []
        length = next((value for key, value in headers if key.lower() == HEADER), None)
        if length is None:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = as_json(b"".join(chunks), length)
        except BinaryRequestError as exc:
            await _error(send, 400, str(exc))
            return
        kept = [(key, value) for key, value in headers
                if key.lower() not in (HEADER, b"content-length", b"content-type")]
        scope = {**scope, "headers": [*kept, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
