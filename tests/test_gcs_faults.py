"""gs:// failure modes on loopback: transient errors are retried, permanent ones name the path.

Faults are real: a proxy in front of the emulator answers 503/429/500 or resets the TCP
connection, and the emulator process itself is stopped and restarted on the same port.
"""
import threading

import pytest

from gcs_server import FaultProxy, GcsServer
from megadoc import fs, gcs


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(gcs, "RETRY", gcs.RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05,
                                                      deadline_s=10.0))


@pytest.fixture
def proxy(gcs_server, fast_retries):
    with FaultProxy(gcs_server) as p:
        yield p


def test_transient_failures_are_retried_through(proxy, gcs_server):
    root = gcs_server.fresh_path()
    path = fs.join(root, "a.txt")
    proxy.inject(503, 429, "reset", 500)
    fs.write_text(path, "payload")
    assert proxy.pending() == 0

    proxy.inject("reset", 503)
    assert fs.read_text(path) == "payload"
    proxy.inject(502, "reset")
    assert fs.listdir(root) == ["a.txt"]
    proxy.inject(504)
    assert fs.exists(path)
    fs.write_text(path, "payload\n")
    proxy.inject(None, "lost")  # the read passes; the upload's answer is lost, it is redone
    fs.append_jsonl(path, [{"more": 1}])
    with fs.open_read(path) as f:
        proxy.inject("reset", 503)  # between opening and the ranged GET
        assert f.read() == b'payload\n{"more": 1}\n'
    proxy.inject(503, "reset")
    fs.rmtree(root)
    assert proxy.pending() == 0
    assert fs.listdir(root) == []


def test_remove_whose_answer_was_lost_still_succeeds(proxy, gcs_server):
    path = fs.join(gcs_server.fresh_path(), "x")
    fs.write_text(path, "x")
    proxy.inject("lost")  # deleted, but the client sees a reset and retries the DELETE: 404
    fs.remove(path)
    assert [r.split()[0] for r in proxy.requests[-2:]] == ["DELETE", "DELETE"]
    assert not fs.exists(path)


def test_persistent_failure_gives_up_at_the_deadline(proxy, gcs_server, monkeypatch):
    monkeypatch.setattr(gcs, "RETRY", gcs.RetryPolicy(initial_delay_s=0.01, max_delay_s=0.02,
                                                      deadline_s=0.3))
    path = fs.join(gcs_server.fresh_path(), "x")
    proxy.inject(*[503] * 10_000)
    with pytest.raises(fs.StorageError, match=r"^gs://.*/x: gave up after \d+ attempts .*HTTP 503"):
        fs.write_text(path, "x")
    assert 1 < 10_000 - proxy.pending() < 10_000
    proxy.clear()


def test_read_only_bucket_is_a_clear_error(proxy, gcs_server):
    path = fs.join(gcs_server.fresh_path(), "published.txt")
    fs.write_text(path, "v1")
    proxy.read_only = True
    before = len(proxy.requests)
    with pytest.raises(fs.StorageError, match=r"^gs://.*/published.txt: permission denied"):
        fs.write_text(path, "v2")
    assert len(proxy.requests) == before + 1  # permanent: not retried
    with pytest.raises(fs.StorageError, match="permission denied"):
        fs.remove(path)
    assert fs.read_text(path) == "v1"  # reading is still allowed


def test_server_down_then_back_on_the_same_port(tmp_path, fast_retries):
    with GcsServer(data_dir=str(tmp_path / "disk")) as server:
        path = fs.join(server.fresh_path(), "ckpt", "state.bin")
        fs.write_bytes(path, b"before")
        server.stop()
        restart = threading.Timer(0.5, server.start)
        restart.start()
        try:
            fs.write_bytes(path + ".new", b"after")  # connection refused until the restart
        finally:
            restart.join()
        assert fs.read_bytes(path) == b"before"  # the disk-backed server kept its objects
        assert fs.read_bytes(path + ".new") == b"after"


def test_missing_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)  # as on a machine with real GCS and no login
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(fs.StorageError, match=r"^gs://any-bucket/x: no usable credentials"):
        fs.read_bytes("gs://any-bucket/x")


def test_missing_object_in_a_bucket_whose_metadata_is_forbidden(proxy, gcs_server, monkeypatch):
    """Service accounts often may read objects but not bucket metadata (403): a missing object
    must still be FileNotFoundError, not a permission error about the bucket."""
    monkeypatch.setattr(gcs, "_known_buckets", set())
    proxy.inject(None, 403)  # the object GET passes (404), the bucket GET is refused
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(gcs_server.fresh_path(), "missing"))
    assert proxy.pending() == 0


def test_object_written_through_a_proxy_streams_once_the_proxy_is_gone(gcs_server):
    """The ranged reads of open_read follow the object's mediaLink, which must name the host
    the reader talks to (on GCS: always the API endpoint), not the writer's."""
    path = fs.join(gcs_server.fresh_path(), "via_proxy.jsonl")
    with FaultProxy(gcs_server):
        fs.write_text(path, "written through the proxy\n")
    with fs.open_read(path) as f:
        assert f.read() == b"written through the proxy\n"
