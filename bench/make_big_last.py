#!/usr/bin/env python3
"""Write a large Ultralytics 8.4-style `last.pt` for the `strip` benchmark (not committed).

A YOLOv8 at width WIDTH (default 1.6: ~196 M parameters) saved as Ultralytics >= 8.1 saves a
training checkpoint: `model: None`, the EMA module in f16, an Adam optimizer state (moments in
f32, as `convert_optimizer_state_dict_to_fp16` keeps them), train_args, metadata.
Usage: [WIDTH=1.6] python bench/make_big_last.py OUT.pt
"""
import copy
import os
import sys
from datetime import datetime

import torch
import yaml
from ultralytics import __version__
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG_DICT, ROOT

out = sys.argv[1]
cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
cfg["scales"] = {"n": [1.0, float(os.environ.get("WIDTH", "1.6")), 1024]}
torch.manual_seed(0)
model = DetectionModel(cfg, verbose=False)
opt = torch.optim.Adam(model.parameters())
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()
ema = copy.deepcopy(model).half()
for p in ema.parameters():
    p.requires_grad_(False)
ckpt = {"epoch": 10, "best_fitness": 0.5, "model": None, "ema": ema, "updates": 1000,
        "optimizer": opt.state_dict(), "train_args": dict(DEFAULT_CFG_DICT),
        "date": datetime.now().isoformat(), "version": __version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com"}
torch.save(ckpt, out)
n = sum(p.numel() for p in model.parameters())
print(f"{out}: {n / 1e6:.1f} M parameters, {os.path.getsize(out) / 1e9:.2f} GB")
