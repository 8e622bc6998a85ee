#!/usr/bin/env python3
"""Times Lattigo v6's CKKS bootstrapping through orion-fhe's Go shared library.

Run with the orion venv made by setup.sh, e.g.
  ~/.cache/hecnn/peers/orion/bin/python bench/peers/orion_bootstrap.py \
      --log-n 16 --threads 1 --reps 1

Loads orion/backend/lattigo/lattigo-linux.so with ctypes (as orion_ops.py
does; `import orion` would pull in torch) and follows the calls orion's own
Python code makes:

  scheme    NewScheme(logN, LogQ, LogP, logScale, h, "standard", ...),
            NewKeyGenerator, GenerateSecretKey, GeneratePublicKey,
            GenerateRelinearizationKey, GenerateEvaluationKeys, NewEncoder,
            NewEncryptor, NewDecryptor, NewEvaluator   (orion.init_scheme;
            NewEvaluator also makes all power-of-two rotation keys)
  keys      NewBootstrapper(boot LogP, slots)   (orion's
            bootstrapper.generate_bootstrapper): builds
            bootstrapping.ParametersLiteral{LogN, LogP: boot LogP, Xs: the
            scheme's secret distribution, LogSlots: log2(slots)} on top of the
            scheme's parameters (the *residual* parameters), generates the
            bootstrapping evaluation keys (GenEvaluationKeys) and the
            bootstrapping evaluator (which encodes the CoeffsToSlots and
            SlotsToCoeffs matrices). keygen_s times this whole call.
  timed     Bootstrap(ct, slots)   (CipherTensor.bootstrap): copies ct, runs
            bootstrapping.Evaluator.Bootstrap, multiplies by
            2^(logN-1 - log slots) (1 for full slots) and returns a new id.

Everything else of Lattigo's bootstrapping is left at its v6 defaults:
CoeffsToSlots depth min(4, log slots) with 56-bit primes, EvalMod
(CosDiscrete, K = 16, degree 30, 3 double angles: depth 8, 60-bit primes,
message ratio 2^8), SlotsToCoeffs depth min(3, log slots) with 39-bit primes,
sparse-secret encapsulation with an ephemeral secret of Hamming weight 32. Those
primes are added above the residual chain, so the bootstrapping parameters
have |Q| = |LogQ| + 15 primes at full slots, and the output is at the residual
top level len(LogQ) - 1. orion-fhe exports none of the bootstrapping
parameters, so log_qp / q_limbs / dnum below are *derived* from those
defaults (nominal bit sizes), not read back.

Defaults are orion's own configs/resnet.yml (LogN 16, LogQ [55, 40 x 10],
LogP [61 x 3], scale 2^40, boot LogP [61 x 8]) except the secret's Hamming
weight (N/2 here, as orion_ops.py; resnet.yml has 16384, orion's default is
192). Smaller --log-n work too (the bootstrapping circuit is the same; nothing
checks security, so such runs are toy-sized and insecure).

Precision: slots values uniform in [-1, 1], float32 (orion's Encode takes
float32), real only (orion's Encode/Decode are real), encoded at --level
(default 0) with scale 2^logScale and encrypted with the public key (orion's
only Encrypt). orion's Decode returns float32, which would cap any measured
precision near 25 bits; so the error is taken homomorphically:
SubPlaintextNew(bootstrapped, Encode(message, level, scale of the output))
is decrypted and decoded, giving err = out - message directly (float32 is then
relative to the small error). Precision is over the real parts of the first
`slots` slots.

Threads: GOMAXPROCS=--threads, set by re-executing this script before the
library loads (Go reads it when its runtime starts). Lattigo's evaluator is
single-threaded; GOMAXPROCS mostly affects the garbage collector.

Memory: at the defaults (log N 16) the process peaks at about 19 GB resident
(VmHWM 18.6 GiB measured; ~16 GiB right after NewBootstrapper: bootstrapping
keys at |QP| = 34 primes, the encoded DFT matrices, and Go's heap headroom).
Small --log-n (e.g. 12: ~0.7 GB, seconds) are for trying the script out.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peerlib  # noqa: E402
from orion_ops import c_ints, load_lattigo, setup_scheme  # noqa: E402  (stdlib + peerlib only)

_REEXEC_MARK = "HECNN_ORION_BOOTSTRAP_REEXEC"

# Lattigo v6 bootstrapping defaults (circuits/ckks/bootstrapping,
# parameters_literal.go), used only to *derive* the reported log_qp.
C2S_DEPTH, C2S_LOG_SCALE = 4, 56
S2C_DEPTH, S2C_LOG_SCALE = 3, 39
EVALMOD_LOG_SCALE = 60
EVALMOD_DEPTH = 5 + 3  # bits.Len64(max(30, 2*16-1)) + 3 double angles
EPHEMERAL_WEIGHT = 32


def bootstrap_moduli(log_slots: int, log_scale: int) -> list[int]:
    """Bit sizes of the primes Lattigo's default bootstrapping circuit adds."""
    s2c = S2C_LOG_SCALE + log_scale if S2C_LOG_SCALE + log_scale < 61 else S2C_LOG_SCALE
    return (
        [s2c] * min(S2C_DEPTH, max(log_slots, 1))
        + [EVALMOD_LOG_SCALE] * EVALMOD_DEPTH
        + [C2S_LOG_SCALE] * min(C2S_DEPTH, max(log_slots, 1))
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--log-n", type=int, default=16, help="log2 of the ring degree N (default 16)")
    p.add_argument(
        "--slots", type=int, default=None,
        help="log2 of the slot count bootstrapped (default log_n - 1: full slots)",
    )
    p.add_argument(
        "--log-q", type=peerlib.int_list, default=[55] + [40] * 10,
        help="residual Q prime bit sizes, base prime first (default 55,40x10 as "
        "orion's resnet.yml: 10 levels after bootstrapping)",
    )
    p.add_argument(
        "--log-p", type=peerlib.int_list, default=[61] * 3,
        help="residual P prime bit sizes (default 61,61,61)",
    )
    p.add_argument(
        "--boot-log-p", type=peerlib.int_list, default=[61] * 8,
        help="P prime bit sizes of the bootstrapping parameters (default 61x8)",
    )
    p.add_argument("--log-scale", type=int, default=None, help="default: last Q prime's size")
    p.add_argument(
        "--hamming-weight", type=int, default=None,
        help="secret Hamming weight (default N/2; orion: 192, its resnet.yml: 16384)",
    )
    p.add_argument(
        "--level", type=int, default=0,
        help="level the input is encrypted at (default 0, as hecnn's benchmark)",
    )
    p.add_argument("--threads", type=int, default=1, help="GOMAXPROCS (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed bootstraps after one warm-up (default 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random messages")
    args = p.parse_args()
    if args.slots is None:
        args.slots = args.log_n - 1
    if not 1 <= args.slots <= args.log_n - 1:
        sys.exit("--slots (log2) must be in [1, log_n - 1]")
    if args.log_scale is None:
        args.log_scale = args.log_q[-1]
    if args.reps < 1 or args.threads < 1:
        sys.exit("--reps and --threads must be >= 1")
    if not 0 <= args.level < len(args.log_q):
        sys.exit("--level must be a level of the residual chain")
    return args


def main() -> None:
    args = parse_args()
    peerlib.reexec_with_env(__file__, {"GOMAXPROCS": str(args.threads)}, _REEXEC_MARK)

    import numpy as np

    version = importlib.metadata.version("orion-fhe")
    library = f"lattigo(orion-fhe {version})"
    lib = load_lattigo()
    c_int, c_ulong, int_p = ctypes.c_int, ctypes.c_ulong, ctypes.POINTER(ctypes.c_int)
    extra = {
        "NewBootstrapper": ([int_p, c_int, c_int], None),
        "Bootstrap": ([c_int, c_int], c_int),
        "SubPlaintextNew": ([c_int, c_int], c_int),
        "GetCiphertextScale": ([c_int], c_ulong),
        "DeleteBootstrappers": ([], None),
        "DeleteScheme": ([], None),
    }
    for name, (argtypes, restype) in extra.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype

    n = 1 << args.log_n
    slots = 1 << args.slots
    h = args.hamming_weight if args.hamming_weight is not None else n // 2
    scale = 1 << args.log_scale

    t0 = time.perf_counter()
    setup_scheme(lib, args.log_n, args.log_q, args.log_p, args.log_scale, h)
    scheme_s = time.perf_counter() - t0

    chain = lib.GetModuliChain()
    q_primes = [chain.Data[i] for i in range(chain.Length)]
    lib.FreeCArray(ctypes.cast(chain.Data, ctypes.c_void_p))
    assert len(q_primes) == len(args.log_q), (len(q_primes), args.log_q)

    btp_q = args.log_q + bootstrap_moduli(args.slots, args.log_scale)
    derived = {
        "log_qp": sum(btp_q) + sum(args.boot_log_p),
        "q_limbs": len(btp_q),
        "p_limbs": len(args.boot_log_p),
        "dnum": math.ceil(len(btp_q) / len(args.boot_log_p)),
    }
    peerlib.note(
        f"scheme + {args.log_n - 1} power-of-two rotation keys in {scheme_s:.1f} s; residual "
        f"log Q = {sum(math.log2(q) for q in q_primes):.1f} ({len(q_primes)} primes), "
        f"bootstrapping parameters (derived from Lattigo's defaults): log QP = "
        f"{derived['log_qp']} ({derived['q_limbs']} Q + {derived['p_limbs']} P primes, "
        f"dnum {derived['dnum']}), secret h = {h}, ephemeral h = {EPHEMERAL_WEIGHT}"
    )

    t0 = time.perf_counter()
    lib.NewBootstrapper(c_ints(args.boot_log_p), len(args.boot_log_p), slots)
    keygen_s = time.perf_counter() - t0
    peerlib.note(f"NewBootstrapper (keys + evaluator) in {keygen_s:.1f} s, "
                 f"peak RSS so far {peerlib.peak_rss_mib()} MiB")

    rng = np.random.default_rng(args.seed)
    msg = rng.uniform(-1.0, 1.0, slots).astype(np.float32)

    def encode(values, level: int, sc: int) -> int:
        buf = (ctypes.c_float * len(values))(*values.tolist())
        return lib.Encode(buf, len(values), level, sc)

    def decrypt_decode(ct: int) -> np.ndarray:
        pt = lib.Decrypt(ct)
        res = lib.Decode(pt)
        out = np.ctypeslib.as_array(res.Data, shape=(res.Length,)).astype(np.float64)
        lib.FreeCArray(ctypes.cast(res.Data, ctypes.c_void_p))
        lib.DeletePlaintext(pt)
        return out

    pt_in = encode(msg, args.level, scale)
    ct_in = lib.Encrypt(pt_in)
    assert lib.GetCiphertextLevel(ct_in) == args.level

    state: dict[str, int] = {}
    last: dict[str, int] = {}

    def run() -> None:
        state["out"] = lib.Bootstrap(ct_in, slots)

    def cleanup() -> None:
        if "id" in last:
            lib.DeleteCiphertext(last["id"])
        last["id"] = state["out"]

    samples = peerlib.time_s(run, args.reps, cleanup=cleanup)
    out = last["id"]
    levels_left = lib.GetCiphertextLevel(out)
    out_scale = lib.GetCiphertextScale(out)

    # Sanity check on the plain decoding, then the precise error homomorphically.
    want = msg.astype(np.float64)
    got = decrypt_decode(out)
    peerlib.check_close("bootstrap", got[:slots], want, 1e-2)
    pt_ref = encode(msg, levels_left, out_scale)
    diff = lib.SubPlaintextNew(out, pt_ref)
    errs = np.abs(decrypt_decode(diff)[:slots])
    if slots < n // 2:
        # Lattigo's sparse packing: the full-slot vector repeats every `slots`.
        rep = np.max(np.abs(got - np.tile(want, (n // 2) // slots)))
        peerlib.note(f"sparse ({slots} slots): full-slot output repeats the message, max abs error {rep:.2e}")

    rec = {
        "library": library,
        "log_n": args.log_n,
        "log_slots": args.slots,
        "slots": slots,
        "threads": args.threads,
        **derived,
        "log_qp_derived": True,
        "hamming_weight": h,
        "input": "real",
        "input_level": args.level,
        "levels_left": levels_left,
        "keygen_s": round(keygen_s, 3),
        "scheme_keygen_s": round(scheme_s, 3),
        **peerlib.precision_bits(errs.tolist()),
    }
    peerlib.emit_bootstrap(rec, samples)


if __name__ == "__main__":
    main()
