#!/usr/bin/env python3
"""Times CKKS primitives of Lattigo v6 through orion-fhe's Go shared library.

Run with the orion venv made by setup.sh, e.g.
  ~/.cache/hecnn/peers/orion/bin/python bench/peers/orion_ops.py \
      --log-n 14 --log-q 58,40,40,40,40,40,40,40,40 --log-p 60 --threads 1 --reps 10

orion-fhe ships orion/backend/lattigo/lattigo-linux.so, a cgo c-shared build of
a thin Go layer over the baahl-nyu fork of Lattigo v6.2.0. Its C exports keep
Lattigo objects in Go-side heaps addressed by integer ids. This script loads
that library with ctypes directly (importing `orion` itself would pull in
torch, which setup.sh does not install) and calls the exports that map onto a
single Lattigo evaluator call:

  mul_relin  MulRelinCiphertextNew(a, b)  -> ckks.Evaluator.MulRelinNew
             (no rescale; allocates the output ciphertext, freed untimed)
  rescale    Rescale(id)                  -> ckks.Evaluator.Rescale, in place,
             on a fresh product ciphertext made outside the timed region
  rotate     Rotate(id, 1)                -> ckks.Evaluator.Rotate, in place
  encrypt    Encrypt(pt)                  -> rlwe.Encryptor (public key),
             allocates the output ciphertext
  decrypt    Decrypt(ct)                  -> rlwe.Decryptor, no decode,
             allocates the output plaintext
  hoisted_rotate8  not exported (Lattigo's RotateHoistedNew is only used
             inside orion's linear transforms): skipped with a note

Threads: Go reads GOMAXPROCS when the runtime starts, i.e. when the shared
library is loaded, from the process's initial environment; so this script
re-executes itself with GOMAXPROCS=--threads before loading it. Lattigo's
primitives themselves are single-threaded; GOMAXPROCS mostly affects the
garbage collector's helpers.

Key switching: Lattigo decomposes over groups of |P| Q primes, so
dnum = ceil(|Q| / |P|).

Note: orion's NewEvaluator also generates Galois keys for every power-of-two
rotation (logN - 1 keys); at logN = 16 with large Q this takes a while and
several GB of memory. Rotation by 1 uses one of those keys.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peerlib  # noqa: E402

_REEXEC_MARK = "HECNN_ORION_OPS_REEXEC"


def ensure_gomaxprocs(threads: int) -> None:
    """Re-executes this script with GOMAXPROCS=threads unless already set."""
    want = str(threads)
    if os.environ.get("GOMAXPROCS") == want:
        return
    if os.environ.get(_REEXEC_MARK):
        sys.exit("could not set GOMAXPROCS by re-executing")
    env = dict(os.environ, GOMAXPROCS=want)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


class FloatArray(ctypes.Structure):
    _fields_ = [("Data", ctypes.POINTER(ctypes.c_float)), ("Length", ctypes.c_ulong)]


class ULongArray(ctypes.Structure):
    _fields_ = [("Data", ctypes.POINTER(ctypes.c_ulong)), ("Length", ctypes.c_ulong)]


def load_lattigo() -> ctypes.CDLL:
    spec = importlib.util.find_spec("orion")  # does not execute orion/__init__.py
    if spec is None or spec.origin is None:
        sys.exit("orion-fhe is not installed in this interpreter; run setup.sh")
    path = os.path.join(os.path.dirname(spec.origin), "backend", "lattigo", "lattigo-linux.so")
    if not os.path.exists(path):
        sys.exit(f"orion-fhe has no Lattigo library at {path} (only Linux is wired up here)")
    lib = ctypes.CDLL(path)

    c_int, c_ulong, c_float, c_char_p = ctypes.c_int, ctypes.c_ulong, ctypes.c_float, ctypes.c_char_p
    int_p, float_p = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_float)
    sigs = {
        "NewScheme": ([c_int, int_p, c_int, int_p, c_int, c_int, c_int, c_char_p, c_char_p, c_char_p], None),
        "NewKeyGenerator": ([], None),
        "GenerateSecretKey": ([], None),
        "GeneratePublicKey": ([], None),
        "GenerateRelinearizationKey": ([], None),
        "GenerateEvaluationKeys": ([], None),
        "NewEncoder": ([], None),
        "NewEncryptor": ([], None),
        "NewDecryptor": ([], None),
        "NewEvaluator": ([], None),
        "AddRotationKey": ([c_int], None),
        "Encode": ([float_p, c_int, c_int, c_ulong], c_int),
        "Decode": ([c_int], FloatArray),
        "Encrypt": ([c_int], c_int),
        "Decrypt": ([c_int], c_int),
        "MulRelinCiphertextNew": ([c_int, c_int], c_int),
        "Rescale": ([c_int], c_int),
        "Rotate": ([c_int, c_int], c_int),
        "DeleteCiphertext": ([c_int], None),
        "DeletePlaintext": ([c_int], None),
        "GetCiphertextLevel": ([c_int], c_int),
        "GetCiphertextDegree": ([c_int], c_int),
        "GetModuliChain": ([], ULongArray),
        "FreeCArray": ([ctypes.c_void_p], None),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


def c_ints(vals) -> ctypes.Array:
    """A C int array for the library's (pointer, length) arguments."""
    return (ctypes.c_int * len(vals))(*vals)


def setup_scheme(lib: ctypes.CDLL, log_n: int, log_q: list[int], log_p: list[int],
                 log_scale: int, h: int) -> None:
    """Parameters, keys, encoder, encryptor, decryptor and evaluator, as orion sets them up.

    Lattigo panics (aborting the process) on invalid parameters. NewEvaluator also makes
    every power-of-two rotation key (orion's behaviour).
    """
    lib.NewScheme(
        log_n,
        c_ints(log_q), len(log_q),
        c_ints(log_p), len(log_p),
        log_scale, h, b"standard", b"", b"none",
    )
    lib.NewKeyGenerator()
    lib.GenerateSecretKey()
    lib.GeneratePublicKey()
    lib.GenerateRelinearizationKey()
    lib.GenerateEvaluationKeys()
    lib.NewEncoder()
    lib.NewEncryptor()
    lib.NewDecryptor()
    lib.NewEvaluator()


def main() -> None:
    parser = peerlib.base_parser(
        __doc__.strip().splitlines()[0],
        "comma list of special (P) prime bit sizes (default 60)",
    )
    parser.add_argument(
        "--hamming-weight",
        type=int,
        default=None,
        help="secret-key Hamming weight (default N/2; orion's own default is 192)",
    )
    args = parser.parse_args()
    peerlib.check_common_args(args)
    ensure_gomaxprocs(args.threads)

    import numpy as np

    version = importlib.metadata.version("orion-fhe")
    library = f"lattigo(orion-fhe {version})"
    lib = load_lattigo()

    n = 1 << args.log_n
    slots = n // 2
    level = len(args.log_q) - 1
    scale = 1 << args.log_scale
    dnum = math.ceil(len(args.log_q) / len(args.log_p))
    h = args.hamming_weight if args.hamming_weight is not None else n // 2

    setup_scheme(lib, args.log_n, args.log_q, args.log_p, args.log_scale, h)
    lib.AddRotationKey(1)  # already there; kept explicit

    chain = lib.GetModuliChain()
    q_count = chain.Length
    lib.FreeCArray(ctypes.cast(chain.Data, ctypes.c_void_p))
    assert q_count == len(args.log_q), (q_count, args.log_q)

    rng = np.random.default_rng(args.seed)
    msg_a = rng.uniform(-1.0, 1.0, slots).astype(np.float32)
    msg_b = rng.uniform(-1.0, 1.0, slots).astype(np.float32)

    def encode(values) -> int:
        buf = (ctypes.c_float * len(values))(*values.tolist())
        return lib.Encode(buf, len(values), level, scale)

    def decode(pt: int) -> np.ndarray:
        res = lib.Decode(pt)
        out = np.ctypeslib.as_array(res.Data, shape=(res.Length,)).astype(np.float64)
        lib.FreeCArray(ctypes.cast(res.Data, ctypes.c_void_p))
        return out

    def decrypt_decode(ct: int) -> np.ndarray:
        pt = lib.Decrypt(ct)
        out = decode(pt)
        lib.DeletePlaintext(pt)
        return out

    pt_a = encode(msg_a)
    pt_b = encode(msg_b)
    ct_a = lib.Encrypt(pt_a)
    ct_b = lib.Encrypt(pt_b)
    # float32 messages and float32 decoding: the check is loose on purpose.
    tol = 1e-3
    want_ab = msg_a.astype(np.float64) * msg_b.astype(np.float64)

    for op in args.ops:
        if op == "mul_relin":
            state = {"out": None}

            def run() -> None:
                state["out"] = lib.MulRelinCiphertextNew(ct_a, ct_b)

            last = {}

            def cleanup() -> None:
                if "id" in last:
                    lib.DeleteCiphertext(last["id"])
                last["id"] = state["out"]

            samples = peerlib.time_op(run, args.reps, cleanup=cleanup)
            out = last["id"]
            assert lib.GetCiphertextDegree(out) == 1
            assert lib.GetCiphertextLevel(out) == level
            peerlib.check_close(op, decrypt_decode(out), want_ab, tol)
            lib.DeleteCiphertext(out)

        elif op == "rescale":
            state = {}

            def prepare() -> None:
                if "ct" in state:
                    lib.DeleteCiphertext(state["ct"])
                state["ct"] = lib.MulRelinCiphertextNew(ct_a, ct_b)

            def run() -> None:
                lib.Rescale(state["ct"])

            samples = peerlib.time_op(run, args.reps, prepare=prepare)
            ct = state["ct"]
            got_level = lib.GetCiphertextLevel(ct)
            assert got_level == level - 1, f"rescale consumed {level - got_level} levels"
            peerlib.check_close(op, decrypt_decode(ct), want_ab, tol)
            lib.DeleteCiphertext(ct)

        elif op == "rotate":
            ct = lib.Encrypt(pt_a)  # its own copy; rotated in place reps + 1 times
            samples = peerlib.time_op(lambda: lib.Rotate(ct, 1), args.reps)
            peerlib.check_close(op, decrypt_decode(ct), np.roll(msg_a, -(args.reps + 1)), tol)
            lib.DeleteCiphertext(ct)

        elif op == "encrypt":
            state = {}

            def run() -> None:
                state["out"] = lib.Encrypt(pt_a)

            last = {}

            def cleanup() -> None:
                if "id" in last:
                    lib.DeleteCiphertext(last["id"])
                last["id"] = state["out"]

            samples = peerlib.time_op(run, args.reps, cleanup=cleanup)
            peerlib.check_close(op, decrypt_decode(last["id"]), msg_a, tol)
            lib.DeleteCiphertext(last["id"])

        elif op == "decrypt":
            state = {}

            def run() -> None:
                state["out"] = lib.Decrypt(ct_a)

            last = {}

            def cleanup() -> None:
                if "id" in last:
                    lib.DeletePlaintext(last["id"])
                last["id"] = state["out"]

            samples = peerlib.time_op(run, args.reps, cleanup=cleanup)
            peerlib.check_close(op, decode(last["id"]), msg_a, tol)
            lib.DeletePlaintext(last["id"])

        elif op == "hoisted_rotate8":
            peerlib.note(
                "hoisted_rotate8: orion-fhe exports no hoisted rotation "
                "(Lattigo's hoisting is only reachable inside its linear transforms); skipped"
            )
            continue

        else:  # pragma: no cover - op_list validates
            continue

        peerlib.emit(library, op, args, samples, dnum)


if __name__ == "__main__":
    main()
