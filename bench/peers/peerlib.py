"""Shared helpers for the peer-library CKKS benchmarks.

Used by tenseal_ops.py, orion_ops.py, orion_bootstrap.py and
desilo_bootstrap.py (each runs in its own venv; this file needs only the
standard library). Primitive output schema, one JSON object per line (the
bootstrapping schema is further down):

  {"library": str, "op": str, "log_n": int, "log_qp": int, "q_limbs": int,
   "p_limbs": int, "dnum": int, "threads": int, "ms": float (median),
   "min_ms": float, "reps": int}

log_qp is the sum of the *requested* prime bit sizes (Q chain plus P).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Callable, Iterable, Optional

ALL_OPS = ("mul_relin", "rescale", "rotate", "hoisted_rotate8", "encrypt", "decrypt")


def int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma list of ints: {text!r}") from exc
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def op_list(text: str) -> list[str]:
    ops = [x for x in text.replace(" ", "").split(",") if x]
    bad = [o for o in ops if o not in ALL_OPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown op(s) {bad}; known: {', '.join(ALL_OPS)}")
    return ops


def base_parser(description: str, log_p_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--log-n", type=int, default=14, help="log2 of the ring degree N")
    p.add_argument(
        "--log-q",
        type=int_list,
        default=int_list("58," + ",".join(["40"] * 8)),
        help="comma list of Q prime bit sizes, first = base prime, "
        "last = first one dropped by rescale (default 58,40x8: with "
        "--log-p 60 that is log QP = 438)",
    )
    p.add_argument("--log-p", type=int_list, default=[60], help=log_p_help)
    p.add_argument(
        "--log-scale",
        type=int,
        default=None,
        help="log2 of the encoding scale (default: bit size of the last Q prime)",
    )
    p.add_argument("--threads", type=int, default=1, help="thread count to use/record")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per op")
    p.add_argument(
        "--ops",
        type=op_list,
        default=list(ALL_OPS),
        help=f"comma list of ops to time (default all: {','.join(ALL_OPS)})",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the random messages")
    return p


def check_common_args(args: argparse.Namespace) -> None:
    if args.reps < 1:
        sys.exit("--reps must be >= 1")
    if args.threads < 1:
        sys.exit("--threads must be >= 1")
    if len(args.log_q) < 2:
        sys.exit("--log-q needs at least two primes (rescale drops one)")
    if args.log_scale is None:
        args.log_scale = args.log_q[-1]


def note(msg: str) -> None:
    print(f"[note] {msg}", file=sys.stderr, flush=True)


def time_op(
    fn: Callable[[], None],
    reps: int,
    prepare: Optional[Callable[[], None]] = None,
    cleanup: Optional[Callable[[], None]] = None,
) -> list[float]:
    """Times fn() reps times (after one untimed warm-up), in milliseconds.

    prepare() runs before and cleanup() after each call, outside the timed
    region (including around the warm-up)."""
    samples: list[float] = []
    for i in range(reps + 1):
        if prepare is not None:
            prepare()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if cleanup is not None:
            cleanup()
        if i > 0:  # the first call is the warm-up
            samples.append((t1 - t0) * 1e3)
    return samples


def emit(
    library: str,
    op: str,
    args: argparse.Namespace,
    samples: Iterable[float],
    dnum: int,
) -> None:
    s = list(samples)
    rec = {
        "library": library,
        "op": op,
        "log_n": args.log_n,
        "log_qp": sum(args.log_q) + sum(args.log_p),
        "q_limbs": len(args.log_q),
        "p_limbs": len(args.log_p),
        "dnum": dnum,
        "threads": args.threads,
        "ms": round(statistics.median(s), 4),
        "min_ms": round(min(s), 4),
        "reps": len(s),
    }
    print(json.dumps(rec), flush=True)


def max_abs_err(got, want) -> float:
    return max(abs(float(g) - float(w)) for g, w in zip(got, want))


def check_close(what: str, got, want, tol: float) -> None:
    """Asserts that two equally long sequences agree to tol (absolute)."""
    n = min(len(got), len(want))
    assert n > 0, f"{what}: nothing decoded"
    err = max_abs_err(got[:n], want[:n])
    assert math.isfinite(err) and err <= tol, f"{what}: max abs error {err:.3g} > {tol:g}"
    note(f"{what}: check ok (max abs error {err:.2e} over {n} slots)")


# --- bootstrapping benchmarks (orion_bootstrap.py, desilo_bootstrap.py) -----
#
# One JSON object per run:
#
#   {"library": str, "op": "bootstrap", "log_n": int, "log_slots": int,
#    "slots": int, "threads": int, "log_qp": int | null, "input": "real"|"complex",
#    "input_level": int, "levels_left": int, "keygen_s": float,
#    "bootstrap_s": float (median), "bootstrap_min_s": float, "reps": int,
#    "prec_mean_bits": float, "prec_median_bits": float, "prec_min_bits": float,
#    "prec_mean_log_bits": float, "peak_rss_mib": float, ...library extras}
#
# There is no "ms" field, so compare.py skips these records.


def reexec_with_env(script: str, env_updates: dict[str, str], mark: str) -> None:
    """Re-executes `script` (with this process's arguments) under env_updates.

    Returns at once if every variable already has its value. For settings a
    runtime reads only at start-up (Go's GOMAXPROCS when a c-shared library
    loads). `mark` guards against a re-exec loop."""
    import os

    if all(os.environ.get(k) == v for k, v in env_updates.items()):
        return
    if os.environ.get(mark):
        sys.exit(f"could not set {', '.join(env_updates)} by re-executing")
    env = dict(os.environ, **env_updates)
    env[mark] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(script), *sys.argv[1:]], env)


def peak_rss_mib() -> Optional[float]:
    """VmHWM (peak resident set size) of this process in MiB, from /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def precision_bits(abs_errs: Iterable[float]) -> dict[str, float]:
    """Precision in bits of a list of absolute errors |got - want|.

    prec_mean_bits = -log2(mean |err|) (hecnn's `bench bootstrap` convention),
    prec_median_bits = -log2(median |err|), prec_min_bits = -log2(max |err|),
    prec_mean_log_bits = mean of -log2 |err| (per slot; >= prec_mean_bits)."""
    errs = sorted(max(float(e), 2.0**-1074) for e in abs_errs)
    if not errs:
        raise ValueError("no errors to summarize")

    def bits(e: float) -> float:
        return round(-math.log2(e), 2)

    return {
        "prec_mean_bits": bits(statistics.fmean(errs)),
        "prec_median_bits": bits(errs[len(errs) // 2]),
        "prec_min_bits": bits(errs[-1]),
        "prec_mean_log_bits": round(statistics.fmean(-math.log2(e) for e in errs), 2),
    }


def time_s(fn: Callable[[], None], reps: int, cleanup: Optional[Callable[[], None]] = None) -> list[float]:
    """time_op in seconds: reps timed calls after one untimed warm-up."""
    return [ms / 1e3 for ms in time_op(fn, reps, cleanup=cleanup)]


def emit_bootstrap(rec: dict, samples_s: Iterable[float]) -> None:
    s = list(samples_s)
    out = {"library": rec["library"], "op": "bootstrap"}
    out.update(rec)
    out["bootstrap_s"] = round(statistics.median(s), 4)
    out["bootstrap_min_s"] = round(min(s), 4)
    out["reps"] = len(s)
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out), flush=True)
