"""The client of ``hecnn serve``: a real service on loopback (the CLI binary), a client made
by its administrator, keys registered, encrypted images run remotely and decrypted here.
Skipped without the binary."""

from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pytest

import hecnn
from conftest import REPO
from test_cli_interop import _binary


@pytest.fixture(scope="module")
def service(single, tmp_path_factory):
    exe = _binary()
    d = tmp_path_factory.mktemp("serve")
    single.save(d / "m.hecnn")
    proc = subprocess.Popen(
        [exe, "serve", str(d / "m.hecnn"), "--state", str(d / "state"), "--listen",
         "127.0.0.1:0", "--threads", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url, token_file, lines, deadline = None, None, [], time.monotonic() + 120
    assert proc.stdout is not None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"administrator token in (.+)$", line.rstrip()):
            token_file = m.group(1)
        if m := re.search(r"listening on (\S+)", line):
            url = m.group(1)
    if url is None or token_file is None:
        proc.kill()
        pytest.fail("hecnn serve did not start:\n" + "".join(lines))
    yield url, token_file
    proc.terminate()
    proc.wait(timeout=30)


def test_encrypted_images_run_on_the_service(service, single, digits):
    url, admin_file = service
    x, _ = digits
    admin = hecnn.ServeClient(url, token_file=admin_file)
    assert admin.health()["packing"] == "single-image"
    token = admin.add_client("pytest")
    remote = hecnn.ServeClient(url, token)
    spec = remote.spec()
    assert spec.fingerprint == single.fingerprint
    client = hecnn.Client(spec)
    client.keygen()
    session = remote.open_session(client)
    assert session.info["key_id"] == client.key_id
    assert remote.open_session(client.evaluation_keys()).id == session.id  # same keys, same session
    stages = []
    out = session.run(client.encrypt(x[:2]), progress=lambda *a: stages.append(a))
    assert stages[-1] == ("serve", 1, 1)
    got = client.decrypt(out)
    want = single.predict(x[:2], fhe="disable")
    np.testing.assert_allclose(got, want, atol=0.1)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert session.status()["jobs_pending"] == 0
    session.close()
    with pytest.raises(hecnn.ServiceError) as e:
        session.status()
    assert e.value.status == 404


def test_refusals_are_typed(service, single, digits):
    url, admin_file = service
    x, _ = digits
    with pytest.raises(hecnn.ServiceError) as e:
        hecnn.ServeClient(url, "not-a-token").open_session(b"keys")
    assert e.value.status == 401
    admin = hecnn.ServeClient(url, token_file=admin_file)
    with pytest.raises(hecnn.ServiceError) as e:
        admin.open_session(b"keys")
    assert e.value.status == 403 and "administrator" in e.value.detail
    remote = hecnn.ServeClient(url, admin.add_client("pytest-2"))
    with pytest.raises(hecnn.ServiceError) as e:
        remote.open_session(b"not evaluation keys")
    assert e.value.status in (400, 422)
    with pytest.raises(hecnn.ServiceError) as e:
        hecnn.ServeClient("http://127.0.0.1:9", "t", timeout=5).health()
    assert e.value.status is None
    with pytest.raises(hecnn.ServiceError):
        hecnn.ServeClient("ftp://example")
