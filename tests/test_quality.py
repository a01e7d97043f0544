"""QuALITY-format evaluation: the fixture, chunking, whole-corpus BM25, splits, and
log-likelihood scoring checked against option log-likelihoods computed by hand from the model's
logits."""
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


def gold_chunk(article, question_row):
    """The chunk of the question's own article holding its evidence sentence."""
    chunks = retrieval.chunks_of(article.id, article.title, article.text)
    found = [c for c in chunks if question_row["evidence"] in c.text]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("scope,top_k", [("corpus", 1), ("corpus", 2), ("article", 1)])
def test_rag_retrieves_the_gold_chunk_at_rank_k_or_better_for_every_fixture_question(scope,
                                                                                      top_k):
    articles = quality.read_quality(quality.FIXTURE)
    with open(quality.FIXTURE) as f:
        rows = [json.loads(line) for line in f]
    items = quality.prompts(articles, "rag", top_k=top_k, scope=scope)
    golds = [gold_chunk(a, q) for a, row in zip(articles, rows) for q in row["questions"]]
    assert len(items) == len(golds) == 12
    corpus_ids = set()
    for (q, prompt, found), gold in zip(items, golds):
        assert len(found) == top_k and gold in found, (q.question, found)
        assert gold.text in prompt  # shown headed by its article's title
        corpus_ids |= {c.article_id for c in found}
    if scope == "article":
        for (q, _, found), gold in zip(items, golds):
            assert {c.article_id for c in found} == {gold.article_id}
    elif top_k > 1:  # the whole corpus is searched: other articles' chunks compete
        assert len(corpus_ids) == 3


def test_prompts_name_the_article_and_splits_partition_it(tmp_path):
    articles = quality.read_quality(quality.FIXTURE)
    for q, prompt, _ in quality.prompts(articles, "closed_book", top_k=1):
        article = next(a for a in articles if q in a.questions)
        assert f'Article: "{article.title}" by megadoc\n' in prompt and q.question in prompt
    dated = tmp_path / "dated.jsonl"
    dated.write_text(json.dumps({"article_id": "x", "title": "T", "author": "A. Writer",
                                 "year": 1953, "article": "words", "questions": [
                                     {"question": "Why?", "options": list("abcd"),
                                      "gold_label": 1}]}) + "\n")
    [(_, prompt, _)] = quality.prompts(quality.read_quality(str(dated)), "closed_book", 1)
    assert prompt.startswith('Article: "T" by A. Writer (1953)\nQuestion: Why?')
    dev, test = (quality.split_articles(articles, s) for s in ("dev", "test"))
    assert len(dev) == 1 and len(test) == 2 and {a.id for a in dev + test} == \
        {a.id for a in articles}
    assert quality.split_articles(articles[::-1], "dev") == dev  # by id, not by file order
    items = quality.prompts(articles, "rag", top_k=2, split="dev")
    assert len(items) == 4 and {c.article_id for _, _, f in items for c in f} - {dev[0].id}


def test_rerank_reorders_the_bm25_candidates():
    articles = quality.read_quality(quality.FIXTURE)
    last = {}

    def reranker(question, chunks):  # prefers the candidate BM25 ranked last
        last[question] = chunks[-1]
        return [float(i) for i in range(len(chunks))]

    items = quality.prompts(articles, "rag", top_k=1, rerank_from=3, reranker=reranker)
    for q, _, found in items:
        assert found == [last[q.question]]
    with pytest.raises(ValueError, match="needs a reranker"):
        quality.prompts(articles, "rag", top_k=1, rerank_from=3)


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
    for (q, prompt, found), row in zip(items, results["questions"]):
        assert row["id"] == q.id and row["gold_label"] == q.gold + 1
        assert row["prompt"] == prompt  # a reader sees what the model was asked
        if mode == "rag":
            assert row["retrieved_chunks"] == [{"article_id": c.article_id, "chunk": c.index}
                                               for c in found] and len(found) == 1
            assert prompt.count("Question:") == 1 and prompt.startswith("Passages:\n")
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
    assert seen[0][-1]["content"] == quality.question_prompt(
        articles[0].questions[0], articles[0])[:-len("\nAnswer:")]


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
    questions = [(q, a) for a in quality.read_quality(quality.FIXTURE) for q in a.questions]
    assert len(seen) == 12 and (results["n"], results["attempt_rate"]) == (12, 1.0)
    for ids, (q, article) in zip(seen, questions):
        messages = quality.cot_messages(quality.question_prompt(q, article))
        assert list(ids) == prompts.apply_chat_template(tokenizer, messages)
        ids = list(ids)  # turns: system, 2 worked examples (user + assistant), question, answer
        assert ids.count(im_start) == 7
        assert tokenizer.decode(ids[len(ids) - ids[::-1].index(im_start):]) == "assistant\n"


def test_qa_eval_and_knowledge_flags_carry_the_protocol_into_their_configs():
    from experiments import knowledge, qa_eval

    from megadoc import cli

    common = ["--model=m", "--quality=q.jsonl", "--output=o.json"]
    for argv, want in ((["--scope=article", "--split=dev", "--rerank_from=4", "--top_k=2"],
                        dict(scope="article", split="dev", rerank_from=4, rag_chunks=2)),
                       ([], dict(scope="corpus", split="all", rerank_from=0, rag_chunks=8))):
        qa_eval.FLAGS.unparse_flags()
        qa_eval.FLAGS(["qa_eval", *common, *argv])
        cfg = cli.build(qa_eval.qa_eval.QaEvalConfig, qa_eval.FLAGS)
        assert {k: getattr(cfg, k) for k in want} == want
    qa_eval.FLAGS.unparse_flags()
    qa_eval.FLAGS(["qa_eval", *common, "--rerank_from=1", "--top_k=2"])
    with pytest.raises(ValueError, match="rerank_from must be 0 or at least"):
        cli.build(qa_eval.qa_eval.QaEvalConfig, qa_eval.FLAGS)
    qa_eval.FLAGS.unparse_flags()
    knowledge.FLAGS.unparse_flags()
    knowledge.FLAGS(["knowledge", "--generator=g", "--workdir=w", "--split=dev"])
    assert knowledge.build_config().split == "dev"
    knowledge.FLAGS.unparse_flags()
