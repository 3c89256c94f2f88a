#!/usr/bin/env python
"""Images/s of ``explain-dataset`` on Ray Data (1 and 2 actors) against the in-process API.

Usage (from the repository root, after ``scripts/setup.sh``)::

    .venv/bin/python scripts/dataset_benchmark.py            # resnet18, 400 images, 3 rounds
    .venv/bin/python scripts/dataset_benchmark.py --quick    # smoke run: 16 images, 1 round

Every configuration explains the same image files (the bundled photos, repeated, as JPEG)
with the same artifact (resnet18 with random weights unless ``--artifact``), precision and
batch size:

- ``api``: one ``ReciproCAM`` in this process, ``explain`` over the files in batches
  (file reading and decoding included, as in the actors); compile time excluded;
- ``ray, N actors``: ``reciprocam_ir.dataset.explain_dataset`` on a local Ray started once
  with ``--cpus`` CPUs, rows consumed on the driver as they arrive: actor creation (one
  artifact load and compile each), scheduling, explanation. Ray reuses its worker
  processes between runs, so a one-image run first starts them (not counted);
- the fixed cost a user sees: a fresh ``reciprocam explain-dataset`` of one image
  (Ray start, actor process start, compile, shutdown), wall time;
- peak RSS: of each actor process (polled), and of a fresh process explaining the same
  images with the API (no Ray).

Configurations alternate within each round (reversed every other round); the table shows
medians over rounds.

``--nodes 1,2,3`` measures ``write_explanations`` (the command's own path: listing, resume
check, actors that explain and write their Parquet files) on a simulated multi-node cluster
instead: ``ray.cluster_utils.Cluster`` with that many nodes of ``--cpus-per-node`` CPUs on
this machine, one actor per node, a fresh cluster per configuration. Per configuration: images/s,
the images each node's actor did (per-node rate), the driver process's CPU seconds (in all; of
a run of one image per node, the fixed part; the rest per 1000 more rows; and as cores busy
during the run), and the
bytes moved per 1000 rows (image bytes read by the actors, Parquet bytes they wrote, summary
bytes the driver received). All simulated nodes share this machine's cores, which cap the total.
The table goes to stdout; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

ACTOR_TITLE = "ExplainBatch"
"""Ray names an actor process after its class: ray::MapWorker(MapBatches(ExplainBatch))."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_images(folder: Path, count: int) -> list[str]:
    from sample_images import sample_images

    photos = list(sample_images().items())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name, rgb = photos[i % len(photos)]
        path = folder / f"{i:05d}_{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(str(path))
    return paths


def default_artifact(work: Path) -> Path:
    from export.torch.pipeline import export_artifact

    out = work / "resnet18"
    if not (out / "manifest.json").is_file():
        log("exporting resnet18 (random weights)")
        export_artifact("resnet18", weights="none", fmt="both", out=out)
    return out


class ActorMemory:
    """Polls the RSS of every actor process while a run is going; keeps each one's peak."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for proc in self.psutil.process_iter(["pid", "cmdline"]):
                try:
                    if ACTOR_TITLE in " ".join(proc.info["cmdline"] or []):
                        rss = proc.memory_info().rss
                        self.peak[proc.pid] = max(rss, self.peak.get(proc.pid, 0))
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    continue
            self._stop.wait(0.1)

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_api(cam, paths: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        cam.explain(paths[i : i + batch_size])
    return time.perf_counter() - start


API_RSS = """
import resource, sys
from reciprocam_ir import ReciproCAM
artifact, precision, batch, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cam = ReciproCAM(artifact, precision=precision, batch_size=batch)
for i in range(0, len(paths), batch):
    cam.explain(paths[i : i + batch])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def api_peak_rss(artifact: Path, paths: list[str], args) -> int:
    """Peak RSS (bytes) of a fresh process explaining the images with the API, no Ray."""
    proc = subprocess.run([sys.executable, "-c", API_RSS, str(artifact), args.precision,
                           str(args.batch_size), *paths], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(proc.stdout.split()[-1])


def time_ray(artifact: Path, paths: list[str], workers: int, args) -> tuple:
    """(seconds for the whole run, peak RSS of each actor in bytes), rows consumed on the
    driver as they arrive."""
    from reciprocam_ir.dataset import explain_dataset

    rows = 0
    with ActorMemory() as memory:
        start = time.perf_counter()
        for batch in explain_dataset(artifact, paths, precision=args.precision,
                                     batch_size=args.batch_size, workers=workers
                                     ).iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += batch.num_rows
            assert batch.column("error").null_count == batch.num_rows
        seconds = time.perf_counter() - start
    assert rows == len(paths)
    return seconds, list(memory.peak.values())


def fresh_run(artifact: Path, image: str, work: Path, args) -> float:
    """Wall seconds of a fresh ``reciprocam explain-dataset`` of one image: Ray start,
    actor start and compile, one explanation, one Parquet file, shutdown."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="fresh-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reciprocam_ir.cli", "explain-dataset", str(artifact),
                    image, "--out", str(out), "--precision", args.precision],
                   capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def run_cluster(artifact: Path, paths: list[str], nodes: int, work: Path, args) -> dict:
    """One ``write_explanations`` run on a fresh simulated cluster of ``nodes`` nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from reciprocam_ir.dataset import write_explanations

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    options = dict(workers=nodes, cpus_per_worker=args.cpus_per_node, precision=args.precision,
                   batch_size=args.batch_size, rows_per_file=args.rows_per_file,
                   log=lambda _: None)
    try:
        warm = Path(tempfile.mkdtemp(dir=work, prefix="warm-"))
        fixed = time.process_time()
        write_explanations(artifact, paths[:nodes], warm, **options)  # start the processes
        fixed = time.process_time() - fixed
        out = Path(tempfile.mkdtemp(dir=work, prefix=f"nodes{nodes}-"))
        cpu = time.process_time()
        summary = write_explanations(artifact, paths, out, **options)
        cpu = time.process_time() - cpu
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert summary.explained == len(paths), summary
    per_1000 = 1000 / len(paths)
    written = sum(f.stat().st_size for f in out.glob("*.parquet"))
    return {"nodes": nodes, "seconds": summary.seconds,
            "images_per_s": summary.images_per_second,
            "per_node_images_per_s": sorted((n / summary.seconds
                                             for n in summary.per_node.values()), reverse=True),
            "driver_cpu_s_per_1000_rows": cpu * per_1000,
            "driver_cpu_s_fixed": fixed,
            "driver_cpu_s_per_1000_more_rows": (cpu - fixed) * 1000 / (len(paths) - nodes),
            "driver_cores_busy": cpu / summary.seconds,
            "image_bytes_read_per_1000_rows": sum(os.path.getsize(p) for p in paths) * per_1000,
            "parquet_bytes_written_per_1000_rows": written * per_1000,
            "driver_bytes_received_per_1000_rows": summary.driver_bytes * per_1000}


def cluster_main(artifact: Path, paths: list[str], work: Path, args) -> int:
    counts = [int(n) for n in args.nodes.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        log(f"round {round_ + 1}/{args.rounds}")
        for nodes in (counts if round_ % 2 == 0 else counts[::-1]):
            runs[nodes].append(run_cluster(artifact, paths, nodes, work, args))
    result = {"images": len(paths), "batch_size": args.batch_size, "precision": args.precision,
              "cpus_per_node": args.cpus_per_node, "rows_per_file": args.rows_per_file,
              "rounds": args.rounds, "configs": []}
    print(f"{len(paths)} images, batch {args.batch_size}, precision {args.precision}, "
          f"--rows-per-file {args.rows_per_file}, simulated nodes of {args.cpus_per_node} CPU "
          f"on one machine; medians of {args.rounds} rounds\n")
    print("| nodes | images/s | per node images/s | driver CPU s / 1000 rows (fixed + per "
          "1000 more) | driver cores busy | image MB read / 1000 rows | Parquet MB written / "
          "1000 rows | driver KB received / 1000 rows |")
    print("|---|---|---|---|---|---|---|---|")
    for nodes in counts:
        best = sorted(runs[nodes], key=lambda r: r["images_per_s"])[len(runs[nodes]) // 2]
        med = {k: statistics.median(r[k] for r in runs[nodes]) for k in best
               if isinstance(best[k], float)}
        config = {**med, "nodes": nodes, "per_node_images_per_s": best["per_node_images_per_s"]}
        result["configs"].append(config)
        print(f"| {nodes} | {med['images_per_s']:.1f} | "
              f"{', '.join(f'{r:.1f}' for r in best['per_node_images_per_s'])} | "
              f"{med['driver_cpu_s_per_1000_rows']:.2f} ({med['driver_cpu_s_fixed']:.2f} + "
              f"{med['driver_cpu_s_per_1000_more_rows']:.2f}) | {med['driver_cores_busy']:.2f} | "
              f"{med['image_bytes_read_per_1000_rows'] / 1e6:.1f} | "
              f"{med['parquet_bytes_written_per_1000_rows'] / 1e6:.2f} | "
              f"{med['driver_bytes_received_per_1000_rows'] / 1e3:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=None,
                    help="artifact folder (default: resnet18 with random weights, exported)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--work-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "reciprocam-dataset-bench")
    ap.add_argument("--quick", action="store_true", help="at most 16 images, 1 round")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--nodes", default=None, metavar="N,N,...",
                    help="measure write_explanations on simulated clusters of these node counts")
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--rows-per-file", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds = min(args.images, 16), 1
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or default_artifact(work)
    paths = write_images(Path(tempfile.mkdtemp(dir=work, prefix="images-")), args.images)
    if args.nodes:
        return cluster_main(artifact, paths, work, args)

    from reciprocam_ir import ReciproCAM

    cam = ReciproCAM(artifact, precision=args.precision, batch_size=args.batch_size)
    cam.explain(paths[: args.batch_size])  # first call: lazy allocations, not the steady rate
    api_rss = api_peak_rss(artifact, paths, args)

    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    ray_start = time.perf_counter() - start
    ray.data.DataContext.get_current().enable_progress_bars = False

    runs: dict[str, list[float]] = {"api": [], 1: [], 2: []}
    rss: dict[int, list[int]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        log(f"round {round_ + 1}/{args.rounds}")
        order = ["api", 1, 2] if round_ % 2 == 0 else [2, 1, "api"]
        for config in order:
            if config == "api":
                runs["api"].append(time_api(cam, paths, args.batch_size))
                continue
            time_ray(artifact, paths[:config], config, args)  # start the worker processes
            seconds, peaks = time_ray(artifact, paths, config, args)
            runs[config].append(seconds)
            rss[config].extend(peaks)
    ray.shutdown()
    cold = fresh_run(artifact, paths[0], work, args)

    n = len(paths)
    api_rate = n / statistics.median(runs["api"])
    rows = [("api (in-process)", api_rate, f"{api_rss / 2**20:.0f}")]
    result = {"images": n, "batch_size": args.batch_size, "precision": args.precision,
              "cpus": args.cpus, "rounds": args.rounds, "ray_start_s": ray_start,
              "fresh_cli_run_s": cold, "api_images_per_s": api_rate,
              "api_peak_rss_mib": api_rss / 2**20}
    for workers in (1, 2):
        rate = n / statistics.median(runs[workers])
        peak = max(rss[workers]) if rss[workers] else 0
        rows.append((f"ray, {workers} actor{'s' if workers > 1 else ''}", rate,
                     f"{peak / 2**20:.0f}"))
        result[f"ray{workers}"] = {"images_per_s": rate, "peak_rss_mib_per_actor": peak / 2**20}
    print(f"{n} images, batch {args.batch_size}, precision {args.precision}, local Ray with "
          f"{args.cpus} CPUs; medians of {args.rounds} rounds. Ray start-up {ray_start:.1f} s "
          f"(not counted); a fresh `reciprocam explain-dataset` of one image: {cold:.1f} s\n")
    print("| run | images/s | vs api | peak RSS MiB per process |")
    print("|---|---|---|---|")
    for name, rate, peak in rows:
        print(f"| {name} | {rate:.1f} | {rate / api_rate:.2f} | {peak} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
