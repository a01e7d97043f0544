"""Sharded, resumable synthesis job: source documents -> generation records.

Output directory:
  shard-00000.jsonl       the records of shard 0 (shared schema), written whole and atomically
  _job/config.json        the job's settings; a restart with different settings refuses to start
  _job/shard-00000.done   done marker (the shard's counts), written after the shard's records
  _job/progress-p0.jsonl  progress lines of process 0
  summary.json            outcomes by finish reason over every finished shard

Shard j holds documents [j*shard_size, (j+1)*shard_size) in input order and belongs to process
j % process_count. A shard without its marker is redone whole (its file replaced atomically), so
a restart never loses or duplicates a record. The sampler streams across shards: a shard is
written as soon as its last record arrives.

Every (document, sample) yields exactly one record. Records that carry no generation say why in
`finish_reason`, with empty text: "empty_document", "prompt_too_long" (the prompt does not fit in
the generator's context; never truncated; a method with a continuation template, rephrase,
rewrites such a document chunk-wise instead, see megadoc/synth/chunked.py, its record listing its
`chunks`), "error" (logged with the document's location).
What each method (megadoc/data/methods.py) prompts with and how many records it writes per
document follow from its template's fields: one prompt per document ({document}), per split
point ({prefix}/{suffix}: `offset` is its character offset and `splits` its count k: a run at
counts (1, 2, 4) writes samples 0 (k=1), 1-2 (k=2), 3-6 (k=4), each count at its own equal
splits), per question ({question}) or per entity group ({entities}). Methods with a parser add
its fields to the record and give malformed output a status: megadoc/synth/knowledge.py.
Rephrase records also carry `fidelity`, `fidelity_logprob`, `max_similarity` and
`source_overlap` (megadoc/synth/fidelity.py), and summary.json their distributions.
`sbp` (Synthetic Bootstrapped Pretraining) is conditional: no template and no chat; the
generator, a conditional model p(x2 | x1), samples a related document after the document as
x1 (`BOS x1 <separator>`, megadoc/data/pairs.py), which keeps x1's head to leave room for x2.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
import traceback

import jax

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.data import methods as methods_lib
from megadoc.data import pairs as pairs_lib
from megadoc.models import sharding
from megadoc.synth import chunked
from megadoc.synth import fidelity
from megadoc.synth import generator as generator_lib
from megadoc.synth import knowledge
from megadoc.synth import prompts
from megadoc.synth import sampler as sampler_lib
from megadoc.synth import split
from megadoc.synth import styles as styles_lib

EMPTY_DOCUMENT = "empty_document"
ERROR = "error"
PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """One synthesis job: what to generate from which documents with which generator."""
    method: str
    """what to generate: a prompted method of data/methods.py (rephrase, latent_thoughts, qa,
    focal_rewrite, entigraph_entities, entigraph_relations, sbp; unconditional: see
    synth/unconditional.py)"""
    generator: str
    """Hugging Face Llama dir with its tokenizer, a Llama-architecture .gguf file, or a megadoc
    training workdir (local or gs://; see train/pretrained.py); sbp: the conditional model;
    unconditional: megadoc training workdirs, comma-separated (an ensemble)"""
    docs: str
    """source docs {id, text}: JSONL(.gz)/Parquet file, dir or glob"""
    output: str
    """output directory (local or gs://)"""
    generations: int = dataclasses.field(default=1, metadata={"flag": "generations_per_doc"})
    """rephrase, qa, sbp: samples per document; focal_rewrite: rewrites per question"""
    splits: tuple[int, ...] = (1,)
    """latent_thoughts: split counts; for each count k, thoughts at its own k equal split points
    (k+1 pieces, §4.2), each record naming its count in `splits`, so that one run serves a
    sweep over the counts (prepare --max_generations=k takes count k's thoughts)"""
    questions: str | None = None
    """focal_rewrite: records with a question per document (qa output)"""
    entities: str | None = None
    """entigraph_relations: records with an entity list per document (entigraph_entities)"""
    relations: int = 0
    """entigraph_relations: entity groups per document, EntiGraph's order: every pair of its
    entities, then its triples, each in a seeded shuffle, as far as this budget goes"""
    attempts: int = 3
    """entigraph_entities: generations tried per document until one parses as the entity
    JSON (each retry a fresh sample; the record says how many it took)"""
    max_new_tokens: int | None = None
    """None: the method's default, the papers' value (1024 rephrase / 512 latent_thoughts)"""
    temperature: float = 1.0
    """sampling temperature (0: greedy)"""
    top_p: float = 1.0
    """nucleus sampling: draw from the smallest set of tokens holding this much probability
    mass (1: off)"""
    top_k: int = 0
    """sample among the k most likely tokens (0: off)"""
    seed: int = 0
    """seed of every (document, sample) random stream"""
    batch_size: int = 64
    """sequences decoded together (the sampler's slots; a finished one is refilled with the
    next prompt)"""
    shard_size: int = 256
    """documents per output shard"""
    template: str | None = None
    """prompt template file (None: the one shipped for the method)"""
    continue_template: str | None = None
    """rephrase: prompt template for each next chunk of a document too long for the
    generator's context, with {previous} (the end of the rewrite so far) and {document} (the
    chunk) (None: the shipped one)"""
    styles: tuple[str, ...] = ()
    """rephrase: draw each sample's template from these, by (seed, document, sample): shipped
    styles (wikipedia, textbook, qa, beginner, academic; `all` for every one) or template
    files; the record's `template` names the one drawn (empty: the one --template, by default
    the paper's single Wikipedia-style prompt)"""
    tensor_parallel: int = 1
    """devices each model copy is split over"""
    # Synthesis processes never talk to each other: each just takes its share of the shards.
    process_id: int | None = None
    """this process's index (None: jax.process_index())"""
    num_processes: int | None = None
    """processes (None: jax.process_count())"""

    def __post_init__(self):
        """Every setting checked before the job writes anything."""
        if self.method not in methods_lib.prompted():
            raise ValueError(f"method {self.method!r}: expected one of "
                             f"{sorted(methods_lib.prompted())}")
        if isinstance(self.splits, int):  # one count, as JobConfig(splits=8)
            object.__setattr__(self, "splits", (self.splits,))
        if not self.splits or min(self.splits) < 1 or len(set(self.splits)) < len(self.splits):
            raise ValueError(f"splits must be distinct counts >= 1, got {list(self.splits)}")
        for name in ("generations", "batch_size", "shard_size", "tensor_parallel", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        method = methods_lib.get(self.method)
        if isinstance(self.styles, str):
            object.__setattr__(self, "styles", (self.styles,))
        if self.styles and (not method.styles or self.template):
            raise ValueError(f"styles choose among a method's shipped templates: they go with "
                             f"method {'|'.join(methods_lib.styled())} and without template")
        if self.continue_template and not method.continuation:
            raise ValueError(f"continue_template goes with method "
                             f"{'|'.join(methods_lib.continued())}, and only with it")
        inputs = method.inputs
        for name, what in (("questions", "records with a question per document"),
                           ("entities", "entigraph_entities output")):
            users = [m for m in methods_lib.prompted() if name in methods_lib.get(m).inputs]
            if (name in inputs) != bool(getattr(self, name)):
                raise ValueError(f"{name} ({what}) go with method {'|'.join(users)}, and only "
                                 "with it")
        if methods_lib.get(self.method).template is None and self.template:
            raise ValueError(f"method {self.method} takes no template: the document itself is "
                             f"its prompt")
        if "relations" in inputs and self.relations < 1:
            raise ValueError(f"{self.method} needs relations >= 1, got {self.relations}")

    def samples(self, doc: dict, inputs: dict) -> int:
        """Records the job writes for `doc`, given the per-document inputs (questions or
        entities) of the methods that take them."""
        return methods_lib.samples_per_document(methods_lib.get(self.method), self,
                                                len(inputs.get(doc["id"], ())))


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a generation comes from: the document's shard and position in it, its id, and
    (latent thoughts) the character offset of the split point."""
    shard: int
    position: int
    doc_id: str
    offset: int | None = None
    fields: dict | None = None  # focal: its question; EntiGraph: the entity group


@dataclasses.dataclass(frozen=True)
class Output:
    """One generated sample of an origin and why it ended."""
    sample: int
    text: str
    finish_reason: str
    fields: dict | None = None  # the record fields a knowledge method parsed or was given


def sample_stream(doc_id: str) -> int:
    """32-bit id of a document's random stream: its samples never depend on where it is
    processed."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:4], "little")


def shard_path(output: str, shard: int) -> str:
    return fs.join(output, f"shard-{shard:05d}.jsonl")


def marker_path(output: str, shard: int) -> str:
    return fs.join(output, "_job", f"shard-{shard:05d}.done")


def owned_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
    return [j for j in range(num_shards) if j % process_count == process_index]


def _check_job_config(path: str, settings: dict) -> None:
    """First run: record the settings. Restart: refuse settings that would change records."""
    if fs.exists(path):
        old = json.loads(fs.read_text(path))
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise ValueError(f"{path}: this output directory was written with other settings "
                             f"({diff}); use a new --output or the original settings")
    else:
        fs.write_text(path, json.dumps(settings, indent=1, sort_keys=True))


class _Shards:
    """Collects records per shard and writes a shard (then its marker) once it is complete.
    `annotate(shard, records)`, when given, adds fields to the records and returns statistics
    for the marker."""

    def __init__(self, output: str, expected: dict[int, int], annotate=None):
        self.output, self.expected, self.annotate = output, expected, annotate
        self.records: dict[int, list] = collections.defaultdict(list)
        self.written: list[int] = []

    def add(self, shard: int, order: tuple, record: dict, generated_tokens: int) -> None:
        self.records[shard].append((order, record, generated_tokens))
        if len(self.records[shard]) == self.expected[shard]:
            self._write(shard)

    def _write(self, shard: int) -> None:
        entries = sorted(self.records.pop(shard), key=lambda x: x[0])
        rows = [r for _, r, _ in entries]
        stats = self.annotate(shard, rows) if self.annotate else None
        docs_lib.write_jsonl(shard_path(self.output, shard), rows)
        written = fs.read_bytes(shard_path(self.output, shard))
        counts = collections.Counter(r["finish_reason"] for r in rows)
        fs.write_text(marker_path(self.output, shard), json.dumps(
            {"records": len(rows), "sha256": hashlib.sha256(written).hexdigest(),
             "finish_reason": dict(counts), "generated_tokens": sum(n for _, _, n in entries),
             **({"quality": stats} if stats else {})}))
        self.written.append(shard)


def shard_problem(output: str, shard: int) -> str | None:
    """Why a shard with a done marker cannot be trusted (missing, truncated, changed), or None
    when its file still has the records and checksum its marker recorded."""
    try:
        marker = json.loads(fs.read_text(marker_path(output, shard)))
        data = fs.read_bytes(shard_path(output, shard))
    except FileNotFoundError as e:
        return f"{e.filename} is missing"
    except ValueError as e:
        return f"{marker_path(output, shard)} is corrupt ({e})"
    records = data.count(b"\n")
    if records != marker.get("records"):
        return (f"{shard_path(output, shard)} holds {records} records, its marker says "
                f"{marker.get('records')}")
    if "sha256" in marker and hashlib.sha256(data).hexdigest() != marker["sha256"]:
        return f"{shard_path(output, shard)} does not match the checksum in its marker"
    return None


def _finished_shards(output: str, shards: list[int]) -> set[int]:
    """The shards whose markers are backed by intact files; a failing one loses its marker and
    is redone."""
    done = set()
    for j in shards:
        if not fs.exists(marker_path(output, j)):
            continue
        problem = shard_problem(output, j)
        if problem is None:
            done.add(j)
        else:
            print(f"[synth] shard {j} was finished but {problem}; redoing it", flush=True)
            fs.remove(marker_path(output, j))
    return done


def _summary(output: str, num_shards: int, extra: dict) -> dict:
    counts, records, tokens, done, quality = collections.Counter(), 0, 0, 0, []
    for j in range(num_shards):
        if fs.exists(marker_path(output, j)):
            m = json.loads(fs.read_text(marker_path(output, j)))
            counts.update(m["finish_reason"])
            records += m["records"]
            tokens += m["generated_tokens"]
            done += 1
            quality += [m["quality"]] if "quality" in m else []
    return dict(extra, shards_total=num_shards, shards_done=done, records=records,
                generated_tokens=tokens, finish_reason=dict(sorted(counts.items())),
                **({"quality": fidelity.summarize(quality)} if quality else {}))


def run(cfg: JobConfig) -> dict:
    """Run (or resume) the job for this process's shards; returns the summary."""
    start = time.time()
    process_index = jax.process_index() if cfg.process_id is None else cfg.process_id
    process_count = jax.process_count() if cfg.num_processes is None else cfg.num_processes
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_id {process_index} outside [0, {process_count})")
    method = cfg.method
    if cfg.styles:
        templates = styles_lib.load(method, cfg.styles)
    elif methods_lib.get(method).template:
        templates = [prompts.load_template(cfg.template or prompts.builtin_template(method),
                                           method)]
    else:  # a conditional method (sbp): the document itself is the prompt
        templates = [None]
    template = templates[0]
    bad = docs_lib.BadRecords()
    inputs = (knowledge.read_questions(cfg.questions) if cfg.questions else
              knowledge.read_entities(cfg.entities) if cfg.entities else {})
    doc_samples, without_inputs = [], 0
    for doc in docs_lib.read_docs(cfg.docs, bad):
        doc_samples.append(cfg.samples(doc, inputs))
        without_inputs += doc["id"] not in inputs
    num_docs = len(doc_samples)
    if cfg.questions or cfg.entities:
        knowledge.check_inputs(cfg.questions or cfg.entities, "questions" if cfg.questions
                               else "entities", num_docs, without_inputs)
    # Validated: only now is anything written (a refused job leaves no --output behind).
    fs.check_writable(cfg.output)  # a missing or read-only bucket fails before the model loads
    num_shards = math.ceil(num_docs / cfg.shard_size)
    mesh = sharding.make_mesh(tensor=cfg.tensor_parallel, devices=jax.local_devices())
    gen = generator_lib.load(cfg.generator, mesh)
    max_new = (methods_lib.get(method).max_new_tokens if cfg.max_new_tokens is None
               else cfg.max_new_tokens)
    settings = sampler_lib.Settings(max_new_tokens=max_new, temperature=cfg.temperature,
                                    top_p=cfg.top_p, top_k=cfg.top_k, stop_tokens=gen.stop_tokens)
    fs.makedirs(fs.join(cfg.output, "_job"))
    _check_job_config(fs.join(cfg.output, "_job", "config.json"), {
        "method": cfg.method, "generator": gen.name, "seed": cfg.seed,
        "template": (template and template.name) if len(templates) == 1 else [
            t.name for t in templates],
        "continue_template": cfg.continue_template,
        "samples": sum(doc_samples), "generations": cfg.generations, "splits": list(cfg.splits),
        "questions": cfg.questions, "entities": cfg.entities, "relations": cfg.relations,
        "attempts": cfg.attempts, "max_new_tokens": max_new,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
        "shard_size": cfg.shard_size, "num_docs": num_docs})

    mine = owned_shards(num_shards, process_index, process_count)
    finished = _finished_shards(cfg.output, mine)
    todo = [j for j in mine if j not in finished]
    print(f"[synth] {num_docs} docs in {num_shards} shards; process {process_index}/"
          f"{process_count} owns {len(mine)}, {len(mine) - len(todo)} already done", flush=True)
    docs_todo = sum(min(cfg.shard_size, num_docs - j * cfg.shard_size) for j in todo)
    sources: dict[int, dict[str, str]] = collections.defaultdict(dict)  # shard -> doc texts
    annotate = None
    if methods_lib.get(method).scored:  # fidelity and diversity of each: synth/fidelity.py
        scorer = fidelity.Scorer(gen.config, gen.params, gen.tokenizer, mesh=mesh)
        annotate = lambda shard, rows: fidelity.annotate(scorer, rows, sources.pop(shard))
    shards = _Shards(cfg.output, {j: sum(doc_samples[j * cfg.shard_size:(j + 1) * cfg.shard_size])
                                  for j in todo}, annotate)
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                "max_new_tokens": max_new}
    sampler = sampler_lib.Sampler(gen.config, gen.params, settings, batch_size=cfg.batch_size,
                                  seed=cfg.seed, mesh=mesh)
    outstanding: dict[tuple, int] = {}  # (shard, position) -> records still to come
    samples_todo = sum(shards.expected.values())
    progress = _Progress(cfg.output, process_index, docs_todo, samples_todo * max_new, sampler)

    def emit(origin: Origin, out: Output, generated_tokens: int = 0):
        record = dict(doc_id=origin.doc_id, method=method, sample=out.sample,
                      offset=origin.offset, text=out.text, finish_reason=out.finish_reason,
                      seed=cfg.seed, generator=gen.name, template=template and template.name,
                      sampling=sampling)
        record.update(out.fields or {})  # a style's template, a knowledge method's fields
        where = (origin.shard, origin.position)
        outstanding[where] -= 1
        if not outstanding[where]:
            del outstanding[where]
            progress.doc_done()
        shards.add(origin.shard, (origin.position, out.sample), record, generated_tokens)

    def requests():
        todo_set = set(todo)
        for i, doc in enumerate(docs_lib.read_docs(cfg.docs)):
            shard, pos = divmod(i, cfg.shard_size)
            if shard not in todo_set:
                continue
            outstanding[shard, pos] = doc_samples[i]
            if annotate:
                sources[shard][doc["id"]] = doc["text"]
            origin = Origin(shard, pos, doc["id"])
            try:
                if methods_lib.get(method).continuation:
                    reqs = _rewrite_requests(cfg, gen, templates, max_new, doc, origin)
                else:
                    reqs = _doc_requests(cfg, gen, template, doc, origin, inputs)
            except Exception as e:  # one bad document never stops the others
                logging.error("document %r at %s failed: %s\n%s", doc["id"], doc["where"], e,
                              traceback.format_exc())
                reqs = [(origin, Output(s, "", ERROR)) for s in range(doc_samples[i])]
            for r in reqs:
                if isinstance(r, sampler_lib.Request):
                    yield r
                elif isinstance(r, chunked.Item):
                    long_samples.append(r)
                else:
                    emit(*r)

    def record(c: sampler_lib.Completion) -> sampler_lib.Request | None:
        """Records a completion, or returns the retry of an entity list that did not parse."""
        text = gen.tokenizer.decode(c.tokens) if c.tokens else ""
        out = Output(c.sample, text, c.finish_reason, c.request.tag.fields)
        if c.tokens:
            out = Output(c.sample, *knowledge.finish(method, text, c.finish_reason, out.fields))
        if "attempts" in methods_lib.get(method).inputs:  # sample a: attempt a + 1, one record
            if out.finish_reason == knowledge.MALFORMED and c.sample + 1 < cfg.attempts:
                return dataclasses.replace(c.request, first_sample=c.sample + 1, num_samples=1)
            out = Output(0, out.text, out.finish_reason,
                         dict(out.fields or {}, attempts=c.sample + 1))
        emit(c.request.tag, out, len(c.tokens))
        return None

    long_samples: list[chunked.Item] = []  # rewritten chunk-wise once the rest is done
    with progress:
        retries = [r for c in sampler.run(requests()) if (r := record(c)) is not None]
        while retries:  # at most attempts - 1 rounds: each retry raises the sample by one
            retries = [r for c in sampler.run(retries) if (r := record(c)) is not None]
        if long_samples:
            _rewrite_chunkwise(cfg, gen, sampler, templates, max_new, long_samples, emit)

    summary = _summary(cfg.output, num_shards, {
        "process_index": process_index, "shards_written_now": len(shards.written),
        "elapsed_s": round(time.time() - start, 1),
        "generated_tokens_per_s_now": round(progress.tokens_per_s(), 1),
        "bad_input_records": bad.as_dict()})
    fs.write_text(fs.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    print("[synth] summary " + json.dumps(summary), flush=True)
    return summary


def _x1_budget(cfg: JobConfig, gen) -> int:
    """Prompt tokens a conditional method's x1 may take: what leaves max_new_tokens of the
    generator's context, but at least half of it."""
    context = gen.config.max_seq_len
    max_new = cfg.max_new_tokens or methods_lib.get(cfg.method).max_new_tokens
    return max(context // 2, context - max_new)


def _rewrite_chunkwise(cfg: JobConfig, gen, sampler, templates: list, max_new: int,
                       items: list, emit) -> None:
    continuation = prompts.load_template(
        cfg.continue_template or prompts.builtin_template(cfg.method, continuation=True),
        cfg.method, continuation=True)
    size = chunked.chunk_tokens(gen, templates, continuation, max_new)
    for r in chunked.rewrite(sampler, gen, items, continuation, max_new, size):
        fields = dict(r.item.tag.fields or {}, **({"chunks": r.chunks} if r.chunks else {}))
        emit(r.item.tag, Output(r.item.sample, r.text, r.finish_reason, fields),
             r.generated_tokens)


def _rewrite_requests(cfg: JobConfig, gen, templates: list, max_new: int, doc: dict,
                      origin: Origin) -> list:
    """A document's requests for a method with a continuation template (rephrase; its styles,
    when drawn, are `templates`): a run of samples with one template shares a request
    (one prefill); a sample whose prompt and generation do not fit in the generator's context
    becomes a chunked.Item, rewritten chunk-wise after the rest."""
    text, key = doc["text"], sample_stream(origin.doc_id)
    if not text.strip():
        logging.warning("document %r at %s is empty", origin.doc_id, doc["where"])
        return [(origin, Output(s, "", EMPTY_DOCUMENT)) for s in range(cfg.generations)]
    picks = [styles_lib.draw(cfg.seed, key, s, len(templates)) if len(templates) > 1 else 0
             for s in range(cfg.generations)]
    prompts_by_pick = {i: gen.encode_prompt(*templates[i].render(document=text))
                       for i in set(picks)}
    out, s = [], 0
    while s < cfg.generations:
        run = next((e for e in range(s, cfg.generations) if picks[e] != picks[s]),
                   cfg.generations) - s
        template, prompt = templates[picks[s]], prompts_by_pick[picks[s]]
        tag = origin if len(templates) == 1 else dataclasses.replace(
            origin, fields={"template": template.name})
        if chunked.too_long(len(prompt), max_new, gen.config.max_seq_len):
            out += [chunked.Item(tag, key, i, text, template) for i in range(s, s + run)]
        else:
            out.append(sampler_lib.Request(prompt, key, num_samples=run, first_sample=s,
                                           tag=tag))
        s += run
    return out


def _doc_requests(cfg: JobConfig, gen, template, doc: dict, origin: Origin,
                  inputs: dict) -> list:
    """Sampler requests for one document (tagged with their Origin), or, where there is
    nothing to sample, (Origin, Output) pairs to record directly."""
    text, n, doc_id = doc["text"], cfg.samples(doc, inputs), origin.doc_id
    key = sample_stream(doc_id)
    method = methods_lib.get(cfg.method)
    if not text.strip():
        logging.warning("document %r at %s is empty", doc_id, doc["where"])
        at = dataclasses.replace(origin, offset=0) if method.offsets else origin
        if "splits" in method.inputs:
            return [(at, Output(s, "", EMPTY_DOCUMENT, {"splits": k}))
                    for s, (k, _) in enumerate(split.sweep_points(cfg.splits))]
        return [(at, Output(s, "", EMPTY_DOCUMENT)) for s in range(n)]
    if method.conditional:
        prompt = pairs_lib.conditional_prompt(gen.tokenizer, text, _x1_budget(cfg, gen))
        return [sampler_lib.Request(prompt, key, num_samples=n, tag=origin)]
    if method.prompt_fields == ("document",):
        prompt = gen.encode_prompt(*template.render(document=text))
        return [sampler_lib.Request(prompt, key, num_samples=n, tag=origin)]
    if "question" in method.prompt_fields:
        if doc_id not in inputs:
            return [(origin, Output(0, "", knowledge.NO_QUESTIONS))]
        return [sampler_lib.Request(
            gen.encode_prompt(*template.render(document=text, question=q)), key,
            num_samples=cfg.generations, first_sample=i * cfg.generations,
            tag=dataclasses.replace(origin, fields={"question": q}))
            for i, q in enumerate(inputs[doc_id])]
    if "entities" in method.prompt_fields:
        groups = knowledge.entity_groups(inputs.get(doc_id, []), cfg.relations, cfg.seed,
                                         key)
        reason = knowledge.TOO_FEW_ENTITIES if doc_id in inputs else knowledge.NO_ENTITIES
        return [sampler_lib.Request(
            gen.encode_prompt(*template.render(document=text, entities="; ".join(g))), key,
            first_sample=i, tag=dataclasses.replace(origin, fields={"entities": list(g)}))
            if g else (origin, Output(i, "", reason)) for i, g in enumerate(groups)]
    offsets = {k: split.split_offsets(gen.tokenizer, text, k) for k in cfg.splits}
    return [sampler_lib.Request(
        gen.encode_prompt(*template.render(prefix=text[:offsets[k][i]],
                                           suffix=text[offsets[k][i]:])), key,
        first_sample=s, tag=dataclasses.replace(origin, offset=offsets[k][i],
                                                fields={"splits": k}))
        for s, (k, i) in enumerate(split.sweep_points(cfg.splits))]


class _Progress:
    """Docs done, generated tokens/s and ETA, every PROGRESS_EVERY_S while the job runs: printed
    and appended to _job/progress-p<i>.jsonl. A background thread reports, because one decode
    call can run for minutes with no document finishing; tokens count the sequences still being
    decoded (as of the sampler's last sync), and the ETA is the time to spend the whole token
    budget at the current rate (an upper bound: stop tokens end generations early)."""

    def __init__(self, output: str, process_index: int, docs_total: int, token_budget: int,
                 sampler):
        self.path = fs.join(output, "_job", f"progress-p{process_index}.jsonl")
        self.docs_total, self.docs_done, self.sampler = docs_total, 0, sampler
        self.token_budget = token_budget
        self.start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report_until_stopped, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def doc_done(self) -> None:
        self.docs_done += 1

    def tokens(self) -> int:
        return self.sampler.generated_tokens + self.sampler.tokens_in_flight

    def tokens_per_s(self) -> float:
        return self.tokens() / max(time.time() - self.start, 1e-9)

    def _report_until_stopped(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self.report()

    def report(self) -> None:
        now, tokens, rate = time.time(), self.tokens(), self.tokens_per_s()
        eta = max(self.token_budget - tokens, 0) / rate if rate else float("inf")
        line = {"time": round(now, 1), "docs_done": self.docs_done, "docs_total": self.docs_total,
                "generated_tokens": tokens, "tokens_per_s": round(rate, 1),
                "eta_s": round(eta, 1)}
        eta_text = f"ETA <= {eta / 60:.1f} min" if rate else "ETA - (prefilling)"
        print(f"[synth] docs {self.docs_done}/{self.docs_total}  {tokens:,} tokens  "
              f"{rate:.1f} generated tok/s  {eta_text}", flush=True)
        fs.append_jsonl(self.path, [line])
