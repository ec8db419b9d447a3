#!/usr/bin/env python3
"""Checkpoints and the Python way for bench/scaling.sh (runs in the bench venv: torch, ultralytics,
onnxruntime).

  scaling_models.py make DIR NAME...   build each NAME (yolov8n … yolo26x, rtdetr-l) from the official
                                       Ultralytics yaml and save DIR/NAME.pt in the mid-training layout
                                       of bench/make_yolov8n.py (f16 EMA under 'ema', model None);
                                       files already there are kept (the cache)
  scaling_models.py check CK IMGSZ     the Python export-plus-check: `YOLO(CK).export(format="onnx")`,
                                       then the fused PyTorch model in export mode and ONNX Runtime on
                                       one random input, compared per output channel; prints the
                                       largest difference relative to each channel's magnitude
"""
import copy
import sys
from pathlib import Path

MADE_BY = "bench/scaling_models.py v1"  # stamped into train_args so a stale cache is rebuilt


def yaml_of(name):
    """yolov8n → yolov8n.yaml (Ultralytics reads the scale from the name), rtdetr-l → rtdetr-l.yaml."""
    return f"{name}.yaml"


def build(name):
    import torch
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel

    torch.manual_seed(0)
    cls = RTDETRDetectionModel if name.startswith("rtdetr") else DetectionModel
    model = cls(yaml_of(name), nc=80, verbose=False)
    # Two training-mode passes move the BatchNorm statistics off their initial values, as the
    # first steps of a run do (same as bench/make_yolov8n.py).
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 320, 320))
    model.eval()
    return model


def make(out_dir, names):
    import torch
    import ultralytics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / f"{name}.pt"
        if path.exists():
            continue
        model = build(name)
        ck = {"date": "2026-11-30T00:00:00+00:00", "version": ultralytics.__version__, "epoch": 10,
              "model": None, "ema": copy.deepcopy(model).half(), "updates": 100, "optimizer": None,
              "train_args": {"task": "detect", "model": yaml_of(name), "imgsz": 640, "name": MADE_BY}}
        tmp = path.with_suffix(".part")
        torch.save(ck, tmp)
        tmp.rename(path)  # a killed build leaves no truncated checkpoint in the cache
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.1f} M parameters, {path.stat().st_size / 1e6:.1f} MB", flush=True)


def check(ck, imgsz):
    """What a user does in Python: export, then compare PyTorch with ONNX Runtime on one input."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from ultralytics import RTDETR, YOLO
    from ultralytics.nn.modules import C2f, Detect, RTDETRDecoder

    wrapper = RTDETR(ck) if "rtdetr" in Path(ck).name else YOLO(ck)
    onnx_path = wrapper.export(format="onnx", imgsz=imgsz, simplify=False, verbose=False)
    # The same preparation as Ultralytics' exporter (engine/exporter.py): f32, fused, heads in
    # export mode with the default max_det, C2f on its split forward.
    model = copy.deepcopy(wrapper.model).float().eval().fuse(verbose=False)
    if hasattr(model, "end2end"):
        model.end2end = False  # the exporter's default (nms=None) for NMS-free heads
    for m in model.modules():
        if isinstance(m, (Detect, RTDETRDecoder)):
            m.dynamic, m.export, m.format, m.shape = False, True, "onnx", None
            available = (m.num_queries if isinstance(m, RTDETRDecoder)
                         else sum(int(imgsz / s) * int(imgsz / s) for s in model.stride.tolist()))
            m.max_det = min(300, available)
        elif isinstance(m, C2f):
            m.forward = m.forward_split
    torch.manual_seed(0)
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        y = model(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    o = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    y = y.numpy()
    if o.shape != y.shape:
        print(f"shape mismatch: onnx {o.shape} torch {y.shape}")
        return 1
    # Per channel (dimension 1 for YOLO heads, the last for RT-DETR's (B, queries, 4 + nc)).
    axis = 2 if "RTDETR" in type(model).__name__ else 1
    other = tuple(i for i in range(y.ndim) if i != axis)
    scale = np.abs(y).max(axis=other) + 1e-6
    rel = (np.abs(o - y).max(axis=other) / scale).max()
    print(f"max per-channel |onnx - torch| / max|channel| = {rel:.2e}")
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "make":
        make(argv[2], argv[3:])
        return 0
    if len(argv) == 4 and argv[1] == "check":
        return check(argv[2], int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
