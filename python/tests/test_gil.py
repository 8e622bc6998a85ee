"""Heavy calls release the GIL: another Python thread runs while the server evaluates."""

from __future__ import annotations

import threading
import time

import hecnn


def test_server_run_releases_the_gil(single, digits):
    x, _ = digits
    client = hecnn.Client(single)
    client.keygen()
    server = hecnn.Server(single, client.evaluation_keys())
    inputs = client.encrypt(x[:6])

    ticks: list[float] = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        while not ticks:
            time.sleep(0.001)
        start = time.perf_counter()
        out = server.run(inputs)
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    assert out.images == 6
    # Ticks well inside the run: the counting thread held the GIL while Rust worked.
    # (A margin at each end, never more than a quarter of the run however fast it was.)
    margin = min(0.02, (end - start) / 8)
    inside = [s for s in ticks if start + margin < s < end - margin]
    assert len(inside) >= 3, f"{len(inside)} ticks during a {end - start:.3f} s run"
