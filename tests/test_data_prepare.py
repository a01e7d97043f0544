import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_fixtures import corpus, train_tokenizer
from megadoc import fs
from megadoc.data import docs, store
from megadoc.data.prepare import STREAM_LAYOUT, PrepareConfig, prepare, shuffle_key

SEQ = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    source = corpus(60)
    docs.write_jsonl(str(d / "docs.jsonl"), source)
    gens = [{"doc_id": x["id"], "method": "rephrase", "sample": s, "offset": None,
             "text": f"Rephrase {s} of {x['id']}.", "finish_reason": "eos", "seed": s,
             "generator": "g", "template": "t"} for x in source for s in (2, 1, 0)]
    gens += [{"doc_id": x["id"], "method": "latent_thoughts", "sample": 0, "offset": len(x["text"]) // 2,
              "text": f"thought on {x['id']}", "finish_reason": "length"} for x in source]
    docs.write_jsonl(str(d / "gens.jsonl.gz"), gens)
    tok = train_tokenizer(str(d / "tok.model"), [x["text"] for x in source] + [g["text"] for g in gens])
    return {"dir": d, "docs": source, "gens": gens, "tok": tok}


def config(inputs, out, **kw):
    base = dict(docs=str(inputs["dir"] / "docs.jsonl"), recipe="real", tokenizer=inputs["tok"].path,
                seq_len=SEQ, seed=3, output=str(out), buckets=4)
    return PrepareConfig(**dict(base, **kw))


def stream(s):
    """The token stream the windows were cut from (windows overlap by one token)."""
    rows = s.read(np.arange(len(s)))
    return np.concatenate([rows["tokens"][0], rows["tokens"][1:, 1:].reshape(-1)]), rows


def documents(s, tok):
    """The decoded EOS-terminated pieces of the stream, and the unfinished tail."""
    tokens, _ = stream(s)
    cuts = np.flatnonzero(tokens == tok.eos_id)
    return [tok.decode(p) for p in np.split(tokens, cuts + 1)[:-1]], tokens[cuts[-1] + 1:]


def stream_documents(s, tok):
    """The stream cut at BOS: each stream document as its list of decoded EOS-terminated pieces
    (the first and last may be cut by the store's edges)."""
    tokens, _ = stream(s)
    out = []
    for doc in np.split(tokens, np.flatnonzero(tokens == tok.bos_id))[1:]:
        assert doc[0] == tok.bos_id and (doc[1:] != tok.bos_id).all()
        cuts = np.flatnonzero(doc == tok.eos_id)
        out.append([tok.decode(p[p != tok.bos_id]) for p in np.split(doc, cuts + 1)[:-1]])
    return out


def sources(inputs):
    """Decoded text -> the id of the source document it came from."""
    out = {x["text"]: x["id"] for x in inputs["docs"]}
    return out | {g["text"]: g["doc_id"] for g in inputs["gens"] if g["method"] == "rephrase"}


def test_simple_stream_shuffles_every_rephrase_across_the_corpus(inputs, tmp_path):
    prepare(config(inputs, tmp_path / "s", recipe="simple", generations=str(inputs["dir"] / "gens.jsonl.gz")))
    docs_ = stream_documents(store.open(str(tmp_path / "s")), inputs["tok"])
    assert all(len(d) == 1 for d in docs_[:-1])  # every rephrase and real doc is its own document
    source = sources(inputs)
    ids = [source[d[0]] for d in docs_[:-1]]
    assert len(ids) > 230  # 60 docs x (3 rephrases + the real text), less the unfinished tail
    same = np.mean([a == b for a, b in zip(ids, ids[1:])])
    assert same < 0.1  # near 1/60, not the 3/4 of a source-by-source order


@pytest.mark.parametrize("position", ["last", "first"])
def test_stitched_stream_keeps_each_source_together_eos_separated(inputs, tmp_path, position):
    prepare(config(inputs, tmp_path / "t", recipe="stitched", real_position=position,
                   generations=str(inputs["dir"] / "gens.jsonl.gz")))
    docs_ = stream_documents(store.open(str(tmp_path / "t")), inputs["tok"])
    source = sources(inputs)
    by_id = {x["id"]: x["text"] for x in inputs["docs"]}
    for d in docs_[:-1]:  # one BOS per source; its pieces EOS-separated, rephrases in sample order
        [doc_id] = {source[p] for p in d}
        rephrases = [f"Rephrase {k} of {doc_id}." for k in range(3)]
        assert d == (rephrases + [by_id[doc_id]] if position == "last" else [by_id[doc_id]] + rephrases)
    assert len({source[d[0]] for d in docs_}) == len(docs_) > 50


def test_real_stream_is_the_seeded_permutation_joined_with_eos(inputs, tmp_path):
    tok = inputs["tok"]
    meta = prepare(config(inputs, tmp_path / "real"))
    s = store.open(str(tmp_path / "real"))
    store.check_tokenizer(s, tok)
    order = sorted(inputs["docs"], key=lambda x: shuffle_key(3, x["id"]))
    texts, tail = documents(s, tok)
    assert texts == [x["text"] for x in order][:len(texts)]
    assert len(texts) >= len(order) - 2  # only the unfinished tail is missing ...
    assert len(tail) > 0 and meta["dropped_tail_tokens"] < SEQ  # ... and it is counted
    assert meta["num_tokens"] == len(stream(s)[0]) + meta["dropped_tail_tokens"]
    assert meta["num_tokens"] == sum(len(tok.encode(x["text"])) + 2 for x in order)  # BOS, EOS
    assert meta["counts"]["docs_used"] == 60 and meta["tokenizer_fingerprint"] == tok.fingerprint
    tokens, rows = stream(s)
    seg = rows["segment_ids"]
    assert (seg[:, 0] == 1).all()  # numbering restarts in every window ...
    assert (np.diff(seg, axis=1) == (rows["tokens"][:, :-1] == tok.eos_id)).all()  # ... +1 after EOS
    assert len(tokens) == len(s) * SEQ + 1


def test_order_depends_on_seed_not_on_input_layout_or_workers(inputs, tmp_path):
    shuffled = list(reversed(inputs["docs"]))
    docs.write_jsonl(str(tmp_path / "a.jsonl"), shuffled[:30])
    docs.write_jsonl(str(tmp_path / "b.jsonl.gz"), shuffled[30:])
    a = prepare(config(inputs, tmp_path / "a"))
    b = prepare(config(inputs, tmp_path / "b", docs=str(tmp_path / "*.jsonl*"), buckets=1))
    prepare(config(inputs, tmp_path / "c", seed=4))
    read = lambda p: stream(store.open(str(tmp_path / p)))[0]  # noqa: E731
    assert a["num_windows"] == b["num_windows"]
    np.testing.assert_array_equal(read("a"), read("b"))
    assert not np.array_equal(read("a")[:200], read("c")[:200])


def test_bad_input_is_counted_and_recorded(inputs, tmp_path):
    path = str(tmp_path / "docs.jsonl")
    records = inputs["docs"][:20] + [{"id": "doc3", "text": "duplicate"}, {"id": "e1", "text": ""},
                                     {"id": "e2", "text": " \n\t "}]
    docs.write_jsonl(path, records)
    with open(path, "ab") as f:
        f.write(b'{"id": "x", "text": "\xff\xfe"}\n{"id": \n')
    gens = str(tmp_path / "g.jsonl")
    docs.write_jsonl(gens, inputs["gens"][:10] + [
        dict(inputs["gens"][0], doc_id="nobody"), inputs["gens"][0],
        dict(inputs["gens"][0], sample=9, text="has </think> inside"),
        dict(inputs["gens"][0], sample=10, text="", finish_reason="prompt_too_long")])
    meta = prepare(config(inputs, tmp_path / "s", docs=path, generations=gens, recipe="simple"))
    skipped = meta["skipped"]["counts"]
    assert skipped == {"duplicate_id": 1, "empty_doc": 2, "invalid_utf8": 1, "malformed_json": 1,
                       "unknown_doc_id": 1, "duplicate_generation": 1, "think_tag_in_generation": 1,
                       "generation_without_text": 1}
    assert meta["counts"]["docs_used"] == 20 and meta["counts"]["generations_used"] == 10
    assert meta["counts"]["docs_without_generations"] == 16
    assert any(f"{path}:21" in e for e in meta["skipped"]["examples"]["duplicate_id"])
    assert any(f"{gens}:11" in e for e in meta["skipped"]["examples"]["unknown_doc_id"])


def test_latent_store_gives_back_the_real_documents(inputs, tmp_path):
    tok = inputs["tok"]
    prepare(config(inputs, tmp_path / "l", recipe="latent", generations=str(inputs["dir"] / "gens.jsonl.gz")))
    texts, _ = documents(store.open(str(tmp_path / "l")), tok)
    by_text = {x["text"] for x in inputs["docs"]}
    assert len(texts) > 50 and all("<think>thought on doc" in t for t in texts)
    assert all(re.sub(r"<think>.*?</think>", "", t, flags=re.S) in by_text for t in texts)


def test_restart_keeps_a_complete_store_and_rewrites_a_partial_one(inputs, tmp_path, capsys):
    out = tmp_path / "r"
    first = prepare(config(inputs, out))
    tokens_file = out / "tokens" / "zarr.json"
    stamp = os.stat(tokens_file).st_mtime_ns
    assert prepare(config(inputs, out, buckets=2)) == first  # buckets do not change the contents
    assert os.stat(tokens_file).st_mtime_ns == stamp and "already complete" in capsys.readouterr().out
    old_layout = json.loads((out / store.METADATA).read_text())
    old_layout["settings"]["stream_layout"] = 1  # a store from before BOS and the paper's streams
    (out / store.METADATA).write_text(json.dumps(old_layout))
    with pytest.raises(ValueError, match="stream_layout: 1 -> 2"):
        prepare(config(inputs, out))
    (out / store.METADATA).write_text(json.dumps(dict(old_layout, settings=first["settings"])))
    with pytest.raises(ValueError, match="other settings"):
        prepare(config(inputs, out, seed=99))
    os.remove(out / store.METADATA)  # a job killed before its commit marker
    (out / "tokens" / "c" / "junk").write_bytes(b"x")
    again = prepare(config(inputs, out))
    assert again["num_windows"] == first["num_windows"] and not (out / "tokens" / "c" / "junk").exists()


def test_command_line_reads_every_flag(inputs, tmp_path):
    out = tmp_path / "cli"
    args = [f"--docs={inputs['dir'] / 'docs.jsonl'}", f"--generations={inputs['dir'] / 'gens.jsonl.gz'}",
            "--recipe=stitched", "--real_position=first", "--include_real=true",
            f"--tokenizer={inputs['tok'].path}", "--seq_len=12", "--seed=5", f"--output={out}",
            "--workers=2", "--buckets=3"]
    run = subprocess.run([sys.executable, "-m", "experiments.prepare", *args], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tokens/s" in run.stdout and "docs" in run.stdout
    meta = json.loads((out / store.METADATA).read_text())
    assert [f["file"] for f in meta["settings"].pop("inputs")] == [args[0][7:], args[1][14:]]
    assert meta["settings"] == dict(docs=args[0][7:], generations=args[1][14:], recipe="stitched",
                                    real_position="first", include_real=True, tokenizer=inputs["tok"].path,
                                    seq_len=12, seed=5, output=str(out), max_generations=None,
                                    stream_layout=STREAM_LAYOUT)
    inproc = prepare(config(inputs, tmp_path / "inproc", generations=str(inputs["dir"] / "gens.jsonl.gz"),
                            recipe="stitched", real_position="first", seq_len=12, seed=5, buckets=3))
    np.testing.assert_array_equal(stream(store.open(str(out)))[0],  # 2 tokenizer processes = 1
                                  stream(store.open(str(tmp_path / "inproc")))[0])
    second = stream_documents(store.open(str(out)), inputs["tok"])[1]
    doc = next(x for x in inputs["docs"] if second[0] == x["text"])
    assert second == [doc["text"]] + [f"Rephrase {k} of {doc['id']}." for k in range(3)]
    assert inproc["num_windows"] == meta["num_windows"]


def test_max_generations_keeps_samples_below_n_and_the_thoughts_of_count_n(inputs, tmp_path):
    tok = inputs["tok"]
    source = inputs["docs"][:12]
    path = str(tmp_path / "three.jsonl")
    gens = [{"doc_id": x["id"], "method": "rephrase", "sample": s, "offset": None,
             "text": f"Rephrase {s} of {x['id']}.", "finish_reason": "eos"}
            for x in source for s in (2, 0, 1)]
    # A latent run at split counts 2 and 3: samples 0-1 are count 2's, 2-4 count 3's.
    gens += [{"doc_id": x["id"], "method": "latent_thoughts", "sample": s, "splits": k,
              "offset": len(x["text"]) * (i + 1) // (k + 1), "text": f"thought k{k}-{i}",
              "finish_reason": "eos"}
             for x in source for s, (k, i) in enumerate([(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])]
    docs.write_jsonl(path, gens)
    docs_path = str(tmp_path / "docs.jsonl")
    docs.write_jsonl(docs_path, source)
    for recipe in ("simple", "stitched", "latent"):
        meta = prepare(config(inputs, tmp_path / recipe, docs=docs_path, generations=path,
                              recipe=recipe, max_generations=2))
        assert meta["max_generations"] == 2 and meta["settings"]["max_generations"] == 2
        assert meta["counts"]["generations_used"] == 2 * 2 * 12, recipe  # 2 of each method
        assert meta["counts"]["generations_beyond_max"] == 12  # the rephrases' sample 2
        assert meta["counts"]["generations_of_other_split_counts"] == 3 * 12  # count 3's
        text = "".join(documents(store.open(str(tmp_path / recipe)), tok)[0])
        if recipe == "latent":
            assert "thought k2-0" in text and "thought k2-1" in text and "k3" not in text
        else:
            assert "Rephrase 0 of" in text and "Rephrase 1 of" in text
            assert "Rephrase 2 of" not in text
    with pytest.raises(ValueError, match="needs --generations"):
        prepare(config(inputs, tmp_path / "r", max_generations=2))


def test_killed_job_resumes_after_its_last_finished_bucket(inputs, tmp_path, monkeypatch, capsys):
    from megadoc.data import prepare as prepare_lib

    gens = str(inputs["dir"] / "gens.jsonl.gz")
    fresh = prepare(config(inputs, tmp_path / "fresh", recipe="simple", generations=gens, seq_len=8))
    real_stream_documents, calls = prepare_lib._stream_documents, []

    def dies_in_bucket_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("preempted")
        return real_stream_documents(*args)

    monkeypatch.setattr(prepare_lib, "_stream_documents", dies_in_bucket_3)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(config(inputs, out, recipe="simple", generations=gens, seq_len=8))
    assert not store.is_complete(str(out)) and (out / prepare_lib.PROGRESS).exists()
    calls.clear()
    resumed = prepare(config(inputs, out, recipe="simple", generations=gens, seq_len=8))
    assert len(calls) == 2 and "resuming" in capsys.readouterr().out  # buckets 3 and 4 only
    assert not (out / prepare_lib.PROGRESS).exists()
    for key in ("num_windows", "num_tokens", "counts", "skipped", "dropped_tail_tokens"):
        assert resumed[key] == fresh[key], key
    a, b = store.open(str(out)), store.open(str(tmp_path / "fresh"))
    for name in ("tokens", "segment_ids"):
        np.testing.assert_array_equal(a.read(np.arange(len(a)))[name], b.read(np.arange(len(b)))[name])


def test_inputs_and_store_on_gcs(inputs, gcs_server, tmp_path):
    base = gcs_server.fresh_path()
    docs.write_jsonl(base + "/docs/part-0.jsonl.gz", inputs["docs"])
    fs.write_bytes(base + "/tok.model", fs.read_bytes(inputs["tok"].path))
    remote = prepare(config(inputs, base + "/store", docs=base + "/docs", tokenizer=base + "/tok.model",
                            buckets=1))
    local = prepare(config(inputs, tmp_path / "local"))
    assert remote["num_windows"] == local["num_windows"] and not fs.exists(base + "/store/prepare_progress.json")
    np.testing.assert_array_equal(stream(store.open(base + "/store"))[0], stream(store.open(str(tmp_path / "local")))[0])
