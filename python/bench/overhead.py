#!/usr/bin/env python3
"""The binding's overhead: MNIST single-image latency through Python against the CLI's.

Runs, back to back and alternated `--rounds` times, (a) `Server.run` on one encrypted image
at a time through the Python package and (b) `hecnn eval --mode single` on the same number
of images, both on the bundled MNIST sample with the bundled model and the same thread
count, and prints the median evaluation time per image of each round.

  python python/bench/overhead.py --images 20 --rounds 3 --threads 2
(from the repository root, with the package installed and target/release/hecnn built).
"""
import argparse
import re
import statistics
import subprocess
import time

import hecnn


def python_round(compiled, client, server_keys, x, threads):
    server = hecnn.Server(compiled, server_keys)
    times = []
    for i in range(len(x)):
        ct = client.encrypt(x[i:i + 1])
        t = time.perf_counter()
        out = server.run(ct)
        times.append(time.perf_counter() - t)
        client.decrypt(out)
    return statistics.median(times)


def cli_round(images, threads):
    log = subprocess.run(
        ["target/release/hecnn", "eval", "--mode", "single", "--data", "sample:mnist",
         "--count", str(images), "--threads", str(threads)],
        check=True, capture_output=True, text=True).stdout
    # "evaluate: median 43.8 ms" or similar: take the first latency figure on an
    # evaluate line.
    for line in log.splitlines():
        if "evaluat" in line and "ms" in line:
            m = re.search(r"median ([0-9.]+) ms", line) or re.search(r"([0-9.]+) ms", line)
            if m:
                return float(m.group(1)) / 1e3, line.strip()
    raise SystemExit(f"no evaluation time in the CLI's output:\n{log}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    x, _ = hecnn.load_idx("data/sample/mnist-test-images.idx3-ubyte",
                          "data/sample/mnist-test-labels.idx1-ubyte")
    x = x[:a.images]
    compiled = hecnn.compile("models/hcnn-mnist.onnx", mode="single", threads=a.threads)
    client = hecnn.Client(compiled.client_spec())
    client.keygen()
    keys = client.evaluation_keys()
    for r in range(a.rounds):
        py = python_round(compiled, client, keys, x, a.threads)
        cli, line = cli_round(a.images, a.threads)
        print(f"round {r + 1}: python Server.run median {py * 1e3:.1f} ms; CLI {cli * 1e3:.1f} ms "
              f"({line})", flush=True)


if __name__ == "__main__":
    main()
