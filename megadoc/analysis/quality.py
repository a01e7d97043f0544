"""QuALITY-style long-document reading comprehension, closed-book or with retrieval (RAG).

Input is QuALITY's JSONL layout: one article per line, {"article_id", "title", "article",
"questions": [{"question", "options": [4 strings], "gold_label": 1-based, ...}]}; other fields
are ignored except "author" and "year". Every prompt names the article the question is about
(title, author and year, where the file has them: a question such as "Why did the narrator
leave?" needs its referent, and EntiGraph's closed-book prompts name it too). Closed-book prompts
hold that line, the question and its options; RAG prompts put the `top_k` BM25-ranked
1,024-character chunks (best first, each headed by its article's title) before them, retrieved
from the whole corpus (`scope` "corpus", the knowledge papers' protocol) or, as an oracle, from
the question's own article only (`scope` "article"); with `rerank_from` N, the top N are
reordered by the model's log-likelihood of the question after each chunk before the top k are
kept. `split` picks the questions: "dev" (the articles with the smallest sha256 of their id, a
DEV_FRACTION of them; for any tuning), "test" (the others) or "all".
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
import hashlib
import json
import math
import os
import re
from typing import Callable, Sequence

from megadoc import fs
from megadoc.analysis import benchmarks, retrieval
from megadoc.synth import prompts as prompts_lib

MODES = ("closed_book", "rag")
SCOPES = ("corpus", "article")
SPLITS = ("all", "dev", "test")
DEV_FRACTION = 0.2
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
    author: str = ""
    year: str = ""


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
                                tuple(questions), str(row.get("author") or ""),
                                str(row.get("year") or "")))
    if not articles:
        raise ValueError(f"{path}: no articles")
    return articles


def article_line(article: Article | None) -> str:
    """'Article: "Title" by Author (Year)' with the parts the file has; '' without a title."""
    if article is None or not article.title:
        return ""
    by = f" by {article.author}" if article.author else ""
    year = f" ({article.year})" if article.year else ""
    return f"Article: \"{article.title}\"{by}{year}\n"


def question_prompt(question: Question, article: Article | None = None) -> str:
    options = "\n".join(f"{letter}. {o}" for letter, o in zip(LETTERS, question.options))
    return (f"{article_line(article)}Question: {question.question}\nOptions:\n{options}"
            f"\nAnswer:")


def rag_prompt(passages: list[str], question: Question, article: Article | None = None) -> str:
    joined = "\n\n".join(passages)
    return f"Passages:\n{joined}\n\n{question_prompt(question, article)}"


def split_articles(articles: list[Article], split: str) -> list[Article]:
    """The articles of `split`: dev is the DEV_FRACTION (at least one) whose ids hash lowest,
    so a file's split depends on its article ids only, never on their order."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    if split == "all":
        return list(articles)
    by_hash = sorted(articles, key=lambda a: hashlib.sha256(a.id.encode("utf-8")).hexdigest())
    dev = {a.id for a in by_hash[:max(1, math.ceil(DEV_FRACTION * len(articles)))]}
    return [a for a in articles if (a.id in dev) == (split == "dev")]


# Scores a question against candidate chunks (higher is better), for reranking.
Reranker = Callable[[str, Sequence[retrieval.Chunk]], Sequence[float]]


def likelihood_reranker(loglikelihood: benchmarks.LogLikelihood) -> Reranker:
    """Candidates scored by the model's log-likelihood of the question after the chunk."""
    def rerank(question: str, chunks):
        return loglikelihood([(f"{c.text}\n\nQuestion:", benchmarks.TARGET_DELIMITER + question)
                              for c in chunks])
    return rerank


def retriever(articles: list[Article], scope: str, top_k: int, rerank_from: int = 0,
              reranker: Reranker | None = None):
    """A function (article, question) -> its top_k chunks, best first."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: expected one of {SCOPES}")
    if rerank_from and (reranker is None or rerank_from < top_k):
        raise ValueError(f"rerank_from={rerank_from} needs a reranker and at least top_k="
                         f"{top_k} candidates")
    chunks = {a.id: retrieval.chunks_of(a.id, a.title, a.text) for a in articles}
    corpus = retrieval.BM25([c for a in articles for c in chunks[a.id]])
    own = {}

    def retrieve(article: Article, question: Question) -> list[retrieval.Chunk]:
        if scope == "corpus":
            index = corpus
        else:
            index = own.get(article.id) or own.setdefault(article.id,
                                                          retrieval.BM25(chunks[article.id]))
        found = [index.chunks[i] for i in index.rank(question.question, rerank_from or top_k)]
        if rerank_from:
            scores = [float(x) for x in reranker(question.question, found)]
            found = [found[i] for i in sorted(range(len(found)), key=lambda i: -scores[i])]
        return found[:top_k]
    return retrieve


def prompts(articles: list[Article], mode: str, top_k: int, scope: str = "corpus",
            split: str = "all", rerank_from: int = 0,
            reranker: Reranker | None = None) -> list[tuple[Question, str, list]]:
    """(question, prompt, retrieved chunks) for every question of `split`, in file order; RAG
    retrieves from every article of the file whatever the split."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    retrieve = retriever(articles, scope, top_k, rerank_from, reranker) if mode == "rag" else None
    out = []
    for article in split_articles(articles, split):
        for q in article.questions:
            if mode == "closed_book":
                out.append((q, question_prompt(q, article), []))
                continue
            found = retrieve(article, q)
            out.append((q, rag_prompt([c.text for c in found], q, article), found))
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


def _summary(mode, scoring, settings, items, predictions, extras) -> dict:
    results, correct, attempted = [], 0, 0
    for (q, prompt, found), predicted, extra in zip(items, predictions, extras):
        attempted += predicted is not None
        correct += predicted == q.gold
        row = {"id": q.id, "prompt": prompt, "gold_label": q.gold + 1,
               "predicted_label": None if predicted is None else predicted + 1,
               "correct": predicted == q.gold, **extra}
        if mode == "rag":
            row["retrieved_chunks"] = [{"article_id": c.article_id, "chunk": c.index}
                                       for c in found]
        results.append(row)
    n = len(items)
    rag = {k: v if mode == "rag" else None for k, v in settings.items()
           if k in ("top_k", "scope", "rerank_from")}
    return {"mode": mode, "scoring": scoring, "split": settings["split"], **rag,
            "accuracy": correct / n, "n": n, "attempt_rate": attempted / n,
            "questions": results}


def evaluate(articles: list[Article], mode: str, loglikelihood: benchmarks.LogLikelihood,
             top_k: int = 8, scope: str = "corpus", split: str = "all",
             rerank_from: int = 0) -> dict:
    """{"mode", "scoring", "split", "accuracy", "n", "attempt_rate", "questions": [per-question
    results, each with its prompt]}; all options of all questions are scored in one
    `loglikelihood` call (reranking, with `rerank_from`, scores by the same model)."""
    settings = dict(top_k=top_k, scope=scope, split=split, rerank_from=rerank_from)
    items = prompts(articles, mode, top_k, scope, split, rerank_from,
                    likelihood_reranker(loglikelihood))
    if not items:
        raise ValueError("no questions to evaluate")
    requests = [(prompt, benchmarks.TARGET_DELIMITER + o) for q, prompt, _ in items
                for o in q.options]
    lls = [float(x) for x in loglikelihood(requests)]
    option_lls = [lls[4 * i:4 * i + 4] for i in range(len(items))]
    predictions = [max(range(4), key=lambda j: ll[j]) for ll in option_lls]
    return _summary(mode, "loglikelihood", settings, items, predictions,
                    [{"option_loglikelihoods": ll} for ll in option_lls])


def evaluate_generated(articles: list[Article], mode: str, generate: Generate,
                       top_k: int = 8, scope: str = "corpus", split: str = "all",
                       rerank_from: int = 0, reranker: Reranker | None = None) -> dict:
    """As `evaluate`, scoring by the letter parsed from each question's generation (kept in
    the per-question results)."""
    settings = dict(top_k=top_k, scope=scope, split=split, rerank_from=rerank_from)
    items = prompts(articles, mode, top_k, scope, split, rerank_from, reranker)
    if not items:
        raise ValueError("no questions to evaluate")
    texts = list(generate([cot_messages(prompt) for _, prompt, _ in items]))
    return _summary(mode, "generate", settings, items, [parse_letter(t) for t in texts],
                    [{"generation": t} for t in texts])
