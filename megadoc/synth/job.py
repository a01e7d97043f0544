"""Sharded, resumable synthesis job: source documents -> generation records.

Output directory:
  shard-00000.jsonl       the records of shard 0 (shared schema), written whole and atomically
  _job/config.json        the job's settings; a restart with different settings refuses to start
  _job/shard-00000.done   done marker: the shard's counts, the checksum of its file and what
                          produced it (generator digest, template, chat date, sampling, seed)
  _job/progress-p0.jsonl  progress lines of process 0 (or Ray worker 0: progress-w0.jsonl)
  summary.json            outcomes by finish reason, tokens and device-seconds, the projection

Shard j holds documents [j*shard_size, (j+1)*shard_size) in input order. With the local executor
it belongs to process j % process_count; with Ray (megadoc/synth/executor.py) any free worker
takes it. A shard without an intact marker is redone whole (its file replaced atomically, the
same bytes whoever writes it), so a restart or a retried shard never loses or duplicates a
record. The sampler streams across shards: a shard is written as soon as its last record arrives.

Every (document, sample) yields exactly one record. Records that carry no generation say why in
`finish_reason`, with empty text: "empty_document", "prompt_too_long" (the prompt does not fit in
the generator's context; never truncated; a method with a continuation template, rephrase,
rewrites such a document chunk-wise instead, see megadoc/synth/chunked.py, its record listing its
`chunks`), "error" (logged with the document's location). A generation the repetition guard
ended (`repetition_ngram`, off by default) says "repetition".
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
import datetime
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
    synth/unconditional.py, which runs on this job's sampler and shard writer)"""
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
    repetition_ngram: int = 0
    """end a generation once its latest n-gram of this many tokens has occurred more than
    repetition_limit times, with finish_reason "repetition" (0: off, as in the papers)"""
    repetition_limit: int = 4
    """with repetition_ngram: how often one n-gram may occur in a generation"""
    chat_date: str = prompts.CHAT_DATE
    """the date a chat template prints (YYYY-MM-DD; Llama 3.1's "Today Date"), fixed so that the
    same command on another day writes the same records"""
    executor: str = "local"
    """local: this process runs its share of the shards | ray: Ray workers take the shards as
    they come free and a dead worker's shards are retried (pip install '.[ray]')"""
    workers: int = 2
    """ray: sampler workers (actors), each holding one copy of the generator"""
    ray_address: str | None = None
    """ray: the cluster to join (None: start a local one)"""
    dry_run: int = 0
    """estimate the whole job's tokens and device-hours from this many documents spread over
    the input: they are sampled, nothing is written (0: run the job)"""

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
        self.sampler_settings(())  # the sampling values, checked before anything is written
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor {self.executor!r}: expected local or ray")
        if self.workers < 1 or self.dry_run < 0:
            raise ValueError(f"workers must be >= 1 and dry_run >= 0, got {self.workers} and "
                             f"{self.dry_run}")
        try:
            datetime.date.fromisoformat(self.chat_date)
        except ValueError:
            raise ValueError(f"chat_date {self.chat_date!r}: expected YYYY-MM-DD") from None
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

    @property
    def new_tokens(self) -> int:
        """New tokens per generation: the setting, or the method's default (the papers')."""
        return methods_lib.get(self.method).max_new_tokens if self.max_new_tokens is None \
            else self.max_new_tokens

    def sampler_settings(self, stop_tokens) -> sampler_lib.Settings:
        return sampler_lib.Settings(
            max_new_tokens=self.new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, stop_tokens=tuple(stop_tokens),
            repetition_ngram=self.repetition_ngram, repetition_limit=self.repetition_limit)

    def sampling(self) -> dict:
        """The sampling settings each record carries."""
        out = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
               "max_new_tokens": self.new_tokens}
        if self.repetition_ngram:
            out.update(repetition_ngram=self.repetition_ngram,
                       repetition_limit=self.repetition_limit)
        return out

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


def check_job_config(path: str, settings: dict) -> None:
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


class ShardWriter:
    """Collects records per shard and writes a shard (then its marker, which records what
    produced it) once it is complete. `annotate(shard, records)`, when given, adds fields to the
    records and returns statistics for the marker."""

    def __init__(self, output: str, expected: dict[int, int], produced_by: dict, annotate=None):
        self.output, self.expected, self.produced_by = output, expected, produced_by
        self.annotate = annotate
        self.records: dict[int, list] = collections.defaultdict(list)
        self.written: list[int] = []

    def add(self, shard: int, order: tuple, record: dict, prompt_tokens: int,
            generated_tokens: int) -> None:
        self.records[shard].append((order, record, prompt_tokens, generated_tokens))
        if len(self.records[shard]) == self.expected[shard]:
            self._write(shard)

    def _write(self, shard: int) -> None:
        entries = sorted(self.records.pop(shard), key=lambda x: x[0])
        rows = [e[1] for e in entries]
        stats = self.annotate(shard, rows) if self.annotate else None
        docs_lib.write_jsonl(shard_path(self.output, shard), rows)
        written = fs.read_bytes(shard_path(self.output, shard))
        counts = collections.Counter(r["finish_reason"] for r in rows)
        fs.write_text(marker_path(self.output, shard), json.dumps(
            {"records": len(rows), "sha256": hashlib.sha256(written).hexdigest(),
             "finish_reason": dict(counts), "prompt_tokens": sum(e[2] for e in entries),
             "generated_tokens": sum(e[3] for e in entries), "produced_by": self.produced_by,
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
    if hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        return f"{shard_path(output, shard)} does not match the checksum in its marker"
    return None


def finished_shards(output: str, shards, produced_by: dict | None = None) -> set[int]:
    """The shards whose markers are backed by intact files; a failing one loses its marker and
    is redone. A marker that something else produced (another generator, template, sampling or
    seed, when `produced_by` is given) is refused: the directory would mix two jobs."""
    done = set()
    for j in shards:
        if not fs.exists(marker_path(output, j)):
            continue
        problem = shard_problem(output, j)
        if problem is not None:
            print(f"[synth] shard {j} was finished but {problem}; redoing it", flush=True)
            fs.remove(marker_path(output, j))
            continue
        theirs = json.loads(fs.read_text(marker_path(output, j))).get("produced_by")
        if produced_by is not None and theirs != produced_by:
            raise ValueError(f"{marker_path(output, j)}: produced by {theirs}, not by this job's "
                             f"{produced_by}; use a new --output or the original settings")
        done.add(j)
    return done


def summary(output: str, num_shards: int, cost: dict, extra: dict) -> dict:
    """Outcomes and tokens over every finished shard, `cost` (what this run spent,
    `sampler.Cost.summary()` or a sum of them) and the projection of what is left: its tokens
    at the finished shards' tokens per record, and the device-hours at this run's rate; for
    scored methods, the distributions of fidelity and diversity."""
    counts, records, tokens, prompt_tokens, done = collections.Counter(), 0, 0, 0, 0
    quality = []  # the markers' fidelity and diversity statistics (rephrase)
    for j in range(num_shards):
        if fs.exists(marker_path(output, j)):
            m = json.loads(fs.read_text(marker_path(output, j)))
            counts.update(m["finish_reason"])
            records += m["records"]
            tokens += m["generated_tokens"]
            prompt_tokens += m.get("prompt_tokens", 0)
            done += 1
            quality += [m["quality"]] if "quality" in m else []
    out = dict(extra, shards_total=num_shards, shards_done=done, records=records,
               prompt_tokens=prompt_tokens, generated_tokens=tokens,
               finish_reason=dict(sorted(counts.items())), cost_now=cost,
               **({"quality": fidelity.summarize(quality)} if quality else {}))
    records_left = extra.get("records_total", records) - records
    rate = cost.get("generated_tokens_per_device_s")
    tokens_left = records_left * tokens / records if records else None
    out["projection"] = {
        "records_left": records_left,
        "generated_tokens_left": None if tokens_left is None else round(tokens_left),
        "device_hours_left": round(tokens_left / rate / 3600, 3)
        if rate and tokens_left is not None else None}
    return out


@dataclasses.dataclass
class Plan:
    """The job without its model: the documents, the records each one gives, the shards."""
    cfg: JobConfig
    method: str
    template: prompts.Template | None  # None: a conditional method (sbp) has none
    templates: list  # rephrase with styles: the ones drawn from; else [template]
    inputs: dict
    docs: list
    doc_samples: list
    bad: docs_lib.BadRecords

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.docs) / self.cfg.shard_size)

    def shard_docs(self, shard: int) -> range:
        size = self.cfg.shard_size
        return range(shard * size, min((shard + 1) * size, len(self.docs)))

    def records(self, shards) -> int:
        return sum(self.doc_samples[i] for j in shards for i in self.shard_docs(j))


def plan(cfg: JobConfig) -> Plan:
    """Read the documents (and the per-document inputs) and check the template and inputs;
    writes nothing."""
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
    docs = list(docs_lib.read_docs(cfg.docs, bad))
    if cfg.questions or cfg.entities:
        knowledge.check_inputs(cfg.questions or cfg.entities, "questions" if cfg.questions
                               else "entities", len(docs), sum(d["id"] not in inputs for d in docs))
    return Plan(cfg, method, template, templates, inputs, docs,
                [cfg.samples(d, inputs) for d in docs], bad)


class Runner:
    """The job's generator and settings in one process (or Ray worker): runs shards."""

    def __init__(self, job_plan: Plan):
        cfg = job_plan.cfg
        self.plan, self.cfg = job_plan, cfg
        self.mesh = sharding.make_mesh(tensor=cfg.tensor_parallel, devices=jax.local_devices())
        self.gen = generator_lib.load(cfg.generator, self.mesh)
        self.settings = cfg.sampler_settings(self.gen.stop_tokens)
        self.produced_by = {"method": cfg.method, "generator": self.gen.name,
                            "generator_digest": generator_lib.digest(self.gen.config,
                                                                     self.gen.params),
                            "template": (job_plan.template and job_plan.template.name)
                            if len(job_plan.templates) == 1 else
                            [t.name for t in job_plan.templates],
                            "continue_template": cfg.continue_template,
                            "chat_date": cfg.chat_date,
                            "sampling": cfg.sampling(), "seed": cfg.seed}
        # Rephrases are scored by the generator that wrote them (synth/fidelity.py).
        self.scorer = fidelity.Scorer(self.gen.config, self.gen.params, self.gen.tokenizer,
                                      mesh=self.mesh) \
            if methods_lib.get(cfg.method).scored else None

    def check_output(self) -> None:
        """Record this job's settings in the output directory, or refuse other ones."""
        cfg, p = self.cfg, self.plan
        fs.makedirs(fs.join(cfg.output, "_job"))
        check_job_config(fs.join(cfg.output, "_job", "config.json"), dict(
            self.produced_by, samples=sum(p.doc_samples), generations=cfg.generations,
            splits=list(cfg.splits), questions=cfg.questions, entities=cfg.entities,
            relations=cfg.relations, attempts=cfg.attempts, shard_size=cfg.shard_size,
            num_docs=len(p.docs)))

    def sampler(self) -> sampler_lib.Sampler:
        return sampler_lib.Sampler(self.gen.config, self.gen.params, self.settings,
                                   batch_size=self.cfg.batch_size, seed=self.cfg.seed,
                                   mesh=self.mesh)

    def run_shards(self, shards: list[int], progress_name: str) -> dict:
        """Sample and write these shards (skipping any already finished); returns what the
        sampler spent (`Cost.summary()` plus its raw counts)."""
        cfg, p = self.cfg, self.plan
        todo = sorted(set(shards) - finished_shards(cfg.output, shards, self.produced_by))
        annotate = None
        if self.scorer:  # fidelity and diversity of each record, against its document
            annotate = lambda shard, rows: fidelity.annotate(
                self.scorer, rows, {p.docs[i]["id"]: p.docs[i]["text"]
                                    for i in p.shard_docs(shard)})
        writer = ShardWriter(cfg.output, {j: p.records([j]) for j in todo}, self.produced_by,
                             annotate)
        sampler = self.sampler()
        progress = Progress(fs.join(cfg.output, "_job", f"progress-{progress_name}.jsonl"),
                            {divmod(i, cfg.shard_size): p.doc_samples[i]
                             for j in todo for i in p.shard_docs(j)}, cfg.new_tokens, sampler)

        def emit(origin: Origin, out: Output, prompt_tokens: int, generated_tokens: int):
            writer.add(origin.shard, (origin.position, out.sample),
                       self.record(origin, out), prompt_tokens, generated_tokens)
            progress.record_done(origin)

        with progress:
            for origin, out, prompt, generated in self.outputs(
                    [i for j in todo for i in p.shard_docs(j)], sampler):
                emit(origin, out, prompt, generated)
        return dict(sampler.cost.summary(), written=writer.written,
                    raw=dataclasses.asdict(sampler.cost))

    def record(self, origin: Origin, out: Output) -> dict:
        record = dict(doc_id=origin.doc_id, method=self.plan.method, sample=out.sample,
                      offset=origin.offset, text=out.text, finish_reason=out.finish_reason,
                      seed=self.cfg.seed, generator=self.gen.name,
                      template=self.plan.template and self.plan.template.name,
                      sampling=self.cfg.sampling())
        record.update(out.fields or {})  # a style's template, a knowledge method's fields
        return record

    def outputs(self, doc_indices: list[int], sampler):
        """(Origin, Output, prompt tokens, generated tokens) of every record of these documents,
        in the order they finish; a request's prompt counts once, with its first sample.
        Rephrases too long for the context are rewritten chunk-wise after the rest."""
        cfg, p = self.cfg, self.plan
        direct, long_samples = [], []

        def requests():
            for i in doc_indices:
                doc = p.docs[i]
                origin = Origin(*divmod(i, cfg.shard_size), doc["id"])
                try:
                    if methods_lib.get(p.method).continuation:
                        reqs = _rewrite_requests(cfg, self.gen, p.templates, doc, origin)
                    else:
                        reqs = _doc_requests(cfg, self.gen, p.template, doc, origin, p.inputs)
                except Exception as e:  # one bad document never stops the others
                    logging.error("document %r at %s failed: %s\n%s", doc["id"], doc["where"],
                                  e, traceback.format_exc())
                    reqs = [(origin, Output(s, "", ERROR)) for s in range(p.doc_samples[i])]
                for r in reqs:
                    if isinstance(r, sampler_lib.Request):
                        yield r
                    elif isinstance(r, chunked.Item):
                        long_samples.append(r)
                    else:
                        direct.append(r)

        # Then the entity lists that did not parse, sampled again: at most attempts - 1 rounds,
        # each retry raising the sample by one.
        pending = requests()
        while pending:
            retries = []
            for c in sampler.run(pending):
                while direct:
                    yield (*direct.pop(), 0, 0)
                out = self.output(c)
                if isinstance(out, sampler_lib.Request):
                    retries.append(out)
                else:
                    prompt = len(c.request.prompt) if c.sample == c.request.first_sample and \
                        c.finish_reason != sampler_lib.FINISH_TOO_LONG else 0
                    yield c.request.tag, out, prompt, len(c.tokens)
            while direct:
                yield (*direct.pop(), 0, 0)
            pending = retries
        if long_samples:
            yield from _rewrite_chunkwise(cfg, self.gen, sampler, p.templates, long_samples)

    def output(self, c: sampler_lib.Completion) -> Output | sampler_lib.Request:
        """A completion's output, or the retry of an entity list that did not parse (sample a
        is attempt a + 1; the one record says how many attempts it took)."""
        text = self.gen.tokenizer.decode(c.tokens) if c.tokens else ""
        out = Output(c.sample, text, c.finish_reason, c.request.tag.fields)
        if c.tokens:
            out = Output(c.sample, *knowledge.finish(self.plan.method, text, c.finish_reason,
                                                     out.fields))
        if "attempts" in methods_lib.get(self.plan.method).inputs:
            if out.finish_reason == knowledge.MALFORMED and c.sample + 1 < self.cfg.attempts:
                return dataclasses.replace(c.request, first_sample=c.sample + 1, num_samples=1)
            out = Output(0, out.text, out.finish_reason,
                         dict(out.fields or {}, attempts=c.sample + 1))
        return out


def run(cfg: JobConfig) -> dict:
    """Run (or resume) this process's shards with the local executor; returns the summary."""
    start = time.time()
    process_index = jax.process_index() if cfg.process_id is None else cfg.process_id
    process_count = jax.process_count() if cfg.num_processes is None else cfg.num_processes
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_id {process_index} outside [0, {process_count})")
    job_plan = plan(cfg)
    # Validated: only now is anything written (a refused job leaves no --output behind).
    fs.check_writable(cfg.output)  # a missing or read-only bucket fails before the model loads
    runner = Runner(job_plan)
    runner.check_output()
    mine = owned_shards(job_plan.num_shards, process_index, process_count)
    done = finished_shards(cfg.output, mine, runner.produced_by)
    print(f"[synth] {len(job_plan.docs)} docs in {job_plan.num_shards} shards; process "
          f"{process_index}/{process_count} owns {len(mine)}, {len(done)} already done",
          flush=True)
    cost = runner.run_shards([j for j in mine if j not in done], f"p{process_index}")
    return write_summary(cfg, job_plan, cost, {
        "process_index": process_index, "shards_written_now": len(cost["written"]),
        "elapsed_s": round(time.time() - start, 1)})


def write_summary(cfg: JobConfig, job_plan: Plan, cost: dict, extra: dict) -> dict:
    cost = {k: v for k, v in cost.items() if k not in ("written", "raw")}
    out = summary(cfg.output, job_plan.num_shards, cost, dict(
        extra, records_total=sum(job_plan.doc_samples),
        bad_input_records=job_plan.bad.as_dict()))
    fs.write_text(fs.join(cfg.output, "summary.json"), json.dumps(out, indent=1))
    print("[synth] summary " + json.dumps(out), flush=True)
    return out


def estimate(cfg: JobConfig) -> dict:
    """The dry run: sample `cfg.dry_run` documents spread evenly over the input (nothing is
    written) and scale what they cost to every document."""
    job_plan = plan(cfg)
    n = len(job_plan.docs)
    picked = sorted({i * n // min(cfg.dry_run, n) for i in range(min(cfg.dry_run, n))})
    runner = Runner(job_plan)
    sampler = runner.sampler()
    records = sum(1 for _ in runner.outputs(picked, sampler))
    cost = sampler.cost.summary()
    scale = n / len(picked) if picked else 0.0
    device_s = cost["prefill_device_s"] + cost["decode_device_s"]
    out = {"documents_sampled": len(picked), "documents_total": n, "records_sampled": records,
           "sample_cost": cost,
           "projected": {"records": sum(job_plan.doc_samples),
                         "prompt_tokens": round(cost["prompt_tokens"] * scale),
                         "generated_tokens": round(cost["generated_tokens"] * scale),
                         "device_s": round(device_s * scale, 1),
                         "device_hours": round(device_s * scale / 3600, 3),
                         "devices_per_sampler": sampler.cost.devices}}
    print("[synth] dry run " + json.dumps(out), flush=True)
    return out


def _x1_budget(cfg: JobConfig, gen) -> int:
    """Prompt tokens a conditional method's x1 may take: what leaves max_new_tokens of the
    generator's context, but at least half of it."""
    context = gen.config.max_seq_len
    return max(context // 2, context - cfg.new_tokens)


def _rewrite_chunkwise(cfg: JobConfig, gen, sampler, templates: list, items: list):
    """(Origin, Output, prompt tokens, generated tokens) of each chunk-wise rewrite; its prompts
    (one per chunk) count in the sampler's cost, not in the shard's prompt tokens."""
    continuation = prompts.load_template(
        cfg.continue_template or prompts.builtin_template(cfg.method, continuation=True),
        cfg.method, continuation=True)
    size = chunked.chunk_tokens(gen, templates, continuation, cfg.new_tokens, cfg.chat_date)
    for r in chunked.rewrite(sampler, gen, items, continuation, cfg.new_tokens, size,
                             cfg.chat_date):
        fields = dict(r.item.tag.fields or {}, **({"chunks": r.chunks} if r.chunks else {}))
        yield (r.item.tag, Output(r.item.sample, r.text, r.finish_reason, fields), 0,
               r.generated_tokens)


def _rewrite_requests(cfg: JobConfig, gen, templates: list, doc: dict, origin: Origin) -> list:
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
    prompts_by_pick = {i: gen.encode_prompt(*templates[i].render(document=text), cfg.chat_date)
                       for i in set(picks)}
    out, s = [], 0
    while s < cfg.generations:
        run = next((e for e in range(s, cfg.generations) if picks[e] != picks[s]),
                   cfg.generations) - s
        template, prompt = templates[picks[s]], prompts_by_pick[picks[s]]
        tag = origin if len(templates) == 1 else dataclasses.replace(
            origin, fields={"template": template.name})
        if chunked.too_long(len(prompt), cfg.new_tokens, gen.config.max_seq_len):
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

    def encode(**fields) -> list[int]:  # the chat template prints the job's date, not today's
        return gen.encode_prompt(*template.render(**fields), cfg.chat_date)

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
        prompt = encode(document=text)
        return [sampler_lib.Request(prompt, key, num_samples=n, tag=origin)]
    if "question" in method.prompt_fields:
        if doc_id not in inputs:
            return [(origin, Output(0, "", knowledge.NO_QUESTIONS))]
        return [sampler_lib.Request(
            encode(document=text, question=q), key,
            num_samples=cfg.generations, first_sample=i * cfg.generations,
            tag=dataclasses.replace(origin, fields={"question": q}))
            for i, q in enumerate(inputs[doc_id])]
    if "entities" in method.prompt_fields:
        groups = knowledge.entity_groups(inputs.get(doc_id, []), cfg.relations, cfg.seed,
                                         key)
        reason = knowledge.TOO_FEW_ENTITIES if doc_id in inputs else knowledge.NO_ENTITIES
        return [sampler_lib.Request(
            encode(document=text, entities="; ".join(g)), key,
            first_sample=i, tag=dataclasses.replace(origin, fields={"entities": list(g)}))
            if g else (origin, Output(i, "", reason)) for i, g in enumerate(groups)]
    offsets = {k: split.split_offsets(gen.tokenizer, text, k) for k in cfg.splits}
    return [sampler_lib.Request(
        encode(prefix=text[:offsets[k][i]], suffix=text[offsets[k][i]:]), key,
        first_sample=s, tag=dataclasses.replace(origin, offset=offsets[k][i],
                                                fields={"splits": k}))
        for s, (k, i) in enumerate(split.sweep_points(cfg.splits))]


class Progress:
    """Where the run stands, every PROGRESS_EVERY_S while it runs: printed and appended to a
    progress file. A background thread reports, because one decode call can run for minutes
    with no document finishing; generated tokens count the sequences still being decoded (as
    of the sampler's last sync). The line carries the sampler's cost (tokens, device-seconds,
    useful row-steps, attended positions) and the projection: the records left at the tokens
    per record so far (before the first, at the whole token budget: an upper bound) and the
    current rate, as time and device-hours."""

    def __init__(self, path: str, doc_records: dict, max_new_tokens: int, sampler):
        self.path, self.sampler = path, sampler
        self.outstanding = dict(doc_records)  # (shard, position) -> records still to come
        self.docs_total, self.docs_done = len(doc_records), 0
        self.records_total, self.records_done = sum(doc_records.values()), 0
        self.max_new_tokens = max_new_tokens
        self.start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report_until_stopped, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def record_done(self, origin: Origin) -> None:
        self.records_done += 1
        where = (origin.shard, origin.position)
        self.outstanding[where] -= 1
        if not self.outstanding[where]:
            del self.outstanding[where]
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
        left = self.records_total - self.records_done
        if self.records_done:
            tokens_left = max(left * self.sampler.generated_tokens / self.records_done
                              - self.sampler.tokens_in_flight, 0)
        else:
            tokens_left = max(self.records_total * self.max_new_tokens - tokens, 0)
        eta = tokens_left / rate if rate else float("inf")
        cost = self.sampler.cost
        line = dict(cost.summary(), time=round(now, 1), docs_done=self.docs_done,
                    docs_total=self.docs_total, records_done=self.records_done,
                    records_total=self.records_total, generated_tokens=tokens,
                    tokens_per_s=round(rate, 1), eta_s=round(eta, 1),
                    device_hours_left=round(eta * cost.devices / 3600, 3))
        eta_text = (f"ETA {'<= ' if not self.records_done else ''}{eta / 60:.1f} min, "
                    f"{line['device_hours_left']} device-h" if rate else "ETA - (prefilling)")
        useful = line["useful_row_step_fraction"]
        print(f"[synth] docs {self.docs_done}/{self.docs_total}  {cost.prompt_tokens:,} prompt "
              f"+ {tokens:,} generated tokens  {rate:.1f} generated tok/s "
              f"({rate / cost.devices:.1f}/device)  prefill {line['prefill_device_s']:.0f} + "
              f"decode {line['decode_device_s']:.0f} device-s  useful row-steps "
              f"{useful if useful is not None else '-'}  {eta_text}", flush=True)
        fs.append_jsonl(self.path, [line])
