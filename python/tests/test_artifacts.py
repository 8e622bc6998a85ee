"""Every artifact saves and loads: the compiled model, the client spec, the client's keys,
the server's (evaluation) keys and the ciphertexts, as bytes and as files."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest

import hecnn


def test_compiled_model_bytes_and_files(compiled, digits, tmp_path):
    x, _ = digits
    again = hecnn.CompiledModel.from_bytes(compiled.to_bytes())
    assert again.fingerprint == compiled.fingerprint and again.packing == compiled.packing
    path = tmp_path / "m.hecnn"
    compiled.save(path)
    loaded = hecnn.load(path)
    assert loaded.fingerprint == compiled.fingerprint
    assert loaded.report() == compiled.report()
    np.testing.assert_array_equal(loaded.predict(x[:4]), compiled.predict(x[:4]))


def test_models_and_specs_pickle_and_clients_do_not(single, digits):
    x, _ = digits
    again = pickle.loads(pickle.dumps(single))
    assert isinstance(again, hecnn.CompiledModel) and again.fingerprint == single.fingerprint
    np.testing.assert_array_equal(again.predict(x[:2]), single.predict(x[:2]))
    spec = pickle.loads(pickle.dumps(single.client_spec()))
    assert spec.fingerprint == single.fingerprint
    # A client holds a secret key: it is not pickled by accident.
    with pytest.raises(TypeError):
        pickle.dumps(hecnn.Client(spec))


def test_client_spec_bytes_and_files(single, tmp_path):
    spec = single.client_spec()
    again = hecnn.ClientSpec.from_bytes(spec.to_bytes())
    assert again.fingerprint == single.fingerprint
    assert again.evaluation_key_bytes == single.key_sizes["evaluation_keys"]
    spec.save(tmp_path / "m.spec")
    assert hecnn.ClientSpec.load(tmp_path / "m.spec").input_shape == (1, 28, 28)
    # A client needs the spec only (bytes work too).
    assert hecnn.Client(spec.to_bytes()).spec.fingerprint == single.fingerprint


def test_keys_and_ciphertexts_travel_as_bytes(compiled, digits):
    x, _ = digits
    # The client: keys made once, kept as bytes.
    client = hecnn.Client(compiled.client_spec().to_bytes())
    client.keygen()
    secret, public, evk = client.secret_key(), client.public_key(), client.evaluation_keys()
    assert client.bootstrap_keys() is None
    inputs = client.encrypt(x[:2]).to_bytes()
    # The server: the compiled model's bytes and the evaluation keys only.
    server = hecnn.Server(compiled.to_bytes(), evk)
    outputs = server.run(inputs).to_bytes()
    # A new client with the saved keys decrypts.
    restored = hecnn.Client(compiled.client_spec())
    restored.load_keys(secret, public)
    assert restored.key_id == client.key_id
    logits = restored.decrypt(outputs)
    np.testing.assert_array_equal(logits.argmax(1), compiled.predict(x[:2]).argmax(1))
    # Ciphertexts read back: their header, and the same logits.
    read = hecnn.EncryptedImages.from_bytes(outputs, compiled)
    assert read.kind == "outputs" and read.images == 2 and read.key_id == client.key_id
    np.testing.assert_array_equal(restored.decrypt(read), logits)
    # Without the public key, a new one of the same key pair is made.
    other = hecnn.Client(compiled)
    other.load_keys(secret)
    np.testing.assert_array_equal(
        client.decrypt(server.run(other.encrypt(x[:1]))).argmax(1), logits.argmax(1)[:1]
    )


def test_keys_and_ciphertexts_as_files(single, digits, tmp_path):
    x, _ = digits
    client = hecnn.Client(single)
    client.keygen()
    keys = tmp_path / "keys"
    client.save_keys(keys)
    assert sorted(os.listdir(keys)) == ["eval.keys", "public.key", "secret.key"]
    assert stat.S_IMODE(os.stat(keys / "secret.key").st_mode) & 0o077 == 0
    with pytest.raises(hecnn.UsageError):
        client.save_keys(keys)  # an existing secret key is not replaced without force
    inputs = client.encrypt(x[:2])
    copy = inputs.copy()
    inputs.save(tmp_path / "inputs.ct")
    server = hecnn.Server(single, (keys / "eval.keys").read_bytes())
    out = server.run(hecnn.EncryptedImages.load(tmp_path / "inputs.ct", single))
    out.save(tmp_path / "outputs.ct")
    restored = hecnn.Client(single)
    restored.load_key_dir(keys)
    assert restored.key_id == client.key_id
    # The evaluation keys came back too.
    assert len(restored.evaluation_keys()) == len(client.evaluation_keys())
    got = restored.decrypt(hecnn.EncryptedImages.load(tmp_path / "outputs.ct", single))
    np.testing.assert_array_equal(got.argmax(1), single.predict(x[:2]).argmax(1))
    # The copy taken before the run runs again.
    np.testing.assert_array_equal(client.decrypt(server.run(copy)).argmax(1), got.argmax(1))


def test_damaged_and_foreign_artifacts_are_refused(single, batch, digits):
    x, _ = digits
    data = bytearray(single.to_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(hecnn.ArtifactError) as e:
        hecnn.CompiledModel.from_bytes(bytes(data))
    assert e.value.kind == "Checksum"
    with pytest.raises(hecnn.ArtifactError):
        hecnn.ClientSpec.from_bytes(b"not a spec")
    client = hecnn.Client(single)
    client.keygen()
    inputs = client.encrypt(x[:1]).to_bytes()
    # Ciphertexts of the single-image plan are not the batch plan's.
    with pytest.raises(hecnn.MismatchError) as e:
        hecnn.EncryptedImages.from_bytes(inputs, batch)
    assert e.value.what in ("compiled model", "packing")
    # Evaluation keys of other parameters.
    with pytest.raises(hecnn.HecnnError):
        hecnn.Server(batch, client.evaluation_keys())
    with pytest.raises(hecnn.FileError) as e:
        hecnn.load("/nonexistent/model.hecnn")
    assert e.value.path == "/nonexistent/model.hecnn" or str(e.value.path).endswith("model.hecnn")
