"""The exceptions hecnn raises.

Every error of the library (``hecnn_nn::NnError`` and the cryptographic layers' errors
beneath it) becomes an instance of one of these classes. Each carries:

* ``kind``: the name of the library's error variant (``"Unsupported"``, ``"Mismatch"``,
  ``"NoParameters"``, ...);
* the variant's fields as attributes (``operators``, ``what``, ``expected``, ``found``,
  ``node``, ...), and all of them in ``fields``;
* the library's message as ``str(error)``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HecnnError",
    "ModelError",
    "OnnxError",
    "UnsupportedOperatorError",
    "NotPolynomialError",
    "NotSupportedError",
    "ShapeError",
    "ParametersError",
    "RangeError",
    "CalibrationError",
    "EvaluationError",
    "ArtifactError",
    "MismatchError",
    "SignatureError",
    "FileError",
    "DataError",
    "CryptoError",
    "CancelledError",
    "InternalError",
    "UsageError",
]


class HecnnError(Exception):
    """Base class of every hecnn error.

    Attributes:
        message: the library's message.
        kind: the library's error variant (e.g. ``"Mismatch"``), or ``"Usage"`` for a bad
            argument to the binding.
        fields: the variant's fields, also set as attributes.
    """

    message: str
    kind: str
    fields: dict[str, Any]

    def __init__(self, message: str, kind: str = "Other", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.fields = dict(fields)
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:  # pickling keeps the fields
        return (_rebuild, (type(self), self.message, self.kind, self.fields))


def _rebuild(cls: type[HecnnError], message: str, kind: str, fields: dict[str, Any]) -> HecnnError:
    return cls(message, kind, **fields)


class ModelError(HecnnError):
    """A model hecnn cannot run as it is: malformed graph (``Graph``), a part that cannot be
    protected (``Unprotectable``); see the subclasses for operators."""


class OnnxError(ModelError):
    """Malformed or unsupported ONNX structure (``detail``)."""


class UnsupportedOperatorError(ModelError):
    """ONNX operators hecnn cannot import, all of them at once: ``operators`` is a list of
    ``(node, operator)`` pairs."""

    operators: list[tuple[str, str]]


class NotPolynomialError(ModelError):
    """Non-polynomial operators (ReLU, max pooling) without a requested replacement:
    ``nodes``. Pass ``relu_poly=[c0, c1, c2]`` / ``maxpool_as_avgpool=True`` to
    :func:`hecnn.compile`, or retrain with polynomial activations."""

    nodes: list[str]


class NotSupportedError(ModelError):
    """An operator a packing cannot run: ``node``, ``op``, ``packing``, ``why``."""


class ShapeError(HecnnError, ValueError):
    """Inconsistent shapes: an input of the wrong shape (``kind="Mismatch"``, ``what="image
    shape"``, ``expected``, ``found``), a node's weights that do not fit its input
    (``NodeShape``), or another shape error (``Shape``, ``detail``)."""


class ParametersError(HecnnError):
    """No secure parameters run the plan (``NoParameters``: ``chain``, ``reason``), too few
    slots (``TooFewSlots``), too few levels (``OutOfLevels``, ``Levels``), or no placement of
    bootstrapping (``RefreshPlacement``)."""


class RangeError(HecnnError):
    """A value beyond what the parameters hold (``OutOfRange``: ``node``, ``value``,
    ``bound``, ``what``), or a protected result noisier than the bound its release is
    flooded for (``NoiseAboveBound``: ``noise_log2``, ``bound_log2``): not released."""


class CalibrationError(HecnnError):
    """The inputset's values come too close to what the parameters hold (raised by
    :func:`hecnn.compile`); ``calibration`` holds :meth:`CompiledModel.calibrate`'s
    result."""


class EvaluationError(HecnnError):
    """A homomorphic operation failed at ``node`` (``Encrypted``; ``detail``)."""


class ArtifactError(HecnnError):
    """Bytes that are not the artifact they should be: ``Format`` (``what``, ``reason``),
    ``Version`` (``found``, ``expected``, ``remedy``), ``Checksum``, ``TooLarge``,
    ``LayoutMismatch``."""


class SignatureError(ArtifactError):
    """A protected model whose owner signature does not hold (``Signature``; ``detail``):
    unsigned, signed by another owner, or altered after signing; or a malformed owner or
    signing key. The edge refuses to run it."""


class MismatchError(HecnnError):
    """Artifacts that do not belong together (model, parameters, key pair, packing):
    ``what``, ``expected``, ``found``."""


class FileError(HecnnError):
    """Reading or writing a file failed: ``path``, ``detail``, ``errno``."""


class DataError(HecnnError):
    """Missing or malformed data files (``detail``)."""


class CryptoError(HecnnError):
    """An error of the CKKS or RLWE layer outside any node (keys, encoding,
    serialization; ``detail``)."""


class CancelledError(HecnnError):
    """Work stopped on request before it finished."""


class InternalError(HecnnError):
    """A broken internal invariant: a bug in hecnn (please report it)."""


class UsageError(HecnnError, ValueError):
    """An argument the binding cannot use: ``argument``, ``value``, ``expected``."""
