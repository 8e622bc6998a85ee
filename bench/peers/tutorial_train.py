"""Trains TenSEAL's encrypted-CNN tutorial network (10 epochs, as the tutorial does) (PyTorch, CPU) on hecnn's
MNIST training split and writes it for both tools of the Python side-by-side run
(python_tools.sh): `tutorial.onnx` (hecnn compiles it) and `tutorial.npz` (the weights in
tenseal_cnn.py's layout).

Network: Conv 7x7 stride 3 (4 filters) -> x^2 -> Dense 256->64 -> x^2 -> Dense 64->10.

    python tutorial_train.py --out-dir bench/peers/out
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "training"))
from train import load_mnist  # noqa: E402  (the same split as hecnn's loader)


class Square(nn.Module):
    def forward(self, x):
        return x * x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    (xtr, ytr), (xte, yte) = load_mnist()
    net = nn.Sequential(
        nn.Conv2d(1, 4, 7, stride=3), Square(), nn.Flatten(),
        nn.Linear(256, 64), Square(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(a.epochs):
        perm = np.random.permutation(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(net(torch.from_numpy(xtr[idx])), torch.from_numpy(ytr[idx]).long())
            opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
    os.makedirs(a.out_dir, exist_ok=True)
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), os.path.join(a.out_dir, "tutorial.onnx"),
                      opset_version=13, input_names=["input"], output_names=["logits"], dynamo=False)
    conv, fc1, fc2 = net[0], net[3], net[5]
    np.savez(os.path.join(a.out_dir, "tutorial.npz"),
             conv_w=conv.weight.detach().numpy()[:, 0].astype(np.float64),
             conv_b=conv.bias.detach().numpy().astype(np.float64),
             fc1_w=fc1.weight.detach().numpy().T.astype(np.float64),
             fc1_b=fc1.bias.detach().numpy().astype(np.float64),
             fc2_w=fc2.weight.detach().numpy().T.astype(np.float64),
             fc2_b=fc2.bias.detach().numpy().astype(np.float64))
    print(f"tutorial network: test accuracy {acc:.4f} after {a.epochs} epochs; wrote {a.out_dir}/tutorial.onnx and .npz",
          file=sys.stderr)


if __name__ == "__main__":
    main()
