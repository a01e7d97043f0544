"""Knowledge-acquisition synthesis: question–answer pairs, focal rewrites and EntiGraph.

    qa                   one question–answer pair per generation, parsed into `question` and
                         `answer`; `text` is "Question: …\\nAnswer: …"
    focal_rewrite        the document rewritten to focus on one question (`question`), several
                         rewrites per question; questions come from any records that carry one
    entigraph_entities   stage 1: JSON {"summary", "entities"}; `text` is the summary (trained on),
                         `entities` the list (not trained on); generated again (a fresh
                         sample) until it parses, up to the job's `attempts`, and `attempts`
                         records how many it took
    entigraph_relations  stage 2: how a group of the document's entities relate, groups in
                         EntiGraph's order (every pair, then triples) up to a budget;
                         `entities` names the group

A generation that does not parse keeps its raw text in `raw`, gets `finish_reason` "malformed"
and an empty `text` (so no store trains on it). Documents without questions (focal) or without
parsed entities (stage 2) get one record, or one per requested group, saying so.
"""
from __future__ import annotations

import collections
import itertools

import numpy as np

from megadoc.data import docs as docs_lib
from megadoc.data import methods as methods_lib

MALFORMED = "malformed"
NO_QUESTIONS = "no_questions"
NO_ENTITIES = "no_entities"
TOO_FEW_ENTITIES = "too_few_entities"


def finish(method: str, text: str, reason: str, fields: dict) -> tuple[str, str, dict]:
    """(text, finish_reason, record fields) of a completion, parsed where the method has a
    parser (data/methods.py)."""
    parse = methods_lib.get(method).parse
    if parse is None:
        return text, reason, fields
    parsed = parse(text)
    if parsed is None:
        return "", MALFORMED, {"raw": text}
    return parsed[0], reason, parsed[1]


def entity_groups(entities: list[str], budget: int, seed: int,
                  key: int) -> list[tuple[str, ...] | None]:
    """The first `budget` groups of EntiGraph's stage-2 enumeration: every pair of the
    document's entities, then every triple, each size in a shuffle seeded by (seed, key); None
    where the groups run out. EntiGraph takes the pairs in order; shuffling them too means a
    budget smaller than the pairs draws them evenly rather than all about the first entities."""
    rng = np.random.default_rng([seed, key])
    out = []
    for size in (2, 3):
        if len(out) >= budget:
            break
        groups = list(itertools.combinations(entities, size))
        out += [groups[i] for i in rng.permutation(len(groups))]
    out = out[:budget]
    return out + [None] * (budget - len(out))


def _read_field(path: str, field: str) -> dict[str, list]:
    """doc_id -> non-empty values of `field` in the records under `path`, in sample order;
    records without it (or malformed ones) are skipped."""
    found = collections.defaultdict(list)
    for r in docs_lib.read_generations(path):
        value = r.get(field)
        if value and r.get("finish_reason") != MALFORMED:
            found[r["doc_id"]].append((r["sample"], value))
    return {d: [v for _, v in sorted(vs, key=lambda x: x[0])] for d, vs in found.items()}


def check_inputs(path: str, kind: str, num_docs: int, without: int) -> None:
    """Refuse --questions / --entities that give none of the documents any (wrong records, or
    another corpus); say how many documents go without (each gets a record saying so)."""
    field, stage, reason = (("question", "qa", NO_QUESTIONS) if kind == "questions" else
                            ("entities", "entigraph_entities", NO_ENTITIES))
    if num_docs and without == num_docs:
        raise ValueError(f"--{kind}={path}: no {kind} for any of the {num_docs} documents (no "
                         f"record with a non-empty {field!r} for their doc_id); expected the "
                         f"{stage} output of these documents")
    if without:
        print(f"[synth] {without} of {num_docs} documents have no {kind} in {path}; each gets "
              f"records with finish_reason {reason}", flush=True)


def read_questions(path: str) -> dict[str, list[str]]:
    """doc_id -> its questions (qa output, or any records with a `question`)."""
    return _read_field(path, "question")


def read_entities(path: str) -> dict[str, list[str]]:
    """doc_id -> its entity list (entigraph_entities output; the last sample if several)."""
    return {d: lists[-1] for d, lists in _read_field(path, "entities").items()}
