"""Loss-masked stores and pair stores: the mask survives the store and the loader, a pair window
holds `x1 <separator> x2` with the mask on x2 alone, and plain stores are untouched."""
import json
import os

import numpy as np
import pytest

from megadoc.data import loader as loader_lib
from megadoc.data import pairs as pairs_lib
from megadoc.data import schedule as schedule_lib
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import sharding

TEXTS = ["The river floods every spring and the farmers plant after it recedes.",
         "Each spring the river floods; once it recedes the farmers plant.",
         "A prime number has exactly two divisors: one and itself.",
         "Copper conducts heat well, so pans are often made of it."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "spm.model")
    tokenizer_lib.train_sentencepiece(TEXTS * 30, 400, path)
    return tokenizer_lib.load(path)


def _masked_store(path, n=6, width=9):
    tokens = np.arange(n * width, dtype=np.int32).reshape(n, width)
    mask = (tokens % 3 == 0).astype(np.int32)
    writer = store_lib.StoreWriter(str(path), width - 1, shard_windows=4, loss_mask=True)
    writer.append(tokens, np.ones_like(tokens), mask)
    writer.finish({"tokenizer_fingerprint": "t", "num_tokens": tokens.size, "recipe": "x"})
    return tokens, mask


def test_a_masked_store_reads_its_mask_back_and_a_plain_one_has_none(tmp_path):
    tokens, mask = _masked_store(tmp_path / "m")
    store = store_lib.open(str(tmp_path / "m"))
    assert store.arrays == ("tokens", "segment_ids", "loss_mask") and store.metadata["loss_mask"]
    got = store.read([5, 0, 5])
    np.testing.assert_array_equal(got["loss_mask"], mask[[5, 0, 5]])
    np.testing.assert_array_equal(got["tokens"], tokens[[5, 0, 5]])
    writer = store_lib.StoreWriter(str(tmp_path / "p"), 8)
    with pytest.raises(ValueError, match="loss mask goes with every append"):
        writer.append(tokens, np.ones_like(tokens), mask)
    writer.append(tokens, np.ones_like(tokens))
    meta = writer.finish({"num_tokens": 1})
    assert "loss_mask" not in meta and not os.path.exists(tmp_path / "p" / "loss_mask")
    assert set(store_lib.open(str(tmp_path / "p")).read([0])) == {"tokens", "segment_ids"}


def test_a_lost_mask_shard_is_an_error_not_a_zero_mask(tmp_path):
    _masked_store(tmp_path / "m")
    os.remove(tmp_path / "m" / "loss_mask" / "c" / "1" / "0")
    store = store_lib.open(str(tmp_path / "m"))
    store.read([0, 3])
    with pytest.raises(ValueError, match="hold no data"):
        store.read([4])


def test_the_loader_carries_the_mask_and_keeps_the_order(tmp_path):
    tokens, mask = _masked_store(tmp_path / "m", n=16)
    store = store_lib.open(str(tmp_path / "m"))
    schedule = schedule_lib.MixSchedule(16, 0, 8, 0.0, 2, seed=3)
    loader = loader_lib.BatchLoader(schedule, store, None,
                                   sharding.batch_sharding(sharding.make_mesh()))
    for step, batch in loader:
        _, windows = schedule.batch_indices(step)
        np.testing.assert_array_equal(np.asarray(batch["loss_mask"]), mask[windows])
        np.testing.assert_array_equal(np.asarray(batch["tokens"]), tokens[windows])


def test_pair_window_is_x1_separator_x2_with_the_loss_on_x2(tokenizer):
    x1, x2 = TEXTS[0], TEXTS[1]
    a, b = tokenizer.encode(x1), tokenizer.encode(x2)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    head = [] if bos is None else [bos]
    width = len(head) + len(a) + 1 + len(head) + len(b) + 1 + 5
    tokens, segments, mask, cut = pairs_lib.pair_window(tokenizer, x1, x2, width)
    want = head + a + [eos] + head + b + [eos]
    assert tokens[:len(want)].tolist() == want and not cut
    assert tokens[len(want):].tolist() == [eos] * 5
    assert segments.tolist() == [1] * len(want) + [2] * 5
    x2_start = len(head) + len(a) + 1 + len(head)
    assert mask.tolist() == [0] * x2_start + [1] * (len(b) + 1) + [0] * 5
    prompt = pairs_lib.conditional_prompt(tokenizer, x1, 1000)
    assert prompt == tokens[:x2_start].tolist()  # sampling continues where training's x2 starts
    # Too long: the heads of both, x1 keeping at least half the window.
    tokens, _, mask, cut = pairs_lib.pair_window(tokenizer, x1 + " " + x1, x2 + " " + x2, 24)
    sep = len(pairs_lib.separator(tokenizer))
    assert cut and mask.sum() == 24 - (24 - sep) // 2 - sep and mask[-1] == 1


def test_build_writes_one_masked_window_per_pair(tmp_path, tokenizer):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(TEXTS)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"x1": "d0", "x2": "d1", "score": 0.9}\n'
                     '{"x1": "d1", "x2": "d0", "score": 0.9}\n')
    cfg = pairs_lib.PairStoreConfig(docs=str(docs), pairs=str(pairs),
                                    tokenizer=tokenizer.path, seq_len=64,
                                    output=str(tmp_path / "store"))
    meta = pairs_lib.build(cfg)
    assert meta["loss_mask"] and meta["recipe"] == "sbp_pairs" and meta["num_windows"] == 2
    window = store_lib.open(cfg.output).read([1])
    assert tokenizer.decode(window["tokens"][0][window["loss_mask"][0] == 1].tolist()).strip() \
        == TEXTS[0]
    pairs.write_text('{"x1": "d0", "x2": "nope", "score": 0.9}\n')
    with pytest.raises(ValueError, match="not documents of"):
        pairs_lib.build(cfg)
    pairs.write_text('{"x1": "d0", "x2": "d1", "score": 0.9}\n{"x1": "d0"\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: expected a pair record"):
        pairs_lib.build(cfg)
