"""Artifacts are the command-line tool's: a model compiled and keys made in Python work with
`hecnn encrypt` / `hecnn decrypt`, and the CLI's ciphertexts run on a Python server.
Skipped without the binary (``$HECNN_BIN``, ``target/release/hecnn`` or ``hecnn`` on PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import hecnn
from conftest import REPO


def _binary() -> str:
    for candidate in (os.environ.get("HECNN_BIN"), REPO / "target" / "release" / "hecnn",
                      shutil.which("hecnn")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("no hecnn binary (build it with cargo build --release -p hecnn, or set HECNN_BIN)")


def test_python_artifacts_with_the_cli(single, digits, tmp_path):
    exe = _binary()
    x, labels = digits
    model = tmp_path / "m.hecnn"
    single.save(model)
    client = hecnn.Client(single)
    client.keygen()
    client.save_keys(tmp_path / "keys")
    run = lambda *args: subprocess.run(  # noqa: E731
        [exe, *map(str, args)], cwd=REPO, check=True, capture_output=True, text=True
    )
    # The CLI encrypts with the key Python made; Python's server runs; the CLI decrypts.
    run("encrypt", model, "--public-key", tmp_path / "keys" / "public.key",
        "--data", "sample:mnist", "--count", 3, "-o", tmp_path / "in.ct")
    server = hecnn.Server(hecnn.load(model), (tmp_path / "keys" / "eval.keys").read_bytes())
    server.run((tmp_path / "in.ct").read_bytes()).save(tmp_path / "out.ct")
    out = run("decrypt", model, "--secret-key", tmp_path / "keys" / "secret.key",
              "--in", tmp_path / "out.ct").stdout
    want = single.predict(x[:3]).argmax(1)
    assert f"predictions: {' '.join(map(str, want))}" in out
    # And Python decrypts what the CLI's server computed.
    run("run", model, "--eval-keys", tmp_path / "keys" / "eval.keys",
        "--in", tmp_path / "in.ct", "-o", tmp_path / "out2.ct")
    got = client.decrypt((tmp_path / "out2.ct").read_bytes())
    np.testing.assert_array_equal(got.argmax(1), want)
    assert (want == labels[:3]).all()
