"""QuALITY-style long-document reading comprehension, closed-book or with retrieval (RAG).

Input is QuALITY's JSONL layout: one article per line, {"article_id", "title", "article",
"questions": [{"question", "options": [4 strings], "gold_label": 1-based, ...}]}; other fields
are ignored. Closed-book prompts hold the question and its options without the article; RAG
prompts put the article's `top_k` BM25-ranked 1,024-character chunks (best first) before them.
Two scorings: "loglikelihood" (the default for small models) scores each option by the summed
log-likelihood of " " + option after the prompt and predicts the best, so it answers every
question (attempt rate 1); "generate" (EntiGraph's protocol) asks the model, after worked
examples, to reason and end with "Answer: <letter>", and parses that letter: a question whose
letter cannot be parsed is unanswered (wrong, and outside the attempt rate). Its prompt is a
conversation (the instruction as system message, each worked example a user question and the
assistant's answer, then the question) in the model's chat template, or, for a model without
one, the same turns as plain text ending in "Reasoning:".
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Sequence

from megadoc import fs
from megadoc.analysis import benchmarks, retrieval
from megadoc.synth import prompts as prompts_lib

MODES = ("closed_book", "rag")
LETTERS = "ABCD"
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fixtures",
                       "quality_mini.jsonl")
COT_EXAMPLES = os.path.join(os.path.dirname(__file__), "templates", "quality_cot_examples.txt")
COT_INSTRUCTION = ("Answer the multiple-choice question. First write one line starting with "
                   "\"Reasoning:\" that works the answer out step by step, then a line "
                   "\"Answer: X\" where X is A, B, C or D. Worked examples:")
_LETTER = re.compile(r"Answer:\s*\(?([ABCD])\b")
_REASONING = "Reasoning:"
# A generation scorer maps conversations ([{"role", "content"}] lists) to the model's texts.
Generate = Callable[[Sequence[list[dict]]], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Question:
    id: str
    question: str
    options: tuple[str, ...]
    gold: int  # 0-based index of the right option (QuALITY's gold_label - 1)


@dataclasses.dataclass(frozen=True)
class Article:
    id: str
    title: str
    text: str
    questions: tuple[Question, ...]


def read_quality(path: str) -> list[Article]:
    """Articles with their questions, or a ValueError naming the line and what was expected."""
    layout = ('QuALITY {"article_id", "title", "article": str, "questions": [{"question": str, '
              '"options": [4 str], "gold_label": 1..4}]}')
    articles = []
    for lineno, row in benchmarks.jsonl_rows(path):
        where = f"{path}:{lineno}"
        if not isinstance(row.get("article"), str) or not isinstance(row.get("questions"), list):
            raise ValueError(f"{where}: expected {layout}; got keys {sorted(row)[:10]}")
        article_id = str(row.get("article_id", row.get("set_unique_id", lineno)))
        questions = []
        for i, q in enumerate(row["questions"]):
            raw, q = q, q if isinstance(q, dict) else {}
            options, gold = q.get("options"), q.get("gold_label")
            if (not isinstance(q.get("question"), str) or not isinstance(options, list)
                    or len(options) != 4 or not all(isinstance(o, str) for o in options)
                    or type(gold) is not int or not 1 <= gold <= 4):  # true is no label
                raise ValueError(f"{where}: question {i} of article {article_id!r}: expected "
                                 f"a question, 4 options and gold_label 1..4; got "
                                 f"{json.dumps(raw)[:200]}")
            qid = str(q.get("question_unique_id", f"{article_id}-{i}"))
            questions.append(Question(qid, q["question"], tuple(options), gold - 1))
        articles.append(Article(article_id, str(row.get("title", "")), row["article"],
                                tuple(questions)))
    if not articles:
        raise ValueError(f"{path}: no articles")
    return articles


def question_prompt(question: Question) -> str:
    options = "\n".join(f"{letter}. {o}" for letter, o in zip(LETTERS, question.options))
    return f"Question: {question.question}\nOptions:\n{options}\nAnswer:"


def rag_prompt(title: str, passages: list[str], question: Question) -> str:
    joined = "\n\n".join(passages)
    return f"Passages from \"{title}\":\n{joined}\n\n{question_prompt(question)}"


def prompts(articles: list[Article], mode: str, top_k: int) -> list[tuple[Question, str, list]]:
    """(question, prompt, retrieved chunk indices) for every question, in file order."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    out = []
    for article in articles:
        chunks = retrieval.chunk_text(article.text) if mode == "rag" else []
        index = retrieval.BM25(chunks) if mode == "rag" else None
        for q in article.questions:
            if mode == "closed_book":
                out.append((q, question_prompt(q), []))
                continue
            ranked = index.rank(q.question, top_k)
            out.append((q, rag_prompt(article.title, [chunks[i] for i in ranked], q), ranked))
    return out


def parse_letter(text: str) -> int | None:
    """0-based option of the last "Answer: X" in a generation, or None."""
    found = _LETTER.findall(text)
    return LETTERS.index(found[-1]) if found else None


def cot_messages(prompt: str) -> list[dict]:
    """The generation scorer's conversation: the instruction as system message, each worked
    example as the user's question and the assistant's reasoning and answer, then `prompt`."""
    messages = [{"role": "system", "content": COT_INSTRUCTION}]
    for i, example in enumerate(fs.read_text(COT_EXAMPLES).strip().split("\n\n")):
        question, sep, answer = example.partition("\n" + _REASONING)
        if not sep:
            raise ValueError(f"{COT_EXAMPLES}: worked example {i} has no line starting with "
                             f"{_REASONING!r}")
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": _REASONING + answer}]
    return messages + [{"role": "user", "content": prompt.removesuffix("Answer:").rstrip()}]


def cot_text(messages: list[dict]) -> str:
    """A `cot_messages` conversation as one plain-text prompt, for a model without a chat
    template: the turns separated by blank lines (a question and its answer by a newline),
    ending where the model's reasoning begins."""
    system, *turns = messages
    examples = [turns[i]["content"] + "\n" + turns[i + 1]["content"]
                for i in range(0, len(turns) - 1, 2)]
    return "\n\n".join([system["content"], *examples, turns[-1]["content"]]) + "\n" + _REASONING


def encode_cot(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt ids of a `cot_messages` conversation: the tokenizer's chat template (ending with
    the assistant's turn opened), else BOS (when it has one) and `cot_text`."""
    if tokenizer.chat_template:
        return prompts_lib.apply_chat_template(tokenizer, messages)
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return bos + tokenizer.encode(cot_text(messages))


def _summary(mode, scoring, top_k, items, predictions, extras) -> dict:
    results, correct, attempted = [], 0, 0
    for (q, _, ranked), predicted, extra in zip(items, predictions, extras):
        attempted += predicted is not None
        correct += predicted == q.gold
        row = {"id": q.id, "gold_label": q.gold + 1,
               "predicted_label": None if predicted is None else predicted + 1,
               "correct": predicted == q.gold, **extra}
        if mode == "rag":
            row["retrieved_chunks"] = ranked
        results.append(row)
    n = len(items)
    return {"mode": mode, "scoring": scoring, "accuracy": correct / n, "n": n,
            "attempt_rate": attempted / n, "top_k": top_k if mode == "rag" else None,
            "questions": results}


def evaluate(articles: list[Article], mode: str, loglikelihood: benchmarks.LogLikelihood,
             top_k: int = 8) -> dict:
    """{"mode", "scoring", "accuracy", "n", "attempt_rate", "questions": [per-question
    results]}; all options of all questions are scored in one `loglikelihood` call."""
    items = prompts(articles, mode, top_k)
    if not items:
        raise ValueError("no questions to evaluate")
    requests = [(prompt, benchmarks.TARGET_DELIMITER + o) for q, prompt, _ in items
                for o in q.options]
    lls = [float(x) for x in loglikelihood(requests)]
    option_lls = [lls[4 * i:4 * i + 4] for i in range(len(items))]
    predictions = [max(range(4), key=lambda j: ll[j]) for ll in option_lls]
    return _summary(mode, "loglikelihood", top_k, items, predictions,
                    [{"option_loglikelihoods": ll} for ll in option_lls])


def evaluate_generated(articles: list[Article], mode: str, generate: Generate,
                       top_k: int = 8) -> dict:
    """As `evaluate`, scoring by the letter parsed from each question's generation (kept in
    the per-question results)."""
    items = prompts(articles, mode, top_k)
    if not items:
        raise ValueError("no questions to evaluate")
    texts = list(generate([cot_messages(prompt) for _, prompt, _ in items]))
    return _summary(mode, "generate", top_k, items, [parse_letter(t) for t in texts],
                    [{"generation": t} for t in texts])
