"""The prepare job: documents (+ generations) → one tokenized, permuted window store.

A store is the paper's stream (§3.1, §4.1, Appendix H): a seeded random permutation of its
*stream documents* (megadocs.StreamDocument), each BOS (when the tokenizer has one) + pieces each
followed by EOS, concatenated and cut into windows; the trainer permutes the windows once.

Memory stays bounded by one bucket, not the corpus. Pass 1 streams the inputs into `buckets`
local spill files by a seeded hash of the document id, so a document and its generations land in
the same bucket. Pass 2 takes those buckets one at a time, checks the generations against their
document, builds the recipe's stream documents and spills each by its own key: a seeded hash of
(document id, part), so `simple`'s rephrases scatter across the whole corpus while a megadoc
stays one unit. Pass 3 takes the stream buckets in order, sorts each by key (together: a seeded
permutation that does not depend on input order or file layout), tokenizes in a process pool and
writes windows as they fill. Skipped records are counted by reason, logged with file and line,
and recorded in the store's metadata.

Restart: a complete store with the same settings is kept as is. After each pass-3 bucket the job
records a resume point (prepare_progress.json: windows written, the unfinished tail, counts); a
restarted job with the same settings redoes the cheap passes 1 and 2 and continues after the last
finished bucket, so its store is identical to an uninterrupted run. Any other partial store is
rewritten from scratch.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.data import leakage
from megadoc.data import megadocs
from megadoc.data import methods
from megadoc.data import overlap
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.data.windows import Windower

SYNTHETIC_RECIPES = ("simple", "stitched", "latent")
PROGRESS = "prepare_progress.json"
# How stream documents are built and packed; a store of another layout is never reused.
# 2: BOS + pieces each + EOS, simple's rephrases shuffled apart, stitched pieces EOS-joined.
STREAM_LAYOUT = 2


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """One window store: which documents, which recipe, which tokenizer and window length."""
    docs: str
    """source documents {id, text}: JSONL(.gz)/Parquet file, dir or glob"""
    recipe: str
    """which stream to build"""
    tokenizer: str
    """sentencepiece .model, tokenizer.json, or a dir with one"""
    seq_len: int
    """window length; windows hold seq_len+1 tokens"""
    seed: int
    """seed of the document permutation"""
    output: str
    """store directory (local or gs://)"""
    generations: str | None = dataclasses.field(default=None,
                                                metadata={"flag": "generation_records"})
    """generation records (synthetic recipes only)"""
    real_position: str = "last"
    """stitched only: where the real text sits in the megadoc"""
    include_real: bool = True
    """also put the real document in the synthetic stream"""
    max_generations: int | None = None
    """use only samples 0..N-1 of each document, so one synthesis run at N=32 gives the stores
    for every N <= 32 (None: all); latent thoughts: the thoughts at N equal split points, from a
    run whose --splits include N"""
    val: tuple[tuple[str, str], ...] = ()
    """validation documents (as train --val names them) that no document of this store, and so
    no generation's source, may be: one with a validation document's id, text or a near copy of
    it (word-5-gram Jaccard >= 0.8) stops the job with the list (see drop_leaked); one with a
    validation document's id but another text is reported"""
    drop_leaked: bool = False
    """drop the documents found in a --val set (and their generations) instead of stopping; the
    store's metadata counts them (skipped: document_in_validation_set) with the first few"""
    min_fidelity: float | None = None
    """drop rephrase records whose `fidelity` (nats per source token that the rephrase adds to
    the generator's log-likelihood of the source; 0: it tells nothing about it) is below this"""
    max_duplicate: float | None = None
    """drop a generation whose word-3-gram Jaccard similarity to a kept generation of the same
    document (in sample order) is above this"""
    workers: int = 1
    """tokenizer processes"""
    buckets: int = 64
    """spill buckets; memory holds one bucket (~corpus/buckets)"""

    def __post_init__(self):
        """Every setting checked before the job writes anything."""
        if self.recipe not in megadocs.RECIPES:
            raise ValueError(f"--recipe={self.recipe}: expected one of {megadocs.RECIPES}")
        if self.recipe in SYNTHETIC_RECIPES and not self.generations:
            raise ValueError(f"--recipe={self.recipe} needs --generations")
        if self.recipe == "real" and self.generations:
            raise ValueError("--recipe=real does not use --generations; drop it")
        if self.real_position not in megadocs.REAL_POSITIONS:
            raise ValueError(f"--real_position={self.real_position}: expected one of "
                             f"{megadocs.REAL_POSITIONS}")
        if self.recipe == "latent" and not self.include_real:
            raise ValueError("--recipe=latent puts the thoughts into the real text: "
                             "--include_real=false has no meaning for it")
        if self.recipe != "stitched" and self.real_position != "last":
            raise ValueError("--real_position applies to --recipe=stitched only")
        if self.seq_len < 1 or self.workers < 1 or self.buckets < 1:
            raise ValueError("--seq_len, --workers and --buckets must be >= 1")
        if self.max_generations is not None and (self.max_generations < 1 or not self.generations):
            raise ValueError(f"--max_generations={self.max_generations}: needs --generations and "
                             f"a count >= 1")
        if (self.min_fidelity is not None or self.max_duplicate is not None) and (
                self.recipe not in ("simple", "stitched")):
            raise ValueError("--min_fidelity and --max_duplicate filter rephrases: they go with "
                             "--recipe=simple or stitched")
        if self.drop_leaked and not self.val:
            raise ValueError("--drop_leaked drops the documents found in a --val set: it needs "
                             "--val=NAME=PATH")
        if self.max_duplicate is not None and not 0 <= self.max_duplicate <= 1:
            raise ValueError(f"--max_duplicate={self.max_duplicate}: a similarity in [0, 1]")

    def settings(self) -> dict:
        """What determines the store's contents (workers and buckets do not), with the size and
        version of every input file, so that a store over changed inputs is never reused."""
        out = dataclasses.asdict(self)
        del out["workers"], out["buckets"]
        # Filters added after the first stores: left out when off, so those stores are reused.
        out["val"] = [list(v) for v in self.val]
        for name in ("val", "drop_leaked", "min_fidelity", "max_duplicate"):
            if out[name] is None or out[name] is False or out[name] == []:
                del out[name]
        files = docs_lib.expand(self.docs) + (docs_lib.expand(self.generations)
                                              if self.generations else [])
        files += [f for _, path in self.val for f in docs_lib.expand(path)]
        out["inputs"] = [dict(file=f, **fs.version(f)) for f in files]
        out["stream_layout"] = STREAM_LAYOUT
        return out


def content_id(settings: dict) -> str:
    """What the store holds, as a hash of what determines it (inputs with their versions, recipe,
    tokenizer, seed, layout; not where it is written): a run's identity names its stores by
    this, not by their sizes, which another corpus can share."""
    what = {k: v for k, v in settings.items() if k != "output"}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def differing_settings(old: dict, new: dict) -> list[str]:
    """Settings that differ, each as "name: old -> new"; the --output's own location and the
    spelling of a local path (`./x` is `x`) do not count."""
    def comparable(settings: dict) -> dict:
        out = {k: v for k, v in settings.items() if k != "output"}
        for k in ("docs", "generations", "tokenizer"):
            if out.get(k) and not fs.is_gcs(out[k]):
                out[k] = os.path.normpath(out[k])
        out["inputs"] = [dict(f, file=f["file"] if fs.is_gcs(f["file"])
                              else os.path.normpath(f["file"])) for f in out.get("inputs") or []]
        return out
    a, b = comparable(old), comparable(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def shuffle_key(seed: int, doc_id: str, part: str = "") -> int:
    """The permutation key of a document's stream document `part` ("" for its main one)."""
    name = f"{doc_id}\0{part}" if part else doc_id
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest(), "big")


def prepare(config: PrepareConfig) -> dict:
    if store_lib.is_complete(config.output):
        existing = store_lib.open(config.output).metadata
        changed = differing_settings(existing.get("settings") or {}, config.settings())
        if changed:
            raise ValueError(f"{config.output}: holds a complete store prepared with other "
                             f"settings ({'; '.join(changed)}); remove it or choose another "
                             f"--output")
        print(f"[prepare] {config.output} is already complete; nothing to do", flush=True)
        return existing
    fs.check_writable(config.output)  # a missing or read-only bucket fails now, not at the end
    tokenizer = tokenizer_lib.load(config.tokenizer)
    bad = docs_lib.BadRecords()
    spill = _spill_directory()
    try:
        counts, doc_buckets, gen_buckets = _spill(config, spill, bad)
        stream_buckets = _spill_stream_documents(config, spill, doc_buckets, gen_buckets, bad, counts)
        return _write(config, tokenizer, stream_buckets, bad, counts)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


_SPILL_PREFIX = "megadoc-prepare-"


def _spill_directory() -> str:
    """A fresh local spill directory named after this process; those of killed prepare jobs
    (a full copy of their corpus each) are removed first."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(_SPILL_PREFIX):].split("-")[0]
        if name.startswith(_SPILL_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_SPILL_PREFIX}{os.getpid()}-", dir=root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    return True


class _Buckets:
    def __init__(self, directory: str, kind: str, num: int):
        self.paths = [os.path.join(directory, f"{kind}-{b:05d}.jsonl") for b in range(num)]
        self._files: dict[int, object] = {}
        self._num = num

    def write(self, key: int, record: dict) -> None:
        b = key * self._num >> 64
        if b not in self._files:
            self._files[b] = open(self.paths[b], "w", encoding="utf-8")
        self._files[b].write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def read(self, b: int) -> list[dict]:
        if not os.path.exists(self.paths[b]):
            return []
        with open(self.paths[b], encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def _spill(config: PrepareConfig, spill: str, bad: docs_lib.BadRecords):
    counts = collections.Counter()
    docs = _Buckets(spill, "docs", config.buckets)
    audit = _LeakageAudit(config) if config.val else None
    for order, doc in enumerate(docs_lib.read_docs(config.docs, bad)):
        counts["docs_read"] += 1
        if not doc["text"].strip():
            bad.add("empty_doc", doc["where"], f"id {doc['id']!r}")
            continue
        if audit and audit.leaks(doc, bad):
            continue
        docs.write(shuffle_key(config.seed, doc["id"]), dict(doc, order=order))
    docs.close()
    if audit:
        audit.finish(counts)
    gens = _Buckets(spill, "generations", config.buckets)
    split_counts = set()
    if config.generations:
        highest = -1
        for order, g in enumerate(docs_lib.read_generations(config.generations, bad)):
            counts["generations_read"] += 1
            if "splits" in methods.METHODS[g["method"]].inputs:  # latent: one count's thoughts
                split_counts.add(g.get("splits"))
                if config.max_generations is not None and (
                        g.get("splits") != config.max_generations):
                    counts["generations_of_other_split_counts"] += 1  # another count's thoughts
                    continue
            else:
                highest = max(highest, g["sample"])
                if config.max_generations is not None and g["sample"] >= config.max_generations:
                    counts["generations_beyond_max"] += 1  # a prefix of a larger run, by design
                    continue
            if audit and g["doc_id"] in audit.leaked:
                bad.add("generation_of_leaked_document", g["where"], f"doc {g['doc_id']!r}")
                continue
            if config.min_fidelity is not None and not _faithful(config, g, bad, counts):
                continue
            if not g["text"].strip():  # the job's records for prompts it could not serve
                bad.add("generation_without_text", g["where"],
                        f"doc {g['doc_id']!r} sample {g['sample']}: "
                        f"finish_reason {g.get('finish_reason')!r}")
                continue
            if megadocs.THINK_OPEN in g["text"] or megadocs.THINK_CLOSE in g["text"]:
                bad.add("think_tag_in_generation", g["where"], f"doc {g['doc_id']!r}")
                continue
            gens.write(shuffle_key(config.seed, g["doc_id"]), dict(g, order=order))
        if config.max_generations is not None and not split_counts:
            check_samples(config.generations, config.max_generations, highest)
    gens.close()
    _check_split_counts(config.generations, split_counts, config.max_generations)
    return counts, docs, gens


def _check_split_counts(generations: str, found: set, n: int | None) -> None:
    """A latent store holds the thoughts of one count, at that count's equal split points
    (§4.2), never the first N split points of a run at another count: `found`, the split
    counts the latent records of `generations` name (None: a record without one), must hold
    `n` (--max_generations; None: the one count found)."""
    if not found:
        return
    known = sorted(c for c in found if c is not None)
    rerun = (f"python -m experiments.synthesize --method=latent_thoughts "
             f"--splits={','.join(map(str, sorted({*known, n or 1})))} ...")
    if None in found and (n is not None or known):
        raise ValueError(f"{generations}: its latent thoughts do not record their split "
                         f"count (`splits`), so the thoughts of one count cannot be chosen; "
                         f"synthesize them again with {rerun}")
    if n is None and len(known) > 1:
        raise ValueError(f"{generations} holds latent thoughts for split counts {known}; "
                         f"a store takes one count: pass --max_generations=N with N in {known}")
    if n is not None and n not in known:
        raise ValueError(f"{generations} holds latent thoughts for split counts {known}, "
                         f"not {n}: the thoughts of {n} equal split points come from {rerun}")


def _faithful(config: PrepareConfig, g: dict, bad, counts) -> bool:
    """Whether a generation passes --min_fidelity (a record without a score is skipped)."""
    fidelity = g.get("fidelity")
    if fidelity is None:
        bad.add("no_fidelity_score", g["where"],
                f"doc {g['doc_id']!r} sample {g['sample']}: no `fidelity` to filter on")
        return False
    if fidelity < config.min_fidelity:
        counts["filtered/low_fidelity"] += 1
        return False
    return True


def _distinct(config: PrepareConfig, generations: list[dict], counts) -> list[dict]:
    """The generations left after --max_duplicate: in sample order, each one kept unless it is
    too alike one already kept."""
    if config.max_duplicate is None:
        return generations
    kept, sets = [], []
    for g in sorted(generations, key=lambda g: (g["method"], g["sample"])):
        grams = overlap.shingles(g["text"], overlap.GENERATION_NGRAM)
        if any(overlap.jaccard(grams, s) > config.max_duplicate for s in sets):
            counts["filtered/duplicate"] += 1
            continue
        kept.append(g)
        sets.append(grams)
    return kept


class _LeakageAudit:
    """Checks every document against the --val sets: stops the job on any match, or drops them
    with drop_leaked; either way the matches are printed."""
    SHOWN = 20

    def __init__(self, config: PrepareConfig):
        self.config = config
        self.index = leakage.ValidationIndex(config.val)
        self.matches: list[leakage.Match] = []
        self.leaked: set[str] = set()
        self.same_ids = 0  # documents with a validation document's id but another text

    def leaks(self, doc: dict, bad) -> bool:
        found = self.index.matches(doc)
        for m in (m for m in found if not m.leaks()):
            self.same_ids += 1
            print(f"[prepare] leakage audit: not a leak, but check the ids: {m.describe()}",
                  flush=True)
        found = [m for m in found if m.leaks()]
        if found:
            self.matches += found
            self.leaked.add(doc["id"])
            if self.config.drop_leaked:
                bad.add("document_in_validation_set", doc["where"], found[0].describe())
        return bool(found)

    def finish(self, counts) -> None:
        counts["leakage/validation_docs"] = len(self.index)
        counts["leakage/leaked_docs"] = len(self.leaked)
        counts["leakage/same_id_other_text"] = self.same_ids
        if not self.matches:
            print(f"[prepare] leakage audit: no document matches the {len(self.index)} "
                  f"validation documents", flush=True)
            return
        shown = "\n  ".join(m.describe() for m in self.matches[:self.SHOWN])
        more = len(self.matches) - self.SHOWN
        listing = shown + (f"\n  ... and {more} more" if more > 0 else "")
        if not self.config.drop_leaked:
            raise ValueError(f"{self.config.docs}: {len(self.leaked)} document(s) are in a "
                             f"validation set (--val); their generations would leak it into "
                             f"training. Remove them, or pass --drop_leaked:\n  {listing}")
        print(f"[prepare] LEAKAGE: dropped {len(self.leaked)} document(s) found in a validation "
              f"set, and their generations:\n  {listing}", flush=True)


def check_samples(generations: str, n: int, highest: int | None = None) -> None:
    """Refuse a store of N = `n` generations per document from records whose samples stop
    before N-1 (`highest`: their largest sample index, read when None): it would hold fewer
    and be reported as N. Latent thoughts are counted by split count instead: a run must have
    written count N's (_check_split_counts)."""
    if highest is None:
        found, highest = set(), -1
        for g in docs_lib.read_generations(generations):
            if "splits" in methods.METHODS[g["method"]].inputs:
                found.add(g.get("splits"))
            else:
                highest = max(highest, g["sample"])
        if found:
            _check_split_counts(generations, found, n)
            return
    if highest + 1 < n:
        raise ValueError(f"--max_generations={n}: {generations} holds samples 0..{highest} "
                         f"({highest + 1} per document at most), so a store of N={n} would hold "
                         f"{highest + 1}; synthesize at least {n} samples per document first")


def _spill_stream_documents(config, spill: str, doc_buckets, gen_buckets, bad, counts) -> _Buckets:
    streams = _Buckets(spill, "streams", config.buckets)
    for b in range(config.buckets):
        for doc_id, stream_doc in _bucket_documents(config, doc_buckets.read(b), gen_buckets.read(b),
                                                    bad, counts):
            key = shuffle_key(config.seed, doc_id, stream_doc.part)
            streams.write(key, {"key": key, "doc_id": doc_id, "part": stream_doc.part,
                                "pieces": stream_doc.pieces})
    streams.close()
    return streams


def _bucket_documents(config, docs: list[dict], gens: list[dict], bad,
                      counts) -> list[tuple[str, megadocs.StreamDocument]]:
    """(document id, stream document) for this bucket's documents, checked against each other."""
    by_id: dict[str, dict] = {}
    for d in sorted(docs, key=lambda d: d["order"]):
        if d["id"] in by_id:
            bad.add("duplicate_id", d["where"], f"id {d['id']!r} first seen at {by_id[d['id']]['where']}")
        else:
            by_id[d["id"]] = d
    grouped = collections.defaultdict(list)
    seen = set()
    for g in sorted(gens, key=lambda g: g["order"]):
        doc = by_id.get(g["doc_id"])
        identity = (g["doc_id"], g["method"], g["sample"], g.get("offset"))
        if doc is None:
            bad.add("unknown_doc_id", g["where"], f"doc_id {g['doc_id']!r}")
        elif identity in seen:
            bad.add("duplicate_generation", g["where"], f"{identity}")
        elif methods.METHODS[g["method"]].offsets and not 0 <= g["offset"] <= len(doc["text"]):
            bad.add("offset_out_of_range", g["where"], f"offset {g['offset']} in a text of "
                                                        f"{len(doc['text'])} characters")
        else:
            seen.add(identity)
            grouped[g["doc_id"]].append(g)
    out = []
    for doc in by_id.values():
        generations = _distinct(config, grouped.get(doc["id"], []), counts)
        counts["docs_used"] += 1
        counts["generations_used"] += len(generations)
        for g in generations:
            counts[f"finish_reason/{g.get('finish_reason')}"] += 1
        if config.recipe in SYNTHETIC_RECIPES and not generations:
            counts["docs_without_generations"] += 1
        out += [(doc["id"], d) for d in megadocs.build_documents(
            config.recipe, doc, generations, real_position=config.real_position,
            include_real=config.include_real)]
    return out


def _stream_documents(streams: _Buckets, b: int) -> list[list[str]]:
    """Bucket b's stream documents (their pieces), in permutation order."""
    records = sorted(streams.read(b), key=lambda r: (r["key"], r["doc_id"], r["part"]))
    return [r["pieces"] for r in records]


_worker_tokenizer = None


def _init_worker(path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_lib.load(path)


def encode_document(tokenizer, pieces) -> np.ndarray:
    """BOS + piece + EOS + piece + EOS ...: Levanter's `BatchTokenizer` enforces BOS and EOS on
    every document (src/levanter/data/text.py), as Llama 3's tokenizer adds <|begin_of_text|>;
    a tokenizer without BOS gets none."""
    ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for piece in pieces:
        ids += tokenizer.encode(piece) + [tokenizer.eos_id]
    return np.asarray(ids, np.int32)


def _encode(pieces) -> np.ndarray:
    return encode_document(_worker_tokenizer, pieces)


def _write(config, tokenizer, stream_buckets, bad, counts) -> dict:
    resume = _read_progress(config, tokenizer)
    windower = Windower(config.seq_len)
    if resume:
        writer = store_lib.StoreWriter(config.output, config.seq_len, resume["shard_windows"],
                                       resume_at=resume["num_windows"])
        windower.set_state(resume["windower"])
        counts.clear()
        counts.update(resume["counts"])
        bad.set_state(resume["skipped"])
        print(f"[prepare] resuming {config.output} after bucket {resume['buckets_done']}/"
              f"{config.buckets} ({resume['num_windows']} windows written)", flush=True)
    else:
        writer = store_lib.StoreWriter(config.output, config.seq_len)
    first_bucket = resume["buckets_done"] if resume else 0
    pool = None
    if config.workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(
            config.workers, initializer=_init_worker, initargs=(config.tokenizer,))
    encode = (lambda texts: pool.imap(_encode, texts, chunksize=16)) if pool else (
        lambda texts: (encode_document(tokenizer, t) for t in texts))
    rate = _Rate(counts["docs_used"], windower.num_tokens)
    try:
        for b in range(first_bucket, config.buckets):
            for ids in encode(_stream_documents(stream_buckets, b)):
                counts["documents"] += 1
                for block in windower.add(ids):
                    writer.append(*block)
            for block in windower.flush():
                writer.append(*block)
            writer.flush()
            _write_progress(config, tokenizer, b + 1, writer, windower, counts, bad)
            rate.report(b + 1 - first_bucket, config.buckets - b - 1, counts, windower, writer)
    finally:
        if pool:
            pool.close()
            pool.join()
    if config.recipe in SYNTHETIC_RECIPES and not counts["generations_used"]:
        raise ValueError(
            f"{config.generations}: none of its {counts['generations_read']} generations can be "
            f"used with the documents of {config.docs} (skipped: {dict(bad.counts) or 'none'}); "
            f"a {config.recipe} store would hold real text only")
    if writer.num_windows == 0:
        raise ValueError(f"{config.docs}: {windower.num_tokens} tokens in all, fewer than "
                         f"seq_len+1={config.seq_len + 1}: no window can be made")
    settings = config.settings()
    metadata = {
        "settings": settings,
        "content_id": content_id(settings),
        "recipe": config.recipe,
        "max_generations": config.max_generations,
        "seed": config.seed,
        "tokenizer_path": config.tokenizer,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "num_tokens": windower.num_tokens,
        "dropped_tail_tokens": windower.leftover_tokens,
        "counts": dict(sorted(counts.items())),
        "skipped": bad.as_dict(),
        "elapsed_s": round(time.time() - rate.start, 3),
    }
    metadata = writer.finish(metadata)
    fs.remove(fs.join(config.output, PROGRESS))
    print(f"[prepare] wrote {config.output}: {metadata['num_windows']} windows of "
          f"{config.seq_len}+1 tokens; skipped {dict(bad.counts) or 'nothing'}", flush=True)
    return metadata


def _write_progress(config, tokenizer, buckets_done, writer, windower, counts, bad) -> None:
    """The resume point after a bucket: every window so far is written, the tail is carried."""
    fs.write_text(fs.join(config.output, PROGRESS), json.dumps({
        "settings": config.settings(), "buckets": config.buckets,
        "tokenizer_fingerprint": tokenizer.fingerprint, "buckets_done": buckets_done,
        "num_windows": writer.num_windows, "shard_windows": writer.shard_windows,
        "windower": windower.get_state(), "counts": dict(counts), "skipped": bad.as_dict()}))


def _read_progress(config, tokenizer) -> dict | None:
    """The partial store's resume point, if it was made with these settings; else None."""
    path = fs.join(config.output, PROGRESS)
    if not fs.exists(path):
        return None
    progress = json.loads(fs.read_text(path))
    same = (not differing_settings(progress["settings"], config.settings())
            and progress["buckets"] == config.buckets
            and progress["tokenizer_fingerprint"] == tokenizer.fingerprint)
    if not same:
        print(f"[prepare] {config.output}: partial store from other settings; starting afresh",
              flush=True)
    return progress if same else None


class _Rate:
    def __init__(self, docs: int, tokens: int):
        self.start = self._last = time.time()
        self._docs, self._tokens = docs, tokens

    def report(self, buckets_done, buckets_left, counts, windower, writer) -> None:
        now = time.time()
        if now - self._last < 5 and buckets_left:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        docs, tokens = counts["docs_used"], windower.num_tokens
        print(f"[prepare] {buckets_left} buckets left  docs {docs} "
              f"({(docs - self._docs) / elapsed:.0f} docs/s)  tokens {tokens} "
              f"({(tokens - self._tokens) / elapsed:.0f} tokens/s)  windows {writer.num_windows}  "
              f"ETA {elapsed / buckets_done * buckets_left:.0f}s", flush=True)
