"""QuALITY-format evaluation: the fixture, chunking, BM25, and log-likelihood scoring checked
against option log-likelihoods computed by hand from the model's logits."""
import json

import jax
import numpy as np
import pytest

from megadoc.analysis import quality, retrieval
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from knowledge_fixtures import make_hf_model


def test_fixture_reads_with_one_based_gold_labels():
    articles = quality.read_quality(quality.FIXTURE)
    assert len(articles) == 3 and sum(len(a.questions) for a in articles) == 12
    with open(quality.FIXTURE) as f:
        raw = [json.loads(line) for line in f]
    for article, row in zip(articles, raw):
        for q, rq in zip(article.questions, row["questions"]):
            assert q.options[q.gold] == rq["options"][rq["gold_label"] - 1]
    assert sorted(q.gold for a in articles for q in a.questions) == [0, 0, 0, 1, 1, 1, 2, 2, 2,
                                                                     3, 3, 3]


def test_malformed_question_names_the_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"article_id": "a", "article": "text", "questions": [
        {"question": "?", "options": ["x", "y", "z", "w"], "gold_label": 0}]}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:1: question 0 of article 'a'"):
        quality.read_quality(str(bad))


def test_chunks_are_at_most_1024_chars_and_cover_the_text():
    text = quality.read_quality(quality.FIXTURE)[0].text
    chunks = retrieval.chunk_text(text)
    assert len(chunks) > 1 and all(0 < len(c) <= 1024 for c in chunks)
    assert "".join(chunks).replace(" ", "").replace("\n", "") == \
        text.replace(" ", "").replace("\n", "")
    assert retrieval.chunk_text("x" * 2500) == ["x" * 1024, "x" * 1024, "x" * 452]


def test_bm25_retrieves_the_gold_chunk_for_every_fixture_question():
    with open(quality.FIXTURE) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        chunks = retrieval.chunk_text(row["article"])
        index = retrieval.BM25(chunks)
        for q in row["questions"]:
            best = index.rank(q["question"], 1)[0]
            assert q["evidence"] in chunks[best], (q["question"], best)


def test_bm25_scores_by_hand():
    index = retrieval.BM25(["red fish blue fish", "one fish", "red car"], k1=1.2, b=0.0)
    idf_red = np.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    idf_blue = np.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    tf = lambda n: n * 2.2 / (n + 1.2)  # noqa: E731
    want = [idf_red * tf(1) + idf_blue * tf(1), 0.0, idf_red * tf(1)]
    np.testing.assert_allclose(index.scores("red blue"), want, rtol=1e-12)
    assert index.rank("red blue", 2) == [0, 2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_hf_model(str(tmp_path_factory.mktemp("tiny_hf")), max_seq_len=1024)


@pytest.fixture(scope="module")
def by_hand(model_dir):
    """Summed log-softmax of an option's tokens after the prompt (encoded as lm-eval's HF
    backend does: the tokenizer's BOS first), from the model's logits (float64 softmax in
    numpy; one jitted forward on a right-padded sequence)."""
    tok = tokenizer_lib.load(model_dir)
    config, params = hf.load(model_dir)
    forward = jax.jit(lambda t: llama.forward(config, params, t))

    def option_loglikelihood(prompt, option):
        context = tok.encode_as_hf(prompt)
        whole = tok.encode_as_hf(prompt + " " + option)
        assert context and whole[:len(context)] == context
        seq = whole[-(config.max_seq_len + 1):]
        inputs = np.zeros((1, config.max_seq_len), np.int32)
        inputs[0, :len(seq) - 1] = seq[:-1]
        logits = np.asarray(forward(inputs)[0, :len(seq) - 1], np.float64)
        top = logits.max(-1, keepdims=True)
        logprobs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        n = len(whole) - len(context)
        return sum(logprobs[t, seq[t + 1]] for t in range(len(seq) - 1 - n, len(seq) - 1))

    return option_loglikelihood


@pytest.mark.parametrize("mode", ["closed_book", "rag"])
def test_qa_eval_matches_hand_computed_option_loglikelihoods(model_dir, by_hand, tmp_path, mode):
    from experiments import qa_eval

    out = tmp_path / f"{mode}.json"
    qa_eval.FLAGS.unparse_flags()
    qa_eval.FLAGS(["qa_eval", f"--model={model_dir}", f"--quality={quality.FIXTURE}",
                   f"--mode={mode}", "--top_k=1", "--batch_size=8", f"--output={out}"])
    try:
        qa_eval.run()
    finally:
        qa_eval.FLAGS.unparse_flags()
    results = json.loads(out.read_text())
    assert results["n"] == 12 and results["attempt_rate"] == 1.0
    articles = quality.read_quality(quality.FIXTURE)
    items = quality.prompts(articles, mode, top_k=1)
    correct = 0
    for (q, prompt, ranked), row in zip(items, results["questions"]):
        assert row["id"] == q.id and row["gold_label"] == q.gold + 1
        if mode == "rag":
            assert row["retrieved_chunks"] == ranked and len(ranked) == 1
            assert prompt.count("Question:") == 1 and "Passages from" in prompt
        else:
            assert "Passages" not in prompt and q.question in prompt
        want = [by_hand(prompt, o) for o in q.options]
        np.testing.assert_allclose(row["option_loglikelihoods"], want, rtol=2e-3, atol=2e-2)
        assert row["predicted_label"] == int(np.argmax(row["option_loglikelihoods"])) + 1
        correct += row["predicted_label"] == q.gold + 1
    assert results["accuracy"] == correct / 12


def test_answer_letter_parsing():
    assert quality.parse_letter("Reasoning: it is 8:30.\nAnswer: B") == 1
    assert quality.parse_letter("Answer: A ... no wait.\nAnswer: (D)") == 3
    for bad in ("I think B", "Answer: E", "Answer: Because"):
        assert quality.parse_letter(bad) is None


def test_generation_scoring_counts_unanswered_questions_as_wrong():
    articles = quality.read_quality(quality.FIXTURE)
    golds = [q.gold for a in articles for q in a.questions]
    seen = []

    def generate(prompts):  # right on the first 6, a wrong letter on 3, no letter on 3
        seen.extend(prompts)
        letters = [quality.LETTERS[g] for g in golds[:6]] + \
            [quality.LETTERS[(g + 1) % 4] for g in golds[6:9]]
        return [f"Reasoning: ...\nAnswer: {x}" for x in letters] + ["I am not sure"] * 3

    results = quality.evaluate_generated(articles, "closed_book", generate)
    assert (results["accuracy"], results["attempt_rate"], results["n"]) == (0.5, 0.75, 12)
    assert [r["predicted_label"] for r in results["questions"][9:]] == [None] * 3
    for messages in seen:  # the instruction, the worked examples as turns, then the question
        assert messages[0] == {"role": "system", "content": quality.COT_INSTRUCTION}
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 2 + ["user"]
        assert messages[2]["content"].startswith("Reasoning:")
        assert messages[2]["content"].endswith("Answer: B")
    assert seen[0][-1]["content"] == quality.question_prompt(articles[0].questions[0])[
        :-len("\nAnswer:")]


def test_plain_cot_prompt_without_a_chat_template():
    messages = quality.cot_messages("Question: Why?\nOptions:\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    text = quality.cot_text(messages)
    assert text.startswith(quality.COT_INSTRUCTION + "\n\nQuestion: A ferry")
    assert "\nReasoning: The ferry arrives" in text and "Answer: B\n\nQuestion: In the story" in text
    assert text.endswith("Answer: C\n\nQuestion: Why?\nOptions:\nA. a\nB. b\nC. c\nD. d\nReasoning:")


def _qa_eval_generate(model, out, max_new_tokens) -> dict:
    """`experiments.qa_eval --scoring=generate` on the fixture; its JSON output."""
    from experiments import qa_eval

    qa_eval.FLAGS.unparse_flags()
    qa_eval.FLAGS(["qa_eval", f"--model={model}", f"--quality={quality.FIXTURE}",
                   "--scoring=generate", f"--max_new_tokens={max_new_tokens}", "--batch_size=12",
                   f"--output={out}"])
    try:
        qa_eval.run()
    finally:
        qa_eval.FLAGS.unparse_flags()
    return json.loads(out.read_text())


def test_qa_eval_generate_runs_through_the_chat_prompt(model_dir, tmp_path):
    results = _qa_eval_generate(model_dir, tmp_path / "gen.json", max_new_tokens=4)
    assert results["scoring"] == "generate" and results["n"] == 12
    assert results["attempt_rate"] == sum(r["predicted_label"] is not None
                                          for r in results["questions"]) / 12


def test_qa_eval_generate_prompts_through_the_models_chat_template(tmp_path, monkeypatch):
    """With a chat template (a GGUF with ChatML), the generation scorer's prompt ids are the
    template's rendering of the few-shot conversation, ending with the assistant turn opened."""
    from megadoc.synth import prompts, sampler
    from tests import gguf_fixtures

    model = str(tmp_path / "chat.gguf")
    gguf_fixtures.write(model)
    tokenizer = tokenizer_lib.load(model)
    im_start = tokenizer.special_token_id("<|im_start|>")
    seen = []

    def spy(config, params, prompt_ids, **kwargs):  # the byte-level prompts outgrow its context
        seen.extend(prompt_ids)
        return [tokenizer.encode("Reasoning: ...\nAnswer: A") for _ in prompt_ids]

    monkeypatch.setattr(sampler, "generate", spy)
    results = _qa_eval_generate(model, tmp_path / "gen.json", max_new_tokens=2)
    questions = [q for a in quality.read_quality(quality.FIXTURE) for q in a.questions]
    assert len(seen) == 12 and (results["n"], results["attempt_rate"]) == (12, 1.0)
    for ids, q in zip(seen, questions):
        messages = quality.cot_messages(quality.question_prompt(q))
        assert list(ids) == prompts.apply_chat_template(tokenizer, messages)
        ids = list(ids)  # turns: system, 2 worked examples (user + assistant), question, answer
        assert ids.count(im_start) == 7
        assert tokenizer.decode(ids[len(ids) - ids[::-1].index(im_start):]) == "assistant\n"
