"""Shared artifacts: each exported once per test session with the real exporter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(TESTS))


def import_blocker(package: str, message: str | None = None) -> str:
    """Python source that makes any later import of ``package`` fail (ImportError with
    ``message``), for subprocesses that must run without it."""
    message = message or f"{package} is blocked in this test"
    return f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package + "."!r}):
            raise ImportError({message!r})
sys.meta_path.insert(0, Block())
"""


TORCH_BLOCK = import_blocker("torch")
"""Python source that makes any later ``import torch`` fail, for torch-free subprocesses."""


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def export_refused(capsys, tmp_path: Path, *args: str) -> str:
    """Run ``reciprocam-export`` in-process expecting a refusal; return its one error line.

    Also checks that nothing was left behind: no artifact, no staging folder.
    """
    from export import cli

    out = tmp_path / "refused"
    code = cli.main([*args, "--out", str(out), "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(err) == 1 and err[0].startswith("reciprocam-export: error:"), err
    assert not out.exists() and not list(tmp_path.glob(".refused*"))
    return err[0]


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts: SIGINT handled as in a terminal.

    A shell starts background jobs with SIGINT ignored, children inherit that, and Python
    then never raises KeyboardInterrupt; a test suite started with ``&`` would see every
    Ctrl-C lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(cmd: list[str], ready: Callable[[subprocess.Popen], bool],
                   wait_s: float = 120, poll_s: float = 0.05, **popen) -> tuple[int, str]:
    """Run ``cmd`` and press Ctrl-C once (SIGINT) as soon as ``ready(process)`` holds, the
    process has ended or ``wait_s`` have passed; its exit code and standard error."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
                            **popen)
    deadline = time.monotonic() + wait_s
    while proc.poll() is None and time.monotonic() < deadline and not ready(proc):
        time.sleep(poll_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: tests/ importable for ``toy_models:...`` paths."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def export_once(tmp_path_factory):
    """Export (spec, kwargs) once per session and return the artifact folder."""
    from export.torch.pipeline import export_artifact

    cache: dict[tuple, Path] = {}

    def get(spec, **kwargs) -> Path:
        key = (spec if isinstance(spec, str) else id(spec), tuple(sorted(kwargs.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("artifacts") / "artifact"
            cache[key] = export_artifact(spec, out=out, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A seeded random resnet18 state dict, so tests can rebuild the same torch model."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def resnet18_dir(export_once, resnet18_weights) -> Path:
    return export_once("resnet18", weights=str(resnet18_weights), fmt="both")


@pytest.fixture(scope="session")
def lite0_dir(export_once) -> Path:
    return export_once("export.pretrained:efficientnet_lite0", fmt="both")


@pytest.fixture(scope="session")
def flatten_dir(export_once) -> Path:
    return export_once("toy_models:tiny_flatten", fmt="both")


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    """A small random RGB image of an odd aspect ratio."""
    return np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from sample_images import sample_images

    return sample_images()


@pytest.fixture(scope="session")
def photo_jpeg(photos, tmp_path_factory):
    """A 3000x2250 JPEG made from a bundled photo: it decodes at 1/2 scale for 224 inputs."""
    import cv2

    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    big = cv2.resize(photos["astronaut"], (3000, 2250), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


DETECTOR_ONNX = TESTS / "data" / "yolo_synth.onnx"
DETECTOR_IR = TESTS / "data" / "yolo_synth_openvino_model" / "yolo_synth.xml"
"""The synthetic YOLOv8 detector as Ultralytics exported it (tests/data/README.md)."""
DETECTOR_IMAGES = [TESTS / "data" / "yolo_val_0001.png", TESTS / "data" / "yolo_val_0006.png"]


@pytest.fixture(scope="session")
def detector_dir(tmp_path_factory) -> Path:
    """The detection artifact of the shipped ONNX detector (ONNX and IR graphs)."""
    from export.graphfile.detect_pipeline import export_detector

    return export_detector(DETECTOR_ONNX, out=tmp_path_factory.mktemp("det") / "yolo")


@pytest.fixture(scope="session")
def detector_ir_dir(tmp_path_factory) -> Path:
    """The detection artifact of the shipped OpenVINO IR detector."""
    from export.graphfile.detect_pipeline import export_detector

    return export_detector(DETECTOR_IR, out=tmp_path_factory.mktemp("det_ir") / "yolo")
