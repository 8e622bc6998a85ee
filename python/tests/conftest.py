"""Shared fixtures: the bundled MNIST network, the MNIST sample digits the repository
carries (``data/sample``, or ``$HECNN_SAMPLES``), compiled models in both packings, and a
hand-written ONNX encoder for models the ``onnx`` package is not needed to build."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import hecnn

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "hcnn-mnist.onnx"


def _samples_dir() -> Path:
    env = os.environ.get("HECNN_SAMPLES")
    return Path(env) if env else REPO / "data" / "sample"


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL.exists():
        pytest.skip(f"{MODEL} not found: run the tests from a hecnn checkout")
    return MODEL


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 300 MNIST test digits of ``data/sample`` as ``(N, 1, 28, 28)`` float32 and labels."""
    d = _samples_dir()
    images, labels = d / "mnist-test-images.idx3-ubyte", d / "mnist-test-labels.idx1-ubyte"
    if not images.exists():
        pytest.skip(f"{images} not found (set HECNN_SAMPLES to the sample directory)")
    return hecnn.load_idx(images, labels)


@pytest.fixture(scope="session")
def single(model_path) -> hecnn.CompiledModel:
    """The MNIST network in single-image packing at 128-bit security (N = 2^13)."""
    return hecnn.compile(model_path, mode="single")


@pytest.fixture(scope="session")
def batch(model_path) -> hecnn.CompiledModel:
    """The MNIST network in batch packing at 128-bit security (N = 2^14)."""
    return hecnn.compile(model_path, mode="batch")


@pytest.fixture(scope="session", params=["single", "batch"])
def compiled(request, single, batch) -> hecnn.CompiledModel:
    return {"single": single, "batch": batch}[request.param]


# ----- a minimal ONNX writer (protobuf wire format), for models with chosen operators ------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _value_info(name: str, shape: list[int]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)  # Dimension.dim_value
    tensor_type = _field(1, 1) + _field(2, dims)  # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))


def onnx_model(nodes: list[tuple[str, str, list[str], list[str]]], shape: list[int]) -> bytes:
    """An ONNX model (opset 13) of ``nodes`` as ``(name, op_type, inputs, outputs)``, its
    input ``x`` of ``shape``, its output the last node's first output."""
    graph = b"".join(
        _field(1, b"".join(_field(1, i) for i in ins) + b"".join(_field(2, o) for o in outs)
               + _field(3, name) + _field(4, op))
        for name, op, ins, outs in nodes
    )
    graph += _field(2, "g") + _field(11, _value_info("x", shape))
    graph += _field(12, _field(1, nodes[-1][3][0]))
    return _field(1, 7) + _field(7, graph) + _field(8, _field(2, 13))

