#!/usr/bin/env python3
"""Times DESILO's CKKS bootstrapping (desilofhe, CPU build from PyPI).

Run with the desilo venv made by setup.sh, e.g.
  ~/.cache/hecnn/peers/desilo/bin/python bench/peers/desilo_bootstrap.py \
      --threads 1 --reps 1

desilofhe (2.0.0) is a closed-source binary wheel. Its bootstrapping engine,
Engine(bootstrap=True, mode="cpu", thread_count=--threads), has fixed
parameters: N = 2^16 (32768 complex slots, no sparse packing), user levels
0..17; nothing about the moduli is exported. The calls are the documented ones:

  keys   create_secret_key(), create_relinearization_key(sk),
         create_conjugation_key(sk), create_bootstrap_key(sk, size=--key-size)
         (keygen_s times these three evaluation keys; "medium" is desilofhe's
         default; 2.0 takes size="small"|"medium" where older releases had
         stage_count)
  input  encrypt(values, sk, level=--level)   (default level 0, as
         desilofhe's bootstrap examples and hecnn's benchmark)
  timed  bootstrap(ct, relinearization_key, conjugation_key, bootstrap_key)
         -> new ciphertext; levels_left is its .level

Precision: --input complex (default; the engine's slots are complex, as
hecnn's benchmark: real and imaginary parts uniform in [-1, 1], |err| is the
complex modulus) or real (uniform in [-1, 1]); decrypt() returns float64 /
complex128, so errors are read directly.

log_qp is not obtainable (reported as null); q_limbs_top (RNS limbs of a
ciphertext at the top user level) and sk_limbs (limbs of the secret key, i.e.
the largest modulus the keys use) are derived from the objects' nbytes.

Threads: thread_count is desilofhe's own CPU thread-pool size; the OS thread
count of the process is reported on stderr as a check.

Memory: the "medium" bootstrap key alone is 14.2 GiB; the process peaks at
about 17 GiB resident (VmHWM measured). There is no smaller ring to try the
script on; "small" keys are smaller (not measured here).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peerlib  # noqa: E402


def os_threads() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument(
        "--log-n", type=int, default=16,
        help="log2 of N; desilofhe's bootstrapping engine is fixed at 16 (checked)",
    )
    p.add_argument(
        "--slots", type=int, default=None,
        help="log2 of the slots; only the engine's full 15 is supported (checked)",
    )
    p.add_argument("--key-size", choices=("small", "medium"), default="medium",
                   help="create_bootstrap_key size (default medium, desilofhe's default)")
    p.add_argument("--input", choices=("complex", "real"), default="complex",
                   help="message type (default complex, as hecnn's benchmark)")
    p.add_argument("--level", type=int, default=0, help="input level (default 0)")
    p.add_argument("--threads", type=int, default=1, help="Engine(thread_count=...) (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed bootstraps after one warm-up (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random messages")
    args = p.parse_args()
    if args.reps < 1 or args.threads < 1:
        sys.exit("--reps and --threads must be >= 1")
    return args


def main() -> None:
    args = parse_args()

    import desilofhe
    import numpy as np

    version = importlib.metadata.version("desilofhe")
    library = f"desilo(desilofhe {version})"

    engine = desilofhe.Engine(bootstrap=True, mode="cpu", thread_count=args.threads)
    slots = engine.slot_count
    log_slots = slots.bit_length() - 1
    log_n = log_slots + 1
    if args.log_n != log_n:
        sys.exit(f"desilofhe's bootstrapping engine has log N = {log_n}; --log-n {args.log_n} unsupported")
    if args.slots is not None and args.slots != log_slots:
        sys.exit(f"desilofhe bootstraps all {slots} slots (log {log_slots}); --slots {args.slots} unsupported")
    if not 0 <= args.level <= engine.max_level:
        sys.exit(f"--level must be in [0, {engine.max_level}]")

    sk = engine.create_secret_key()
    t0 = time.perf_counter()
    relin = engine.create_relinearization_key(sk)
    conj = engine.create_conjugation_key(sk)
    btp_key = engine.create_bootstrap_key(sk, size=args.key_size)
    keygen_s = time.perf_counter() - t0

    limb_bytes = 8 * (1 << log_n)
    top = engine.encrypt(np.zeros(1), sk, level=engine.max_level)
    q_limbs_top = top.nbytes // (2 * limb_bytes)
    sk_limbs = sk.nbytes // limb_bytes
    del top
    peerlib.note(
        f"engine: N = 2^{log_n}, {slots} slots, max level {engine.max_level}, "
        f"{q_limbs_top} limbs at the top level, secret key over {sk_limbs} limbs; keys "
        f"(relin + conj + bootstrap '{args.key_size}', {btp_key.nbytes / 2**30:.2f} GiB) in "
        f"{keygen_s:.1f} s; OS threads now {os_threads()}, peak RSS so far {peerlib.peak_rss_mib()} MiB"
    )

    rng = np.random.default_rng(args.seed)
    msg = rng.uniform(-1.0, 1.0, slots)
    if args.input == "complex":
        msg = msg + 1j * rng.uniform(-1.0, 1.0, slots)
    ct = engine.encrypt(msg, sk, level=args.level)
    assert ct.level == args.level, (ct.level, args.level)

    state = {}
    samples = peerlib.time_s(
        lambda: state.__setitem__("out", engine.bootstrap(ct, relin, conj, btp_key)),
        args.reps,
    )
    out = state["out"]
    got = np.asarray(engine.decrypt(out, sk))[:slots]
    errs = np.abs(got - msg)
    peerlib.note(f"bootstrap: max abs error {errs.max():.2e} over {slots} slots, "
                 f"OS threads {os_threads()}")
    assert np.isfinite(errs).all() and errs.max() < 1e-2, "bootstrapping result is wrong"

    rec = {
        "library": library,
        "log_n": log_n,
        "log_slots": log_slots,
        "slots": slots,
        "threads": args.threads,
        "log_qp": None,
        "q_limbs_top": int(q_limbs_top),
        "sk_limbs": int(sk_limbs),
        "key_size": args.key_size,
        "bootstrap_key_gib": round(btp_key.nbytes / 2**30, 3),
        "input": args.input,
        "input_level": args.level,
        "levels_left": out.level,
        "keygen_s": round(keygen_s, 3),
        **peerlib.precision_bits(errs.tolist()),
    }
    peerlib.emit_bootstrap(rec, samples)


if __name__ == "__main__":
    main()
