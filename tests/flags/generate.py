#!/usr/bin/env python3
"""Module flags read as Python's `if self.flag:` reads them (review 8 G15, G15b).

Written by torch.save from the committed fixtures (benign files of our own; loaded with
weights_only=False only because they hold nn.Modules we made), with one attribute changed:
- add-float.pt: yolo11-detect's first Bottleneck with `add = 1.0` (torch adds the shortcut: 1.0
  is true). Its export must compute what the unchanged checkpoint's forward computes.
- add-tensor.pt: the same flag as a 2-element tensor (`if tensor:` raises in torch): refused.
- mha-none.pt: rtdetr-l's first nn.MultiheadAttention with `_qkv_same_embed_dim = None` (torch
  then uses separate q/k/v weights, given here): refused as separate q/k/v weights.

Versions: the fixtures' (fixtures/requirements.txt: torch 2.15.0, ultralytics 8.4.190).
Run from the repository root: /path/to/venv/bin/python tests/flags/generate.py
"""

from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent


def first(root, name, cond=lambda m: True):
    return next(m for m in root.modules() if type(m).__name__ == name and cond(m))


def main():
    c = torch.load(ROOT / "fixtures/yolo11-detect.pt", weights_only=False)
    first(c["ema"], "Bottleneck", lambda m: m.add is True).add = 1.0
    torch.save(c, OUT / "add-float.pt")
    c = torch.load(ROOT / "fixtures/yolo11-detect.pt", weights_only=False)
    first(c["ema"], "Bottleneck", lambda m: m.add is True).add = torch.ones(2)
    torch.save(c, OUT / "add-tensor.pt")
    c = torch.load(ROOT / "fixtures/families/rtdetr-l-detect.pt", weights_only=False)
    root = c["ema"] if c.get("ema") is not None else c["model"]
    m = next(m for m in root.modules() if isinstance(m, nn.MultiheadAttention))
    e = m.embed_dim
    w = m.in_proj_weight.detach()
    m._qkv_same_embed_dim = None
    for i, k in enumerate(("q", "k", "v")):
        m._parameters[f"{k}_proj_weight"] = nn.Parameter(w[i * e : (i + 1) * e].clone() * 0.5, requires_grad=False)
    torch.save(c, OUT / "mha-none.pt")


if __name__ == "__main__":
    main()
