"""PyTorch modules compile through ONNX export (torch is optional: skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is an optional dependency (pip install 'hecnn[torch]')"
)
pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")

import hecnn  # noqa: E402


class Square(torch.nn.Module):
    def forward(self, x):
        return x * x


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, stride=2),
        torch.nn.BatchNorm2d(4),
        Square(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 12 * 12, 10),
    )


def test_a_torch_module_compiles_and_predicts_as_torch(digits):
    x, _ = digits
    net = small_cnn()
    net.train()  # the export runs in eval mode and leaves the module as it was
    with torch.no_grad():
        net(torch.as_tensor(x[:64]))  # batch-norm statistics
    c = hecnn.compile(net, inputset=x[:8], mode="single")
    assert net.training
    assert c.name == "Sequential" and c.input_shape == (1, 28, 28)
    net.eval()
    with torch.no_grad():
        want = net(torch.as_tensor(x[:4])).numpy()
    np.testing.assert_allclose(c.predict(x[:4]), want, rtol=1e-4, atol=1e-4)
    enc = c.predict(x[:4], fhe="execute")
    np.testing.assert_array_equal(enc.argmax(1), want.argmax(1))


def test_a_torch_module_needs_an_example_input():
    with pytest.raises(hecnn.UsageError) as e:
        hecnn.compile(small_cnn())
    assert e.value.argument == "example_input"


def test_unsupported_torch_operators_are_all_listed():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Sigmoid(), torch.nn.Flatten(),
        torch.nn.Linear(2 * 26 * 26, 10), torch.nn.Softmax(dim=1),
    )
    with pytest.raises(hecnn.UnsupportedOperatorError) as e:
        hecnn.compile(net, example_input=torch.zeros(1, 1, 28, 28))
    ops = [op for _, op in e.value.operators]
    assert "Sigmoid" in ops and "Softmax" in ops


def test_relu_replaced_by_a_polynomial():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 5, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(2 * 12 * 12, 10),
    )
    example = torch.rand(1, 1, 28, 28)
    with pytest.raises(hecnn.NotPolynomialError):
        hecnn.compile(net, example_input=example, mode="single")
    c = hecnn.compile(net, example_input=example, mode="single", relu_poly=[0, 0, 1])
    assert c.packing == "single"


def test_a_torch_module_is_protected_and_runs_on_an_edge(digits):
    x, _ = digits
    torch.manual_seed(1)
    # A cleartext feature extractor (ReLU is fine: the edge runs it in the clear), then a
    # classifier with a square activation, which the owner encrypts.
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 12 * 12, 32), Square(), torch.nn.Linear(32, 10),
    ).eval()
    owner = hecnn.protect(net, layers="classifier", example_input=x[:1])
    assert owner.scope == "classifier"
    edge = hecnn.Edge(owner.protected_model(), owner.owner_key, owner.evaluation_keys(),
                      owner.public_key())
    with torch.no_grad():
        want = net(torch.as_tensor(x[:3])).numpy()
    np.testing.assert_allclose(owner.plaintext(x[:3]), want, rtol=1e-4, atol=1e-4)
    got = owner.decrypt(edge.run(x[:3], encrypt_features=True))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    with pytest.raises(hecnn.UsageError):
        hecnn.protect(net)  # a module needs its example input
