"""``reciprocam serve`` under hostile requests (issue 23): bounded targets, pixel budgets,
our own response headers, binary-extension requests, requested outputs on gRPC, strict v2
parameters, the listening host, and the artifact's own map by default."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_serve import (
    EXPLAIN,
    PREDICT,
    TOL,
    V2,
    Server,
    assert_explanations_equal,
    b64,
    encode,
    instances,
    post,
    request,
)

from reciprocam_ir import ReciproCAM, decode_image

ROOT = Path(__file__).resolve().parents[1]
MAX_TARGETS = 20
REQUEST_PIXELS = 300_000
PROCESS_PIXELS = 450_000


@pytest.fixture(scope="module")
def server(resnet18_dir, tmp_path_factory):
    srv = Server(resnet18_dir, tmp_path_factory.mktemp("hardening") / "server.log",
                 "--max-pixels", "250000", "--request-pixels", str(REQUEST_PIXELS),
                 "--process-pixels", str(PROCESS_PIXELS), "--max-targets", str(MAX_TARGETS))
    try:
        srv.wait_ready("resnet18")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def cam(resnet18_dir) -> ReciproCAM:
    return ReciproCAM(resnet18_dir, precision="f32")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8))


def one_line_4xx(status: int, answer: object, fragment: str = "") -> str:
    assert 400 <= status < 500, (status, str(answer)[:300])
    message = answer["error"] if isinstance(answer, dict) and "error" in answer \
        else json.dumps(answer)
    assert "\n" not in message and "Traceback" not in message and len(message) < 300, message
    assert fragment in message, message
    return message


def outputs_of(body: dict) -> dict:
    return {o["name"]: o for o in body["outputs"]}


# item 2: unbounded repeated targets


def test_repeated_targets_are_explained_once(server, cam, photo):
    status, body = post(server, EXPLAIN, {"instances": instances(photo),
                                          "parameters": {"targets": [1] * 300_000}})
    assert status == 200, str(body)[:300]
    assert_explanations_equal(body["explanations"], cam.explain(decode_image(photo), [1]))
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(photo)]}],
          "parameters": {"targets": ",".join(["7"] * 100_000)}}
    status, body = post(server, V2, v2)
    assert status == 200, str(body)[:300]
    assert outputs_of(body)["saliency"]["shape"] == [1, 1, 7, 7]
    assert outputs_of(body)["targets"]["data"] == [7]


@pytest.mark.parametrize("path, parameters", [
    (EXPLAIN, {"targets": list(range(MAX_TARGETS + 1))}),
    (EXPLAIN, {"targets": "all"}),
    (EXPLAIN, {"top_k": MAX_TARGETS + 1}),
    (V2, {"targets": ",".join(map(str, range(MAX_TARGETS + 1)))}),
])
def test_more_classes_than_the_limit_are_refused(server, photo, path, parameters):
    body = ({"instances": instances(photo)} if path == EXPLAIN else
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                         "data": [b64(photo)]}]})
    one_line_4xx(*post(server, path, {**body, "parameters": parameters}),
                 f"more than the limit of {MAX_TARGETS}")


# item 3: pixel budgets and bounded decoding


def test_a_request_over_its_pixel_budget_is_refused(server):
    square = encode(np.zeros((400, 400, 3), np.uint8))  # 160 000 pixels: two are over
    one_line_4xx(*post(server, PREDICT, {"instances": instances(square, square)}),
                 f"{REQUEST_PIXELS}-pixel limit of one request")
    assert post(server, PREDICT, {"instances": instances(square)})[0] == 200


def test_concurrent_bombs_leave_normal_requests_served(server, cam, photo):
    bomb = encode(np.zeros((500, 500, 3), np.uint8))  # 250 000 pixels: one fits at a time
    jobs = ["bomb"] * 4 + ["normal"] * 8

    def send(kind: str) -> tuple[str, int, object]:
        data = bomb if kind == "bomb" else photo
        return (kind, *post(server, EXPLAIN, {"instances": instances(data)}))

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    expected = cam.explain(decode_image(photo))
    for kind, status, body in answers:
        if kind == "normal":
            assert status == 200, body
            assert_explanations_equal(body["explanations"], expected)
        elif status != 200:
            assert status == 429, body
            one_line_4xx(status, body, "server busy")
    assert any(kind == "bomb" and status == 200 for kind, status, _ in answers)
    assert server.process.poll() is None


def test_busy_process_refuses_and_decoding_threads_are_bounded(export_once):
    from reciprocam_ir import Artifact
    from reciprocam_ir.serving.budget import process_budget
    from reciprocam_ir.serving.model import ExplainerModel, ServerBusy

    model = ExplainerModel("toy", Artifact.load(export_once("toy_models:tiny_gap")),
                           precision="f32", request_pixels=10_000, process_pixels=20_000,
                           decode_threads=1)
    model.load()
    body = {"instances": instances(encode(np.zeros((50, 60, 3), np.uint8)))}
    budget = process_budget(20_000)
    assert budget.reserve(20_000 - 2_999)
    with pytest.raises(ServerBusy, match="server busy"):
        asyncio.run(model.preprocess(body))
    budget.release(20_000 - 2_999)
    running, most, lock = 0, 0, threading.Lock()
    decode = model._decode

    def counted(encoded):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return decode(encoded)
        finally:
            with lock:
                running -= 1

    model._decode = counted

    async def six() -> list:
        requests = await asyncio.gather(*(model.preprocess(body) for _ in range(6)))
        return [await model.explain(r) for r in requests]

    assert len(asyncio.run(six())) == 6
    assert most == 1 and budget.used == 0


# item 4: only our own headers


def test_decode_reduced_reaches_the_reader_of_every_model(export_once, photos, tmp_path):
    """serve --decode reduced: uploaded JPEGs shrink on load (reduced decode, the full size
    kept), so :explain answers the API's decode='reduced' explanation, not the exact one."""
    import cv2
    from test_serve import free_port

    from reciprocam_ir.cli import parser
    from reciprocam_ir.serving.server import load_models

    folder = export_once("toy_models:tiny_gap")
    args = parser().parse_args(["serve", str(folder), "--precision", "f32", "--decode",
                                "reduced", "--http-port", str(free_port()),
                                "--grpc-port", str(free_port())])
    (model,) = load_models(args)
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(cv2.resize(photos["astronaut"], (1600, 1200),
                                      interpolation=cv2.INTER_CUBIC), ".jpg"))
    request = asyncio.run(model.preprocess({"instances": instances(big.read_bytes())}))
    (rgb,) = request.images
    assert rgb.reduction > 1 and rgb.full_size == (1200, 1600)
    (entry,) = asyncio.run(model.explain(request))["explanations"]
    saliency = np.asarray(entry["saliency"], np.float32)
    reduced, exact = (ReciproCAM(folder, precision="f32", decode=decode).explain(big)
                      .saliency[0] for decode in ("reduced", "exact"))
    np.testing.assert_allclose(saliency, reduced, rtol=TOL, atol=TOL)
    assert np.abs(saliency - exact).max() > 1e-3


def raw_post(server: Server, headers: dict[str, str], body: bytes, chunked: bool = False
             ) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=120)
    try:
        if chunked:
            conn.request("POST", EXPLAIN, body=iter([body[:100], body[100:]]),
                         headers={**headers, "Transfer-Encoding": "chunked"},
                         encode_chunked=True)
        else:
            conn.request("POST", EXPLAIN, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["credentials", "forwarded", "chunked", "gzip"])
def test_explain_answers_with_its_own_headers(server, photo, case):
    body = json.dumps({"instances": instances(photo)}).encode()
    sent = {"Content-Type": "application/json"}
    if case == "credentials":
        sent.update({"Set-Cookie": "session=secret", "Authorization": "Bearer secret"})
    elif case == "forwarded":
        sent["X-Forwarded-For"] = "10.1.2.3"
    elif case == "gzip":
        sent["Content-Encoding"] = "gzip"
    status, headers, raw = raw_post(server, sent, body, chunked=case == "chunked")
    assert status == 200, raw[:300]
    names = [name.lower() for name, _ in headers]
    assert not {"set-cookie", "authorization", "x-forwarded-for", "content-encoding"} & set(names)
    assert not ("transfer-encoding" in names and "content-length" in names), headers
    assert dict((k.lower(), v) for k, v in headers)["content-type"] == "application/json"
    assert "secret" not in str(headers) and "10.1.2.3" not in str(headers)
    assert "explanations" in json.loads(raw)


# item 9: the v2 REST binary extension


def binary_request(server: Server, tensor_data: bytes, size: int | None = None
                   ) -> tuple[int, object]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": size if size is not None
                                                    else len(tensor_data)}}],
                         "parameters": {"top_k": 2}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=120)
    try:
        conn.request("POST", V2, body=header + tensor_data, headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header))})
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def test_binary_extension_takes_raw_image_bytes(server, cam, photo, images_pair):
    tensor = b"".join(struct.pack("<I", len(data)) + data for data in images_pair)
    status, body = binary_request(server, tensor)
    assert status == 200, str(body)[:300]
    exp = cam.explain([decode_image(data) for data in images_pair], top_k=2)
    outputs = outputs_of(body)
    assert outputs["targets"]["data"] == exp.targets.ravel().tolist()
    np.testing.assert_allclose(np.reshape(outputs["saliency"]["data"], (2, 2, 7, 7)),
                               exp.saliency, rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def images_pair(photo) -> list[bytes]:
    return [photo, encode(np.full((40, 30, 3), 200, np.uint8), ".jpg")]


@pytest.mark.parametrize("case", ["no length prefix", "size past the end", "bytes left over"])
def test_malformed_binary_request_is_a_short_4xx(server, images_pair, case):
    jpeg = images_pair[1]
    tensor, size = {"no length prefix": (jpeg, None),
                    "size past the end": (jpeg, len(jpeg) + 10),
                    "bytes left over": (struct.pack("<I", len(jpeg)) + jpeg + b"xx",
                                        len(jpeg) + 4)}[case]
    status, body = binary_request(server, tensor, size)
    message = one_line_4xx(status, body)
    assert "\\x" not in message and "ÿ" not in message and len(message) < 200


# item 10: requested outputs over gRPC as over REST


def test_requested_outputs_over_grpc_and_rest(server, photo):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[b64(photo).encode()]))
    asked = [pb.ModelInferRequest.InferRequestedOutputTensor(name="targets")]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(pb.ModelInferRequest(
            model_name="resnet18", inputs=[tensor], outputs=asked), timeout=120)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(pb.ModelInferRequest(
                model_name="resnet18", inputs=[tensor],
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
                timeout=120)
    assert [o.name for o in response.outputs] == ["targets"]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output 'logits'" in refused.value.details()
    status, body = post(server, V2, {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(photo)]}],
        "outputs": [{"name": "saliency"}, {"name": "scores"}]})
    assert status == 200 and sorted(outputs_of(body)) == ["saliency", "scores"]


def test_grpc_raw_contents_take_image_bytes(server, cam, photo):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
        response = GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(
            model_name="resnet18", inputs=[tensor],
            raw_input_contents=[struct.pack("<I", len(photo)) + photo]), timeout=120)
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents,
                   strict=True))
    np.testing.assert_allclose(np.frombuffer(raw["saliency"], np.float32).reshape(1, 1, 7, 7),
                               cam.explain(decode_image(photo)).saliency, rtol=TOL, atol=TOL)


# item 11: strict v2 parameters


@pytest.mark.parametrize("parameters, fragment", [
    ({"targets": "1_0"}, "ASCII digits"),
    ({"targets": "１,٣"}, "ASCII digits"),
    ({"targets": "٣"}, "ASCII digits"),
    ({"targets": "+3"}, "ASCII digits"),
    ({"targets": "3,"}, "ASCII digits"),
    ({"topk": 3}, "unknown parameter 'topk'"),
])
def test_v2_parameters_are_parsed_strictly(server, photo, parameters, fragment):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [b64(photo)]}], "parameters": parameters}
    one_line_4xx(*post(server, V2, body), fragment)


def test_v2_binary_output_parameter_is_known(server, photo):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [b64(photo)]}],
            "parameters": {"binary_data_output": False, "targets": " 3, 9"}}
    status, answer = post(server, V2, body)
    assert status == 200 and outputs_of(answer)["targets"]["data"] == [3, 9]


# --host


def test_listens_on_loopback_only_by_default(server):
    import psutil

    sockets = psutil.Process(server.process.pid).connections(kind="inet")
    listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in sockets
                 if c.status == psutil.CONN_LISTEN}
    ours = {(ip, port) for ip, port in listening if port in (server.http, server.grpc)}
    assert ours == {("127.0.0.1", server.http), ("127.0.0.1", server.grpc)}, listening


def test_containers_listen_on_every_interface():
    assert '"serve", "--host", "0.0.0.0"' in (ROOT / "Dockerfile").read_text()
    assert '"--host", "0.0.0.0"' in (ROOT / "deploy" / "inferenceservice.yaml").read_text()


def test_start_up_probes_the_chosen_host(capsys, resnet18_dir):
    import socket
    from contextlib import closing

    from test_serve import free_port, refused_in_process

    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused_in_process(capsys, str(resnet18_dir), "--host", "127.0.0.1",
                                  "--http-port", str(port), "--grpc-port", str(free_port()))
    assert f"--http-port {port}: cannot listen there on 127.0.0.1" in line
    line = refused_in_process(capsys, str(resnet18_dir), "--host", "no.such.host.invalid",
                              "--http-port", str(free_port()), "--grpc-port", str(free_port()))
    assert "--host no.such.host.invalid" in line


# item 8: the artifact's explain mask is the default everywhere


def explain_graph_answer(folder: Path, rgb: np.ndarray, cam: ReciproCAM) -> list[np.ndarray]:
    """What ONNX Runtime running the artifact's own explain.onnx gives, no project code."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "explain.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name:
                                                 cam.preprocessing(rgb)}), strict=True))
    return [outputs["scores"], outputs["targets"], outputs["saliency"]]


def test_window_artifact_means_its_own_map_everywhere(export_once, tmp_path, capsys):
    """API, CLI, dataset actor and server give the explain graph's map by default."""
    from reciprocam_ir import cli

    folder = export_once("toy_models:tiny_gap", fmt="both", explain_mask="window",
                         explain_top_k=2)
    rgb = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cam = ReciproCAM(folder, precision="f32")
    assert cam.artifact.default_mask == "window" and cam.mask == "window"
    assert cam.graph_path is not None and cam.path_for(None, 2) is cam.graph_path
    scores, targets, saliency = explain_graph_answer(folder, rgb, cam)
    api = cam.explain(rgb, top_k=2)
    general = ReciproCAM(folder, precision="f32", explain_graph=False).explain(rgb, top_k=2)
    for exp in (api, general):  # f32 both; the export checked 1e-4 on its own inputs
        assert exp.targets.tolist() == targets.tolist()
        np.testing.assert_allclose(exp.saliency, saliency, atol=1e-3)
    np.testing.assert_allclose(api.scores, scores, rtol=1e-4, atol=1e-4)

    path = tmp_path / "a.png"
    path.write_bytes(encode(rgb))
    assert cli.main(["explain", str(folder), str(path), "--top-k", "2", "--save-npz",
                     "--precision", "f32", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a.npz")["saliency"], saliency[0],
                               atol=1e-3)

    import pyarrow as pa

    from reciprocam_ir.dataset import ExplainBatch, ExplainOptions

    rows = ExplainBatch(ExplainOptions(str(folder), top_k=2, precision="f32"))(
        pa.table({"path": [str(path)]}))
    assert rows.column("error")[0].as_py() is None
    np.testing.assert_allclose(np.reshape(rows.column("saliency")[0].as_py(), saliency[0].shape),
                               saliency[0], atol=1e-3)

    srv = Server(folder, tmp_path / "server.log", "--name", "toy")
    try:
        srv.wait_ready("toy")
        status, body = post(srv, "/v1/models/toy:explain",
                            {"instances": instances(encode(rgb)), "parameters": {"top_k": 2}})
        onehot = post(srv, "/v1/models/toy:explain", {"instances": instances(encode(rgb))})
    finally:
        srv.stop()
    assert status == 200, body
    entry = body["explanations"][0]
    assert entry["targets"] == targets[0].tolist()
    np.testing.assert_allclose(entry["saliency"], saliency[0], atol=1e-3)
    assert onehot[0] == 200


def test_serve_takes_the_mask_options(capsys, resnet18_dir):
    from test_serve import free_port, refused_in_process

    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    assert "--mask-sigma sets the window" in refused_in_process(
        capsys, str(resnet18_dir), *ports, "--mask-sigma", "1")
    assert "--mask-strength sets the strength of --mask window" in refused_in_process(
        capsys, str(resnet18_dir), *ports, "--mask", "gaussian", "--mask-strength", "2")


def test_request_is_answered_without_base64_payload_echo(server):
    garbage = base64.b64encode(b"\xff\xd8" + b"A" * 5000).decode()
    status, body = post(server, EXPLAIN, {"instances": [{"image_bytes": {"b64": garbage}}]})
    assert "AAAA" not in one_line_4xx(status, body)
    assert request(server, "/v1/models/resnet18")[0] == 200
