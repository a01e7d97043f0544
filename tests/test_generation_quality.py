"""What the generator writes: latent sweeps at equal splits per count, fidelity and diversity,
style templates, chunk-wise rewriting of long documents, and the leakage audit."""
import json
import os

import jax
import numpy as np
import pytest

from megadoc.data import docs as docs_lib
from megadoc.data import prepare as prepare_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from megadoc.synth import job, split

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
