#!/usr/bin/env python
"""Load test of ``reciprocam serve``: ``:explain`` against ``:predict`` and the in-process API.

Usage (from the repository root, after ``scripts/setup.sh``)::

    .venv/bin/reciprocam-export resnet18 --weights none --out models/resnet18_random -q
    .venv/bin/reciprocam-export export.pretrained:efficientnet_lite0 -q
    .venv/bin/python scripts/load_test.py models/resnet18_random models/efficientnet_lite0

One server process serves every artifact on free loopback ports (clients connect to
127.0.0.1 only). Per model and number of concurrent clients (``--concurrency``, default
1 4 16), each client sends requests one after another on its own keep-alive connection:
``--requests`` per cell in all, or fewer when ``--time-limit`` seconds run out. Cells:
``:predict`` (the plain model), ``:explain`` (top-1 map), ``ReciproCAM.explain`` called from
as many threads in this process (decoding the same JPEG bytes), and a paired cell where each
client alternates ``:explain`` and the API call. Each cell runs in ``--rounds`` rounds
(default 5), the four cells taking turns in rotating order, so that slow drifts of a shared
machine's load reach every cell alike.

Reported: requests per second, p50 and p99 latency, explain/predict (p50) and server/API
(p50 of the paired cell). The API is compared in the paired cell because on a loaded
machine the scheduler favours processes that sleep between requests: a tight in-process
loop is served worse than the same work reached over HTTP, which would flatter the server.
Failed requests (any answer but 200 with the expected body) are counted and the exit code is
1 if there was one. Progress goes to stderr, the table to stdout; ``--json FILE`` writes
every number.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reciprocam_ir import Artifact, ReciproCAM, decode_image  # noqa: E402

KINDS = ("predict", "explain", "api", "paired explain", "paired api")


def log(message: str) -> None:
    print(f"[load_test] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sample_jpeg() -> bytes:
    """A JPEG of scikit-image's ``chelsea`` (451×300), or of noise without scikit-image."""
    try:
        from skimage import data

        rgb = data.chelsea()
    except ImportError:
        rgb = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


class ServerProcess:
    """``reciprocam serve`` on free loopback ports, its log in a temporary file."""

    def __init__(self, artifacts: list[str], options: list[str], log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / "server.log"
        command = [sys.executable, "-m", "reciprocam_ir.cli", "serve", *artifacts,
                   "--http-port", str(self.port), "--grpc-port", str(free_port()), *options]
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                            cwd=ROOT)

    def wait_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"load_test: server exited:\n{self.log.read_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", f"/v1/models/{pending[0]}")
                if connection.getresponse().status == 200:
                    pending.pop(0)
                    continue
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.3)
        if pending:
            self.stop()
            sys.exit("load_test: server not ready in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def http_client(port: int, path: str, body: bytes, key: str) -> Callable[[], Callable[[], None]]:
    """A factory of per-thread callables that POST ``body`` and check the answer."""

    def make() -> Callable[[], None]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def call() -> None:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or len(json.loads(answer)[key]) != 1:
                raise RuntimeError(f"HTTP {response.status}: {answer[:200]!r}")

        return call

    return make


def run_clients(clients: int, requests: int, time_limit: float,
                makers: dict[str, Callable[[], Callable[[], None]]]) -> dict[str, dict]:
    """``clients`` threads share ``requests`` calls (stopping at ``time_limit`` seconds).

    With several kinds, each client cycles through them (client i starting at kind i), so
    every kind runs under the same load; stats are per kind.
    """
    kinds = list(makers)
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    failures: dict[str, list[str]] = {kind: [] for kind in kinds}
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + time_limit

    def client(index: int) -> None:
        calls = {}
        for kind in kinds:
            try:
                calls[kind] = makers[kind]()
            except Exception as exc:  # a client that cannot connect counts as failures
                with lock:
                    failures[kind].append(f"{type(exc).__name__}: {exc}")
                return
        turn = index
        while True:
            kind = kinds[turn % len(kinds)]
            turn += 1
            with lock:
                if remaining[0] <= 0 or time.monotonic() > deadline:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                calls[kind]()
            except Exception as exc:  # every failure is counted and reported, none hidden
                with lock:
                    failures[kind].append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies[kind].append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {kind: {"ms": [t * 1000 for t in latencies[kind]], "failed": failures[kind],
                   "wall": wall} for kind in kinds}


def summary(runs: list[dict]) -> dict:
    """Requests per second, p50 and p99 (ms) of one kind over the rounds it ran in."""
    ms = np.concatenate([run["ms"] for run in runs])
    wall = sum(run["wall"] for run in runs)
    errors = [error for run in runs for error in run["failed"]]
    return {"done": int(ms.size), "failed": len(errors), "errors": errors[:3],
            "rps": ms.size / wall if wall else 0.0,
            "p50": float(np.percentile(ms, 50)) if ms.size else float("nan"),
            "p99": float(np.percentile(ms, 99)) if ms.size else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", help="artifact folders (one server serves all)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=100, help="requests per cell")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per cell at most")
    ap.add_argument("--rounds", type=int, default=5,
                    help="each cell runs in this many rounds, interleaved with the others")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    args = ap.parse_args()

    jpeg = sample_jpeg()
    v1_body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(jpeg)
                                                         .decode()}}]}).encode()
    names = [Artifact.load(folder).name for folder in args.artifacts]
    options = ["--backend", args.backend, "--device", args.device, "--precision", args.precision]
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        server = ServerProcess(args.artifacts, options, Path(work))
        try:
            log(f"starting the server on 127.0.0.1:{server.port}")
            server.wait_ready(names, timeout=300)
            for folder, name in zip(args.artifacts, names, strict=True):
                cam = ReciproCAM(folder, backend=args.backend, device=args.device,
                                 precision=args.precision)
                makers = {
                    "predict": http_client(server.port, f"/v1/models/{name}:predict",
                                           v1_body, "predictions"),
                    "explain": http_client(server.port, f"/v1/models/{name}:explain",
                                           v1_body, "explanations"),
                    "api": lambda cam=cam: lambda: cam.explain(decode_image(jpeg)),
                }
                for make in makers.values():  # warm-up: first calls allocate and compile
                    call = make()
                    for _ in range(3):
                        call()
                cells = {kind: {kind: makers[kind]} for kind in makers}
                cells["paired"] = {"explain": makers["explain"], "api": makers["api"]}
                for clients in args.concurrency:
                    runs: dict[str, list[dict]] = {}
                    per_round = max(clients, args.requests // args.rounds)
                    for r in range(args.rounds):
                        order = list(cells)[r % len(cells):] + list(cells)[:r % len(cells)]
                        log(f"{name}: {clients} clients, round {r + 1}/{args.rounds}")
                        for cell in order:
                            raw = run_clients(clients, per_round,
                                              args.time_limit / args.rounds, cells[cell])
                            for kind, run in raw.items():
                                key = f"paired {kind}" if cell == "paired" else kind
                                runs.setdefault(key, []).append(run)
                    row = {"model": name, "clients": clients}
                    row.update({kind: summary(r) for kind, r in runs.items()})
                    results.append(row)
        finally:
            server.stop()
    load = (load_before, os.getloadavg()[0])
    print_table(results, args, load)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": vars(args), "load_average": load, "cpus": os.cpu_count(),
             "rows": results}, indent=1))
    failed = sum(row[kind]["failed"] for row in results for kind in KINDS)
    return 1 if failed else 0


def print_table(rows: list[dict], args: argparse.Namespace,
                load: tuple[float, float]) -> None:
    def cell(r: dict, rps: bool = True) -> str:
        return (f"{r['rps']:.1f} | " if rps else "") + f"{r['p50']:.1f} / {r['p99']:.1f}"

    print(f"backend {args.backend} {args.device}, precision {args.precision}; "
          f"{args.requests} requests per cell in {args.rounds} interleaved rounds "
          f"(time limit {args.time_limit:g} s per cell); {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} → {load[1]:.1f}\n")
    print("| model | clients | predict req/s | p50 / p99 ms | explain req/s | p50 / p99 ms "
          "| explain/predict p50 | API explain/s | API p50 / p99 ms (paired) "
          "| server/API p50 (paired) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        p, e, a = row["predict"], row["explain"], row["api"]
        pe, pa = row["paired explain"], row["paired api"]
        print(f"| {row['model']} | {row['clients']} | {cell(p)} | {cell(e)} "
              f"| {e['p50'] / p['p50']:.2f} | {a['rps']:.1f} | {cell(pa, rps=False)} "
              f"| {pe['p50'] / pa['p50']:.2f} |")
    stats = [row[kind] for row in rows for kind in ("predict", "explain", "paired explain")]
    done = sum(r["done"] for r in stats)
    failed = sum(r["failed"] for r in stats)
    api = [row[kind] for row in rows for kind in ("api", "paired api")]
    print(f"\nserver requests: {done + failed}, failed: {failed}; API calls: "
          f"{sum(r['done'] + r['failed'] for r in api)}, failed: {sum(r['failed'] for r in api)}")
    for r in stats + api:
        for error in r["errors"]:
            print(f"  error: {error}")


if __name__ == "__main__":
    sys.exit(main())
