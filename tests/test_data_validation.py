import dataclasses

import numpy as np
import pytest

from data_fixtures import corpus, train_tokenizer
from megadoc.data import docs, validation
from megadoc.data.prepare import PrepareConfig, encode_document, prepare
from megadoc.train import loop
from train_fixtures import train_config

SEQ = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    train, held_out = corpus(80, seed=0), corpus(20, seed=1)
    docs.write_jsonl(str(d / "train.jsonl"), train)
    docs.write_jsonl(str(d / "val.jsonl"), held_out)
    long_docs = [{"id": f"long{i}", "text": " ".join(x["text"] for x in held_out[i::4])} for i in range(4)]
    docs.write_jsonl(str(d / "long.jsonl"), long_docs)
    tok = train_tokenizer(str(d / "tok.model"), [x["text"] for x in train + held_out])
    real = str(d / "real")
    prepare(PrepareConfig(docs=str(d / "train.jsonl"), recipe="real", tokenizer=tok.path,
                          seq_len=SEQ, seed=0, output=real, buckets=2))
    return {"dir": d, "tok": tok, "real": real, "held_out": held_out}


def test_document_set_and_its_halves_by_tokenized_length(inputs):
    tok = inputs["tok"]
    sets = validation.document_sets("iid", str(inputs["dir"] / "val.jsonl"), tok, SEQ)
    assert list(sets) == ["iid", "iid_short", "iid_long"]
    lengths = [len(encode_document(tok, (x["text"],))) for x in inputs["held_out"]]
    short, long_ = sorted(lengths)[:10], sorted(lengths)[10:]
    assert sets["iid_short"].metadata["documents"] == sets["iid_long"].metadata["documents"] == 10
    assert sets["iid_short"].metadata["num_tokens"] == sum(short)
    assert sets["iid_long"].metadata["num_tokens"] == sum(long_)
    whole = sets["iid"]
    assert whole.metadata["num_tokens"] == sum(lengths) and whole.seq_len == SEQ
    # concat-and-chunk: documents in file order, each BOS + text + EOS, windows overlap by one token
    stream = np.concatenate([encode_document(tok, (x["text"],)) for x in inputs["held_out"]])
    rows = whole.read(np.arange(len(whole)))["tokens"]
    np.testing.assert_array_equal(rows[:, :-1].reshape(-1), stream[:len(whole) * SEQ])


@pytest.mark.slow
def test_run_summary_carries_every_named_set(inputs, tmp_path):
    workdir = str(tmp_path / "run")
    cfg = train_config(["--preset=tiny", f"--workdir={workdir}", f"--real={inputs['real']}",
                        "--epochs=1", "--lr=3e-3", "--weight_decay=0.1", "--checkpoint_every_minutes=0",
                        f"--val=iid={inputs['dir'] / 'val.jsonl'}",
                        f"--val=arxiv={inputs['dir'] / 'long.jsonl'}", f"--val=store={inputs['real']}"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=inputs["tok"].vocab_size))
    summary = loop.train(cfg)
    for name in ("iid", "iid_short", "iid_long", "arxiv", "arxiv_short", "arxiv_long", "store"):
        assert np.isfinite(summary[f"val/{name}"]), name
    assert summary["windows"]["synthetic_windows"] == 0 and summary["windows"]["steps"] == summary["final_step"]
