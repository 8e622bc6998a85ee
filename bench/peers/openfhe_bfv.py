#!/usr/bin/env python3
"""Times BFV operations of OpenFHE (BFVRNS) through openfhe-python.

Run with the openfhe venv made by `setup.sh openfhe` (needs Python 3.10: the
only current openfhe wheel ships a CPython 3.10 extension):
  ~/.cache/hecnn/peers/openfhe/bin/python bench/peers/openfhe_bfv.py --log-n 13 --reps 10

Parameters: ring dimension fixed to N (SetRingDim, security level
HEStd_NotSet so that OpenFHE does not raise N; the resulting log Q is far
below the 128-bit bound), t = 65537, hybrid key switching with
NumLargeDigits = hecnn's dnum (3). OpenFHE does not take a list of prime
sizes for BFV: it derives Q from the multiplicative depth (primes of
ScalingModSize bits, set to hecnn's 54) and picks its P primes itself, so the
script tries depths 1..16 and keeps the one whose log Q is closest to hecnn's
(162 at log N 13, 324 at log N 14). The chosen depth and log Q are recorded.

Threads: OpenFHE parallelizes with OpenMP; the script re-executes itself with
OMP_NUM_THREADS = --threads (read when the library loads).

Ops: encrypt (public key), decrypt (cc.Decrypt, includes OpenFHE's decode
of the packed plaintext: it has no separate decrypt-only call in Python),
mul_plain (EvalMult(ct, pt) with pt made once by MakePackedPlaintext),
mul_relin (EvalMult(ct, ct): OpenFHE relinearizes inside EvalMult),
rotate (EvalRotate(ct, 1)).
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bfvlib  # noqa: E402
import peerlib  # noqa: E402


def main() -> None:
    args = bfvlib.parser(__doc__.strip().splitlines()[0]).parse_args()
    bfvlib.check_args(args)
    peerlib.reexec_with_env(__file__, {"OMP_NUM_THREADS": str(args.threads)}, "HECNN_OPENFHE_REEXEC")
    try:
        import openfhe as of
    except ImportError as exc:
        sys.exit(f"openfhe is not importable ({exc}); skipped: run `setup.sh openfhe` with PYTHON_OPENFHE=python3.10")
    try:
        from importlib.metadata import version

        ver = version("openfhe")
    except Exception:  # noqa: BLE001
        ver = "?"

    n = 1 << args.log_n
    q_bits, _p = bfvlib.PRESETS[args.log_n]
    target = sum(q_bits)

    def make(depth: int):
        p = of.CCParamsBFVRNS()
        p.SetPlaintextModulus(bfvlib.T)
        p.SetMultiplicativeDepth(depth)
        p.SetRingDim(n)
        p.SetSecurityLevel(of.SecurityLevel.HEStd_NotSet)
        p.SetScalingModSize(54)
        p.SetKeySwitchTechnique(of.KeySwitchTechnique.HYBRID)
        p.SetNumLargeDigits(3)
        cc = of.GenCryptoContext(p)
        return cc, math.log2(int(cc.GetModulus()))

    best = None
    for depth in range(1, 17):
        try:
            cc, lq = make(depth)
        except Exception as exc:  # noqa: BLE001 - e.g. fewer towers than 3 digits
            bfvlib.note(f"depth {depth} refused: {str(exc).splitlines()[0][-120:]}")
            continue
        if cc.GetRingDimension() != n:
            break
        if best is None or abs(lq - target) < abs(best[2] - target):
            best = (cc, depth, lq)
        if lq > target:
            break
    if best is None:
        sys.exit("OpenFHE: no BFVRNS context with the ring dimension fixed to N")
    cc, depth, log_q = best
    bfvlib.note(f"OpenFHE: depth {depth} gives log Q = {log_q:.1f} (hecnn: {target})")
    for f in (of.PKESchemeFeature.PKE, of.PKESchemeFeature.KEYSWITCH, of.PKESchemeFeature.LEVELEDSHE):
        cc.Enable(f)
    keys = cc.KeyGen()
    cc.EvalMultKeyGen(keys.secretKey)
    cc.EvalRotateKeyGen(keys.secretKey, [1])

    x = [i % bfvlib.T for i in range(n)]
    y = [(3 * i + 1) % bfvlib.T for i in range(n)]
    pt_x = cc.MakePackedPlaintext(x)
    pt_y = cc.MakePackedPlaintext(y)
    ct_x = cc.Encrypt(keys.publicKey, pt_x)
    ct_y = cc.Encrypt(keys.publicKey, pt_y)

    def dec(ct):
        pt = cc.Decrypt(ct, keys.secretKey)
        pt.SetLength(n)
        return pt.GetPackedValue()

    xy = [a * b % bfvlib.T for a, b in zip(x, y)]
    base = {
        "library": f"openfhe({ver})",
        "log_n": args.log_n,
        "t": bfvlib.T,
        "log_q": round(log_q, 1),
        "q_limbs": round(log_q / 54),  # towers of ScalingModSize = 54 bits
        "p_limbs": None,  # chosen by OpenFHE (HYBRID, 3 digits)
        "depth": depth,
        "threads": args.threads,
        "threads_applied": True,
    }
    s = bfvlib.time_ms(lambda: cc.Encrypt(keys.publicKey, pt_x), args.reps)
    bfvlib.emit(base, "encrypt", "public key", s)
    s = bfvlib.time_ms(lambda: cc.Decrypt(ct_x, keys.secretKey), args.reps)
    bfvlib.emit(base, "decrypt", "with decode", s)
    s = bfvlib.time_ms(lambda: cc.EvalMult(ct_x, pt_y), args.reps)
    bfvlib.check_slots("mul_plain", dec(cc.EvalMult(ct_x, pt_y)), xy)
    bfvlib.emit(base, "mul_plain", "pre-encoded plaintext", s)
    s = bfvlib.time_ms(lambda: cc.EvalMult(ct_x, ct_y), args.reps)
    bfvlib.check_slots("mul_relin", dec(cc.EvalMult(ct_x, ct_y)), xy)
    bfvlib.emit(base, "mul_relin", "EvalMult (relinearizes)", s)
    s = bfvlib.time_ms(lambda: cc.EvalRotate(ct_x, 1), args.reps)
    got = list(dec(cc.EvalRotate(ct_x, 1)))
    half = n // 2
    rows = [x[(i // half) * half + (i % half + 1) % half] for i in range(n)]
    whole = x[1:] + x[:1]
    if [v % bfvlib.T for v in got] == rows:
        layout = "rows by 1"
    elif [v % bfvlib.T for v in got] == whole:
        layout = "whole vector by 1"
    else:
        sys.exit("OpenFHE: EvalRotate(ct, 1) gave an unexpected slot permutation")
    bfvlib.emit(base, "rotate", f"EvalRotate 1 ({layout})", s)
    bfvlib.note("OpenFHE: results checked (mul_plain, mul_relin, rotate)")


if __name__ == "__main__":
    main()
