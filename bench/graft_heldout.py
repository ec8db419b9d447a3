"""Held-out architectures for `fuse-ema graft` (not in the repository's fixtures): each model is
trained 4 SGD steps with timm's ModelEmaV3 (decay 0.7), saved timm-style, and its raw weights
exported by both torch exporters; `.io.npz` holds PyTorch's EMA output. `bench/graft_heldout.sh`
grafts and compares.

    /tmp/graft-venv/bin/python bench/graft_heldout.py OUT_DIR tv_resnet18 test_nfnet ...
"""
import copy, json, sys, warnings
from pathlib import Path
import numpy as np, torch, torch.nn as nn
warnings.filterwarnings("ignore")
OUT = Path(sys.argv[1])
import timm, torchvision
from timm.utils import ModelEmaV3

def make(name):
    if name == "tv_resnet18": return torchvision.models.resnet18(num_classes=5), [1,3,64,64]
    if name == "tv_mobilenet_v3_small": return torchvision.models.mobilenet_v3_small(num_classes=5), [1,3,64,64]
    if name == "tv_shufflenet": return torchvision.models.shufflenet_v2_x0_5(num_classes=5), [1,3,64,64]
    m = timm.create_model(name, num_classes=5)
    return m, [1,3,64,64]

names = sys.argv[2:]
for name in names:
    torch.manual_seed(0)
    m, shape = make(name)
    ema = ModelEmaV3(m, decay=0.7)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    m.train()
    for _ in range(4):
        x = torch.rand(4, *shape[1:], generator=g)
        loss = (m(x) - torch.randn(4, 5, generator=g)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); ema.update(m)
    m.eval(); ema.module.eval()
    torch.save({"state_dict": m.state_dict(), "state_dict_ema": ema.module.state_dict()}, OUT / f"{name}.pt")
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = ema.module(x); raw = m(x)
    np.savez(OUT / f"{name}.io.npz", input=x.numpy(), output=want.numpy(), raw_output=raw.numpy())
    for v in ["ts", "dynamo"]:
        p = OUT / f"{name}.{v}.onnx"
        try:
            if v == "ts":
                torch.onnx.export(copy.deepcopy(m), (x,), str(p), dynamo=False, opset_version=17, input_names=["input"], output_names=["output"])
            else:
                torch.onnx.export(copy.deepcopy(m), (x,), str(p), dynamo=True, opset_version=18, external_data=False, input_names=["input"], output_names=["output"])
        except Exception as e:
            print("EXPORT FAIL", name, v, e)
    print("done", name, flush=True)
