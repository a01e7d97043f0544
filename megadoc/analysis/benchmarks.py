"""Multiple-choice benchmarks scored as lm-evaluation-harness (0.4.13, HF backend) scores them:
PIQA, SciQ, ARC-Easy.

Each choice is scored by the summed log-probability of its continuation (" " + choice) given the
question's prompt; `acc` takes the best-scoring choice, `acc_norm` the best score divided by the
choice's length in characters; each comes with lm-eval's stderr (sample std / sqrt(n)). Text is
encoded as lm-eval's HF backend encodes it (`Tokenizer.encode_as_hf`): the tokenizer's own
prefix (BOS for Llama tokenizers) before the context, and special-token spellings in task text
("<s>") read as those tokens. Questions come from local JSONL in each dataset's own layout,
split into records on "\n" only (a U+2028 inside a question is text, as for lm-eval).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from megadoc import fs
from megadoc.analysis import ensemble
from megadoc.data import host_rows
from megadoc.models import llama, sharding
from megadoc.train import step as step_lib

TARGET_DELIMITER = " "


@dataclasses.dataclass(frozen=True)
class Question:
    context: str  # the prompt, e.g. "Question: ...\nAnswer:"
    choices: tuple[str, ...]  # raw answer texts; the scored continuation is " " + choice
    label: int  # index of the correct choice


def jsonl_rows(path: str) -> Iterator[tuple[int, dict]]:
    # JSON Lines ends records at "\n" only: splitlines() would also split at U+2028 and other
    # separators that are valid inside a JSON string.
    for lineno, line in enumerate(fs.read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def _need(path, lineno, row, fields, layout):
    for name, kind in fields.items():
        if not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
            raise ValueError(
                f"{path}:{lineno}: expected {layout}; field {name!r} is "
                f"{'missing' if name not in row else repr(row[name])[:80]}"
            )


def read_piqa(path: str) -> list[Question]:
    layout = 'PIQA {"goal": str, "sol1": str, "sol2": str, "label": 0|1}'
    out = []
    for lineno, row in jsonl_rows(path):
        _need(path, lineno, row, {"goal": str, "sol1": str, "sol2": str, "label": int}, layout)
        if row["label"] not in (0, 1):
            raise ValueError(f"{path}:{lineno}: expected {layout}; label is {row['label']}")
        context = f"Question: {row['goal']}\nAnswer:"
        out.append(Question(context, (row["sol1"], row["sol2"]), row["label"]))
    return out


def read_sciq(path: str) -> list[Question]:
    fields = {"question": str, "distractor1": str, "distractor2": str, "distractor3": str,
              "correct_answer": str, "support": str}
    layout = "SciQ {" + ", ".join(f'"{f}": str' for f in fields) + "}"
    out = []
    for lineno, row in jsonl_rows(path):
        _need(path, lineno, row, fields, layout)
        choices = tuple(row[k] for k in ("distractor1", "distractor2", "distractor3",
                                         "correct_answer"))
        context = f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:"
        out.append(Question(context, choices, 3))
    return out


def read_arc(path: str) -> list[Question]:
    """ARC (Easy or Challenge), in the original nested layout or the flat Hugging Face one."""
    layout = ('ARC {"question": {"stem": str, "choices": [{"text", "label"}]}, "answerKey": str} '
              'or {"question": str, "choices": {"text": [...], "label": [...]}, "answerKey": str}')
    out = []
    for lineno, row in jsonl_rows(path):
        _need(path, lineno, row, {"answerKey": str}, layout)
        q = row.get("question")
        try:
            if isinstance(q, dict):
                stem = q["stem"]
                texts = [c["text"] for c in q["choices"]]
                labels = [c["label"] for c in q["choices"]]
            else:
                stem, texts, labels = q, row["choices"]["text"], row["choices"]["label"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: expected {layout}; missing {e}") from e
        if not (isinstance(stem, str) and texts and len(texts) == len(labels)
                and all(isinstance(t, str) for t in texts)):
            raise ValueError(f"{path}:{lineno}: expected {layout}; got {json.dumps(row)[:200]}")
        if row["answerKey"] not in labels:
            raise ValueError(f"{path}:{lineno}: answerKey {row['answerKey']!r} is not one of the "
                             f"labels {labels}")
        label = labels.index(row["answerKey"])
        out.append(Question(f"Question: {stem}\nAnswer:", tuple(texts), label))
    return out


READERS = {"piqa": read_piqa, "sciq": read_sciq, "arc_easy": read_arc}

# A loglikelihood function scores (context, continuation) string pairs: the summed log-prob of
# the continuation's tokens given the context.
LogLikelihood = Callable[[Sequence[tuple[str, str]]], Sequence[float]]


def _stderr(hits: list[float]) -> float | None:
    """lm-eval's `mean_stderr`: sample standard deviation (n - 1) over sqrt(n)."""
    return float(np.std(hits, ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else None


def score(questions: Sequence[Question], loglikelihood: LogLikelihood) -> dict:
    """{"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"} over `questions`, all choices
    scored in one call."""
    if not questions:
        raise ValueError("no questions to score")
    requests = [(q.context, TARGET_DELIMITER + c) for q in questions for c in q.choices]
    lls = np.asarray(loglikelihood(requests), dtype=np.float64)
    if lls.shape != (len(requests),):
        raise ValueError(f"loglikelihood returned shape {lls.shape} for {len(requests)} requests")
    acc, acc_norm = [], []
    start = 0
    for q in questions:
        ll = lls[start:start + len(q.choices)]
        start += len(q.choices)
        acc.append(float(int(np.argmax(ll)) == q.label))
        acc_norm.append(float(int(np.argmax(ll / np.array([float(len(c)) for c in q.choices])))
                              == q.label))
    return {"acc": float(np.mean(acc)), "acc_stderr": _stderr(acc),
            "acc_norm": float(np.mean(acc_norm)), "acc_norm_stderr": _stderr(acc_norm),
            "n": len(questions)}


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of context (with the tokenizer's prefix) and continuation, split as lm-eval does:
    trailing whitespace of the context moves to the continuation, and the continuation is what
    encoding the whole adds after the context, so a token spanning the boundary is not double
    counted. A context that encodes to nothing gets lm-eval's prefix token (BOS, else EOS)."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = tokenizer.encode_as_hf(stripped)
    whole = tokenizer.encode_as_hf(stripped + continuation)
    if not context_ids:
        prefix = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
        return [prefix], whole
    return context_ids, whole[len(context_ids):]


def _continuation_logprob(config, average, params, rows):
    tokens_BxT, targets_BxT, mask_BxT = rows
    if average is None:
        logits_BxTxV = llama.forward(config, params, tokens_BxT)
    else:
        logits_BxTxV = ensemble.ensemble_logits(config, params, tokens_BxT, average=average)
    logprob_BxT = -step_lib.next_token_losses(logits_BxTxV, targets_BxT)
    return jnp.sum(jnp.where(mask_BxT, logprob_BxT, 0.0), axis=-1)


def _bucket(length: int, max_len: int) -> int:
    return min(max(32, 1 << (length - 1).bit_length()), max_len)


def token_loglikelihoods(config: llama.LlamaConfig, params,
                         pairs: Sequence[tuple[list[int], list[int]]], *, batch_size: int,
                         mesh=None, ensemble_average: str | None = None) -> np.ndarray:
    """Summed log-prob of each continuation's tokens after its context tokens.

    Requests run longest first in batches of `batch_size`, right-padded to a power-of-two length
    (one compile per length bucket); sequences longer than the model's context keep their end.
    Params and batch are sharded over `mesh` (default: every device on the batch axis), each
    process placing only its rows; batch_size is rounded up to fill the batch shards.
    With `ensemble_average` ("logits" | "probs"), `params` are an ensemble's stacked members
    (`ensemble.stack_params`) and the ensemble's distribution is scored.
    """
    max_len = config.max_seq_len
    seqs = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError(f"request {i}: the continuation encodes to no tokens")
        if not ctx:
            raise ValueError(f"request {i}: the context encodes to no tokens")
        seqs.append((list(ctx) + list(cont))[-(max_len + 1):])
    order = sorted(range(len(pairs)), key=lambda i: -len(seqs[i]))
    out = np.zeros(len(pairs), np.float64)
    mesh = sharding.make_mesh() if mesh is None else mesh
    param_sh = (ensemble.stacked_shardings(config, mesh) if ensemble_average
                else llama.param_shardings(config, mesh))
    params = jax.device_put(params, param_sh)
    rows_sh = sharding.batch_sharding(mesh)
    batch_size = host_rows.round_up(batch_size, host_rows.num_shards(rows_sh))
    rows = host_rows.HostRows(rows_sh, batch_size)
    scorer = step_lib.make_row_scorer(
        functools.partial(_continuation_logprob, config, ensemble_average), param_sh, mesh)
    last_log = time.time()
    for start in range(0, len(order), batch_size):
        if time.time() - last_log > 30:
            last_log = time.time()
            print(f"[benchmarks] scored {start}/{len(order)} choices", flush=True)
        idx = order[start:start + batch_size]
        T = _bucket(len(seqs[idx[0]]) - 1, max_len)
        tokens = np.zeros((batch_size, T), np.int32)
        targets = np.zeros((batch_size, T), np.int32)
        mask = np.zeros((batch_size, T), bool)
        for row, i in enumerate(idx):
            seq = seqs[i]
            n = len(seq) - 1
            tokens[row, :n], targets[row, :n] = seq[:-1], seq[1:]
            mask[row, n - min(len(pairs[i][1]), n):n] = True
        batch = tuple(rows.to_global(x[rows.local_rows]) for x in (tokens, targets, mask))
        lls = scorer(params, batch)
        out[idx] = np.asarray(lls)[:len(idx)]
    return out


def model_loglikelihood(config: llama.LlamaConfig, params, tokenizer, *, batch_size: int,
                        mesh=None, ensemble_average: str | None = None) -> LogLikelihood:
    """A `LogLikelihood` backed by a model (or, with `ensemble_average`, by stacked members)."""

    def loglikelihood(requests):
        pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
        return token_loglikelihoods(config, params, pairs, batch_size=batch_size, mesh=mesh,
                                    ensemble_average=ensemble_average)

    return loglikelihood


def evaluate(paths: dict[str, str], loglikelihood: LogLikelihood) -> dict:
    """Scores each task in {task name: JSONL path} and the average over tasks."""
    results = {}
    for task, path in paths.items():
        if task not in READERS:
            raise ValueError(f"unknown benchmark {task!r}; known: {sorted(READERS)}")
        questions = READERS[task](path)
        if not questions:
            raise ValueError(f"{path}: no {task} questions in the file")
        results[task] = score(questions, loglikelihood)
        print(f"[benchmarks] {task}: acc {results[task]['acc']:.4f} "
              f"acc_norm {results[task]['acc_norm']:.4f} (n={results[task]['n']})", flush=True)
    if results:
        results["average"] = {k: float(np.mean([r[k] for r in results.values()]))
                              for k in ("acc", "acc_norm")}
    return results
