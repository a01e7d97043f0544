"""QuALITY-style long-document reading comprehension, closed-book or with retrieval (RAG).

Input is QuALITY's JSONL layout: one article per line, {"article_id", "title", "article",
"questions": [{"question", "options": [4 strings], "gold_label": 1-based, ...}]}; other fields
are ignored. Closed-book prompts hold the question and its options without the article; RAG
prompts put the article's `top_k` BM25-ranked 1,024-character chunks (best first) before them.
Each option is scored by the summed log-likelihood of " " + option after the prompt; the
prediction is the best-scoring option. Log-likelihood scoring answers every question, so its
attempt rate is 1; the field is there for scorers that may fail to answer (a parsed letter).
"""
from __future__ import annotations

import dataclasses
import json
import os

from megadoc import fs
from megadoc.analysis import benchmarks, retrieval

MODES = ("closed_book", "rag")
LETTERS = "ABCD"
FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fixtures",
                       "quality_mini.jsonl")


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
            options, gold = q.get("options"), q.get("gold_label")
            if (not isinstance(q.get("question"), str) or not isinstance(options, list)
                    or len(options) != 4 or not all(isinstance(o, str) for o in options)
                    or not isinstance(gold, int) or not 1 <= gold <= 4):
                raise ValueError(f"{where}: question {i} of article {article_id!r}: expected "
                                 f"a question, 4 options and gold_label 1..4; got "
                                 f"{json.dumps(q)[:200]}")
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


def evaluate(articles: list[Article], mode: str, loglikelihood: benchmarks.LogLikelihood,
             top_k: int = 8) -> dict:
    """{"mode", "accuracy", "n", "attempt_rate", "questions": [per-question results]}; all
    options of all questions are scored in one `loglikelihood` call."""
    items = prompts(articles, mode, top_k)
    if not items:
        raise ValueError("no questions to evaluate")
    requests = [(prompt, benchmarks.TARGET_DELIMITER + o) for q, prompt, _ in items
                for o in q.options]
    lls = [float(x) for x in loglikelihood(requests)]
    results, correct = [], 0
    for i, (q, _, ranked) in enumerate(items):
        option_lls = lls[4 * i:4 * i + 4]
        predicted = max(range(4), key=lambda j: option_lls[j])
        correct += predicted == q.gold
        row = {"id": q.id, "gold_label": q.gold + 1, "predicted_label": predicted + 1,
               "correct": predicted == q.gold, "option_loglikelihoods": option_lls}
        if mode == "rag":
            row["retrieved_chunks"] = ranked
        results.append(row)
    n = len(items)
    return {"mode": mode, "accuracy": correct / n, "n": n, "attempt_rate": 1.0,
            "scoring": "loglikelihood", "top_k": top_k if mode == "rag" else None,
            "questions": results}
