"""Appending to a gs:// log uploads only the new bytes: the metrics and TensorBoard writers cost
O(what they log), not O(steps²)."""
import json

import pytest

from gcs_server import FaultProxy
from megadoc import fs, gcs
from megadoc.train import metrics



@pytest.fixture
def proxy(gcs_server, monkeypatch):
    monkeypatch.setattr(gcs, "RETRY", gcs.RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05,
                                                      deadline_s=10.0))
    with FaultProxy(gcs_server) as p:
        yield p


@pytest.mark.parametrize("flushes", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_uploaded_bytes_grow_linearly_over_metric_flushes(proxy, gcs_server, flushes):
    """Each flush appends a metrics row and a TensorBoard event (8 requests on the emulator:
    1,000 flushes take minutes on a loaded machine, hence slow; 100 show the same)."""
    FLUSHES = flushes
    workdir = gcs_server.fresh_path()
    writer = metrics.Writer(workdir, num_steps=FLUSHES, log_every=1)
    uploaded = []
    for step in range(1, FLUSHES + 1):
        writer.write({"step": step, "eval/val/loss": 1.0 / step})
        writer.flush()
        uploaded.append(proxy.uploaded_bytes)
    first, second = uploaded[FLUSHES // 2 - 1], uploaded[-1] - uploaded[FLUSHES // 2 - 1]
    print(f"uploaded after {FLUSHES // 2} flushes: {first} bytes; after {FLUSHES}: "
          f"{uploaded[-1]}")
    # Linear: the second half of the flushes uploads about what the first did (quadratic: 3x).
    assert second < 1.1 * first
    logged = fs.read_bytes(fs.join(workdir, "metrics.jsonl"))
    [events] = fs.glob(fs.join(workdir, "tensorboard", "events.out.tfevents.*"))
    # Every flush uploads its new bytes plus a bounded request overhead, nothing old.
    assert uploaded[-1] < len(logged) + len(fs.read_bytes(events)) + FLUSHES * 2 * 1024
    rows = [json.loads(line) for line in logged.decode().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, FLUSHES + 1))
    assert fs.listdir(workdir) == ["metrics.jsonl", "tensorboard"]  # no part objects left


def test_an_append_whose_compose_answer_was_lost_is_not_doubled(proxy, gcs_server):
    path = fs.join(gcs_server.fresh_path(), "log.jsonl")
    fs.append_bytes(path, b"one\n")
    # metadata read, part upload, then the compose happens but its answer is lost: the retry
    # finds the object already appended to.
    proxy.inject(None, None, "lost")
    fs.append_bytes(path, b"two\n")
    assert proxy.pending() == 0
    assert fs.read_text(path) == "one\ntwo\n"
    fs.append_bytes(path, b"three\n")
    assert fs.read_text(path) == "one\ntwo\nthree\n"
