"""Single-image MNIST CNN latency through hecnn's Python package: the peer of
tenseal_cnn.py on the same network (an ONNX file) and the same images.

    python hecnn_python_cnn.py --model out/tutorial.onnx --images IDX --count 20 --threads 2

Prints one JSON line per image on stdout and a summary on stderr (the same fields as
tenseal_cnn.py, plus the compile time).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

import hecnn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, help="IDX image file (28x28)")
    ap.add_argument("--labels", required=True, help="IDX label file")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    x, _ = hecnn.load_idx(a.images, a.labels)
    x = x[: a.count]
    # --- user code: what a user writes ---
    t = time.perf_counter()
    compiled = hecnn.compile(a.model, mode="single", threads=a.threads)
    compile_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    client = hecnn.Client(compiled.client_spec())
    client.keygen()
    server = hecnn.Server(compiled, client.evaluation_keys())
    keygen_ms = (time.perf_counter() - t) * 1e3
    plain = compiled.predict(x, fhe="disable")
    rows = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        ct = client.encrypt(x[i:i + 1])
        t1 = time.perf_counter()
        out = server.run(ct)
        t2 = time.perf_counter()
        logits = client.decrypt(out)[0]
        t3 = time.perf_counter()
        # --- end of user code ---
        row = {
            "peer": "hecnn-python",
            "model": a.model,
            "threads": a.threads,
            "image": i,
            "encrypt_ms": (t1 - t0) * 1e3,
            "evaluate_ms": (t2 - t1) * 1e3,
            "decrypt_ms": (t3 - t2) * 1e3,
            "end_to_end_ms": (t3 - t0) * 1e3,
            "same_prediction": int(np.argmax(logits) == np.argmax(plain[i])),
            "max_logit_error": float(np.max(np.abs(logits - plain[i]))),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = lambda k: statistics.median(r[k] for r in rows)
    print(
        f"hecnn-python {a.threads} thread(s), {len(rows)} images: compile {compile_ms:.0f} ms, "
        f"keys and server setup {keygen_ms:.0f} ms; end to end median {med('end_to_end_ms'):.0f} ms "
        f"(encrypt {med('encrypt_ms'):.1f}, evaluate {med('evaluate_ms'):.0f}, decrypt "
        f"{med('decrypt_ms'):.1f}); same prediction as cleartext "
        f"{sum(r['same_prediction'] for r in rows)}/{len(rows)}, largest logit error "
        f"{max(r['max_logit_error'] for r in rows):.2e}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
