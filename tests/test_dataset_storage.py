"""``explain-dataset`` on object storage and a multi-node Ray cluster, both real and local:
moto's S3 server on 127.0.0.1 and ``ray.cluster_utils.Cluster`` with two nodes."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster
from test_dataset import assert_rows_equal_api, write_images

from reciprocam_ir import cli
from reciprocam_ir.dataset import write_explanations
from reciprocam_ir.dataset_output import SCHEMA
from reciprocam_ir.dataset_storage import Storage, fetch_artifact, parse_options

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server in its own process on 127.0.0.1, for as long as the context lasts."""

    def __enter__(self) -> MotoServer:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, **{
            "aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": KEYS["AWS_SECRET_ACCESS_KEY"], "region_name": "us-east-1"})
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def upload(self, bucket: str, prefix: str, folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """The S3 server, and the standard AWS variables naming it, set before the cluster starts
    (its worker processes inherit them, as the nodes of a real cluster have theirs)."""
    saved = dict(os.environ)
    with MotoServer() as server:
        os.environ.update(KEYS, AWS_ENDPOINT_URL=server.endpoint,
                          RECIPROCAM_CACHE=str(tmp_path_factory.mktemp("cache")))
        yield server
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def cluster(moto):
    """Two nodes of one CPU each: the head (where this driver runs) and a worker."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": {
        "health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
        "health_check_failure_threshold": 2}})  # a killed node is noticed within ~1 s
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.shutdown()  # a session an earlier module left would not be this cluster
    ray.init(address=c.address, logging_level=logging.ERROR)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def artifact(export_once):
    from toy_models import tiny_gap

    model = tiny_gap()
    model.reciprocam_labels = [f"thing {i}" for i in range(5)]
    return export_once(model, fmt="both")


def s3_rows(server: MotoServer, bucket: str, prefix: str) -> list[dict]:
    fs = pafs.S3FileSystem(endpoint_override=server.endpoint)
    rows = []
    for key in server.keys(bucket, prefix):
        assert Path(key).name.startswith("part-") and key.endswith(".parquet"), key
        assert pq.read_schema(f"{bucket}/{key}", filesystem=fs).remove_metadata() == SCHEMA
        rows.extend(pq.read_table(f"{bucket}/{key}", filesystem=fs).to_pylist())
    return rows


def assert_nothing_half_written(server: MotoServer, bucket: str) -> None:
    assert not server.s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not [k for k in server.keys(bucket, "") if Path(k).name.startswith(".")]


def test_s3_to_s3_with_the_artifact_on_s3(capsys, moto, cluster, artifact, tmp_path):
    local = tmp_path / "images"
    write_images(local, 6)
    (local / "corrupt.jpg").write_bytes((local / "img00.jpg").read_bytes()[:80])
    moto.s3.create_bucket(Bucket="data")
    moto.upload("data", "images", local)
    moto.upload("data", "models/tiny", artifact)
    args = ["explain-dataset", "s3://data/models/tiny", "s3://data/images/", "--out",
            "s3://data/explanations", "--workers", "2", "--rows-per-file", "3",
            "--precision", "f32"]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 11, err
    assert "corrupt.jpg: not a readable image" in err
    rows = s3_rows(moto, "data", "explanations/")
    assert sorted(r["path"] for r in rows) == sorted(f"s3://data/images/{p.name}"
                                                     for p in local.iterdir())
    fs = pafs.S3FileSystem(endpoint_override=moto.endpoint)
    assert sorted(pq.read_metadata(f"data/{k}", filesystem=fs).num_rows
                  for k in moto.keys("data", "explanations/")) == [1, 3, 3]
    for row in rows:
        row["path"] = str(local / Path(row["path"]).name)  # the same bytes, read locally
    assert_rows_equal_api(rows, artifact)
    assert_nothing_half_written(moto, "data")
    cached = [p for p in Path(os.environ["RECIPROCAM_CACHE"]).iterdir()
              if not p.name.startswith(".")]
    assert len(cached) == 1  # one fetch for this machine's nodes, every sha256 checked

    assert cli.main(args) == 0
    assert "7 of 7 files already have a row" in capsys.readouterr().err
    assert cli.main([*args, "--top-k", "2"]) == 2
    assert "made with --top-k 1, this run asks for --top-k 2" in capsys.readouterr().err
    assert len(s3_rows(moto, "data", "explanations/")) == 7


def test_a_tampered_artifact_on_s3_is_refused(moto, artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPROCAM_CACHE", str(tmp_path / "cache"))
    moto.s3.create_bucket(Bucket="tampered")
    moto.upload("tampered", "tiny", artifact)
    name = next(n for n in json.loads((artifact / "manifest.json").read_text())["files"])
    moto.s3.put_object(Bucket="tampered", Key=f"tiny/{name}", Body=b"not the graph")
    with pytest.raises(ValueError, match="does not match its sha256"):
        fetch_artifact("s3://tampered/tiny", Storage())
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_an_unreadable_object_is_an_error_row(capsys, moto, cluster, artifact, tmp_path):
    """Credentials that may list the bucket but not read one object (IAM, enforced by a
    second S3 server), passed as --filesystem-option."""
    write_images(tmp_path / "images", 3)
    with MotoServer() as server:
        server.s3.create_bucket(Bucket="locked")
        server.upload("locked", "images", tmp_path / "images")
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::locked/images/img01.png"}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        urllib.request.urlopen(urllib.request.Request(
            f"{server.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"}))  # from now on, requests are checked
        code = cli.main([
            "explain-dataset", str(artifact), "s3://locked/images", "--out", "s3://locked/out",
            "--filesystem-option", f"endpoint_override={server.endpoint}",
            "--filesystem-option", f"access_key={key['AccessKeyId']}",
            "--filesystem-option", f"secret_key={key['SecretAccessKey']}"])
        err = capsys.readouterr().err
        assert code == 11, err
        fs = pafs.S3FileSystem(endpoint_override=server.endpoint,
                               access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])
        (part,) = fs.get_file_info(pafs.FileSelector("locked/out"))
        rows = {Path(r["path"]).name: r for r in pq.read_table(part.path,
                                                                filesystem=fs).to_pylist()}
    assert rows.keys() == {"img00.jpg", "img01.png", "img02.jpg"}
    assert rows["img01.png"]["error"].startswith("cannot read")
    assert rows["img00.jpg"]["error"] is rows["img02.jpg"]["error"] is None


def test_a_worker_node_killed_mid_run_then_resumed_gives_each_image_once(
        moto, cluster, resnet18_dir, tmp_path):
    write_images(tmp_path / "images", 24, size=64)
    moto.s3.create_bucket(Bucket="killed")
    moto.upload("killed", "images", tmp_path / "images")
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    kwargs = dict(workers=3, rows_per_file=2, batch_size=2, precision="f32", log=lambda _: None)
    failed: list[Exception] = []

    def first_run() -> None:
        try:
            write_explanations(resnet18_dir, ["s3://killed/images"], "s3://killed/out",
                               **kwargs)
        except ray.exceptions.RayError as exc:  # the run may fail with the node
            failed.append(exc)

    runner = threading.Thread(target=first_run)
    runner.start()
    deadline = time.monotonic() + 240
    while not moto.keys("killed", "out/") and time.monotonic() < deadline:
        time.sleep(0.05)
    written_at_kill = len(moto.keys("killed", "out/"))
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(num_cpus=1)  # a replacement, as a cloud autoscaler would start one
    runner.join()
    summary = write_explanations(resnet18_dir, ["s3://killed/images"], "s3://killed/out",
                                 **kwargs)
    assert summary.failed == 0
    assert 0 < written_at_kill < 12  # the node died while files were still to come
    rows = s3_rows(moto, "killed", "out/")
    assert sorted(r["path"] for r in rows) == [f"s3://killed/images/img{i:02d}.{e}" for i, e
                                               in sorted((i, "png" if i % 2 else "jpg")
                                                         for i in range(24))]
    assert all(r["error"] is None for r in rows)
    assert_nothing_half_written(moto, "killed")


def test_the_driver_holds_no_rows(moto, cluster, export_once, tmp_path):
    """Rows of 80 KB each (a 64x64 map, five classes) go from the actors to storage; the
    driver's memory stays flat however many are written. A driver that gathered the rows
    would grow by at least their size; Ray's own bookkeeping on the driver moves it by
    10-15 MB from run to run, hence half the rows' size as the line."""
    from toy_models import sized

    folder = export_once(sized(256, 256), fmt="ir")
    write_images(tmp_path / "warm", 2)
    write_images(tmp_path / "images", 480, size=24)
    kwargs = dict(workers=2, top_k=5, rows_per_file=20, batch_size=20, log=lambda _: None)
    write_explanations(folder, [tmp_path / "warm"], tmp_path / "warm_out", **kwargs)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    before = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    summary = write_explanations(folder, [tmp_path / "images"], tmp_path / "out", **kwargs)
    stop.set()
    sampler.join()
    row_bytes = sum(pq.read_metadata(f).row_group(0).total_byte_size
                    for f in (tmp_path / "out").glob("*.parquet"))
    assert summary.explained == 480 and row_bytes > 30e6
    assert peak[0] - before < row_bytes / 2, (peak[0] - before, row_bytes)


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_filesystem_options_parse_values():
    assert parse_options(["endpoint_override=http://h:1", "allow_bucket_creation=true",
                          "connect_timeout=2.5"]) == {
        "endpoint_override": "http://h:1", "allow_bucket_creation": True,
        "connect_timeout": 2.5}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_options(["no-equals"])
