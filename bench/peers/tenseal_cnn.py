"""Single-image MNIST CNN latency in TenSEAL (Microsoft SEAL, CKKS): the peer of
`hecnn eval --mode single`.

The network is TenSEAL's own encrypted-CNN tutorial model: Conv 7x7 stride 3 (4 filters,
im2col encoding) -> x^2 -> Dense 256->64 -> x^2 -> Dense 64->10, with the tutorial's
parameters (N = 8192, Q = 31 + 6x26 + 31 bits, scale 2^26). Its weights are drawn from a
seeded He-scaled normal distribution, not trained: the run measures latency (encryption,
evaluation, decryption per image) and checks every decrypted output against the same
network in NumPy (agreement of the predicted class and the largest logit error), which is
what the comparison needs; the weights do not change what CKKS computes or how long it
takes.

Usage (images in IDX format, e.g. from `hecnn data export --dataset mnist --split test`):

    python tenseal_cnn.py --images t10k-images-idx3-ubyte --count 30 --threads 2

Prints one JSON line per image on stdout and a summary on stderr.
"""

import argparse
import json
import statistics
import struct
import sys
import time

import numpy as np
import tenseal as ts

KERNEL, STRIDE, CHANNELS, HIDDEN, CLASSES = 7, 3, 4, 64, 10


def read_idx_images(path):
    with open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 0x00000803:
            raise SystemExit(f"{path}: not an IDX image file (magic {magic:#x})")
        data = np.frombuffer(f.read(count * rows * cols), dtype=np.uint8)
    if data.size != count * rows * cols or (rows, cols) != (28, 28):
        raise SystemExit(f"{path}: expected 28x28 images, {count} declared")
    return data.reshape(count, rows, cols).astype(np.float64) / 255.0


def weights(seed):
    rng = np.random.default_rng(seed)
    windows = ((28 - KERNEL) // STRIDE + 1) ** 2  # 64
    he = lambda fan_in, shape: rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    return {
        "conv_w": he(KERNEL * KERNEL, (CHANNELS, KERNEL, KERNEL)),
        "conv_b": rng.normal(0.0, 0.1, CHANNELS),
        "fc1_w": he(CHANNELS * windows, (CHANNELS * windows, HIDDEN)),
        "fc1_b": rng.normal(0.0, 0.1, HIDDEN),
        "fc2_w": he(HIDDEN, (HIDDEN, CLASSES)),
        "fc2_b": rng.normal(0.0, 0.1, CLASSES),
    }


def cleartext(image, w):
    side = (28 - KERNEL) // STRIDE + 1
    out = np.empty((CHANNELS, side * side))
    for c in range(CHANNELS):
        for y in range(side):
            for x in range(side):
                patch = image[y * STRIDE : y * STRIDE + KERNEL, x * STRIDE : x * STRIDE + KERNEL]
                out[c, y * side + x] = np.sum(patch * w["conv_w"][c]) + w["conv_b"][c]
    h = out.reshape(-1) ** 2
    h = (h @ w["fc1_w"] + w["fc1_b"]) ** 2
    return h @ w["fc2_w"] + w["fc2_b"]


def context(threads):
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31],
        n_threads=threads,
    )
    ctx.global_scale = 2**26
    ctx.generate_galois_keys()
    return ctx


def encrypted(ctx, image, w):
    t0 = time.perf_counter()
    enc, windows = ts.im2col_encoding(ctx, image.tolist(), KERNEL, KERNEL, STRIDE)
    t1 = time.perf_counter()
    channels = [
        enc.conv2d_im2col(k.tolist(), windows) + float(b)
        for k, b in zip(w["conv_w"], w["conv_b"])
    ]
    x = ts.CKKSVector.pack_vectors(channels)
    x.square_()
    x = x.mm(w["fc1_w"].tolist()) + w["fc1_b"].tolist()
    x.square_()
    x = x.mm(w["fc2_w"].tolist()) + w["fc2_b"].tolist()
    t2 = time.perf_counter()
    logits = np.array(x.decrypt())
    t3 = time.perf_counter()
    return logits, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="IDX image file (28x28)")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--weights", help="trained weights (.npz from tutorial_train.py) instead of seeded random ones")
    a = ap.parse_args()
    images = read_idx_images(a.images)[: a.count]
    w = dict(np.load(a.weights)) if a.weights else weights(a.seed)
    t = time.perf_counter()
    ctx = context(a.threads)
    keygen_ms = (time.perf_counter() - t) * 1e3
    rows = []
    for i, image in enumerate(images):
        logits, enc_ms, eval_ms, dec_ms = encrypted(ctx, image, w)
        want = cleartext(image, w)
        row = {
            "peer": "tenseal",
            "model": "tenseal-tutorial-cnn",
            "threads": a.threads,
            "image": i,
            "encrypt_ms": enc_ms,
            "evaluate_ms": eval_ms,
            "decrypt_ms": dec_ms,
            "end_to_end_ms": enc_ms + eval_ms + dec_ms,
            "same_prediction": int(np.argmax(logits) == np.argmax(want)),
            "max_logit_error": float(np.max(np.abs(logits - want))),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = lambda k: statistics.median(r[k] for r in rows)
    print(
        f"tenseal {a.threads} thread(s), {len(rows)} images: end to end median "
        f"{med('end_to_end_ms'):.0f} ms (encrypt {med('encrypt_ms'):.0f}, evaluate "
        f"{med('evaluate_ms'):.0f}, decrypt {med('decrypt_ms'):.1f}); same prediction as "
        f"cleartext {sum(r['same_prediction'] for r in rows)}/{len(rows)}, largest logit "
        f"error {max(r['max_logit_error'] for r in rows):.2e}; keys {keygen_ms:.0f} ms",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
