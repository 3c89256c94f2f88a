"""``reciprocam serve``: a real server process on loopback answers as the API does, refuses bad
requests with one-line 4xx and keeps serving, answers concurrent clients independently, and
refuses to start on bad artifacts, taken ports and missing KServe."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import import_blocker, subprocess_env
from reciprocam_ir import ReciproCAM, decode_image

MAX_PIXELS = 250_000
"""The server's --max-pixels in these tests: a 600x500 PNG is over it."""
TOL = 1e-5
EXPLAIN = "/v1/models/resnet18:explain"
PREDICT = "/v1/models/resnet18:predict"
V2 = "/v2/models/resnet18/infer"


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reciprocam_ir.cli", "serve", *args]


class Server:
    """A ``reciprocam serve`` process on free ports; its log goes to a file, not a pipe."""

    def __init__(self, artifact: Path, log: Path, *options: str) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.log = log
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(
                serve_command(str(artifact), "--http-port", str(self.http), "--grpc-port",
                              str(self.grpc), "--precision", "f32", *options),
                stdout=sink, stderr=subprocess.STDOUT, env=subprocess_env())

    def wait_ready(self, name: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n"
                                     + self.log.read_text()[-3000:])
            try:
                if get(self, f"/v1/models/{name}")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("server not ready in time:\n" + self.log.read_text()[-3000:])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def request(server: Server, path: str, body: bytes | None = None,
            content_type: str | None = "application/json") -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.http}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    if content_type and body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def get(server: Server, path: str) -> tuple[int, object]:
    return request(server, path)


def post(server: Server, path: str, payload: object) -> tuple[int, object]:
    return request(server, path, json.dumps(payload).encode())


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def instances(*encoded: bytes) -> list[dict]:
    return [{"image_bytes": {"b64": b64(data)}} for data in encoded]


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Four encoded images: PNGs and a JPEG of different sizes."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, 90 * 120 * 3).reshape(90, 120, 3).astype(np.uint8)
    return [encode(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)),
            encode(ramp, ".jpg"),
            encode(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)),
            encode(rng.integers(0, 256, (100, 70, 3), dtype=np.uint8))]


@pytest.fixture(scope="module")
def cam(resnet18_dir) -> ReciproCAM:
    return ReciproCAM(resnet18_dir, precision="f32")


@pytest.fixture(scope="module")
def server(resnet18_dir, tmp_path_factory):
    srv = Server(resnet18_dir, tmp_path_factory.mktemp("serve") / "server.log",
                 "--max-pixels", str(MAX_PIXELS))
    try:
        srv.wait_ready("resnet18")
        yield srv
    finally:
        srv.stop()


def reference(cam: ReciproCAM, encoded: list[bytes], targets=None, top_k: int = 1):
    return cam.explain([decode_image(data) for data in encoded], targets, top_k)


def assert_explanations_equal(entries: list[dict], exp) -> None:
    assert len(entries) == len(exp)
    for i, entry in enumerate(entries):
        assert entry["targets"] == exp.targets[i].tolist()
        assert entry["labels"] == [exp.label(int(c)) for c in exp.targets[i]]
        np.testing.assert_allclose(entry["scores"], exp.scores[i, exp.targets[i]],
                                   rtol=TOL, atol=TOL)
        saliency = np.asarray(entry["saliency"], np.float32)
        assert saliency.shape == exp.saliency[i].shape == (len(entry["targets"]), 7, 7)
        np.testing.assert_allclose(saliency, exp.saliency[i], rtol=TOL, atol=TOL)


def test_predict_gives_the_top_classes_of_the_model(server, cam, images):
    status, body = post(server, PREDICT,
                        {"instances": instances(*images[:2])})
    assert status == 200, body
    exp = reference(cam, images[:2])
    assert len(body["predictions"]) == 2
    for prediction, scores in zip(body["predictions"], exp.scores, strict=True):
        order = np.argsort(-scores, kind="stable")[:5]
        assert prediction["classes"] == order.tolist()
        assert prediction["labels"] == [cam.labels[c] for c in order]
        np.testing.assert_allclose(prediction["scores"], scores[order], rtol=TOL, atol=TOL)
    status, body = post(server, PREDICT,
                        {"instances": instances(images[0]), "parameters": {"top_k": 2}})
    assert status == 200 and len(body["predictions"][0]["classes"]) == 2


@pytest.mark.parametrize("parameters, targets, top_k", [
    (None, None, 1), ({"top_k": 3}, None, 3), ({"targets": [1, 5]}, [1, 5], 1),
    ({"targets": 7}, 7, 1)])
def test_explain_equals_the_api(server, cam, images, parameters, targets, top_k):
    payload = {"instances": instances(*images[:3])}
    if parameters is not None:
        payload["parameters"] = parameters
    status, body = post(server, EXPLAIN, payload)
    assert status == 200, body
    assert_explanations_equal(body["explanations"], reference(cam, images[:3], targets, top_k))


def test_v2_infer_equals_the_api(server, cam, images):
    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                           "data": [b64(data) for data in images[:3]]}],
               "parameters": {"top_k": 2}}
    status, body = post(server, V2, payload)
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    exp = reference(cam, images[:3], top_k=2)
    assert outputs["scores"]["datatype"] == "FP32" and outputs["scores"]["shape"] == [3, 1000]
    assert outputs["targets"]["datatype"] == "INT64" and outputs["targets"]["shape"] == [3, 2]
    assert outputs["saliency"]["shape"] == [3, 2, 7, 7]
    np.testing.assert_allclose(np.reshape(outputs["scores"]["data"], (3, 1000)), exp.scores,
                               rtol=TOL, atol=TOL)
    assert outputs["targets"]["data"] == exp.targets.ravel().tolist()
    np.testing.assert_allclose(np.reshape(outputs["saliency"]["data"], (3, 2, 7, 7)),
                               exp.saliency, rtol=TOL, atol=TOL)
    payload["parameters"] = {"targets": "3,9"}
    payload["inputs"][0].update(shape=[1, 1], data=[[b64(images[3])]])
    status, body = post(server, V2, payload)
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    exp = reference(cam, images[3:], [3, 9])
    assert outputs["targets"]["data"] == [3, 9]
    np.testing.assert_allclose(np.reshape(outputs["saliency"]["data"], (1, 2, 7, 7)),
                               exp.saliency, rtol=TOL, atol=TOL)


def test_v2_infer_over_grpc(server, cam, images):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[b64(images[1]).encode()]))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(pb.ModelInferRequest(model_name="resnet18", inputs=[tensor]),
                                   timeout=120)
        with pytest.raises(grpc.RpcError) as refused:
            tensor.datatype = "FP32"
            stub.ModelInfer(pb.ModelInferRequest(model_name="resnet18", inputs=[tensor]),
                            timeout=120)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    exp = reference(cam, images[1:2])
    outputs = {o.name: o for o in response.outputs}
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents,
                   strict=False))
    saliency = (np.frombuffer(raw["saliency"], np.float32) if raw
                else np.asarray(outputs["saliency"].contents.fp32_contents, np.float32))
    assert list(outputs["saliency"].shape) == [1, 1, 7, 7]
    np.testing.assert_allclose(saliency.reshape(1, 1, 7, 7), exp.saliency, rtol=TOL, atol=TOL)


def test_health_metadata_and_metrics(server, images):
    assert post(server, EXPLAIN, {"instances": instances(images[0])})[0] == 200
    assert get(server, "/v1/models") == (200, {"models": ["resnet18"]})
    assert get(server, "/v2/health/live")[0] == 200
    assert get(server, "/v2/health/ready")[0] == 200
    assert get(server, "/v2/models/resnet18/ready")[0] == 200
    status, meta = get(server, "/v2/models/resnet18")
    assert status == 200 and meta["inputs"][0] == {"name": "image", "datatype": "BYTES",
                                                    "shape": [-1]}
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "scores": [-1, 1000], "targets": [-1, -1], "saliency": [-1, -1, 7, 7]}
    assert get(server, "/v1/models/nosuchmodel")[0] == 404
    status, metrics = get(server, "/metrics")
    assert status == 200 and 'request_explain_seconds_count{model_name="resnet18"}' in metrics
    log = server.log.read_text()
    assert log.count("model resnet18 ready in process") == 1
    assert "FastAPIDeprecationWarning" not in log


def big_png() -> bytes:
    return encode(np.zeros((500, 600, 3), np.uint8))



def one(b64_text: str) -> dict:
    return {"instances": [{"image_bytes": {"b64": b64_text}}]}


def v2_body(**tensor) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [b64(encode(np.zeros((8, 8, 3), np.uint8)))], **tensor}]}


GOOD = b64(encode(np.full((30, 40, 3), 128, np.uint8)))
BAD_REQUESTS = {
    "not JSON": (EXPLAIN, b"{not json", "application/json", "Unrecognized request format"),
    "not JSON, no content type": (EXPLAIN, b"{not json", None, "not JSON"),
    "not an object": (EXPLAIN, b"[1, 2]", "application/json", "JSON object"),
    "no instances": (EXPLAIN, {"instances": []}, None, "instances"),
    "instance of another form": (EXPLAIN, {"instances": [GOOD]}, None, "instance 0"),
    "not base64": (EXPLAIN, one("@@not base64@@"), None, "not valid base64"),
    "empty image": (EXPLAIN, one(""), None, "empty image"),
    "not an image": (EXPLAIN, one(b64(b"hello, world")), None, "not a readable image"),
    "truncated image": (EXPLAIN, one(b64(encode(np.zeros((30, 30, 3), np.uint8))[:60])), None,
                        "image 0"),
    "too many pixels": (EXPLAIN, one(b64(big_png())), None, "pixel"),
    "class out of range": (EXPLAIN, {**one(GOOD), "parameters": {"targets": [3, 1000]}}, None,
                           "class 1000 out of range"),
    "negative class": (EXPLAIN, {**one(GOOD), "parameters": {"targets": -1}}, None,
                       "out of range"),
    "class not an integer": (EXPLAIN, {**one(GOOD), "parameters": {"targets": [1.5]}}, None,
                             "class indices"),
    "top_k 0": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": 0}}, None, "top_k"),
    "top_k -3": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": -3}}, None, "top_k"),
    "top_k 5000": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": 5000}}, None, "top_k"),
    "top_k a string": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": "2"}}, None, "top_k"),
    "top_k true": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": True}}, None, "top_k"),
    "top_k and targets": (EXPLAIN, {**one(GOOD), "parameters": {"top_k": 2, "targets": [1]}},
                          None, "not both"),
    "unknown parameter": (EXPLAIN, {**one(GOOD), "parameters": {"topk": 2}}, None, "topk"),
    "predict top_k 0": (PREDICT, {**one(GOOD), "parameters": {"top_k": 0}}, None, "top_k"),
    "predict with targets": (PREDICT, {**one(GOOD), "parameters": {"targets": [1]}}, None,
                             "top_k only"),
    "v2 not JSON": (V2, b"{not json", "application/json", "JSON"),
    "v2 wrong datatype": (V2, v2_body(datatype="FP32", data=[1.0]), None, "BYTES"),
    "v2 wrong shape": (V2, v2_body(shape=[1, 2]), None, "shape"),
    "v2 shape and data disagree": (V2, v2_body(shape=[2]), None, "shape"),
    "v2 wrong input name": (V2, {"inputs": [{**v2_body()["inputs"][0], "name": "x"}]}, None,
                            "'image'"),
    "v2 not base64": (V2, v2_body(data=["%%%"]), None, "not valid base64"),
    "v2 bad targets": (V2, {**v2_body(), "parameters": {"targets": "1,a"}}, None, "targets"),
    "v2 class out of range": (V2, {**v2_body(), "parameters": {"targets": 4000}}, None,
                              "out of range"),
    "unknown model": ("/v1/models/nosuchmodel:explain", one(GOOD), None, "nosuchmodel"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_one_line_4xx(server, case):
    path, body, content_type, fragment = BAD_REQUESTS[case]
    if isinstance(body, dict):
        body, content_type = json.dumps(body).encode(), "application/json"
    status, answer = request(server, path, body, content_type)
    assert 400 <= status < 500, (status, answer)
    message = answer["error"] if isinstance(answer, dict) and "error" in answer \
        else json.dumps(answer)
    assert "\n" not in message and "Traceback" not in message, message
    assert fragment in message, message


def test_server_keeps_serving_after_bad_requests(server, cam, images):
    for path, body, content_type, _ in BAD_REQUESTS.values():
        if isinstance(body, dict):
            body, content_type = json.dumps(body).encode(), "application/json"
        assert 400 <= request(server, path, body, content_type)[0] < 500
    status, answer = post(server, EXPLAIN, {"instances": instances(images[2])})
    assert status == 200 and server.process.poll() is None
    assert_explanations_equal(answer["explanations"], reference(cam, images[2:3]))


def test_concurrent_explains_equal_the_sequential_answers(server, cam, images):
    expected = [reference(cam, [data], top_k=2) for data in images]
    jobs = [i % len(images) for i in range(32)]

    def explain(i: int) -> tuple[int, dict]:
        payload = {"instances": instances(images[i]), "parameters": {"top_k": 2}}
        return post(server, EXPLAIN, payload)

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(explain, jobs))
    for i, (status, body) in zip(jobs, answers, strict=True):
        assert status == 200, body
        assert_explanations_equal(body["explanations"], expected[i])


def test_workers_serve_from_their_own_processes(resnet18_dir, cam, images, tmp_path):
    srv = Server(resnet18_dir, tmp_path / "server.log", "--workers", "2", "--name", "r18")
    try:
        srv.wait_ready("r18")
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda data: post(
                srv, "/v1/models/r18:explain", {"instances": instances(data)}), images * 2))
        for data, (status, body) in zip(images * 2, answers, strict=True):
            assert status == 200, body
            assert_explanations_equal(body["explanations"], reference(cam, [data]))
    finally:
        assert srv.stop() == 0
    ready = set(re.findall(r"model r18 ready in process (\d+)", srv.log.read_text()))
    assert len(ready - {str(srv.process.pid)}) == 2, ready


def test_onnxruntime_model_predicts_and_explains_as_the_api(resnet18_dir, images):
    """In process, without HTTP: the unfused classifier path (ONNX Runtime) of ``:predict``."""
    import asyncio

    from reciprocam_ir import Artifact
    from reciprocam_ir.serving.model import ExplainerModel

    model = ExplainerModel("r", Artifact.load(resnet18_dir), backend="onnxruntime")
    model.load()
    body = {"instances": instances(*images[:2]), "parameters": {"top_k": 3}}

    async def answer(verb: str) -> dict:
        return await getattr(model, verb)(await model.preprocess(body))

    predicted, explained = asyncio.run(answer("predict")), asyncio.run(answer("explain"))
    api = ReciproCAM(resnet18_dir, backend="onnxruntime")
    exp = reference(api, images[:2], top_k=3)
    assert_explanations_equal(explained["explanations"], exp)
    for prediction, scores in zip(predicted["predictions"], exp.scores, strict=True):
        order = np.argsort(-scores, kind="stable")[:3]
        assert prediction["classes"] == order.tolist()
        np.testing.assert_allclose(prediction["scores"], scores[order], rtol=TOL, atol=TOL)


def refused(*args: str, env: dict | None = None) -> str:
    """Run ``reciprocam serve`` expecting a start-up refusal; return its one stderr line."""
    proc = subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=180,
                          env=env or subprocess_env())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    assert lines[0].startswith("reciprocam: error:"), lines
    return lines[0]


def test_start_up_refuses_a_bad_artifact(resnet18_dir, tmp_path):
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    assert "no manifest.json" in refused(str(tmp_path), *ports)
    tampered = tmp_path / "tampered"
    shutil.copytree(resnet18_dir, tampered)
    with open(tampered / "g.bin", "r+b") as fh:
        fh.write(b"\0\0\0\0")
    assert "does not match its sha256" in refused(str(tampered), *ports)


def refused_in_process(capsys, *args: str) -> str:
    """As :func:`refused`, through ``cli.main`` (no process start-up per case)."""
    from reciprocam_ir import cli

    code = cli.main(["serve", *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("reciprocam: error:"), lines
    return lines[0]


def test_start_up_refuses_taken_port_missing_device_and_bad_names(capsys, resnet18_dir):
    art = str(resnet18_dir)
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--http-port", "--grpc-port"):
            other = "--grpc-port" if flag == "--http-port" else "--http-port"
            line = refused_in_process(capsys, art, flag, str(port), other, str(free_port()))
            assert f"{flag} {port}: cannot listen" in line
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    assert "NPU" in refused_in_process(capsys, art, *ports, "--device", "NPU")
    assert "once per artifact" in refused_in_process(capsys, art, art, *ports, "--name", "a")
    assert "would be served as 'resnet18'" in refused_in_process(capsys, art, art, *ports)
    assert "part of the URL" in refused_in_process(capsys, art, *ports, "--name", "a:b")
    assert "--workers" in refused_in_process(capsys, art, *ports, "--workers", "0")


BLOCK_KSERVE = import_blocker("kserve", "No module named 'kserve'") + """
import runpy
sys.argv = ["reciprocam", *sys.argv[1:]]
runpy.run_module("reciprocam_ir.cli", run_name="__main__")
"""


def test_without_kserve_names_the_extra(resnet18_dir):
    proc = subprocess.run([sys.executable, "-c", BLOCK_KSERVE, "serve", str(resnet18_dir)],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "reciprocam: error: serve needs KServe (No module named 'kserve'): "
        "pip install reciprocam-ir[serve]"]


def test_importing_the_runtime_does_not_import_kserve():
    code = ("import sys, reciprocam_ir, reciprocam_ir.cli; "
            "sys.exit(any(m.split('.')[0] == 'kserve' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                          timeout=120).returncode == 0
