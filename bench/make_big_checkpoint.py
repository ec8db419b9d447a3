#!/usr/bin/env python3
"""Write a large Ultralytics-style checkpoint for benchmarks (not committed).

A YOLOv8 at width WIDTH (default 1.5: ~170 M elements), saved the way Ultralytics 8.0 / YOLOv5
did: raw `model` and `ema` modules in f32, plus an Adam optimizer state unless OPT=0.
Usage: [WIDTH=1.875] [OPT=0] python bench/make_big_checkpoint.py OUT.pt
"""
import os
import copy
import sys

import torch
import yaml
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import ROOT

out = sys.argv[1]
cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
cfg["scales"] = {"n": [1.0, float(os.environ.get("WIDTH", "1.5")), 1024]}
torch.manual_seed(0)
model = DetectionModel(cfg, verbose=False)
ema = copy.deepcopy(model)
opt = torch.optim.Adam(model.parameters())
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()
with torch.no_grad():  # the EMA differs from the raw weights, as after training
    for p in ema.parameters():
        p.mul_(0.999)
optimizer = opt.state_dict() if os.environ.get("OPT", "1") != "0" else None
ckpt = {"epoch": 10, "model": model, "ema": ema, "updates": 1000, "optimizer": optimizer,
        "train_args": {"imgsz": 640}, "version": "8.0.0"}
torch.save(ckpt, out)
n = sum(p.numel() for p in model.parameters())
print(f"{out}: {n / 1e6:.1f} M parameters")
