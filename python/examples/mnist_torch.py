"""Train a small HE-friendly CNN on MNIST with PyTorch, compile it with hecnn and classify
encrypted test digits, comparing with the plaintext model.

The network is HCNN's (square activations instead of ReLU, no max pooling):
Conv 5x5/2 (5) -> BN -> x^2 -> Conv 5x5/2 (50) -> BN -> x^2 -> Dense 10.

Data: MNIST as ``scripts/fetch-data.sh`` caches it (``~/.cache/hecnn/data/mnist``), read by
hecnn's own loader (``hecnn.load_mnist``). Needs torch and onnx::

    bash scripts/fetch-data.sh mnist
    pip install ./python torch onnx
    python python/examples/mnist_torch.py --count 8 --mode single
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import hecnn


class Square(nn.Module):
    """x -> x^2: a polynomial activation CKKS evaluates with one multiplication."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def hcnn_mnist() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 5, 5, stride=2), nn.BatchNorm2d(5), Square(),
        nn.Conv2d(5, 50, 5, stride=2), nn.BatchNorm2d(50), Square(),
        nn.Flatten(), nn.Linear(50 * 4 * 4, 10),
    )


def train_one_epoch(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    perm = np.random.permutation(len(x))
    total = 0.0
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx].astype(np.int64))
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # squares amplify large gradients
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    print(f"one epoch on {len(x)} digits: loss {total / len(x):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8, help="encrypted test digits to classify")
    ap.add_argument("--mode", default="single", choices=["single", "batch", "auto"])
    ap.add_argument("--data", default=None, help="the npm mnist package directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    (xtr, ytr), (xte, yte) = hecnn.load_mnist(args.data)
    print(f"MNIST: {len(xtr)} training, {len(xte)} test digits")
    model = hcnn_mnist()
    t = time.time()
    train_one_epoch(model, xtr, ytr, batch=64, lr=5e-3)
    model.eval()
    with torch.no_grad():
        plain = model(torch.from_numpy(xte)).numpy()
    print(f"trained in {time.time() - t:.1f} s; plaintext test accuracy "
          f"{(plain.argmax(1) == yte).mean():.4f}")

    # Compile: the module is exported to ONNX inside; the inputset calibrates the plan's
    # value ranges without keys (CalibrationError if they do not fit the parameters).
    t = time.time()
    compiled = hecnn.compile(model, inputset=xte[:256], mode=args.mode, images=args.count)
    print(f"compiled in {time.time() - t:.2f} s")
    print(compiled.report())
    sizes = compiled.key_sizes
    print(f"evaluation keys: {sizes['evaluation_keys'] / 2**20:.1f} MiB as sent, "
          f"{sizes['key_count']} keys; server memory "
          f"{compiled.memory_estimate['bytes'] / 2**20:.0f} MiB")
    est = compiled.time_estimate()
    if est is not None:
        print(f"estimated time per image: {est['total_s'] * 1e3:.0f} ms")

    # The client / server split: the server only ever sees evaluation keys and ciphertexts.
    x = xte[:args.count]
    client = hecnn.Client(compiled.client_spec())
    t = time.time()
    client.keygen()
    server = hecnn.Server(compiled, client.evaluation_keys())
    print(f"keys and server ready in {time.time() - t:.2f} s")
    t = time.time()
    inputs = client.encrypt(x)
    outputs = server.run(inputs)
    logits = client.decrypt(outputs)
    secs = time.time() - t
    clear = compiled.predict(x, fhe="disable")
    agree = (logits.argmax(1) == clear.argmax(1)).mean()
    print(f"{args.count} encrypted digits in {secs:.2f} s ({secs / args.count * 1e3:.0f} ms each, "
          "encryption and decryption included)")
    print(f"labels:     {yte[:args.count].tolist()}")
    print(f"encrypted:  {logits.argmax(1).tolist()}")
    print(f"plaintext:  {clear.argmax(1).tolist()} (torch: {plain[:args.count].argmax(1).tolist()})")
    print(f"agreement with plaintext {agree:.0%}, largest logit error "
          f"{np.abs(logits - clear).max():.2e}")


if __name__ == "__main__":
    main()
