#!/usr/bin/env python3
"""Times CKKS primitives of Microsoft SEAL through TenSEAL's raw SEAL bindings.

Run with the tenseal venv made by setup.sh, e.g.
  ~/.cache/hecnn/peers/tenseal/bin/python bench/peers/tenseal_ops.py \
      --log-n 14 --log-q 58,40,40,40,40,40,40,40,40 --log-p 60 --reps 10

Uses tenseal.sealapi (SEAL's own Evaluator/Encryptor/Decryptor), not the
TenSEAL tensor API, so nothing is relinearized or rescaled behind our back.

Ops (JSON lines on stdout, notes on stderr):
  mul_relin  Evaluator.multiply(a, b, dest) + relinearize_inplace(dest)
             (no rescale; dest is a reused Ciphertext object)
  rescale    rescale_to_next_inplace on a fresh product ciphertext
             (scale^2, size 2); the product is made outside the timed region
  rotate     rotate_vector_inplace(ct, 1, galois_keys), in place
  encrypt    Encryptor(public key).encrypt(plaintext, dest)
  decrypt    Decryptor.decrypt(ct, plaintext_out), no decode
  hoisted_rotate8  not offered by SEAL: skipped with a note

SEAL has exactly one special prime (the last of coeff_mod_bit_sizes) and its
key switching decomposes over every Q prime, so dnum = number of Q primes.
SEAL is single-threaded: --threads is recorded, not applied.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import peerlib  # noqa: E402

try:
    import tenseal
    import tenseal.sealapi as seal
except ImportError as exc:  # pragma: no cover - depends on the venv
    sys.exit(f"tenseal (with tenseal.sealapi) is not importable: {exc}; run setup.sh")


def main() -> None:
    parser = peerlib.base_parser(
        __doc__.strip().splitlines()[0],
        "special prime bit size; SEAL allows exactly one (default 60)",
    )
    args = parser.parse_args()
    peerlib.check_common_args(args)
    if len(args.log_p) != 1:
        sys.exit("SEAL uses exactly one special prime: give a single --log-p value")
    if args.threads != 1:
        peerlib.note(f"SEAL is single-threaded; --threads {args.threads} is only recorded")

    library = f"seal(tenseal {tenseal.__version__})"
    n = 1 << args.log_n
    slots = n // 2
    scale = float(2**args.log_scale)
    dnum = len(args.log_q)

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, args.log_q + args.log_p))
    total_bits = sum(args.log_q) + sum(args.log_p)
    max_bits = seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128)
    if max_bits == 0 or total_bits > max_bits:
        peerlib.note(
            f"log QP = {total_bits} bits is beyond SEAL's 128-bit table for N = {n} "
            f"(max {max_bits}, 0 = no table entry); building the context without the security check"
        )
        sec = seal.SEC_LEVEL_TYPE.NONE
    else:
        sec = seal.SEC_LEVEL_TYPE.TC128
    ctx = seal.SEALContext(parms, True, sec)
    if not ctx.parameters_set():
        sys.exit(f"SEAL rejected the parameters: {ctx.parameters_error_message()}")

    ops = args.ops
    keygen = seal.KeyGenerator(ctx)
    sk = keygen.secret_key()
    pk = seal.PublicKey()
    keygen.create_public_key(pk)
    rlk = None
    if "mul_relin" in ops or "rescale" in ops:
        rlk = seal.RelinKeys()
        keygen.create_relin_keys(rlk)
    gk = None
    if "rotate" in ops:
        gk = seal.GaloisKeys()
        # The list overload binds SEAL's galois_elts variant: rotation by +1
        # slot is the Galois element 3 (SEAL's generator) modulo 2N.
        keygen.create_galois_keys([3], gk)

    encoder = seal.CKKSEncoder(ctx)
    encryptor = seal.Encryptor(ctx, pk)
    decryptor = seal.Decryptor(ctx, sk)
    evaluator = seal.Evaluator(ctx)

    rng = np.random.default_rng(args.seed)
    msg_a = rng.uniform(-1.0, 1.0, slots)
    msg_b = rng.uniform(-1.0, 1.0, slots)

    def encode(values) -> "seal.Plaintext":
        pt = seal.Plaintext()
        encoder.encode(list(map(float, values)), scale, pt)
        return pt

    def encrypt(pt) -> "seal.Ciphertext":
        ct = seal.Ciphertext(ctx)
        encryptor.encrypt(pt, ct)
        return ct

    def decrypt_decode(ct) -> np.ndarray:
        pt = seal.Plaintext()
        decryptor.decrypt(ct, pt)
        return np.asarray(encoder.decode_double(pt))

    pt_a = encode(msg_a)
    pt_b = encode(msg_b)
    ct_a = encrypt(pt_a)
    ct_b = encrypt(pt_b)
    tol = 1e-3

    for op in ops:
        if op == "mul_relin":
            dest = seal.Ciphertext(ctx)

            def run() -> None:
                evaluator.multiply(ct_a, ct_b, dest)
                evaluator.relinearize_inplace(dest, rlk)

            samples = peerlib.time_op(run, args.reps)
            assert dest.size() == 2
            peerlib.check_close(op, decrypt_decode(dest), msg_a * msg_b, tol)

        elif op == "rescale":
            state = {}

            def prepare() -> None:
                ct = seal.Ciphertext(ctx)
                evaluator.multiply(ct_a, ct_b, ct)
                evaluator.relinearize_inplace(ct, rlk)
                state["ct"] = ct

            def run() -> None:
                evaluator.rescale_to_next_inplace(state["ct"])

            samples = peerlib.time_op(run, args.reps, prepare=prepare)
            ct = state["ct"]
            assert ct.coeff_modulus_size() == len(args.log_q) - 1, ct.coeff_modulus_size()
            peerlib.check_close(op, decrypt_decode(ct), msg_a * msg_b, tol)

        elif op == "rotate":
            ct = encrypt(pt_a)  # its own copy; rotated in place reps + 1 times

            def run() -> None:
                evaluator.rotate_vector_inplace(ct, 1, gk)

            samples = peerlib.time_op(run, args.reps)
            peerlib.check_close(op, decrypt_decode(ct), np.roll(msg_a, -(args.reps + 1)), tol)

        elif op == "encrypt":
            dest = seal.Ciphertext(ctx)
            samples = peerlib.time_op(lambda: encryptor.encrypt(pt_a, dest), args.reps)
            peerlib.check_close(op, decrypt_decode(dest), msg_a, tol)

        elif op == "decrypt":
            pt_out = seal.Plaintext()
            samples = peerlib.time_op(lambda: decryptor.decrypt(ct_a, pt_out), args.reps)
            peerlib.check_close(op, np.asarray(encoder.decode_double(pt_out)), msg_a, tol)

        elif op == "hoisted_rotate8":
            peerlib.note("hoisted_rotate8: SEAL has no hoisted rotations; skipped")
            continue

        else:  # pragma: no cover - op_list validates
            continue

        peerlib.emit(library, op, args, samples, dnum)


if __name__ == "__main__":
    main()
