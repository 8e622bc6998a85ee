"""Protected models (Gomez et al.): the owner protects and signs, the edge verifies and runs,
only the owner decrypts; the files are the CLI's (``hecnn protect``, ``edge run``, ``owner
decrypt``)."""

from __future__ import annotations

import os
import stat
import subprocess

import numpy as np
import pytest

import hecnn
from conftest import REPO
from test_cli_interop import _binary

RELU = REPO / "models" / "protect-mnist-relu.onnx"


@pytest.fixture(scope="module")
def owner() -> hecnn.Owner:
    if not RELU.exists():
        pytest.skip(f"{RELU} not found")
    return hecnn.protect(RELU, layers="last")


@pytest.fixture(scope="module")
def edge(owner) -> hecnn.Edge:
    return hecnn.Edge(owner.protected_model(), owner.owner_key, owner.evaluation_keys(),
                      owner.public_key())


def test_edge_results_decrypt_to_the_unprotected_model(owner, edge, digits):
    x, _ = digits
    want = owner.plaintext(x[:4])
    assert want.shape == (4, owner.output_size) == (4, 10)
    assert edge.key_id == owner.key_id and edge.scope == owner.scope == "last"
    for encrypt_features in (False, True):
        results = edge.run(x[:4], encrypt_features=encrypt_features)
        assert len(results) == 4 and all(isinstance(r, bytes) for r in results)
        got = owner.decrypt(results)
        assert got.shape == (4, 10)
        np.testing.assert_allclose(got, want, atol=1e-3)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    one = owner.decrypt(edge.run(x[5])[0])
    assert one.shape == (10,)
    np.testing.assert_allclose(one, owner.plaintext(x[5]), atol=1e-3)


def test_the_edge_refuses_models_the_owner_did_not_sign(owner):
    model = bytearray(owner.protected_model())
    model[len(model) // 2] ^= 1
    with pytest.raises(hecnn.SignatureError, match="changed after it was signed"):
        hecnn.Edge(bytes(model), owner.owner_key, owner.evaluation_keys())
    other = hecnn.protect(RELU, layers="last")
    with pytest.raises(hecnn.SignatureError, match="not by the expected"):
        hecnn.Edge(owner.protected_model(), other.owner_key, owner.evaluation_keys())
    # The evaluation keys of another owner are refused by key pair.
    with pytest.raises(hecnn.MismatchError):
        hecnn.Edge(owner.protected_model(), owner.owner_key, other.evaluation_keys())
    with pytest.raises(hecnn.SignatureError):
        hecnn.Edge(owner.protected_model(), "hecnn-owner-ed25519:00", owner.evaluation_keys())


def test_results_of_another_owner_are_refused(owner, edge, digits):
    x, _ = digits
    other = hecnn.protect(RELU, layers="last", signing_key=owner.signing_key())
    # One signing key for both models: the same owner key, different key pairs.
    assert other.owner_key == owner.owner_key and other.key_id != owner.key_id
    with pytest.raises(hecnn.MismatchError, match="owner key of the result"):
        other.decrypt(edge.run(x[:1])[0])
    with pytest.raises(hecnn.UsageError):
        owner.decrypt("not a result")
    with pytest.raises(hecnn.UsageError):
        hecnn.Edge(
            owner.protected_model(), owner.owner_key, owner.evaluation_keys()
        ).run(x[:1], encrypt_features=True)
    with pytest.raises(hecnn.ShapeError):
        edge.run(np.zeros((1, 28, 27)))
    with pytest.raises(hecnn.UsageError):
        hecnn.protect(RELU, layers="everything")


def test_a_raising_callback_stops_the_edge_run(edge, digits):
    x, _ = digits
    seen = []

    def stop(stage, done, total):
        seen.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        edge.run(x[:6], progress=stop)
    assert seen == [1]


def test_files_are_the_clis_and_secrets_stay_private(owner, edge, digits, tmp_path):
    x, _ = digits
    d = tmp_path / "owner"
    owner.save(d)
    for name in ("secret.key", "owner-signing.key"):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600, name
    with pytest.raises(hecnn.UsageError):
        owner.save(d)
    loaded = hecnn.Owner.load(d)
    assert loaded.key_id == owner.key_id and loaded.owner_key == owner.owner_key
    with pytest.raises(hecnn.UsageError):
        loaded.plaintext(x[:1])
    # An edge must not load a directory holding the owner's secrets.
    with pytest.raises(hecnn.UsageError, match="secret key"):
        hecnn.Edge.load(d, d / "owner.pub")
    deploy = tmp_path / "edge"
    deploy.mkdir()
    for name in ("model.hecnnp", "public.key", "eval.keys"):
        (deploy / name).write_bytes((d / name).read_bytes())
    e = hecnn.Edge.load(deploy, (d / "owner.pub").read_text())
    np.testing.assert_array_equal(
        loaded.decrypt(e.run(x[:2], encrypt_features=True)).argmax(1),
        owner.plaintext(x[:2]).argmax(1),
    )
    # The CLI's edge run, decrypted here; this edge's results, decrypted by the CLI.
    exe = _binary()
    run = lambda *a: subprocess.run(  # noqa: E731
        [exe, *map(str, a)], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    run("edge", "run", "--deployment", deploy, "--owner-key", d / "owner.pub",
        "--data", "sample:mnist", "--count", 3, "-o", tmp_path / "cli-results")
    got = loaded.decrypt([(tmp_path / "cli-results" / f"{i}.hcno").read_bytes() for i in range(3)])
    np.testing.assert_array_equal(got.argmax(1), owner.plaintext(x[:3]).argmax(1))
    mine = tmp_path / "py-results"
    mine.mkdir()
    for i, r in enumerate(edge.run(x[:3])):
        (mine / f"{i}.hcno").write_bytes(r)
    out = run("owner", "decrypt", "--owner", d, "--in", mine)
    for i, c in enumerate(owner.plaintext(x[:3]).argmax(1)):
        assert f"image {i}: class {c}" in out


def test_released_logits_are_flooded_and_rounded(owner, edge, digits):
    x, _ = digits
    results = edge.run(x[:4])
    own = owner.decrypt(results)
    cost = owner.release_precision()
    assert cost["release_bits"] >= 5 and cost["sigma_log2"] > cost["noise_bound_log2"] + 20
    released = owner.decrypt(results, release=True)
    again = owner.decrypt(results, release=True)
    unit = 2.0 ** -cost["release_bits"]
    # Rounded to the bits the flooding leaves, within a few of its deviations of the
    # owner's own values, the same classes; and fresh flooding on every decryption.
    np.testing.assert_array_equal(np.round(released / unit) * unit, released)
    assert np.abs(released - own).max() < 8 * cost["output_std"] + unit
    np.testing.assert_array_equal(released.argmax(1), own.argmax(1))
    assert not np.array_equal(released, again)
    # A bound below the result's noise refuses the release instead of leaking it.
    with pytest.raises(hecnn.RangeError) as e:
        owner.decrypt(results, release=True, noise_bound=1.0)
    assert e.value.kind == "NoiseAboveBound" and e.value.bound_log2 == 1.0
    with pytest.raises(hecnn.UsageError):
        owner.decrypt(results, noise_bound=20.0)
