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
    assert benchmarks.score(questions, loglikelihood) == {"acc": 0.5, "acc_norm": 1.0, "n": 2}
    assert seen[0] == ("Question: Dry wet shoes.\nAnswer:", " Stuff them with newspaper.")

    table.update({" ice": -2.0, " fire": -1.0})
    paths = {"piqa": str(tmp_path / "piqa.jsonl"), "arc_easy": write_jsonl(tmp_path / "a.jsonl", [ARC_FLAT])}
    results = benchmarks.evaluate(paths, loglikelihood)
    assert results["arc_easy"] == {"acc": 1.0, "acc_norm": 1.0, "n": 1}
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
    eos_id = 0

    def encode(self, text):
        return list(text.encode("utf-8"))


def test_encode_pair_moves_trailing_whitespace_to_the_continuation():
    tok = ByteTokenizer()
    assert benchmarks.encode_pair(tok, "Answer: ", "yes") == (list(b"Answer:"), list(b" yes"))
    assert benchmarks.encode_pair(tok, "Q:", " no") == (list(b"Q:"), list(b" no"))
    assert benchmarks.encode_pair(tok, "Q:\n ", "no") == (list(b"Q:"), list(b"\n no"))


def test_batched_model_scores_equal_a_per_example_computation():
    config = dataclasses.replace(llama.preset("tiny"), dtype="float32")
    params = jax.jit(llama.init, static_argnums=0)(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    # Two length buckets (32 and 64), a batch that is not full, and only two distinct total
    # lengths so the unpadded reference compiles twice.
    pairs = [(rng.integers(1, 256, n).tolist(), rng.integers(1, 256, m).tolist())
             for n, m in [(5, 3), (40, 7), (7, 1)]]
    forward = jax.jit(llama.forward, static_argnums=0)

    def reference(ctx, cont):
        seq = jnp.array([[0] + ctx + cont], jnp.int32)
        logp = jax.nn.log_softmax(forward(config, params, seq[:, :-1])[0], axis=-1)
        return sum(float(logp[len(ctx) + j, t]) for j, t in enumerate(cont))

    want = [reference(c, x) for c, x in pairs]
    got = benchmarks.token_loglikelihoods(config, params, pairs, prefix_token=0, batch_size=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

    # Two identical members: the ensemble's distribution is the member's, under either average.
    twins = ensemble.stack_params([params, params])
    for average in ("logits", "probs"):
        got = benchmarks.token_loglikelihoods(config, twins, [pairs[0], pairs[2]], prefix_token=0,
                                              batch_size=2, ensemble_average=average)
        np.testing.assert_allclose(got, [want[0], want[2]], rtol=1e-5, atol=1e-4)

    mesh = sharding.make_mesh(data=4, fsdp=2)
    sharded = benchmarks.token_loglikelihoods(config, params, pairs[:2], prefix_token=0, batch_size=8, mesh=mesh)
    np.testing.assert_allclose(sharded, want[:2], rtol=1e-5, atol=1e-4)
