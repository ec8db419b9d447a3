"""A ~1 GB raw-weights ONNX and its checkpoint (raw + EMA) for `bench/graft.sh`.

    /tmp/graft-venv/bin/python bench/make_big_onnx.py OUT_DIR      # torch + onnx

A chain of 16 MatMuls on [1, 4096] (x @ W, W 4096×4096 f32, 64 MiB each: 1.07 GB of initializers)
with a bias Add after each. Every weight is stored transposed (the Linear weight [out, in] as
[in, out]) under a name that is no state-dict key (`layers.i.weight.T`, `onnx::MatMul_i`), so
each is found by value; the biases by name. The checkpoint is a timm-style
`state_dict` + `state_dict_ema` (2.15 GB).
"""

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

N, D = 16, 4096
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
raw, ema, inits, nodes = {}, {}, [], []
x = "input"
for i in range(N):
    w = torch.randn(D, D, generator=g) * 0.01  # Linear weight [out, in]
    b = torch.randn(D, generator=g) * 0.01
    raw[f"layers.{i}.weight"], raw[f"layers.{i}.bias"] = w, b
    ema[f"layers.{i}.weight"] = w + 0.001 * torch.randn(D, D, generator=g)
    ema[f"layers.{i}.bias"] = b + 0.001 * torch.randn(D, generator=g)
    name = f"layers.{i}.weight.T" if i % 2 else f"onnx::MatMul_{i}"
    inits.append(numpy_helper.from_array(w.t().contiguous().numpy(), name))
    inits.append(numpy_helper.from_array(b.numpy(), f"layers.{i}.bias"))
    nodes.append(helper.make_node("MatMul", [x, name], [f"mm{i}"]))
    nodes.append(helper.make_node("Add", [f"mm{i}", f"layers.{i}.bias"], [f"y{i}"]))
    x = f"y{i}"
graph = helper.make_graph(
    nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, D])],
    [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, D])], inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
with open(out / "big.onnx", "wb") as f:
    f.write(model.SerializeToString())
torch.save({"epoch": 1, "state_dict": raw, "state_dict_ema": ema}, out / "big.pth.tar")
print((out / "big.onnx").stat().st_size, (out / "big.pth.tar").stat().st_size)
