"""Synthesis methods: the one table of what each method is called and what it needs.

A method's name is its one spelling: the `--method` value, the `method` of every record it
writes, its output folder in the pipelines and the stem of its shipped template. Adding a method
is one entry in METHODS plus its template file in megadoc/synth/templates/ (a conditional method,
sbp, has none: the document is its prompt); the synthesis job,
`prepare`, `synthesize --help` and the knowledge pipeline read this table.

The table lives in data/ because a method is first of all a kind of record: the readers (data.docs,
data.megadocs, data.prepare) must know the names and which recipe takes which records, and data/
may not import synth/. synth/ imports it to know the template, the prompt's fields, the samples
per document and how to parse a completion.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Callable

# What a completion became: (text to train on, fields added to its record), or None: malformed.
Parse = Callable[[str], "tuple[str, dict] | None"]

X1 = "x1"
"""The prompt field of a conditional method: the document is the prompt (no template, no chat)."""


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    """the one spelling: flag value, record `method`, output folder"""
    template: str | None
    """the shipped prompt template: a file name in megadoc/synth/templates/ (an absolute path
    is used as is); None: no template (see prompt_fields)"""
    prompt_fields: tuple[str, ...]
    """the template's placeholders: ("document",) one prompt per document; ("prefix", "suffix")
    one per split point; a "question" or "entities" field: one per question or entity group;
    (X1,) untemplated, one prompt per document: the document itself as x1 of a conditional
    model's `x1 <separator>` prompt (data/pairs.py); (): not prompted (unconditional)"""
    inputs: tuple[str, ...]
    """the synthesis job settings (JobConfig fields) it reads beyond the common ones; the
    count of records per document follows from them (see samples_per_document)"""
    recipes: tuple[str, ...]
    """the megadoc recipes (data.megadocs.RECIPES) that take its records"""
    max_new_tokens: int
    """new tokens per generation when the job is not told otherwise (the papers' value)"""
    parse: Parse | None = None
    """how a completion becomes a record (None: its text as is)"""
    continuation: str | None = None
    """the shipped template for each next chunk of a document whose prompt and generation do
    not fit in the generator's context, with CONTINUATION_FIELDS (synth/chunked.py); None:
    such a document's record says prompt_too_long"""
    styles: dict[str, str] = dataclasses.field(default_factory=dict)
    """shipped alternative templates by style name, one drawn per sample when the job asks
    for styles (synth/styles.py); the first is `template`"""
    scored: bool = False
    """its records are rewrites of the whole document, scored for fidelity to it and
    diversity (synth/fidelity.py)"""

    @property
    def conditional(self) -> bool:
        """Prompted with the document as x1 of a conditional model p(x2 | x1), not a template."""
        return self.prompt_fields == (X1,)

    @property
    def offsets(self) -> bool:
        """Its records carry the character `offset` of a split point."""
        return "prefix" in self.prompt_fields


CONTINUATION_FIELDS = ("previous", "document")
"""A continuation template's placeholders: the end of the rewrite so far, the next chunk."""

_QA = re.compile(r"Question:\s*(?P<question>.+?)\s*\n\s*Answer:\s*(?P<answer>.+)", re.DOTALL)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) from "Question: …\\nAnswer: …", or None."""
    m = _QA.search(text)
    if not m:
        return None
    question, answer = m["question"].strip(), m["answer"].strip()
    return (question, answer) if question and answer else None


def qa_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def parse_entities(text: str) -> tuple[str, list[str]] | None:
    """(summary, distinct entities in order) from the first {...} JSON object, or None."""
    m = _JSON_OBJECT.search(text)
    try:
        obj = json.loads(m[0]) if m else None
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    summary, entities = obj.get("summary"), obj.get("entities")
    if not isinstance(summary, str) or not isinstance(entities, list) or \
            not all(isinstance(e, str) for e in entities):
        return None
    distinct = list(dict.fromkeys(e.strip() for e in entities if e.strip()))
    return (summary.strip(), distinct) if distinct else None


def _qa_record(text: str) -> tuple[str, dict] | None:
    pair = parse_qa(text)
    return pair and (qa_text(*pair), {"question": pair[0], "answer": pair[1]})


def _entities_record(text: str) -> tuple[str, dict] | None:
    parsed = parse_entities(text)
    return parsed and (parsed[0], {"entities": parsed[1]})


_REPHRASED = ("simple", "stitched")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("rephrase", "rephrase.txt", ("document",), ("generations",), _REPHRASED, 1024,
           continuation="rephrase_continue.txt", scored=True,
           styles={"wikipedia": "rephrase.txt", "textbook": "rephrase_textbook.txt",
                   "qa": "rephrase_qa.txt", "beginner": "rephrase_beginner.txt",
                   "academic": "rephrase_academic.txt"}),
    Method("latent_thoughts", "latent_thoughts.txt", ("prefix", "suffix"), ("splits",),
           ("latent",), 512),
    Method("qa", "qa.txt", ("document",), ("generations",), _REPHRASED, 256, _qa_record),
    Method("focal_rewrite", "focal_rewrite.txt", ("document", "question"),
           ("generations", "questions"), _REPHRASED, 1024),
    Method("entigraph_entities", "entigraph_entities.txt", ("document",), ("attempts",),
           _REPHRASED, 512, _entities_record),
    Method("entigraph_relations", "entigraph_relations.txt", ("document", "entities"),
           ("entities", "relations"), _REPHRASED, 1024),
    Method("sbp", None, (X1,), ("generations",), _REPHRASED, 1024),
    Method("unconditional", None, (), (), _REPHRASED, 1024),
)}
"""Every method, by its one name."""

STAGED = {"entigraph": ("entigraph_entities", "entigraph_relations")}
"""Methods that run as several jobs in order, each stage reading the one before."""

JOB_INPUTS = ("generations", "splits", "questions", "entities", "relations", "attempts")
"""The job settings only some methods read (Method.inputs); the rest refuse them."""
_FROM_OTHER_JOBS = ("questions", "entities")

LEGACY_NAMES = {"latent_thought": "latent_thoughts", "entigraph_relation": "entigraph_relations"}
"""Record spellings written before the methods had one name; readers map them to it."""


def get(name: str) -> Method:
    """The method called `name`, or a ValueError listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown synthesis method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def prompted() -> list[str]:
    """The methods the synthesis job runs (prompted with a template, or conditional)."""
    return [n for n, m in METHODS.items() if m.prompt_fields]


def styled() -> list[str]:
    """The methods with shipped styles to draw from."""
    return [n for n, m in METHODS.items() if m.styles]


def continued() -> list[str]:
    """The methods that rewrite a document too long for one prompt chunk-wise."""
    return [n for n, m in METHODS.items() if m.continuation]


def from_documents(recipe: str) -> list[str]:
    """The template-prompted methods that need nothing but the documents (and an instruction
    generator: not a conditional model) and feed `recipe`."""
    return [n for n in prompted() if recipe in METHODS[n].recipes
            and METHODS[n].template is not None
            and not set(_FROM_OTHER_JOBS) & set(METHODS[n].inputs)]


def reading(setting: str) -> list[str]:
    """The methods, staged ones included, that read a job setting (one of JOB_INPUTS). A
    staged method passes each stage the records of the one before, so it takes no questions
    or entities."""
    direct = [n for n in prompted() if setting in METHODS[n].inputs]
    staged = [s for s, stages in STAGED.items() if setting not in _FROM_OTHER_JOBS
              and any(setting in METHODS[m].inputs for m in stages)]
    return direct + staged


def samples_per_document(method: Method, settings, questions: int = 0) -> int:
    """Records a job writes per document, from its settings (a JobConfig) and, for a method
    prompted per question, the document's number of questions."""
    if "splits" in method.inputs:
        return sum(settings.splits)
    if "relations" in method.inputs:
        return settings.relations
    if "questions" in method.inputs:
        return questions * settings.generations or 1
    if "generations" in method.inputs:
        return settings.generations
    return 1
