#!/usr/bin/env python
"""Hostile requests mixed into normal ones: does ``reciprocam serve`` keep serving, and how
much memory does it take?

Usage (from the repository root)::

    .venv/bin/reciprocam-export resnet18 --weights none --out models/resnet18_random -q
    .venv/bin/python scripts/hostile_load.py models/resnet18_random

One server (``reciprocam serve`` with its default limits, on free loopback ports) gets, in
two phases of ``--seconds`` each: first ``--clients`` normal clients alone (``:explain`` of
a 451×300 JPEG, one request after another), then the same clients while ``--hostile``
concurrent clients each send hostile requests in turn: decompression bombs (a
``--bomb-side``² 8-bit PNG, the same as 16-bit, six bombs in one request), 300 000 repeated
targets (v1) and 100 000 (v2), a malformed binary-extension request and a request with
credentials and ``Content-Encoding: gzip`` in its headers. The server's resident memory
(with its child processes) is sampled every 20 ms.

Reported: per hostile kind the answers' status codes; for the normal clients requests done,
failed and p50 / p99 latency in each phase and their ratio; the server's RSS after start-up
and its peak. The exit code is 1 when a normal request failed, a hostile one got a 5xx or
no answer, or an answer echoed a request header.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import psutil
from load_test import ServerProcess, sample_jpeg

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[hostile_load] {message}", file=sys.stderr, flush=True)


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def instances(*encoded: bytes) -> list[dict]:
    return [{"image_bytes": {"b64": base64.b64encode(data).decode()}} for data in encoded]


def hostile_requests(name: str, side: int, jpeg: bytes) -> dict[str, tuple]:
    """Kind → (path, body, headers) of each hostile request."""
    bomb8 = png(np.zeros((side, side), np.uint8))
    bomb16 = png(np.zeros((side, side), np.uint16))
    explain, v2 = f"/v1/models/{name}:explain", f"/v2/models/{name}/infer"
    as_json = {"Content-Type": "application/json"}
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(jpeg)}}]}).encode()
    return {
        "PNG bomb": (f"/v1/models/{name}:predict",
                     json.dumps({"instances": instances(bomb8)}).encode(), as_json),
        "16-bit PNG bomb": (explain, json.dumps({"instances": instances(bomb16)}).encode(),
                            as_json),
        "six bombs in one": (f"/v1/models/{name}:predict",
                             json.dumps({"instances": instances(*[bomb8] * 6)}).encode(),
                             as_json),
        "300k repeated targets": (explain, json.dumps({
            "instances": instances(jpeg), "parameters": {"targets": [1] * 300_000}}).encode(),
            as_json),
        "100k v2 targets": (v2, json.dumps({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(jpeg).decode()]}],
            "parameters": {"targets": ",".join(["1"] * 100_000)}}).encode(), as_json),
        "raw binary, no length prefix": (v2, header + jpeg, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header))}),
        "credentials and gzip headers": (explain, json.dumps(
            {"instances": instances(jpeg)}).encode(), {
                **as_json, "Set-Cookie": "s=secret", "Authorization": "Bearer secret",
                "X-Forwarded-For": "10.9.8.7", "Content-Encoding": "gzip"}),
    }


def post(port: int, path: str, body: bytes, headers: dict[str, str]
         ) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def echoed(headers: list[tuple[str, str]]) -> bool:
    names = {name.lower() for name, _ in headers}
    return bool(names & {"set-cookie", "authorization", "x-forwarded-for", "content-encoding"}
                ) or {"transfer-encoding", "content-length"} <= names


class Sampler(threading.Thread):
    """The server's RSS (its children included) every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process, self.interval = psutil.Process(pid), interval
        self.peak = self.now()
        self.stopped = threading.Event()

    def now(self) -> int:
        processes = [self.process, *self.process.children(recursive=True)]
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, self.now())


def phase(port: int, name: str, jpeg: bytes, clients: int, seconds: float,
          hostile: dict[str, tuple] | None, hostile_clients: int) -> dict:
    """Normal clients for ``seconds``, with hostile clients beside them if ``hostile``."""
    body = json.dumps({"instances": instances(jpeg)}).encode()
    path = f"/v1/models/{name}:explain"
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    normal = {"ms": [], "failed": []}
    answers: dict[str, Counter] = {kind: Counter() for kind in hostile or {}}
    problems: list[str] = []

    def normal_client() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                status, _, answer = post(port, path, body, {"Content-Type": "application/json"})
                ok = status == 200 and len(json.loads(answer)["explanations"]) == 1
            except (OSError, ValueError, KeyError) as exc:
                status, ok, answer = None, False, repr(exc).encode()
            with lock:
                if ok:
                    normal["ms"].append((time.perf_counter() - start) * 1000)
                else:
                    normal["failed"].append(f"{status}: {answer[:120]!r}")

    def hostile_client(index: int) -> None:
        kinds = list(hostile)
        turn = index
        while time.monotonic() < deadline:
            kind = kinds[turn % len(kinds)]
            turn += 1
            try:
                status, headers, answer = post(port, *hostile[kind])
            except OSError as exc:
                status, headers, answer = None, [], repr(exc).encode()
            with lock:
                answers[kind][status] += 1
                if status is None or status >= 500 or echoed(headers):
                    problems.append(f"{kind}: {status} {headers} {answer[:120]!r}")

    threads = [threading.Thread(target=normal_client) for _ in range(clients)]
    if hostile:
        threads += [threading.Thread(target=hostile_client, args=(i,))
                    for i in range(hostile_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = np.asarray(normal["ms"]) if normal["ms"] else np.zeros(1)
    return {"done": len(normal["ms"]), "failed": len(normal["failed"]),
            "errors": normal["failed"][:3], "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
            "hostile": {kind: dict(counts) for kind, counts in answers.items()},
            "problems": problems[:5], "problem_count": len(problems)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    p.add_argument("--clients", type=int, default=2, help="normal clients")
    p.add_argument("--hostile", type=int, default=4, help="concurrent hostile clients")
    p.add_argument("--bomb-side", type=int, default=9000, help="side of the bomb PNGs")
    p.add_argument("--server-option", action="append", default=[], metavar="OPT",
                   help="an option for reciprocam serve (repeat; e.g. --server-option=--workers=2)")
    p.add_argument("--json", default=None, help="also write every number here")
    args = p.parse_args()
    from reciprocam_ir import Artifact

    name = Artifact.load(args.artifact).name
    jpeg = sample_jpeg()
    log(f"encoding the hostile requests (bombs of {args.bomb_side}x{args.bomb_side})")
    hostile = hostile_requests(name, args.bomb_side, jpeg)
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess([args.artifact], args.server_option, Path(tmp))
        try:
            server.wait_ready([name], timeout=300)
            post(server.port, f"/v1/models/{name}:explain",
                 json.dumps({"instances": instances(jpeg)}).encode(),
                 {"Content-Type": "application/json"})  # warm up
            sampler = Sampler(server.process.pid)
            baseline = sampler.now()
            sampler.start()
            log(f"phase 1: {args.clients} normal clients alone, {args.seconds:g} s")
            alone = phase(server.port, name, jpeg, args.clients, args.seconds, None, 0)
            log(f"phase 2: the same with {args.hostile} hostile clients, {args.seconds:g} s")
            mixed = phase(server.port, name, jpeg, args.clients, args.seconds, hostile,
                          args.hostile)
            sampler.stopped.set()
            sampler.join()
            alive = server.process.poll() is None
        finally:
            server.stop()
    result = {"baseline_rss_mb": baseline / 2**20, "peak_rss_mb": sampler.peak / 2**20,
              "alone": alone, "mixed": mixed, "server_alive": alive,
              "options": vars(args)}
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    ok = alive and not alone["failed"] and not mixed["failed"] and not mixed["problem_count"]
    return 0 if ok else 1


def print_report(r: dict) -> None:
    alone, mixed = r["alone"], r["mixed"]
    print("| hostile request | answers (status: count) |")
    print("|---|---|")
    for kind, counts in mixed["hostile"].items():
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(
            counts.items(), key=lambda item: (item[0] is None, item[0] or 0)))
        print(f"| {kind} | {shown} |")
    print()
    print("| normal :explain | done | failed | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for label, cell in (("alone", alone), ("beside hostile clients", mixed)):
        print(f"| {label} | {cell['done']} | {cell['failed']} | {cell['p50']:.1f} | "
              f"{cell['p99']:.1f} |")
    ratio = mixed["p50"] / alone["p50"] if alone["p50"] else float("nan")
    print(f"\nnormal p50 beside hostile / alone: {ratio:.2f}; server RSS after start-up "
          f"{r['baseline_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB; server alive: "
          f"{r['server_alive']}; problems: {mixed['problem_count']}")
    for problem in mixed["problems"]:
        print(f"  {problem}")
    for error in alone["errors"] + mixed["errors"]:
        print(f"  normal request failed: {error}")


if __name__ == "__main__":
    sys.exit(main())
