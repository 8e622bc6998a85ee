#!/usr/bin/env python3
"""Quantization-aware fine-tuning of HCNN's MNIST network for hecnn's BFV (integer) mode.

hecnn quantizes a trained model per output neuron (`hecnn_nn::quant`, docs/bfv.md): inputs
become round(x·s_in) with s_in = 2^input_bits − 1; a linear layer's output j has the scale
s_j = qmax / max_i |w_ji / s_i| (qmax = 2^(weight_bits−1) − 1, s_i the input neuron's scale)
and integer weights round(w_ji / s_i · s_j); a square squares the scale. This script starts
from the trained float model (its ONNX file, batch norm already folded), replaces every
weight in the forward pass by exactly that grid (straight-through gradients), fine-tunes on
the training split, and exports the on-grid weights. hecnn's quantizer then finds the same
integer weights (re-quantizing an on-grid weight is the identity; biases, at scales up to
2^43 in float32, may land a few units away), so the integer network hecnn runs in BFV is the
one trained here, up to float32 rounding in PyTorch's forward pass.

Usage (after scripts/fetch-data.sh mnist):
  python training/qat_mnist.py --weight-bits 4 --out models/hcnn-mnist-w4.onnx
Runs on CPU in a few minutes. Deterministic given --seed. The test split is only evaluated
after the last epoch (no selection on it).
"""
import argparse
import random
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from train import evaluate, load_mnist, shift


def ste_round(x):
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def quantize_layer(w, b, s_in, qmax):
    """hecnn's per-output-neuron grid for weights `w` [out, ...] reading inputs at scales
    `s_in` (broadcastable to w): the on-grid real weights and bias, and the output scales."""
    v = w / s_in
    top = v.abs().flatten(1).amax(dim=1).clamp_min(1e-12).detach()
    s_out = qmax / top
    shape = (-1,) + (1,) * (w.dim() - 1)
    w_q = ste_round(v * s_out.view(shape)) * s_in / s_out.view(shape)
    b_q = ste_round(b * s_out) / s_out
    return w_q, b_q, s_out


class QuantHcnnMnist(nn.Module):
    """Conv 5×5/2 (5) → x² → Conv 5×5/2 (50) → x² → Dense 10 with hecnn's integer grid."""

    def __init__(self, params, input_bits, weight_bits):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2, self.w3, self.b3 = (
            nn.Parameter(torch.tensor(p)) for p in params)
        self.s_in = float(2 ** input_bits - 1)
        self.qmax = float(2 ** (weight_bits - 1) - 1)

    def quantized(self):
        """The on-grid weights of the three layers."""
        q = self.qmax
        w1, b1, s1 = quantize_layer(self.w1, self.b1, torch.tensor(self.s_in), q)
        sq1 = (s1 ** 2).view(1, -1, 1, 1)
        w2, b2, s2 = quantize_layer(self.w2, self.b2, sq1, q)
        sq2 = (s2 ** 2).repeat_interleave(16).view(1, -1)
        w3, b3, _ = quantize_layer(self.w3, self.b3, sq2, q)
        return w1, b1, w2, b2, w3, b3

    def forward(self, x):
        x = ste_round(x.clamp(0, 1) * self.s_in) / self.s_in
        w1, b1, w2, b2, w3, b3 = self.quantized()
        x = F.conv2d(x, w1, b1, stride=2) ** 2
        x = F.conv2d(x, w2, b2, stride=2) ** 2
        return F.linear(x.flatten(1), w3, b3)


class Exported(nn.Module):
    """The plain network with fixed (on-grid) weights, for the ONNX export."""

    def __init__(self, w1, b1, w2, b2, w3, b3):
        super().__init__()
        self.c1 = nn.Conv2d(1, 5, 5, stride=2)
        self.c2 = nn.Conv2d(5, 50, 5, stride=2)
        self.fc = nn.Linear(800, 10)
        with torch.no_grad():
            for layer, w, b in ((self.c1, w1, b1), (self.c2, w2, b2), (self.fc, w3, b3)):
                layer.weight.copy_(w)
                layer.bias.copy_(b)

    def forward(self, x):
        x = self.c1(x)
        x = x * x
        x = self.c2(x)
        x = x * x
        return self.fc(x.flatten(1))


def load_onnx_params(path):
    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    # The exporter names the folded convolutions' and the Gemm's tensors; take them in
    # graph order by shape.
    by_shape = {}
    for name, a in init.items():
        by_shape.setdefault(a.shape, []).append(a.astype(np.float32))
    pick = lambda shape: by_shape[shape][0]
    return [pick((5, 1, 5, 5)), pick((5,)), pick((50, 5, 5, 5)), pick((50,)), pick((10, 800)), pick((10,))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/hcnn-mnist.onnx", help="the trained float model")
    ap.add_argument("--input-bits", type=int, default=4)
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    (xtr, ytr), (xte, yte) = load_mnist()
    model = QuantHcnnMnist(load_onnx_params(args.model), args.input_bits, args.weight_bits)
    print(f"before fine-tuning: quantized test accuracy {evaluate(model, xte, yte, 'cpu'):.4f}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    steps = args.epochs * ((len(xtr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        t0, total = time.time(), 0.0
        perm = np.random.permutation(len(xtr))
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch]
            xb = shift(torch.from_numpy(xtr[idx]), 2)
            loss = F.cross_entropy(model(xb), torch.from_numpy(ytr[idx]).long())
            opt.zero_grad(); loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step(); sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:3d}  loss {total / len(xtr):.4f}  ({time.time() - t0:.1f} s)", flush=True)
    model.eval()
    acc = evaluate(model, xte, yte, "cpu")
    with torch.no_grad():
        exported = Exported(*[t.detach() for t in model.quantized()])
    exported.eval()
    torch.onnx.export(exported, torch.zeros(1, 1, 28, 28), args.out, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    print(f"final quantized test accuracy {acc:.4f} ({int(round(acc * len(xte)))}/{len(xte)}) "
          f"at {args.input_bits}-bit inputs and {args.weight_bits}-bit weights; wrote {args.out}")


if __name__ == "__main__":
    main()
