"""A client of ``hecnn serve``, the encrypted-inference service, over HTTP(S).

The service holds a compiled model and evaluates it on clients' encrypted images with their
evaluation keys; it never sees a secret key. This client speaks its HTTP API (see
``docs/services.md``) with the standard library only:

>>> import hecnn
>>> service = hecnn.ServeClient("http://127.0.0.1:7900", token="...")  # a client token
>>> client = hecnn.Client(service.spec())          # the served model's client spec
>>> client.keygen()
>>> session = service.open_session(client)         # registers the evaluation keys
>>> logits = client.decrypt(session.run(client.encrypt(x)))

The administrator (who holds the token ``hecnn serve`` writes into its state directory)
makes client tokens with :meth:`ServeClient.add_client`.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Optional, Union

from . import _hecnn
from ._errors import HecnnError

__all__ = ["ServeClient", "ServeSession", "ServiceError"]

#: Largest response body read (encrypted outputs of a full batch are about 1 GiB).
MAX_RESPONSE_BYTES = 4 << 30


class ServiceError(HecnnError):
    """The service refused a request or could not be reached (``Service``).

    Attributes:
        status: the HTTP status (``None`` when no answer came: ``detail`` says why).
        code: the service's error code (``"unauthorized"``, ``"queue_full"``, …) when it
            answered with one.
        url: the request's URL.
        detail: the service's message, or the transport error.
        retry_after: the seconds the service asked to wait before trying again, if any.
    """


def _error(
    url: str,
    status: Optional[int],
    code: Optional[str],
    detail: str,
    retry_after: Optional[float] = None,
) -> ServiceError:
    where = f"HTTP {status}" if status is not None else "no answer"
    return ServiceError(
        f"{url}: {where}: {detail}",
        "Service",
        status=status,
        code=code,
        url=url,
        detail=detail,
        retry_after=retry_after,
    )


class ServeClient:
    """A connection to a ``hecnn serve`` service.

    Args:
        url: the service's address, e.g. ``"https://infer.example:7900"``.
        token: a client token (from the administrator's :meth:`add_client`), or the
            administrator token for :meth:`add_client` and :meth:`clients`. Read from the
            file ``token_file`` instead when given.
        token_file: a file holding the token (``hecnn serve`` writes the administrator's
            into its state directory).
        ca: certificate authorities (a PEM file) trusted for an ``https`` service; the
            system's by default.
        timeout: seconds one HTTP request may take (long polls excepted: they ask the
            service to wait at most this long).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        ca: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise _error(url, None, None, "expected an http:// or https:// address")
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = float(timeout)
        self._context = None
        if parsed.scheme == "https":
            self._context = ssl.create_default_context(
                cafile=os.fspath(ca) if ca is not None else None
            )

    def __repr__(self) -> str:
        return f"<hecnn.ServeClient {self.url}>"

    # ----- HTTP -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        content_type: str = "application/octet-stream",
        auth: bool = True,
        timeout: Optional[float] = None,
        accept: tuple[int, ...] = (200,),
    ) -> tuple[int, bytes, Any]:
        url = self.url + path
        headers = {"Accept": "application/json, application/octet-stream"}
        if body is not None:
            headers["Content-Type"] = content_type
        if auth:
            if not self._token:
                raise _error(url, None, None, "this request needs a token (token= or token_file=)")
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(
                req, timeout=timeout or self._timeout, context=self._context
            ) as resp:
                status = resp.status
                data = resp.read(MAX_RESPONSE_BYTES + 1)
                resp_headers = resp.headers
        except urllib.error.HTTPError as e:
            status, resp_headers = e.code, e.headers
            data = e.read(1 << 20)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _error(url, None, None, str(reason)) from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise _error(url, status, None, f"a response over {MAX_RESPONSE_BYTES} bytes")
        if status not in accept:
            code, detail = None, data[:2000].decode("utf-8", "replace")
            try:
                v = json.loads(data)
                code, detail = v.get("error"), v.get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise _error(url, status, code, detail, _retry_after(resp_headers))
        return status, data, resp_headers

    def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        raw = None if body is None else json.dumps(body).encode()
        _, data, _ = self._request(method, path, raw, content_type="application/json", **kw)
        return json.loads(data)

    # ----- the API ----------------------------------------------------------------------

    def health(self) -> dict:
        """``GET /v1/health``: liveness, the model's name, fingerprint and packing."""
        _, data, _ = self._request("GET", "/v1/health", auth=False)
        return json.loads(data)

    def spec(self) -> "_hecnn.ClientSpec":
        """The served model's :class:`ClientSpec` (``GET /v1/spec``): what a client needs to
        make keys, encrypt and decrypt."""
        _, data, _ = self._request("GET", "/v1/spec", auth=False)
        return _hecnn.ClientSpec.from_bytes(data)

    def add_client(self, name: str) -> str:
        """Creates a client (administrator token) and returns its token, shown once."""
        return str(self._json("POST", "/v1/clients", {"name": name}, accept=(201,))["token"])

    def clients(self) -> Any:
        """The clients and their sessions (administrator token)."""
        return self._json("GET", "/v1/clients")

    def open_session(
        self, keys: Union["_hecnn.Client", bytes, bytearray, memoryview]
    ) -> "ServeSession":
        """Registers evaluation keys (a :class:`Client` after ``keygen()``, or the keys'
        bytes) and returns the session that runs jobs with them. Keys registered before
        give the same session back."""
        body = keys.evaluation_keys() if isinstance(keys, _hecnn.Client) else bytes(keys)
        _, data, _ = self._request("POST", "/v1/sessions", body, accept=(200, 201))
        v = json.loads(data)
        return ServeSession(self, str(v["session_id"]), v)


def _retry_after(headers: Any) -> Optional[float]:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return None if value is None else max(0.0, float(value))
    except (TypeError, ValueError):
        return None


class ServeSession:
    """A session of a :class:`ServeClient`: evaluation keys registered with the service.

    Attributes:
        id: the session id.
        info: what the service answered when the session was opened (key id, model).
    """

    def __init__(self, service: ServeClient, session_id: str, info: Optional[dict] = None):
        self.service = service
        self.id = session_id
        self.info = info or {}

    def __repr__(self) -> str:
        return f"<hecnn.ServeSession {self.id} at {self.service.url}>"

    def status(self) -> dict:
        """``GET /v1/sessions/{id}``: key pair, model, pending and finished jobs."""
        return self.service._json("GET", f"/v1/sessions/{self.id}")

    def submit(self, inputs: Any, *, timeout: float = 3600.0) -> str:
        """Submits encrypted inputs (:class:`EncryptedImages` or their bytes) and returns
        the job id. A full queue (429) is retried after the service's ``Retry-After``
        until ``timeout`` seconds have passed."""
        body = inputs.to_bytes() if isinstance(inputs, _hecnn.EncryptedImages) else bytes(inputs)
        deadline = time.monotonic() + timeout
        backoff = 0.1
        while True:
            try:
                _, data, _ = self.service._request(
                    "POST", f"/v1/sessions/{self.id}/jobs", body, accept=(202,)
                )
                return str(json.loads(data)["job_id"])
            except ServiceError as e:
                if e.status not in (429, 502, 503, 504) or time.monotonic() >= deadline:
                    raise
                wait = e.retry_after if e.retry_after is not None else backoff
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 5.0)

    def result(
        self, job: str, *, timeout: float = 3600.0, progress: Optional[Callable] = None
    ) -> "_hecnn.EncryptedImages":
        """Waits for job ``job`` (long polls of at most 20 s) and returns its encrypted
        outputs, read against the served model's client spec. ``progress("serve", 0, 1)``
        is called after every poll that found the job pending."""
        spec = None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _error(
                    f"{self.service.url}/v1/jobs/{job}", 202, "pending",
                    f"still pending after {timeout:.0f} s (raise timeout=)",
                )
            wait = min(left, 20.0)
            status, data, _ = self.service._request(
                "GET", f"/v1/jobs/{job}?wait={wait:.1f}", accept=(200, 202),
                timeout=wait + self.service._timeout,
            )
            if status == 200:
                if spec is None:
                    spec = self.service.spec()
                return _hecnn.EncryptedImages.from_bytes(data, spec)
            if progress is not None:
                progress("serve", 0, 1)

    def delete_job(self, job: str) -> None:
        """Removes a finished job's result from the service."""
        self.service._request("DELETE", f"/v1/jobs/{job}", accept=(204,))

    def run(
        self, inputs: Any, *, timeout: float = 3600.0, progress: Optional[Callable] = None
    ) -> "_hecnn.EncryptedImages":
        """Submits ``inputs``, waits for the outputs, removes the job's result from the
        service and returns the outputs (decrypt them with the :class:`Client`)."""
        start = time.monotonic()
        job = self.submit(inputs, timeout=timeout)
        out = self.result(job, timeout=max(0.0, timeout - (time.monotonic() - start)),
                          progress=progress)
        try:
            self.delete_job(job)
        except ServiceError:
            pass  # the result expires on its own
        if progress is not None:
            progress("serve", 1, 1)
        return out

    def close(self) -> None:
        """Deletes the session and its keys from the service."""
        self.service._request("DELETE", f"/v1/sessions/{self.id}", accept=(204,))
