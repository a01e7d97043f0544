"""tensorstore arrays on local paths and on gs:// (the emulator), through fs.tensorstore_kvstore."""
import numpy as np
import pytest
import tensorstore as ts

from gcs_server import FaultProxy
from megadoc import fs


def _fast_retries(max_retries: int) -> ts.Context:
    return ts.Context({"gcs_request_retries": {
        "max_retries": max_retries, "initial_delay": "10ms", "max_delay": "50ms"}})


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_server").fresh_path()


def test_zarr3_write_then_read_in_a_fresh_context(root):
    spec = {"driver": "zarr3", "kvstore": fs.tensorstore_kvstore(fs.join(root, "windows"))}
    tokens = np.arange(40 * 9, dtype=np.int32).reshape(40, 9)
    out = ts.open(spec, create=True, dtype=ts.int32, shape=tokens.shape,
                  chunk_layout=ts.ChunkLayout(chunk_shape=[16, 9])).result()
    out.write(tokens).result()

    back = ts.open(spec, open=True, context=ts.Context()).result()  # no shared cache
    np.testing.assert_array_equal(back.read().result(), tokens)
    np.testing.assert_array_equal(back[17:19].read().result(), tokens[17:19])
    assert sorted(fs.listdir(fs.join(root, "windows")))[-1] == "zarr.json"


def test_tensorstore_retries_transient_gcs_failures(gcs_server):
    kvstore = fs.tensorstore_kvstore(fs.join(gcs_server.fresh_path(), "arr"))
    spec = {"driver": "zarr3", "kvstore": kvstore}
    ts.open(spec, create=True, dtype=ts.float32, shape=[4]).result().write(
        np.float32([1, 2, 3, 4])).result()
    with FaultProxy(gcs_server) as proxy:
        proxy.inject(503, "reset", 429)
        arr = ts.open(spec, context=_fast_retries(5)).result()
        np.testing.assert_array_equal(arr.read().result(), [1, 2, 3, 4])
        assert proxy.pending() == 0

        proxy.inject(*[503] * 50)
        with pytest.raises(ValueError, match="All 2 retry attempts failed"):
            ts.open(spec, context=_fast_retries(2)).result()
        proxy.clear()


def test_delete_existing_removes_only_its_own_prefix(root):
    """zarr's delete_existing is a ranged delete: a sibling with the same name prefix and the
    parent's other files survive it (the emulator once listed the whole bucket for it)."""
    fs.write_text(fs.join(root, "notes.txt"), "keep")
    fs.write_text(fs.join(root, "arr10", "zarr.json"), "{}")
    spec = {"driver": "zarr3", "kvstore": fs.tensorstore_kvstore(fs.join(root, "arr1")),
            "create": True, "delete_existing": True}
    ts.open(spec, dtype=ts.int32, shape=[2]).result().write(np.int32([1, 2])).result()
    ts.open(spec, dtype=ts.int32, shape=[2]).result()  # recreate: deletes arr1/ only
    assert fs.read_text(fs.join(root, "notes.txt")) == "keep"
    assert fs.exists(fs.join(root, "arr10", "zarr.json"))
