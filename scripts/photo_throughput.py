#!/usr/bin/env python
"""Photo throughput: the CLI, the server and the dataset runner on a folder of 12 MP JPEGs,
``--decode exact`` against ``--decode reduced``, and the peer, side by side in one run.

Usage (from the repository root)::

    .venv/bin/python scripts/photo_throughput.py [--images 12] [--rounds 3] [--artifact DIR]

The folder holds ``--images`` JPEGs (quality 92) of the bundled photos enlarged to ``--size``
(default 4032x3024) with sensor-like grain, as ``scripts/preprocess_speed.py`` makes them.
Without ``--artifact`` the pretrained Lite0 artifact is exported to the work folder. Parts
(``--parts``, default all), each alternating exact and reduced within every round:

- ``breakdown``: one photo, per stage (medians of ``--repeat``): read, preprocess,
  ``explain_tensor``, the overlay at the photo's size, PNG encode + write; with the sum, what
  one image costs ``reciprocam explain``;
- ``cli``: ``reciprocam explain FOLDER --decode MODE`` run in-process
  (``reciprocam_ir.cli.main``, compiled-graph cache on): images/s of the whole command, and of
  the images past the first (the command over N images minus over 1: start-up excluded);
- ``api``: ``ReciproCAM.explain(path)`` per photo, no files written, and the peer: what a
  user would write (PIL open + torchvision ``Resize``/``ToTensor``/``Normalize`` of the
  manifest's recipe, the same ``explain_tensor``), images/s;
- ``serve``: ``:explain`` requests/s with one 12 MP upload per request against two
  ``reciprocam serve`` processes (``--decode exact`` and ``reduced``), one client;
- ``dataset``: ``reciprocam explain-dataset FOLDER --decode MODE`` in-process on one local Ray
  (started once, not counted), images/s of the whole run and past the first image.

On a shared machine read the ratios (reduced / exact, each against the peer), not the
absolute rates. The table goes to stdout; ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "scripts"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from preprocess_speed import enlarged, grainy, jpeg, median_ms  # noqa: E402

from reciprocam_ir import ReciproCAM  # noqa: E402
from sample_images import sample_images  # noqa: E402

MODES = ("exact", "reduced")
PARTS = ("breakdown", "cli", "api", "serve", "dataset")


def log(message: str) -> None:
    print(f"[photo_throughput] {message}", file=sys.stderr, flush=True)


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` grainy JPEGs of the bundled photos (cycled) at width x height."""
    photos = list(sample_images().items())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name, rgb = photos[i % len(photos)]
        path = folder / f"{i:03d}_{name}.jpg"
        path.write_bytes(jpeg(grainy(enlarged(rgb, width, height), seed=i)))
        paths.append(path)
    return paths


def lite0_artifact(work: Path) -> Path:
    from export.torch.pipeline import export_artifact

    out = work / "lite0"
    if not (out / "manifest.json").is_file():
        log("exporting the pretrained Lite0 artifact")
        export_artifact("export.pretrained:efficientnet_lite0", out=out, fmt="both")
    return out


def alternate(rounds: int, ways: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each way once per round, the order reversed every other round; its results per way."""
    results: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(ways)[::-1]
        for name in order:
            results[name].append(ways[name]())
    return results


def breakdown(artifact: Path, photo: Path, args: argparse.Namespace) -> dict:
    """Milliseconds per stage of one photo, exact and reduced."""
    from reciprocam_ir.visualise import MIN_OVERLAY_SIDE, write_png

    out = Path(tempfile.mkdtemp(dir=args.work, prefix="stages-"))
    stages: dict[str, Callable[[], object]] = {}
    for mode in MODES:
        cam = ReciproCAM(artifact, decode=mode)
        rgb = cam.load(photo)[0]
        x = cam.preprocessing(rgb)
        exp = cam.explain(photo)
        picture = exp.overlay(0, 0, 0.5, MIN_OVERLAY_SIDE)
        stages.update({
            f"{mode} read": lambda cam=cam: cam.load(photo),
            f"{mode} preprocess": lambda cam=cam, rgb=rgb: cam.preprocessing(rgb),
            f"{mode} explain_tensor": lambda cam=cam, x=x: cam.explain_tensor(x),
            f"{mode} overlay": lambda exp=exp: exp.overlay(0, 0, 0.5, MIN_OVERLAY_SIDE),
            f"{mode} png write": lambda picture=picture, mode=mode: write_png(
                out / f"{mode}.png", picture),
        })
        stages[f"{mode} explain(path)"] = lambda cam=cam: cam.explain(photo)
    ms = alternate(args.rounds, {k: lambda f=f: median_ms(f, args.repeat) for k, f in
                                 stages.items()})
    result = {k: statistics.median(v) for k, v in ms.items()}
    for mode in MODES:
        result[f"{mode} per image"] = sum(result[f"{mode} {s}"] for s in (
            "read", "preprocess", "explain_tensor", "overlay", "png write"))
    result["overlay pixels"] = int(np.prod(picture.shape[:2]))
    return result


def quiet_main(argv: list[str]) -> float:
    """Seconds ``reciprocam_ir.cli.main(argv)`` took; its stderr kept unless it fails."""
    from reciprocam_ir import cli

    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"photo_throughput: {' '.join(argv[:1])} failed ({code}):\n"
                 f"{err.getvalue()[-2000:]}")
    return seconds


def rates(n: int, whole: list[float], one: list[float]) -> dict:
    """images/s of the whole command and past its first image, from medians."""
    t_all, t_one = statistics.median(whole), statistics.median(one)
    return {"images_per_s": n / t_all, "steady_images_per_s":
            (n - 1) / (t_all - t_one) if n > 1 and t_all > t_one else float("nan"),
            "seconds": t_all, "one_image_seconds": t_one}


def cli_rates(artifact: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    cache = str(args.work / "cache")
    out = str(args.work / "cli-out")

    def run(mode: str, images: list[Path]) -> Callable[[], float]:
        return lambda: quiet_main(["explain", str(artifact), *map(str, images), "--out", out,
                                   "--decode", mode, "--overwrite", "--cache-dir", cache])

    run("exact", paths[:1])()  # fills the compiled-graph cache
    ways = {}
    for mode in MODES:
        ways[f"{mode} all"] = run(mode, paths)
        ways[f"{mode} one"] = run(mode, paths[:1])
    seconds = alternate(args.rounds, ways)
    return {mode: rates(len(paths), seconds[f"{mode} all"], seconds[f"{mode} one"])
            for mode in MODES}


def peer_transform(cam: ReciproCAM):
    from torchvision import transforms as T

    p = cam.preprocessing
    mode = T.InterpolationMode(p.interpolation)
    if p.resize == "shorter_side_crop":
        resize = [T.Resize(p.resize_size or min(p.size), interpolation=mode, antialias=True),
                  T.CenterCrop(p.size)]
    else:
        resize = [T.Resize(p.size, interpolation=mode, antialias=True)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(p.mean, p.std)])


def api_rates(artifact: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    cams = {mode: ReciproCAM(artifact, decode=mode) for mode in MODES}
    transform = peer_transform(cams["exact"])

    def peer(path: Path) -> object:
        with Image.open(path) as image:
            x = transform(image.convert("RGB"))
        return cams["exact"].explain_tensor(x.numpy()[None])

    def over_folder(fn: Callable[[Path], object]) -> Callable[[], float]:
        def timed() -> float:
            start = time.perf_counter()
            for path in paths:
                fn(path)
            return time.perf_counter() - start
        return timed

    ways = {f"api {mode}": over_folder(cam.explain) for mode, cam in cams.items()}
    ways["peer"] = over_folder(peer)
    for way in ways.values():
        way()  # warm-up
    seconds = alternate(args.rounds, ways)
    return {k: {"images_per_s": len(paths) / statistics.median(v)} for k, v in seconds.items()}


def serve_rates(artifact: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    from load_test import ServerProcess, http_client, run_clients

    from reciprocam_ir import Artifact

    name = Artifact.load(artifact).name
    body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(
        paths[0].read_bytes()).decode()}}]}).encode()
    servers = {}
    try:
        for mode in MODES:
            folder = Path(tempfile.mkdtemp(dir=args.work, prefix=f"serve-{mode}-"))
            servers[mode] = ServerProcess([str(artifact)], ["--decode", mode], folder)
        for server in servers.values():
            server.wait_ready([name], timeout=300)
        makers = {mode: http_client(server.port, f"/v1/models/{name}:explain", body,
                                    "explanations") for mode, server in servers.items()}
        for make in makers.values():
            call = make()
            for _ in range(2):
                call()  # warm-up
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}

        def cell(mode: str) -> Callable[[], float]:
            def one() -> float:
                run = run_clients(1, args.requests, 600.0, {mode: makers[mode]})[mode]
                if run["failed"]:
                    sys.exit(f"photo_throughput: :explain failed: {run['failed'][:2]}")
                runs[mode].append(run)
                return len(run["ms"]) / run["wall"]
            return one

        per_round = alternate(args.rounds, {mode: cell(mode) for mode in MODES})
    finally:
        for server in servers.values():
            server.stop()
    return {mode: {"requests_per_s": statistics.median(per_round[mode]),
                   "p50_ms": float(np.median(np.concatenate([r["ms"] for r in runs[mode]])))}
            for mode in MODES}


def dataset_rates(artifact: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    folder = str(paths[0].parent)

    def run(mode: str, limit: int) -> Callable[[], float]:
        def once() -> float:
            out = tempfile.mkdtemp(dir=args.work, prefix=f"dataset-{mode}-")
            return quiet_main(["explain-dataset", str(artifact), folder, "--out", out,
                               "--decode", mode, "--limit", str(limit)])
        return once

    try:
        for mode in MODES:
            run(mode, 1)()  # starts Ray's worker processes
        ways = {}
        for mode in MODES:
            ways[f"{mode} all"] = run(mode, len(paths))
            ways[f"{mode} one"] = run(mode, 1)
        seconds = alternate(args.rounds, ways)
    finally:
        ray.shutdown()
    return {mode: rates(len(paths), seconds[f"{mode} all"], seconds[f"{mode} one"])
            for mode in MODES}


def print_tables(result: dict) -> None:
    print(f"{result['images']} JPEGs of {result['size']} ({result['mb_per_image']:.1f} MB each), "
          f"{result['rounds']} rounds; load average {result['load'][0]:.1f} before, "
          f"{result['load'][1]:.1f} after, {result['cpus']} CPUs\n")
    if "breakdown" in result:
        b = result["breakdown"]
        print(f"per stage, one photo, ms (overlay: {b['overlay pixels'] / 1e6:.1f} MP)\n")
        stages = ("read", "preprocess", "explain_tensor", "overlay", "png write", "per image",
                  "explain(path)")
        print("| stage | exact ms | reduced ms |")
        print("|---|---|---|")
        for s in stages:
            print(f"| {s} | {b[f'exact {s}']:.1f} | {b[f'reduced {s}']:.1f} |")
        print()
    rows = []
    if "cli" in result:
        for mode in MODES:
            c = result["cli"][mode]
            rows.append((f"`reciprocam explain --decode {mode}`", c["images_per_s"],
                         c["steady_images_per_s"], "images/s"))
    if "api" in result:
        for key in ("api exact", "api reduced", "peer"):
            label = {"peer": "peer: PIL + torchvision transforms + explain_tensor"}.get(
                key, f"`ReciproCAM(decode=\"{key[4:]}\").explain(path)`")
            rows.append((label, result["api"][key]["images_per_s"], None, "images/s"))
    if "serve" in result:
        for mode in MODES:
            rows.append((f"`:explain`, `serve --decode {mode}`",
                         result["serve"][mode]["requests_per_s"], None, "requests/s"))
    if "dataset" in result:
        for mode in MODES:
            d = result["dataset"][mode]
            rows.append((f"`explain-dataset --decode {mode}`", d["images_per_s"],
                         d["steady_images_per_s"], "images/s"))
    peer = result.get("api", {}).get("peer", {}).get("images_per_s")
    print("| run | rate | past the first image | unit | reduced / exact | vs peer |")
    print("|---|---|---|---|---|---|")
    for i, (label, rate, steady, unit) in enumerate(rows):
        paired = rows[i - 1] if "reduced" in label else None
        ratio = f"{rate / paired[1]:.2f}" if paired else ""
        vs = f"{rate / peer:.2f}" if peer and unit == "images/s" else ""
        past = "" if steady is None else f"{steady:.2f}"
        print(f"| {label} | {rate:.2f} | {past} | {unit} | {ratio} | {vs} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=None,
                    help="artifact folder (default: the pretrained Lite0, exported)")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--size", default="4032x3024", metavar="WxH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5, help="per-stage calls per round")
    ap.add_argument("--requests", type=int, default=6, help=":explain requests per round")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: temporary)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        args.work = args.work or Path(tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        artifact = args.artifact or lite0_artifact(args.work)
        paths = make_photos(Path(tempfile.mkdtemp(dir=args.work, prefix="photos-")),
                            args.images, width, height)
        result: dict = {"images": len(paths), "size": args.size, "rounds": args.rounds,
                        "mb_per_image": statistics.mean(p.stat().st_size for p in paths) / 1e6,
                        "cpus": os.cpu_count(), "artifact": str(artifact)}
        load = os.getloadavg()[0]
        parts = {"breakdown": lambda: breakdown(artifact, paths[0], args),
                 "cli": lambda: cli_rates(artifact, paths, args),
                 "api": lambda: api_rates(artifact, paths, args),
                 "serve": lambda: serve_rates(artifact, paths, args),
                 "dataset": lambda: dataset_rates(artifact, paths, args)}
        for part in args.parts:
            log(part)
            result[part] = parts[part]()
            result["load"] = (load, os.getloadavg()[0])
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))
    print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
