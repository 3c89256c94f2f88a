"""Train a small YOLOv8 detector on the synthetic set from scratch (CPU, minutes) and export it
with Ultralytics' own exporter to ONNX and OpenVINO IR.

Needs ``ultralytics`` (AGPL-3.0), which the project never installs: run it from a separate
environment, e.g. ``python3.11 -m venv /work/venv-yolo && /work/venv-yolo/bin/pip install
torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 onnx onnxruntime openvino onnxslim
scikit-image scikit-learn``. No weights or fonts are downloaded: the model is built from its
yaml, plots are off, and Ultralytics' settings live in a fresh folder with sync off.

    python scripts/train_detector.py OUT_DIR [--epochs 30] [--size 256] [--seed 0]

Writes ``OUT_DIR/data`` (the set), ``OUT_DIR/run`` (Ultralytics' run) and
``OUT_DIR/yolo_synth.onnx``, ``OUT_DIR/yolo_synth_openvino_model/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def offline(config_dir: Path) -> None:
    """Ultralytics' settings in ``config_dir``, no telemetry or hub, before it is imported."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-only", action="store_true",
                   help="export OUT_DIR/run/train/weights/best.pt as it is (a run stopped early)")
    p.add_argument("--model", default=str(Path(__file__).with_name("yolov8n-tiny.yaml")))
    a = p.parse_args()
    out = a.out.resolve()
    offline(out / "ultralytics_config")
    from detector_data import write_dataset

    data = out / "data" / "data.yaml"
    if not data.is_file():
        write_dataset(out / "data", a.train, a.val, a.size, a.seed)

    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    if not a.export_only:
        YOLO(a.model).train(
            data=str(data), epochs=a.epochs, imgsz=a.size, batch=16, device="cpu", workers=2,
            seed=a.seed, deterministic=True, plots=False, amp=False, project=str(out / "run"),
            name="train", exist_ok=True, pretrained=False, val=True, verbose=False,
            close_mosaic=5)
    best = out / "run" / "train" / "weights" / "best.pt"
    weights = out / "yolo_synth.pt"
    shutil.copy(best, weights)
    trained = YOLO(str(weights))
    onnx_file = trained.export(format="onnx", imgsz=a.size, simplify=True)
    ir_dir = trained.export(format="openvino", imgsz=a.size, half=False)
    print(onnx_file, ir_dir)


if __name__ == "__main__":
    main()
