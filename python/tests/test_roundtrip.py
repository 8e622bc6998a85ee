"""Encrypted round trips in both packings against the cleartext model, and the simulator."""

from __future__ import annotations

import numpy as np
import pytest

import hecnn


def test_compiled_model_reports_its_plan(single, batch):
    assert single.packing == "single" and batch.packing == "batch"
    for c in (single, batch):
        assert c.input_shape == (1, 28, 28)
        assert c.output_size == 10
        p = c.parameters
        assert p["security_requested"] == "128-bit" and p["security"] in ("128-bit", "192-bit", "256-bit")
        assert p["levels"] >= c.depth
        assert c.key_sizes["relinearization"]
        assert c.memory_estimate["bytes"] > 0
        assert "parameters: N = 2^" in c.report()
        assert len(c.fingerprint) == 64
    assert single.key_sizes["rotations"] > 0 and batch.key_sizes["rotations"] == 0
    assert batch.max_images == batch.parameters["slots"]
    est = single.time_estimate()
    assert est is not None and est["total_s"] > 0
    assert batch.time_estimate() is None


def test_predict_execute_agrees_with_the_cleartext_model(compiled, digits):
    x, labels = digits
    x = x[:4]
    clear = compiled.predict(x, fhe="disable")
    assert clear.shape == (4, 10) and clear.dtype == np.float64
    stages = []
    enc = compiled.predict(x, fhe="execute", progress=lambda s, d, t: stages.append(s))
    assert enc.shape == (4, 10)
    np.testing.assert_array_equal(enc.argmax(1), clear.argmax(1))
    assert np.abs(enc - clear).max() < 0.05 * np.abs(clear).max()
    assert {"encrypt", "run", "decrypt"} <= set(stages)
    assert (clear.argmax(1) == labels[:4]).all()


def test_predict_simulate_follows_the_plan(compiled, digits):
    x, _ = digits
    clear = compiled.predict(x[:16], fhe="disable")
    sim = compiled.predict(x[:16], fhe="simulate")
    np.testing.assert_array_equal(sim.argmax(1), clear.argmax(1))
    np.testing.assert_allclose(sim, clear, atol=1e-3 * np.abs(clear).max())
    logits, headroom = compiled.simulate(x[:4])
    assert logits.shape == (4, 10) and headroom > 0


def test_one_image_without_a_batch_axis(single, digits):
    x, _ = digits
    one = single.predict(x[0], fhe="simulate")
    assert one.shape == (10,)
    np.testing.assert_allclose(one, single.predict(x[:1], fhe="simulate")[0])
    assert single.predict(np.zeros((0, 1, 28, 28))).shape == (0, 10)


def test_client_and_server_roles(compiled, digits):
    x, _ = digits
    client = hecnn.Client(compiled.client_spec())
    assert not client.has_keys
    client.keygen()
    assert client.has_keys and len(client.key_id) == 64
    server = hecnn.Server(compiled, client.evaluation_keys())
    assert server.key_id == client.key_id and server.fingerprint == compiled.fingerprint
    inputs = client.encrypt(x[:3])
    assert inputs.kind == "inputs" and inputs.images == 3 and inputs.packing == compiled.packing
    outputs = server.run(inputs)
    assert inputs.consumed and outputs.kind == "outputs"
    logits = client.decrypt(outputs)
    np.testing.assert_array_equal(logits.argmax(1), compiled.predict(x[:3]).argmax(1))
    # The inputs were moved into the run: a second run says so.
    with pytest.raises(hecnn.UsageError, match="consumed"):
        server.run(inputs)
    with pytest.raises(hecnn.UsageError):
        client.keygen()  # keys held: not replaced without force
    client.keygen(force=True)
    assert client.key_id != server.key_id


def server_of(compiled, client):
    return hecnn.Server(compiled, client.evaluation_keys())


def test_ciphertexts_of_another_key_pair_are_refused(single, digits):
    x, _ = digits
    a, b = hecnn.Client(single), hecnn.Client(single)
    a.keygen()
    b.keygen()
    server = hecnn.Server(single, a.evaluation_keys())
    foreign = b.encrypt(x[:1])
    with pytest.raises(hecnn.MismatchError) as e:
        server.run(foreign)
    assert e.value.kind == "Mismatch" and e.value.what == "key pair"
    # Refused inputs stay with the caller: checked before they are taken.
    assert not foreign.consumed
    assert b.decrypt(server_of(single, b).run(foreign)).shape == (1, 10)
    out = server.run(a.encrypt(x[:1]))
    with pytest.raises(hecnn.MismatchError):
        b.decrypt(out)


def test_insecure_toy_parameters_for_tests(model_path, digits):
    x, _ = digits
    with pytest.warns(UserWarning, match="insecure"):
        toy = hecnn.compile(model_path, mode="batch", security="insecure", log_n=12)
    assert toy.parameters["log_n"] == 12 and toy.max_images == 2048
    np.testing.assert_array_equal(
        toy.predict(x[:2], fhe="execute").argmax(1), toy.predict(x[:2]).argmax(1)
    )


def test_auto_mode_reports_its_choice(model_path):
    one = hecnn.compile(model_path, mode="auto", images=1)
    many = hecnn.compile(model_path, mode="auto", images=4096)
    assert one.packing == "single" and many.packing == "batch"
    assert one.choice and many.choice


def test_an_inputset_calibrates_the_plan(model_path, digits):
    x, _ = digits
    seen = []
    c = hecnn.compile(model_path, inputset=x[:32], mode="single",
                      progress=lambda *a: seen.append(a))
    assert seen == [("compile", 0, 1), ("compile", 1, 1), ("calibrate", 0, 1), ("calibrate", 1, 1)]
    cal = c.calibrate(x[:32])
    assert cal["fits"] and cal["images"] == 32
