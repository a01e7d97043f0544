"""megadoc.fs behaves the same on a local directory and on gs:// (a real emulator on loopback)."""
import os
import threading

import pytest

from gcs_server import FaultProxy
from megadoc import fs, gcs


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_server").fresh_path()


def test_write_read_roundtrip_and_overwrite(root):
    path = fs.join(root, "a", "b.bin")
    fs.write_bytes(path, b"\x00\x01payload")
    assert fs.read_bytes(path) == b"\x00\x01payload"
    fs.write_text(path, "héllo\n")
    assert fs.read_text(path) == "héllo\n"
    fs.write_bytes(path, b"")
    assert fs.read_bytes(path) == b""


def test_missing_file_is_file_not_found(root):
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(root, "nope.txt"))
    with pytest.raises(FileNotFoundError):
        fs.remove(fs.join(root, "nope.txt"))
    with pytest.raises(FileNotFoundError):
        with fs.open_read(fs.join(root, "nope.txt")):
            pass


def test_exists_listdir_glob(root):
    for name in ["x.jsonl", "y.jsonl", "z.txt", "sub/inner.txt", "sub/deeper/leaf.txt"]:
        fs.write_text(fs.join(root, name), name)
    assert fs.exists(fs.join(root, "x.jsonl"))
    assert fs.exists(fs.join(root, "sub"))  # a directory
    assert fs.exists(root)
    assert not fs.exists(fs.join(root, "missing"))
    assert not fs.exists(fs.join(root, "x.js"))  # a name prefix is not a file
    assert fs.listdir(root) == ["sub", "x.jsonl", "y.jsonl", "z.txt"]
    assert fs.listdir(fs.join(root, "sub")) == ["deeper", "inner.txt"]
    assert fs.listdir(fs.join(root, "missing")) == []
    assert fs.glob(fs.join(root, "*.jsonl")) == [fs.join(root, "x.jsonl"), fs.join(root, "y.jsonl")]
    assert fs.glob(fs.join(root, "sub", "*")) == [fs.join(root, "sub", "deeper"),
                                                  fs.join(root, "sub", "inner.txt")]
    assert fs.glob(fs.join(root, "*.parquet")) == []
    with pytest.raises(ValueError, match="last component"):
        fs.glob(fs.join(root, "*", "*.txt"))


def test_append_jsonl_creates_then_appends(root):
    path = fs.join(root, "logs", "metrics.jsonl")
    fs.append_jsonl(path, [{"step": 1}])
    fs.append_jsonl(path, [{"step": 2}])
    assert fs.read_text(path) == '{"step": 1}\n{"step": 2}\n'
    assert fs.read_jsonl_log(path) == [(1, {"step": 1}), (2, {"step": 2})]


def test_remove_and_rmtree(root):
    for name in ["run1/a", "run1/sub/b", "run10/c", "keep"]:
        fs.write_text(fs.join(root, name), name)
    fs.remove(fs.join(root, "keep"))
    assert not fs.exists(fs.join(root, "keep"))
    fs.rmtree(fs.join(root, "run1"))
    assert not fs.exists(fs.join(root, "run1"))
    assert fs.read_text(fs.join(root, "run10", "c")) == "run10/c"  # a sibling sharing the prefix
    fs.rmtree(fs.join(root, "never-existed"))  # no error, as for a missing local directory
    assert fs.listdir(root) == ["run10"]


def test_open_read_streams_in_ranges_and_seeks(root, monkeypatch):
    monkeypatch.setattr(gcs, "READ_CHUNK_BYTES", 1000)  # forces many ranged GETs on gs://
    data = bytes(range(256)) * 40 + b"\nsecond line\nlast"
    path = fs.join(root, "big.bin")
    fs.write_bytes(path, data)
    with fs.open_read(path) as f:
        assert f.read(10) == data[:10]
        assert f.seekable()
        f.seek(5000)
        assert f.tell() == 5000
        assert f.read(3000) == data[5000:8000]
        f.seek(-4, 2)
        assert f.read() == b"last"
        f.seek(0)
        lines = f.readlines()
    assert b"".join(lines) == data and lines[-1] == b"last"


def test_open_read_feeds_parquet(root):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "text": ["one", "two"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = fs.join(root, "docs.parquet")
    fs.write_bytes(path, sink.getvalue().to_pybytes())
    with fs.open_read(path) as f:
        assert pq.read_table(f).to_pylist() == table.to_pylist()


def test_write_is_atomic_for_concurrent_readers(root):
    path = fs.join(root, "shard.bin")
    versions = [b"a" * 300_000, b"b" * 200_000]
    fs.write_bytes(path, versions[0])
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(fs.read_bytes(path))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(6):
        fs.write_bytes(path, versions[i % 2])
    stop.set()
    t.join()
    assert seen and all(s in versions for s in seen)
    assert fs.listdir(root) == ["shard.bin"]  # no temporary left behind


def test_commit_marker_publishes_a_directory(root):
    shard = fs.join(root, "shard-00000")
    fs.write_text(fs.join(shard, "data.jsonl"), "{}\n")
    assert not fs.is_committed(shard)
    fs.commit(shard, {"records": 1})
    assert fs.is_committed(shard)
    assert fs.read_text(fs.join(shard, fs.COMMIT_MARKER)) == '{"records": 1}\n'


def test_tensorstore_kvstore_spec(tmp_path):
    assert fs.tensorstore_kvstore("gs://bkt/runs/a/store") == {
        "driver": "gcs", "bucket": "bkt", "path": "runs/a/store/"}
    assert fs.tensorstore_kvstore("gs://bkt") == {"driver": "gcs", "bucket": "bkt", "path": ""}
    assert fs.tensorstore_kvstore(str(tmp_path / "s")) == {
        "driver": "file", "path": str(tmp_path / "s") + "/"}


def test_missing_bucket_is_a_clear_error(gcs_server):
    for op in (lambda p: fs.read_bytes(p), lambda p: fs.write_text(p, "x"), fs.exists,
               fs.listdir, fs.remove, lambda p: fs.append_jsonl(p, [{}])):
        with pytest.raises(fs.StorageError, match=r"^gs://no-such-bucket/x/y: bucket does not exist"):
            op("gs://no-such-bucket/x/y")


def test_check_writable_leaves_nothing_behind(root):
    fs.check_writable(fs.join(root, "run"))
    assert fs.listdir(fs.join(root, "run")) == []


def test_check_writable_refuses_missing_and_read_only_buckets(gcs_server):
    with pytest.raises(fs.StorageError, match=r"^gs://no-such-bucket/run/.*: bucket does not exist"):
        fs.check_writable("gs://no-such-bucket/run")
    with FaultProxy(gcs_server) as proxy:
        proxy.read_only = True
        with pytest.raises(fs.StorageError, match=r"^gs://megadoc-test/run/.*: permission denied"):
            fs.check_writable("gs://megadoc-test/run")


def test_streaming_read_fetches_whole_chunks(gcs_server, monkeypatch):
    monkeypatch.setattr(gcs, "READ_CHUNK_BYTES", 1000)
    path = fs.join(gcs_server.fresh_path(), "f.bin")
    fs.write_bytes(path, b"x" * 10_500)
    with FaultProxy(gcs_server) as proxy:  # here only to count requests
        with fs.open_read(path) as f:
            assert f.read() == b"x" * 10_500
        assert len(proxy.requests) <= 1 + 11  # metadata, then one GET per chunk


def test_put_file_and_get_file(root, tmp_path):
    local = tmp_path / "model.safetensors"
    local.write_bytes(b"w" * 5000)
    path = fs.join(root, "hf", "model.safetensors")
    fs.put_file(str(local), path)
    assert fs.read_bytes(path) == b"w" * 5000
    copy = tmp_path / "cache" / "copy.safetensors"
    fs.get_file(path, str(copy))
    assert copy.read_bytes() == b"w" * 5000
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.safetensors"]
    with pytest.raises(FileNotFoundError):
        fs.get_file(fs.join(root, "missing"), str(tmp_path / "cache" / "m"))
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.safetensors"]  # no temp left


def test_glob_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs.write_text("a.jsonl", "")
    fs.write_text("sub/b.jsonl", "")
    assert fs.glob("*.jsonl") == ["a.jsonl"]
    assert fs.glob("sub/*.jsonl") == [os.path.join("sub", "b.jsonl")]


def test_local_writes_get_ordinary_file_permissions(tmp_path):
    path = str(tmp_path / "summary.json")
    fs.write_text(path, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
