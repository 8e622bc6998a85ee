#!/usr/bin/env python3
"""Writes the ONNX importer's test fixtures: small HE-friendly networks exported by
PyTorch's exporters (TorchScript-based at opsets 11, 13 and 17, and the torch.export-based
"dynamo" exporter), each with one input and PyTorch's output for it.

Usage: python training/export_fixtures.py crates/nn/tests/fixtures
"""
import json
import os
import sys
import warnings

import torch
import torch.nn as nn

warnings.filterwarnings("ignore")
torch.manual_seed(7)


class Features(nn.Module):
    """conv + BN (with running statistics) + x·x + avg pool + view-flatten + linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = x * x
        x = nn.functional.avg_pool2d(x, 2, stride=1)
        return self.fc(x.view(x.shape[0], -1))


class Residual(nn.Module):
    """pow(2) activation, 0.5·x² + x + 0.25 written as separate ops, residual add,
    grouped convolution, adaptive average pooling, flatten + linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.conv1(x).pow(2)
        z = self.conv2(y)
        z = 0.5 * z * z + z + 0.25
        z = z + y
        z = nn.functional.adaptive_avg_pool2d(z, 1)
        return self.fc(torch.flatten(z, 1))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "crates/nn/tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for name, model, shape in [("features", Features(), (1, 2, 8, 8)), ("residual", Residual(), (1, 3, 6, 6))]:
        # Non-trivial batch-norm statistics.
        model.train()
        with torch.no_grad():
            for _ in range(5):
                model(torch.randn(16, *shape[1:]))
        model.eval()
        x = torch.rand(*shape)
        with torch.no_grad():
            y = model(x)
        variants = [(f"opset{o}", dict(opset_version=o, dynamo=False)) for o in (11, 13, 17)]
        variants.append(("dynamo", dict(opset_version=18, dynamo=True)))
        for tag, kw in variants:
            path = os.path.join(out_dir, f"torch-{name}-{tag}.onnx")
            try:
                torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"], **kw)
            except Exception as e:  # an exporter that cannot handle the model is skipped, loudly
                print(f"skip {path}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            cases.append({"file": os.path.basename(path), "input_shape": list(shape[1:]),
                          "input": x.flatten().tolist(), "output": y.flatten().tolist()})
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    with open(os.path.join(out_dir, "torch-fixtures.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f)


if __name__ == "__main__":
    main()
