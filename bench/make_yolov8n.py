#!/usr/bin/env python3
"""Write a yolov8n-sized Ultralytics checkpoint (3.2 M parameters, f16 EMA, model None — the
layout of a mid-training `last.pt`) for the export benchmark. Usage: python bench/make_yolov8n.py OUT.pt
MODEL=yolo11x.yaml builds another official yaml in the same layout (the large-model benchmark)."""
import copy
import os
import sys

import torch
import ultralytics
from ultralytics.nn.tasks import DetectionModel

torch.manual_seed(0)
cfg = os.environ.get("MODEL", "yolov8n.yaml")
model = DetectionModel(cfg, nc=80, verbose=False)
model.train()
with torch.no_grad():
    for _ in range(2):
        model(torch.rand(2, 3, 320, 320))
model.eval()
ck = {"date": "2026-11-30T00:00:00+00:00", "version": ultralytics.__version__, "epoch": 10, "model": None,
      "ema": copy.deepcopy(model).half(), "updates": 100, "optimizer": None,
      "train_args": {"task": "detect", "model": cfg, "imgsz": 640}}
torch.save(ck, sys.argv[1])
