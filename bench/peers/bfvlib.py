"""Shared helpers of the BFV peer scripts (seal_bfv.py, openfhe_bfv.py); standard
library only. Record schema (one JSON object per line, also printed by hecnn's
`bfv_ops --json` example and by fhers-bfv):

  {"library": str, "op": "encrypt"|"decrypt"|"mul_plain"|"mul_relin"|"rotate",
   "variant": str, "log_n": int, "t": int, "log_q": float, "q_limbs": int,
   "p_limbs": int, "threads": int, "threads_applied": bool,
   "ms": float (median), "min_ms": float, "reps": int}

Parameters follow hecnn's BFV presets (crates/bfv/src/params.rs):
  N13_QP216_T65537: N = 2^13, Q = 3 x 54 bits, P = 1 x 54 bits, t = 65537
  N14_QP432_T65537: N = 2^14, Q = 6 x 54 bits, P = 2 x 54 bits, t = 65537
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Iterable

T = 65537
# log_n -> (Q prime bit sizes, P prime bit sizes) of hecnn's presets
PRESETS = {13: ([54] * 3, [54] * 1), 14: ([54] * 6, [54] * 2)}
OPS = ("encrypt", "decrypt", "mul_plain", "mul_relin", "rotate")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--log-n", type=int, default=13, choices=sorted(PRESETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per op")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.reps < 1:
        sys.exit("--reps must be >= 1")
    if args.threads < 1:
        sys.exit("--threads must be >= 1")


def note(msg: str) -> None:
    print(f"[note] {msg}", file=sys.stderr, flush=True)


def time_ms(fn: Callable[[], object], reps: int) -> list[float]:
    """reps timed calls of fn() after one untimed warm-up, in ms."""
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def emit(base: dict, op: str, variant: str, samples: Iterable[float]) -> None:
    s = list(samples)
    rec = dict(base)
    rec.update(
        op=op,
        variant=variant,
        ms=round(statistics.median(s), 4),
        min_ms=round(min(s), 4),
        reps=len(s),
    )
    # keep "library" and "op" first for readability
    rec = {"library": rec.pop("library"), "op": rec.pop("op"), **rec}
    print(json.dumps(rec), flush=True)


def check_slots(what: str, got, want) -> None:
    got = list(got)[: len(want)]
    bad = sum(1 for g, w in zip(got, want) if int(g) % T != int(w) % T)
    assert bad == 0, f"{what}: {bad} of {len(want)} slots wrong"
