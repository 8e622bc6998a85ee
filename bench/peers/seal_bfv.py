#!/usr/bin/env python3
"""Times BFV operations of Microsoft SEAL through TenSEAL's raw SEAL bindings.

Run with the tenseal venv made by setup.sh:
  ~/.cache/hecnn/peers/tenseal/bin/python bench/peers/seal_bfv.py --log-n 13 --reps 10

tenseal.sealapi is SEAL's own API (EncryptionParameters, BatchEncoder,
Encryptor, Evaluator, ...), so every Q prime's bit size and t are set exactly,
as Pyfhel would allow (Pyfhel has no wheel for this Python on PyPI).

Parameters (hecnn's presets, see bfvlib.py): coeff_modulus = hecnn's Q primes
by size followed by ONE special prime of 54 bits (SEAL allows exactly one: it
is the last entry of coeff_modulus). log N 13: 54x3 + 54 = 216 bits, the same
as hecnn (dnum 3 both). log N 14: 54x6 + 54 = 378 bits where hecnn has
54x6 + 2x54 = 432 (SEAL dnum 6, hecnn dnum 3): same Q, smaller P.
t = 65537 (PlainModulus). SEAL's BFV multiply is BEHZ; its ciphertexts are
kept in coefficient form.

Ops (JSON lines on stdout, notes on stderr):
  encrypt    Encryptor(public key).encrypt(pt, dest), dest reused
  decrypt    Decryptor.decrypt(ct, pt), no decode
  mul_plain  variant "coeff ct": multiply_plain(ct, pt, dest) on SEAL's usual
             coefficient-form ciphertext and encoded plaintext (SEAL does the
             NTTs inside); variant "ntt-form operands": ct and pt transformed
             to NTT once beforehand (transform_to_ntt), then multiply_plain is
             pointwise: the pre-encoded-plaintext case
  mul_relin  multiply(a, b, dest) + relinearize_inplace(dest, relin_keys)
  rotate     rotate_rows(ct, 1, galois_keys, dest) (Galois element 3)
SEAL is single-threaded: --threads is recorded, not applied.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bfvlib  # noqa: E402

try:
    import tenseal
    import tenseal.sealapi as seal
except ImportError as exc:  # pragma: no cover - depends on the venv
    sys.exit(f"tenseal (with tenseal.sealapi) is not importable: {exc}; run setup.sh tenseal")


def main() -> None:
    args = bfvlib.parser(__doc__.strip().splitlines()[0]).parse_args()
    bfvlib.check_args(args)
    if args.threads != 1:
        bfvlib.note(f"SEAL is single-threaded; --threads {args.threads} is only recorded")
    n = 1 << args.log_n
    q_bits, _hecnn_p = bfvlib.PRESETS[args.log_n]
    p_bits = [54]

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, q_bits + p_bits))
    parms.set_plain_modulus(seal.Modulus(bfvlib.T))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        sys.exit(f"SEAL rejected the parameters: {ctx.parameters_error_message()}")
    primes = [m.value() for m in parms.coeff_modulus()]
    log_q = sum(math.log2(q) for q in primes[:-1])

    keygen = seal.KeyGenerator(ctx)
    sk = keygen.secret_key()
    pk = seal.PublicKey()
    keygen.create_public_key(pk)
    rlk = seal.RelinKeys()
    keygen.create_relin_keys(rlk)
    gk = seal.GaloisKeys()
    keygen.create_galois_keys([3], gk)  # rotate_rows(1) = Galois element 3

    encoder = seal.BatchEncoder(ctx)
    encryptor = seal.Encryptor(ctx, pk)
    decryptor = seal.Decryptor(ctx, sk)
    evaluator = seal.Evaluator(ctx)

    x = [i % bfvlib.T for i in range(n)]
    y = [(3 * i + 1) % bfvlib.T for i in range(n)]

    def encode(v):
        pt = seal.Plaintext()
        encoder.encode(v, pt)
        return pt

    def encrypt(pt):
        ct = seal.Ciphertext(ctx)
        encryptor.encrypt(pt, ct)
        return ct

    def dec(ct):
        pt = seal.Plaintext()
        decryptor.decrypt(ct, pt)
        return encoder.decode_uint64(pt)

    pt_x, pt_y = encode(x), encode(y)
    ct_x, ct_y = encrypt(pt_x), encrypt(pt_y)
    xy = [a * b % bfvlib.T for a, b in zip(x, y)]
    base = {
        "library": f"seal(tenseal {tenseal.__version__})",
        "log_n": args.log_n,
        "t": bfvlib.T,
        "log_q": round(log_q, 1),
        "q_limbs": len(q_bits),
        "p_limbs": len(p_bits),
        "threads": args.threads,
        "threads_applied": False,
    }

    dest = seal.Ciphertext(ctx)
    s = bfvlib.time_ms(lambda: encryptor.encrypt(pt_x, dest), args.reps)
    bfvlib.check_slots("encrypt", dec(dest), x)
    bfvlib.emit(base, "encrypt", "public key", s)

    pt_out = seal.Plaintext()
    s = bfvlib.time_ms(lambda: decryptor.decrypt(ct_x, pt_out), args.reps)
    bfvlib.emit(base, "decrypt", "no decode", s)

    dest = seal.Ciphertext(ctx)
    s = bfvlib.time_ms(lambda: evaluator.multiply_plain(ct_x, pt_y, dest), args.reps)
    bfvlib.check_slots("mul_plain", dec(dest), xy)
    bfvlib.emit(base, "mul_plain", "coeff ct", s)

    ct_ntt = seal.Ciphertext(ctx)
    evaluator.transform_to_ntt(ct_x, ct_ntt)
    pt_ntt = encode(y)
    evaluator.transform_to_ntt_inplace(pt_ntt, ct_ntt.parms_id())
    dest = seal.Ciphertext(ctx)
    s = bfvlib.time_ms(lambda: evaluator.multiply_plain(ct_ntt, pt_ntt, dest), args.reps)
    evaluator.transform_from_ntt_inplace(dest)
    bfvlib.check_slots("mul_plain (ntt)", dec(dest), xy)
    bfvlib.emit(base, "mul_plain", "ntt-form operands", s)

    dest = seal.Ciphertext(ctx)

    def mul_relin():
        evaluator.multiply(ct_x, ct_y, dest)
        evaluator.relinearize_inplace(dest, rlk)

    s = bfvlib.time_ms(mul_relin, args.reps)
    assert dest.size() == 2
    bfvlib.check_slots("mul_relin", dec(dest), xy)
    bfvlib.emit(base, "mul_relin", "mul + relinearize", s)

    dest = seal.Ciphertext(ctx)
    s = bfvlib.time_ms(lambda: evaluator.rotate_rows(ct_x, 1, gk, dest), args.reps)
    half = n // 2
    bfvlib.check_slots(
        "rotate", dec(dest), [x[(i // half) * half + (i % half + 1) % half] for i in range(n)]
    )
    bfvlib.emit(base, "rotate", "rows by 1", s)
    bfvlib.note("SEAL: results checked (encrypt, mul_plain x2, mul_relin, rotate)")


if __name__ == "__main__":
    main()
