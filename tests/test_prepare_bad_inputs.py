"""The prepare job on a new user's mistakes: nothing the user owns is deleted, a store never
silently holds the wrong content, and each refusal names the path and what was expected."""
import os
import time

import pytest

from data_fixtures import corpus, train_tokenizer
from megadoc.data import docs, store
from megadoc.data.prepare import PrepareConfig, prepare


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    source = corpus(30)
    docs.write_jsonl(str(d / "docs.jsonl"), source)
    gens = [{"doc_id": "not-" + x["id"], "method": "rephrase", "sample": 0, "offset": None,
             "text": f"Rephrase of {x['id']}.", "finish_reason": "eos"} for x in source]
    docs.write_jsonl(str(d / "unmatched.jsonl"), gens)
    tok = train_tokenizer(str(d / "tok.model"), [x["text"] for x in source])
    return {"dir": d, "tok": tok}


def config(inputs, out, **kw):
    return PrepareConfig(**dict(dict(docs=str(inputs["dir"] / "docs.jsonl"), recipe="real",
                                     tokenizer=inputs["tok"].path, seq_len=16, seed=0,
                                     output=str(out), buckets=2), **kw))


def test_an_output_holding_other_files_is_refused_and_left_intact(inputs, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"mine: holds files that are not a window store "
                                              r"\(thesis.tex\)"):
        prepare(config(inputs, out))
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(out)) == ["thesis.tex"]


def test_the_input_file_itself_as_output_is_refused(inputs, tmp_path):
    target = tmp_path / "docs.jsonl"
    target.write_bytes((inputs["dir"] / "docs.jsonl").read_bytes())
    with pytest.raises(OSError, match="docs.jsonl"):
        prepare(config(inputs, target, docs=str(target)))
    assert target.read_bytes() == (inputs["dir"] / "docs.jsonl").read_bytes()


def test_a_store_or_an_interrupted_prepare_may_be_replaced(inputs, tmp_path):
    out = tmp_path / "s"
    prepare(config(inputs, out))
    first = prepare(config(inputs, out, seed=1, output=str(out) + "-other"))
    assert first["num_windows"] > 0
    (out / store.METADATA).unlink()  # an interrupted, resumable-or-not prepare
    assert prepare(config(inputs, out, seq_len=8))["seq_len"] == 8


def test_a_synthetic_store_with_no_usable_generation_is_refused(inputs, tmp_path):
    out = tmp_path / "stitched"
    with pytest.raises(ValueError, match=r"unmatched.jsonl: none of its 30 generations can be used"
                                         r".*unknown_doc_id.*real text only"):
        prepare(config(inputs, out, recipe="stitched",
                       generations=str(inputs["dir"] / "unmatched.jsonl")))
    assert not store.is_complete(str(out))


def test_changed_documents_under_a_finished_store_are_not_reused(inputs, tmp_path):
    source = tmp_path / "docs.jsonl"
    docs.write_jsonl(str(source), corpus(30))
    out = tmp_path / "s"
    prepare(config(inputs, out, docs=str(source)))
    time.sleep(0.01)
    docs.write_jsonl(str(source), corpus(31))
    with pytest.raises(ValueError, match=r"s: holds a complete store prepared with other settings "
                                         r"\(inputs: .*'size'"):
        prepare(config(inputs, out, docs=str(source)))


def test_the_same_output_spelled_differently_is_the_same_store(inputs, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(tmp_path)
    prepare(config(inputs, "x"))
    capsys.readouterr()
    prepare(config(inputs, "./x/"))
    assert "already complete" in capsys.readouterr().out
