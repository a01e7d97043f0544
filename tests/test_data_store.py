import json
import os

import numpy as np
import pytest

from data_fixtures import labelled_store
from megadoc import fs
from megadoc.data import store


def test_random_access_reads_exact_windows(tmp_path):
    s = labelled_store(str(tmp_path / "s"), 40, seq_len=8, label=2)
    assert len(s) == 40 and s.seq_len == 8 and s.metadata["num_windows"] == 40
    assert s[5]["tokens"].tolist() == [2005] * 9 and s[-1]["tokens"][0] == 2039
    got = s.read([39, 3, 3, 17])
    assert got["tokens"].dtype == np.int32 and got["tokens"].shape == (4, 9)
    assert got["tokens"][:, 0].tolist() == [2039, 2003, 2003, 2017]
    with pytest.raises(IndexError):
        s.read([40])


def test_store_on_gcs(gcs_server, tmp_path):
    path = gcs_server.fresh_path() + "/store"
    s = labelled_store(path, 20, seq_len=4, label=1)
    again = store.open(path)
    assert again.read([19, 0])["tokens"][:, 0].tolist() == [1019, 1000]
    assert len(s) == 20


def test_store_without_metadata_is_refused(tmp_path):
    path = str(tmp_path / "s")
    labelled_store(path, 10)
    os.remove(os.path.join(path, store.METADATA))
    with pytest.raises(ValueError, match="incomplete window store"):
        store.open(path)
    with pytest.raises(FileNotFoundError):
        store.open(str(tmp_path / "nothing"))


def test_truncated_or_missing_shard_is_an_error_not_zeros(tmp_path):
    path = str(tmp_path / "s")
    labelled_store(path, 40)  # shards of 16 windows: c/0/0, c/1/0, c/2/0
    shard = os.path.join(path, "tokens", "c", "1", "0")
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2])
    s = store.open(path)
    assert s.read([0, 39])["tokens"][:, 0].tolist() == [0, 39]  # other shards still fine
    with pytest.raises(ValueError, match="corrupt"):
        s.read([20])
    os.remove(shard)
    with pytest.raises(ValueError, match=r"windows \[20\].*c/1/0 is missing"):
        s.read([20])


def test_metadata_that_disagrees_with_the_arrays_is_refused(tmp_path):
    path = str(tmp_path / "s")
    labelled_store(path, 10)
    meta = json.loads(fs.read_text(os.path.join(path, store.METADATA)))
    fs.write_text(os.path.join(path, store.METADATA), json.dumps(dict(meta, num_windows=11)))
    with pytest.raises(ValueError, match="does not match"):
        store.open(path)


def test_tokenizer_fingerprint_mismatch_is_refused(tmp_path):
    s = labelled_store(str(tmp_path / "s"), 4, fingerprint="spm:aaaa")

    class Tok:
        fingerprint, path = "spm:bbbb", "other.model"

    with pytest.raises(ValueError, match="spm:aaaa.*spm:bbbb"):
        store.check_tokenizer(s, Tok())
    Tok.fingerprint = "spm:aaaa"
    store.check_tokenizer(s, Tok())
