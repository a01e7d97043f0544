"""What the generator writes: latent sweeps at equal splits per count, fidelity and diversity,
style templates, chunk-wise rewriting of long documents, and the leakage audit."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from megadoc.data import docs as docs_lib
from megadoc.data import prepare as prepare_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from megadoc.synth import job

SENTENCES = ["The river floods every spring and the farmers plant after it recedes.",
             "A prime number has exactly two divisors: one and itself.",
             "Copper conducts heat well, so pans are often made of it.",
             "The committee met on 12 March 1998 and approved the budget.",
             "Owls hunt at night and find mice by the sound they make in the grass."]


def _tiny_generator(path, max_seq_len):
    """A tiny random Llama with a sentencepiece tokenizer, as a Hugging Face directory."""
    tokenizer_lib.train_sentencepiece(SENTENCES * 20, 600, os.path.join(path, "tokenizer.model"))
    vocab = tokenizer_lib.load(path).vocab_size
    config = llama.LlamaConfig(vocab_size=vocab, hidden=32, ffn=64, layers=2, heads=4,
                               kv_heads=2, max_seq_len=max_seq_len)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s)).astype(np.float32),
                          llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    hf.save(config, params, path)
    return str(path)


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    return _tiny_generator(tmp_path_factory.mktemp("generator"), 256)


def _write_docs(path, docs):
    docs_lib.write_jsonl(str(path), docs)
    return str(path)


def _template(tmp_path, text, name="template.txt"):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _records(output):
    return list(docs_lib.read_generations(output))


def _prepare(tmp_path, name, docs, generations, tokenizer, **kw):
    return prepare_lib.prepare(prepare_lib.PrepareConfig(
        docs=docs, generations=generations, tokenizer=tokenizer, seq_len=16, seed=0,
        output=str(tmp_path / name), **kw))


def test_latent_sweep_puts_each_counts_thoughts_at_its_own_equal_splits(generator_dir, tmp_path):
    docs = _write_docs(tmp_path / "docs.jsonl", [
        {"id": f"d{i}", "text": " ".join(SENTENCES[i:] + SENTENCES[:i])} for i in range(3)])
    out = str(tmp_path / "latent")
    job.run(job.JobConfig(method="latent_thoughts", generator=generator_dir, docs=docs,
                          output=out, splits=(1, 2, 4), max_new_tokens=3, batch_size=8,
                          template=_template(tmp_path, "Start: {prefix}\nEnd: {suffix}\n")))
    records = _records(out)
    tok = tokenizer_lib.load(generator_dir)
    assert len(records) == 3 * 7
    for d in docs_lib.read_docs(docs):
        ids = tok.encode(d["text"])
        for k in (1, 2, 4):
            mine = sorted((r for r in records if r["doc_id"] == d["id"] and r["splits"] == k),
                          key=lambda r: r["sample"])
            # Count k's thoughts sit after tokens floor(i·n/(k+1)), i = 1..k: k+1 equal pieces.
            expected = [len(tok.decode(ids[:i * len(ids) // (k + 1)])) for i in range(1, k + 1)]
            assert [r["offset"] for r in mine] == expected
    # The sweep's stores: count k holds exactly count k's thoughts.
    for k in (1, 2, 4):
        meta = _prepare(tmp_path, f"latent{k}", docs, out, generator_dir, recipe="latent",
                        max_generations=k)
        assert meta["counts"]["generations_used"] == 3 * k
        assert meta["counts"]["generations_of_other_split_counts"] == 3 * (7 - k)
    with pytest.raises(ValueError, match=r"--method=latent_thoughts --splits=1,2,3,4"):
        _prepare(tmp_path, "latent3", docs, out, generator_dir, recipe="latent",
                 max_generations=3)
    with pytest.raises(ValueError, match=r"split counts \[1, 2, 4\]; a store takes one count"):
        _prepare(tmp_path, "latent_all", docs, out, generator_dir, recipe="latent")


def test_latent_records_without_their_count_are_refused_for_a_sweep(generator_dir, tmp_path):
    """A run from before split counts were recorded: its first N split points are not the N
    equal split points, so --max_generations refuses and names the command that makes them."""
    docs = _write_docs(tmp_path / "docs.jsonl", [{"id": "d0", "text": " ".join(SENTENCES)}])
    gens = _write_docs(tmp_path / "gens.jsonl", [
        {"doc_id": "d0", "method": "latent_thought", "sample": i, "offset": 10 * (i + 1),
         "text": "a thought"} for i in range(4)])
    with pytest.raises(ValueError, match=r"synthesize --method=latent_thoughts --splits=2"):
        _prepare(tmp_path, "s", docs, gens, generator_dir, recipe="latent", max_generations=2)
    meta = _prepare(tmp_path, "all", docs, gens, generator_dir, recipe="latent")
    assert meta["counts"]["generations_used"] == 4


# ----------------------------------------------------------------------------- chunk-wise rewriting

def test_a_document_of_three_contexts_is_rewritten_chunkwise_whole(generator_dir, tmp_path,
                                                                   monkeypatch):
    from megadoc.synth import chunked

    tok = tokenizer_lib.load(generator_dir)
    paragraphs, text = [], ""
    while len(tok.encode(text)) < 3 * 256:
        paragraphs.append(" ".join(SENTENCES[len(paragraphs) % 5:] + SENTENCES[:2]))
        text = "\n\n".join(paragraphs)
    docs = _write_docs(tmp_path / "docs.jsonl", [{"id": "long", "text": text},
                                                 {"id": "short", "text": SENTENCES[0]}])
    prompts_seen = []
    prompt = chunked._prompt

    def spy(gen, w, continue_template, max_new_tokens, chat_date):
        ids = prompt(gen, w, continue_template, max_new_tokens, chat_date)
        prompts_seen.append((w.so_far(), gen.tokenizer.decode(ids), len(ids)))
        return ids

    monkeypatch.setattr(chunked, "_prompt", spy)
    out = str(tmp_path / "out")
    job.run(job.JobConfig(
        method="rephrase", generator=generator_dir, docs=docs, output=out, generations=1,
        max_new_tokens=24, batch_size=4,
        template=_template(tmp_path, "Rewrite: {document}\n"),
        continue_template=_template(tmp_path, "So far: {previous}\nNext: {document}\n",
                                    "continue.txt")))
    records = {(r["doc_id"], r["sample"]): r for r in _records(out)}
    assert "chunks" not in records["short", 0]
    for s in (0,):
        r = records["long", s]
        chunks = r["chunks"]
        assert len(chunks) >= 3 and r["finish_reason"] in ("eos", "length")
        # The chunks cover the source end to end, and the text is their rewrites stitched.
        assert chunks[0]["source_start"] == 0 and chunks[-1]["source_end"] == len(text)
        assert all(a["source_end"] == b["source_start"] for a, b in zip(chunks, chunks[1:]))
        pieces = [r["text"][c["text_start"]:c["text_end"]] for c in chunks]
        assert "\n\n".join(p for p in pieces if p) == r["text"]
        assert {c["finish_reason"] for c in chunks} <= {"eos", "length"}
    # Every chunk prompt leaves room for max_new_tokens; each one after the first carries the
    # end of the rewrite so far.
    assert all(n + 24 <= 256 for _, _, n in prompts_seen)
    later = [(so_far, p) for so_far, p, _ in prompts_seen if so_far.strip()]
    assert later and all(so_far.split()[-1] in p for so_far, p in later)


def test_source_spans_cover_the_text_and_end_at_paragraphs(generator_dir):
    from megadoc.synth import chunked

    tok = tokenizer_lib.load(generator_dir)
    text = "\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(5))
    spans = chunked.source_spans(tok, text, 60)
    assert spans[0][0] == 0 and spans[-1][1] == len(text) and len(spans) > 2
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(len(tok.encode(text[a:b])) <= 60 + 4 for a, b in spans)
    assert all(text[b - 2:b] == "\n\n" or text[b - 1] in " .\n" for _, b in spans[:-1])


# ----------------------------------------------------------------------------- styles and prompts

def test_each_sample_draws_its_style_by_seed_and_records_it(generator_dir, tmp_path):
    from megadoc.synth import styles

    a = _template(tmp_path, "Rewrite plainly: {document}\n", "plain.txt")
    b = _template(tmp_path, "Rewrite as questions: {document}\n", "questions.txt")
    docs = _write_docs(tmp_path / "docs.jsonl",
                       [{"id": f"d{i}", "text": SENTENCES[i]} for i in range(3)])
    out = str(tmp_path / "out")
    job.run(job.JobConfig(method="rephrase", generator=generator_dir, docs=docs, output=out,
                          generations=6, max_new_tokens=4, batch_size=8, seed=7,
                          styles=(a, b)))
    names = [t.name for t in styles.load("rephrase", (a, b))]
    used = set()
    for r in _records(out):
        pick = styles.draw(7, job.sample_stream(r["doc_id"]), r["sample"], 2)
        assert r["template"] == names[pick]
        used.add(r["template"])
    assert used == set(names)
    with pytest.raises(ValueError, match="without template"):
        job.JobConfig(method="rephrase", generator="g", docs="d", output="o", styles=(a,),
                      template=a)
    for settings in ({"styles": ("all",)}, {"continue_template": a}):  # rephrase's alone
        with pytest.raises(ValueError, match="go(es)? with method rephrase"):
            job.JobConfig(method="qa", generator="g", docs="d", output="o", **settings)
    with pytest.raises(ValueError, match="neither a shipped rephrase style"):
        styles.load("rephrase", ("poetry",))


def test_shipped_templates_carry_every_instruction_of_appendix_g2():
    from megadoc.synth import prompts, styles

    for template in styles.load("rephrase", (styles.ALL,)):
        user = template.user.lower()
        assert "whole text" in user or "all of" in user, template.name  # the full article
        assert "formatting" in user, template.name  # regardless of the original formatting
        assert "about 500 words" in user, template.name  # the paper's mean rephrase: 708 tokens
        assert "every fact" in user, template.name
    # the paper's default
    assert styles.load("rephrase", ("wikipedia",))[0].name.startswith("rephrase@")
    latent = prompts.load_template(prompts.builtin_template("latent_thoughts"),
                                   "latent_thoughts").user.lower()
    for duty in ("without markdown", "do not repeat the opening part", "vague",
                 "derivation", "step by step"):
        assert duty in latent


# ------------------------------------------------------------------------ fidelity and diversity

def test_fidelity_is_the_log_likelihood_the_rephrase_adds_to_the_source(generator_dir):
    """The scorer against the model's own log-softmax, on a tiny random model."""
    from megadoc.synth import fidelity, generator

    gen = generator.load(generator_dir)
    scorer = fidelity.Scorer(gen.config, gen.params, gen.tokenizer, tokens_per_batch=64)
    tok = gen.tokenizer
    rephrase, source = SENTENCES[0], SENTENCES[1]

    def logprob(context, continuation):
        seq = np.asarray([context + continuation])
        logits = np.asarray(llama.forward(gen.config, gen.params, seq[:, :-1]), np.float64)[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)
        targets = seq[0, 1:]
        picked = logp[np.arange(len(targets)), targets]
        return picked[len(context) - 1:].sum()

    prefix, src = [tok.bos_id], tok.encode(source)
    with_it = logprob(prefix + tok.encode(rephrase + "\n\n"), src)
    alone = logprob(prefix, src)
    (gain, conditioned), = scorer.fidelity([[(rephrase, source)]])
    assert conditioned == pytest.approx(with_it / len(src), abs=2e-3)
    assert gain == pytest.approx((with_it - alone) / len(src), abs=2e-3)
    # Chunks weigh by their source tokens; a piece longer than the context is not scored.
    (two, _), = scorer.fidelity([[(rephrase, source), (rephrase, source)]])
    assert two == pytest.approx(gain, abs=1e-3)
    assert scorer.fidelity([[(rephrase, " ".join(SENTENCES * 20))]]) == [None]


def test_diversity_stats_find_copies_and_near_duplicates():
    from megadoc.data import overlap

    source = " ".join(SENTENCES)
    pair = SENTENCES[0] + " " + SENTENCES[1]
    texts = [source, pair, pair + " Yes.", "Something else entirely, about ships at night."]
    per, doc = overlap.generation_stats(source, texts)
    assert per[0]["source_overlap"] == 1.0 and per[3]["source_overlap"] == 0.0
    assert per[1]["max_similarity"] > 0.8 and per[2]["max_similarity"] > 0.8
    assert per[3]["max_similarity"] == 0.0
    assert doc["generations"] == 4 and doc["near_duplicates"] == 2  # 1 and 2, each other's


@pytest.mark.slow
def test_smollm2_fidelity_ranks_a_faithful_paraphrase_above_an_off_topic_one():
    """SmolLM2-135M-Instruct, the demo's generator, on 16 short documents with hand-made
    faithful paraphrases; the next document's paraphrase is the off-topic one. ~2 min on 2
    busy cores (loading and compiling the 135M model included)."""
    from megadoc.pipelines import demo
    from megadoc.synth import fidelity, generator
    from tests import fidelity_fixtures as fx

    gen = generator.load(demo.smollm2_path())
    scorer = fidelity.Scorer(gen.config, gen.params, gen.tokenizer)
    docs, good, bad = fx.docs(), fx.faithful(), fx.off_topic()
    scores = scorer.fidelity([[(good[d["id"]], d["text"])] for d in docs]
                             + [[(bad[d["id"]], d["text"])] for d in docs])
    for d, faithful, off in zip(docs, scores[:16], scores[16:]):
        assert faithful[0] > off[0], d["id"]


# ----------------------------------------------------------------------------- prepare's filters

def test_prepare_drops_unfaithful_and_duplicate_rephrases_and_counts_them(generator_dir,
                                                                          tmp_path):
    docs = _write_docs(tmp_path / "docs.jsonl",
                       [{"id": f"d{i}", "text": SENTENCES[i]} for i in range(4)])
    rows = []
    for i in range(4):
        texts = [SENTENCES[i] + " Indeed.", SENTENCES[i] + " Indeed!",  # 1 duplicates 0
                 SENTENCES[(i + 1) % 5]]
        for s, (text, fid) in enumerate(zip(texts, (1.2, 1.1, -0.3 + 0.5 * (i == 0)))):
            rows.append({"doc_id": f"d{i}", "method": "rephrase", "sample": s, "text": text,
                         "fidelity": fid})
    rows.append({"doc_id": "d0", "method": "rephrase", "sample": 3, "text": "unscored"})
    gens = _write_docs(tmp_path / "gens.jsonl", rows)
    meta = _prepare(tmp_path, "filtered", docs, gens, generator_dir, recipe="simple",
                    min_fidelity=0.0, max_duplicate=0.5)
    counts = meta["counts"]
    # Sample 2 is unfaithful in d1..d3 (fidelity -0.3), d0's passes (0.2); sample 1 repeats 0.
    assert counts["filtered/low_fidelity"] == 3
    assert counts["filtered/duplicate"] == 4
    assert counts["generations_used"] == 4 + 1
    assert meta["skipped"]["counts"]["no_fidelity_score"] == 1
    assert meta["settings"]["min_fidelity"] == 0.0 and meta["settings"]["max_duplicate"] == 0.5
    unfiltered = _prepare(tmp_path, "all", docs, gens, generator_dir, recipe="simple")
    assert unfiltered["counts"]["generations_used"] == 13
    assert "min_fidelity" not in unfiltered["settings"]  # stores from before the filters match
    with pytest.raises(ValueError, match="filter rephrases"):
        _prepare(tmp_path, "latent", docs, gens, generator_dir, recipe="latent", min_fidelity=0)


# ----------------------------------------------------------------------------- leakage audit

def _leaky_corpus(tmp_path):
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron "
             "pi rho sigma tau upsilon phi chi psi omega").split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 60)) for _ in range(8)]
    near = texts[5].split()
    near[30] = "changed"  # one word of 60: still a near copy
    val = _write_docs(tmp_path / "val.jsonl", [{"id": "v0", "text": texts[4]},
                                               {"id": "v1", "text": texts[5]},
                                               {"id": "v2", "text": texts[6]}])
    train = [{"id": f"t{i}", "text": texts[i]} for i in range(4)]
    train += [{"id": "t4", "text": "  " + texts[4] + "\n"},  # the same text, other whitespace
              {"id": "t5", "text": " ".join(near)},
              {"id": "v2", "text": texts[7]}]  # a validation document's id, another text
    docs = _write_docs(tmp_path / "train.jsonl", train)
    gens = _write_docs(tmp_path / "gens.jsonl", [
        {"doc_id": d["id"], "method": "rephrase", "sample": 0, "text": "A rephrase."}
        for d in train])
    return docs, gens, val


def test_prepare_refuses_generation_sources_found_in_a_validation_set(generator_dir, tmp_path,
                                                                      capsys):
    docs, gens, val = _leaky_corpus(tmp_path)
    with pytest.raises(ValueError) as e:
        _prepare(tmp_path, "s", docs, gens, generator_dir, recipe="stitched",
                 val=(("iid", val),))
    message = str(e.value)
    assert "2 document(s) are in a validation set" in message
    for doc_id, kind in (("t4", "text"), ("t5", "near_duplicate")):
        assert f"(id {doc_id!r}) matches validation set 'iid'" in message
        assert f"by {kind}" in message
    assert "'t0'" not in message and "'v2'" not in message
    meta = _prepare(tmp_path, "dropped", docs, gens, generator_dir, recipe="stitched",
                    val=(("iid", val),), drop_leaked=True)
    assert meta["counts"]["leakage/leaked_docs"] == 2
    # The same id with another text is reported, not dropped (ids numbered per file collide).
    assert meta["counts"]["leakage/same_id_other_text"] == 1
    assert meta["counts"]["docs_used"] == 5
    assert meta["skipped"]["counts"]["document_in_validation_set"] == 2
    assert meta["skipped"]["counts"]["generation_of_leaked_document"] == 2
    assert "not a leak, but check the ids" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--drop_leaked .* needs --val"):  # before any write
        _prepare(tmp_path, "no_val", docs, gens, generator_dir, recipe="stitched",
                 drop_leaked=True)
    assert not (tmp_path / "no_val").exists()


def test_prepare_val_flag_takes_the_train_spec(generator_dir, tmp_path, capsys):
    from experiments import prepare as prepare_cmd

    docs, gens, val = _leaky_corpus(tmp_path)
    argv = ["prepare", f"--docs={docs}", f"--generation_records={gens}", "--recipe=simple",
            f"--tokenizer={generator_dir}", "--seq_len=16", f"--output={tmp_path / 'out'}",
            f"--val=iid={val}", f"--val=other={val}"]
    prepare_cmd.FLAGS.unparse_flags()
    prepare_cmd.FLAGS(argv)
    try:
        cfg = prepare_cmd.config_from_flags()
        assert cfg.val == (("iid", val), ("other", val))
        with pytest.raises(SystemExit) as e:
            prepare_cmd.cli.plain_errors(lambda argv: prepare_cmd.prepare(cfg))(["prepare"])
        assert e.value.code == 2
        assert "are in a validation set" in capsys.readouterr().err
    finally:
        prepare_cmd.FLAGS.unparse_flags()


def test_the_sweep_refuses_a_planted_validation_document_before_any_work(generator_dir,
                                                                         tmp_path):
    from megadoc.pipelines import sweep

    docs, gens, val = _leaky_corpus(tmp_path)
    cfg = sweep.SweepConfig(recipe="stitched", docs=docs, generation_records=gens,
                            tokenizer=generator_dir, seq_len=16, val=(("iid", val),),
                            counts=(0, 1), workdir=str(tmp_path / "sweep"))
    with pytest.raises(ValueError, match=r"2 document\(s\) are in a validation set"):
        sweep.run(cfg)
    assert not (tmp_path / "sweep" / "stores").exists()


@pytest.mark.slow
def test_smollm2_rewrites_a_document_of_three_contexts_chunkwise(tmp_path, monkeypatch):
    """SmolLM2-135M-Instruct with its context held to 1,024 tokens (its own 8,192 would make a
    3x document ~25k tokens, hours of CPU decoding), on a document of the builtin corpus
    stitched to 3x that context. A few minutes on 2 cores."""
    from megadoc.pipelines import demo
    from megadoc.data import builtin_corpus
    from megadoc.synth import generator as generator_lib

    context = 1024
    load = generator_lib.load

    def held_to_context(path, mesh=None):
        gen = load(path, mesh)
        return dataclasses.replace(gen, config=dataclasses.replace(gen.config,
                                                                   max_seq_len=context))

    monkeypatch.setattr(generator_lib, "load", held_to_context)
    # One device: on the suite's 8 simulated CPU devices the job's mesh would hold 8 copies of
    # the 135M weights (fp32 + bf16), ~7 GB, and the shared machine kills the test.
    one = jax.devices()[:1]
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: one)
    gen = load(demo.smollm2_path())
    text = ""
    for d in builtin_corpus.python_docs(max_chars=4000):
        text = (text + "\n\n" + d["text"]).strip()
        if len(gen.tokenizer.encode(text)) > 3 * context:
            break
    docs = _write_docs(tmp_path / "docs.jsonl", [{"id": "long", "text": text}])
    out = str(tmp_path / "out")
    summary = job.run(job.JobConfig(method="rephrase", generator=demo.smollm2_path(), docs=docs,
                                    output=out, generations=1, max_new_tokens=64,
                                    temperature=0.7, top_p=0.9, batch_size=1))
    (record,) = _records(out)
    chunks = record["chunks"]
    assert len(chunks) >= 4 and record["text"] and record["fidelity"] is not None
    assert chunks[0]["source_start"] == 0 and chunks[-1]["source_end"] == len(text)
    assert all(a["source_end"] == b["source_start"] for a, b in zip(chunks, chunks[1:]))
    assert summary["finish_reason"] == {record["finish_reason"]: 1}
