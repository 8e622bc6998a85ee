"""Typed errors: every unsupported operator at once, wrong shapes, bad arguments, parameters."""

from __future__ import annotations

import numpy as np
import pytest

import hecnn
from conftest import onnx_model


def test_every_unsupported_operator_is_listed():
    model = onnx_model(
        [
            ("sig", "Sigmoid", ["x"], ["a"]),
            ("th", "Tanh", ["a"], ["b"]),
            ("sm", "Softmax", ["b"], ["y"]),
        ],
        [1, 1, 4, 4],
    )
    with pytest.raises(hecnn.UnsupportedOperatorError) as e:
        hecnn.compile(model)
    err = e.value
    assert isinstance(err, hecnn.ModelError) and isinstance(err, hecnn.HecnnError)
    assert err.kind == "Unsupported"
    assert err.operators == [("sig", "Sigmoid"), ("th", "Tanh"), ("sm", "Softmax")]
    assert err.fields["operators"] == err.operators
    for op in ("Sigmoid", "Tanh", "Softmax"):
        assert op in str(err)


def test_relu_is_refused_unless_replaced():
    model = onnx_model([("r1", "Relu", ["x"], ["a"]), ("flat", "Flatten", ["a"], ["y"])],
                       [1, 1, 4, 4])
    with pytest.raises(hecnn.NotPolynomialError) as e:
        hecnn.compile(model, mode="batch")
    assert e.value.kind == "NotPolynomial" and any("r1" in n for n in e.value.nodes)


def test_malformed_onnx():
    with pytest.raises(hecnn.OnnxError) as e:
        hecnn.compile(b"\x08\x07 not onnx at all")
    assert e.value.kind == "Onnx" and e.value.detail


@pytest.mark.parametrize("shape", [(1, 28, 27), (2, 1, 27, 28), (28, 28), (1, 1, 1, 28, 28)])
def test_a_wrong_input_shape(single, shape):
    x = np.zeros(shape)
    for fhe in ("disable", "simulate", "execute"):
        with pytest.raises(hecnn.ShapeError) as e:
            single.predict(x, fhe=fhe)
        err = e.value
        assert isinstance(err, ValueError)
        assert err.kind == "Mismatch" and err.what == "image shape"
        assert "[1, 28, 28]" in err.expected and str(list(shape)).replace(" ", "") in err.found.replace(" ", "")
    client = hecnn.Client(single)
    client.keygen()
    with pytest.raises(hecnn.ShapeError):
        client.encrypt(x)


def test_bad_arguments(single, model_path):
    with pytest.raises(hecnn.UsageError) as e:
        single.predict(np.zeros((1, 28, 28)), fhe="maybe")
    assert e.value.argument == "fhe" and isinstance(e.value, ValueError)
    with pytest.raises(hecnn.UsageError) as e:
        hecnn.compile(model_path, mode="diagonal")
    assert e.value.argument == "mode"
    with pytest.raises(hecnn.UsageError) as e:
        hecnn.compile(model_path, security=100)
    assert e.value.argument == "security"
    with pytest.raises(hecnn.UsageError):
        hecnn.compile(12345)
    with pytest.raises(hecnn.UsageError):
        hecnn.Client(single).encrypt(np.zeros((1, 28, 28)))  # no keys yet
    with pytest.raises(hecnn.UsageError):
        single.predict(np.full((1, 28, 28), np.nan))


def test_images_of_a_non_numeric_dtype_are_refused_not_converted(single, digits):
    x, _ = digits
    for bad in (x[:1].astype(np.complex128) + 1j, x[:1].astype(str), x[:1].astype(object)):
        with pytest.raises(hecnn.UsageError) as e:
            single.predict(bad)
        assert e.value.argument == "x" and "dtype" in e.value.value
    # Integer and boolean images are numbers: accepted (as float64).
    np.testing.assert_allclose(single.predict((x[:1] > 0.5).astype(np.uint8)),
                               single.predict((x[:1] > 0.5).astype(np.float64)))


def test_no_parameters_for_a_ring_too_small(model_path):
    with pytest.raises(hecnn.ParametersError) as e:
        hecnn.compile(model_path, mode="batch", log_n=10)
    assert e.value.kind == "NoParameters" and e.value.chain == "batch packing"
    assert e.value.reason


def test_progress_callbacks_see_the_work_and_their_exceptions_surface(single, digits):
    x, _ = digits
    seen = []
    single.predict(x[:3], fhe="simulate", progress=lambda *a: seen.append(a))
    assert seen[-1] == ("simulate", 3, 3)

    class Stop(Exception):
        pass

    def stop(stage, done, total):
        raise Stop(stage)

    with pytest.raises(Stop):
        single.predict(x[:2], fhe="disable", progress=stop)


def test_a_raising_keygen_callback_installs_no_keys(single):
    client = hecnn.Client(single.client_spec())

    def stop(stage, done, total):
        raise RuntimeError("stopped by the caller")

    with pytest.raises(RuntimeError, match="stopped by the caller"):
        client.keygen(progress=stop)
    # Nothing half-installed: a retry without force works.
    assert not client.has_keys
    client.keygen()
    assert client.has_keys
