import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.analysis import benchmarks, ensemble
from megadoc.models import llama, sharding


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PIQA = [
    {"goal": "Dry wet shoes.", "sol1": "Stuff them with newspaper.", "sol2": "Bake.", "label": 0},
    {"goal": "Cut bread.", "sol1": "Use a spoon.", "sol2": "Use a serrated knife.", "label": 1},
]
SCIQ = [{"question": "What do plants absorb?", "distractor1": "oxygen gas", "distractor2": "salt",
         "distractor3": "helium", "correct_answer": "carbon dioxide", "support": "  Plants breathe."}]
ARC_NESTED = {"question": {"stem": "Which is a mammal?", "choices": [
    {"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}, {"text": "trout", "label": "C"}]},
    "answerKey": "B"}
ARC_FLAT = {"question": "Which is hot?", "choices": {"text": ["ice", "fire"], "label": ["1", "2"]},
            "answerKey": "2"}


def test_readers_use_the_harness_prompts(tmp_path):
    piqa = benchmarks.read_piqa(write_jsonl(tmp_path / "piqa.jsonl", PIQA))
    assert piqa[1] == benchmarks.Question(
        "Question: Cut bread.\nAnswer:", ("Use a spoon.", "Use a serrated knife."), 1)
    (sciq,) = benchmarks.read_sciq(write_jsonl(tmp_path / "sciq.jsonl", SCIQ))
    assert sciq.context == "Plants breathe.\nQuestion: What do plants absorb?\nAnswer:"
    assert sciq.choices == ("oxygen gas", "salt", "helium", "carbon dioxide") and sciq.label == 3
    nested, flat = benchmarks.read_arc(write_jsonl(tmp_path / "arc.jsonl", [ARC_NESTED, ARC_FLAT]))
    assert nested == benchmarks.Question("Question: Which is a mammal?\nAnswer:", ("shark", "whale", "trout"), 1)
    assert flat == benchmarks.Question("Question: Which is hot?\nAnswer:", ("ice", "fire"), 1)


def test_score_matches_a_hand_computation(tmp_path):
    # Known log-likelihoods per (context, continuation); acc and acc_norm disagree on purpose.
    table = {
        " Stuff them with newspaper.": -30.0,  # 26 chars -> -1.154/char
        " Bake.": -10.0,  # 5 chars -> -2.0/char: acc picks it (wrong), acc_norm picks sol1 (right)
        " Use a spoon.": -9.0,  # 12 chars -> -0.75/char
        " Use a serrated knife.": -8.0,  # 21 chars -> -0.381/char: both pick it (right)
    }
    seen = []

    def loglikelihood(requests):
        seen.extend(requests)
        return [table[cont] for _, cont in requests]

    questions = benchmarks.read_piqa(write_jsonl(tmp_path / "piqa.jsonl", PIQA))
    got = benchmarks.score(questions, loglikelihood)
    assert (got["acc"], got["acc_norm"], got["n"]) == (0.5, 1.0, 2)
    assert seen[0] == ("Question: Dry wet shoes.\nAnswer:", " Stuff them with newspaper.")

    table.update({" ice": -2.0, " fire": -1.0})
    paths = {"piqa": str(tmp_path / "piqa.jsonl"), "arc_easy": write_jsonl(tmp_path / "a.jsonl", [ARC_FLAT])}
    results = benchmarks.evaluate(paths, loglikelihood)
    assert results["arc_easy"] == {"acc": 1.0, "acc_stderr": None, "acc_norm": 1.0,
                                   "acc_norm_stderr": None, "n": 1}
    assert results["average"] == {"acc": 0.75, "acc_norm": 1.0}


@pytest.mark.parametrize("reader,row,message", [
    (benchmarks.read_piqa, {"goal": "g", "sol1": "a", "sol2": "b"}, "field 'label' is missing"),
    (benchmarks.read_piqa, {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "label is 2"),
    (benchmarks.read_sciq, dict(SCIQ[0], correct_answer=None), "field 'correct_answer' is None"),
    (benchmarks.read_arc, dict(ARC_FLAT, answerKey="E"), "answerKey 'E' is not one of"),
    (benchmarks.read_arc, {"question": {"stem": "s"}, "answerKey": "A"}, "missing 'choices'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, reader, row, message):
    path = tmp_path / "bench.jsonl"
    good = {benchmarks.read_piqa: PIQA[0], benchmarks.read_sciq: SCIQ[0], benchmarks.read_arc: ARC_FLAT}[reader]
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"bench\.jsonl:3: .*{message}"):
        reader(str(path))
    path.write_text("{broken\n")
    with pytest.raises(ValueError, match=r"bench\.jsonl:1: not valid JSON"):
        reader(str(path))


class ByteTokenizer:
    """Bytes + 1, after BOS 0 (as a Llama tokenizer adds it)."""
    eos_id, bos_id = 257, 0

    def encode_as_hf(self, text):
        return [0] + [b + 1 for b in text.encode("utf-8")]


def test_encode_pair_moves_trailing_whitespace_to_the_continuation():
    tok = ByteTokenizer()
    ids = lambda s: [b + 1 for b in s]  # noqa: E731
    assert benchmarks.encode_pair(tok, "Answer: ", "yes") == ([0] + ids(b"Answer:"), ids(b" yes"))
    assert benchmarks.encode_pair(tok, "Q:", " no") == ([0] + ids(b"Q:"), ids(b" no"))
    assert benchmarks.encode_pair(tok, "Q:\n ", "no") == ([0] + ids(b"Q:"), ids(b"\n no"))


def test_batched_model_scores_equal_a_per_example_computation():
    config = dataclasses.replace(llama.preset("tiny"), dtype="float32")
    params = jax.jit(llama.init, static_argnums=0)(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    # Two length buckets (32 and 64), a batch that is not full, and only two distinct total
    # lengths so the unpadded reference compiles twice.
    pairs = [([0] + rng.integers(1, 256, n).tolist(), rng.integers(1, 256, m).tolist())
             for n, m in [(5, 3), (40, 7), (7, 1)]]
    forward = jax.jit(llama.forward, static_argnums=0)

    def reference(ctx, cont):
        seq = jnp.array([ctx + cont], jnp.int32)
        logp = jax.nn.log_softmax(forward(config, params, seq[:, :-1])[0], axis=-1)
        return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))

    want = [reference(c, x) for c, x in pairs]
    got = benchmarks.token_loglikelihoods(config, params, pairs, batch_size=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

    # Two identical members: the ensemble's distribution is the member's, under either average.
    twins = ensemble.stack_params([params, params])
    for average in ("logits", "probs"):
        got = benchmarks.token_loglikelihoods(config, twins, [pairs[0], pairs[2]],
                                              batch_size=2, ensemble_average=average)
        np.testing.assert_allclose(got, [want[0], want[2]], rtol=1e-5, atol=1e-4)

    mesh = sharding.make_mesh(data=4, fsdp=2)
    sharded = benchmarks.token_loglikelihoods(config, params, pairs[:2], batch_size=8, mesh=mesh)
    np.testing.assert_allclose(sharded, want[:2], rtol=1e-5, atol=1e-4)


def test_stderr_is_lm_evals_sample_stderr(tmp_path):
    table = {" Stuff them with newspaper.": -30.0, " Bake.": -10.0, " Use a spoon.": -9.0,
             " Use a serrated knife.": -8.0}
    questions = benchmarks.read_piqa(write_jsonl(tmp_path / "piqa.jsonl", PIQA))
    got = benchmarks.score(questions, lambda requests: [table[c] for _, c in requests])
    # acc hits [0, 1]: sample std sqrt(0.5) over sqrt(2) = 0.5; acc_norm hits [1, 1]: 0
    assert got == {"acc": 0.5, "acc_stderr": 0.5, "acc_norm": 1.0, "acc_norm_stderr": 0.0, "n": 2}


def write_tiny_hf_llama(directory):
    """A tiny Llama (random init) as a Hugging Face directory, with a byte-level BPE tokenizer
    whose post-processor adds <s>, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from data_fixtures import corpus
    from megadoc.models import hf

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([x["text"] for x in corpus(100)] + [r["goal"] for r in PIQA], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    directory.mkdir()
    (directory / "tokenizer.json").write_text(tok.to_str())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    config = dataclasses.replace(llama.preset("tiny"), vocab_size=tok.get_vocab_size())
    hf.save(config, llama.init(config, jax.random.key(0)), str(directory))
    return str(directory)


@pytest.mark.slow
def test_hf_model_scores_as_lm_eval_hf_backend(tmp_path):
    """Per-choice log-likelihoods and acc/acc_norm of `experiments.benchmarks --model=<HF dir>`
    against lm-evaluation-harness's HF backend in float32, on a task file with a U+2028 inside a
    question and special-token spellings ("<s>") in its text."""
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    from experiments import benchmarks as benchmarks_exp
    from megadoc.data import tokenizer as tokenizer_lib
    from megadoc.models import hf

    model = write_tiny_hf_llama(tmp_path / "hf")
    rows = [dict(PIQA[0], goal="Dry wet shoes\u2028(a line separator inside the goal)."),
            dict(PIQA[1], goal="Cut bread with <s> and </s> written in it.", sol2="Use a <s> knife."),
            {"goal": "Boil water.", "sol1": "Heat it.", "sol2": "Cool it down slowly.", "label": 0}]
    path = tmp_path / "piqa.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    questions = benchmarks.read_piqa(str(path))
    assert [q.label for q in questions] == [0, 1, 0]  # U+2028 did not split a record
    requests = [(q.context, " " + c) for q in questions for c in q.choices]

    lm = lm_eval_hf.HFLM(pretrained=model, dtype="float32", device="cpu", batch_size=8)
    want = np.array([ll for ll, _ in lm.loglikelihood(
        [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)], disable_tqdm=True)])
    config, params = hf.load(model)
    config = dataclasses.replace(config, dtype="float32")
    got = benchmarks.model_loglikelihood(config, params, tokenizer_lib.load(model), batch_size=4)(requests)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    benchmarks_exp.FLAGS.unparse_flags()
    benchmarks_exp.FLAGS(["prog", f"--model={model}", f"--piqa={path}", f"--output={tmp_path / 'r.json'}"])
    results = benchmarks_exp.run()
    lls = want.reshape(3, 2)
    lengths = np.array([[len(c) for c in q.choices] for q in questions], float)
    labels = np.array([q.label for q in questions])
    assert results["piqa"]["acc"] == np.mean(lls.argmax(1) == labels)
    assert results["piqa"]["acc_norm"] == np.mean((lls / lengths).argmax(1) == labels)
    assert results["dtype"] == "float32" and results["model"] == model
