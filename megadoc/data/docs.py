"""Source documents {"id", "text"} and generation records, in JSONL (plain or .gz) or Parquet.

A path is a file, a directory (its *.jsonl, *.jsonl.gz, *.parquet files, sorted, dot files
skipped), a glob in the last path component, or a comma-separated list of these; local or gs://.
A record that cannot be used (invalid UTF-8, malformed JSON, a missing or mistyped field) is
never dropped silently: it is logged with file and line and counted in `bad`, a `BadRecords`
the caller passes and reports.
A file that cannot be read at all (a truncated gzip, a corrupt Parquet footer) is an error.
"""
from __future__ import annotations

import collections
import gzip
import json
import logging
from typing import Iterable, Iterator

from megadoc import fs
from megadoc.data import methods as methods_lib

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class BadRecords:
    """Counts unusable records by reason and keeps the first few locations of each."""

    def __init__(self, examples_per_reason: int = 5):
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self._keep = examples_per_reason

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if len(self.examples[reason]) < self._keep:
            self.examples[reason].append(message)
        logging.warning("skipped record %s", message)

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": dict(self.examples)}

    def set_state(self, state: dict) -> None:
        """Continue from an earlier `as_dict()` (a resumed job)."""
        self.counts = collections.Counter(state["counts"])
        self.examples = collections.defaultdict(list, {k: list(v) for k, v in state["examples"].items()})


def expand(path: str) -> list[str]:
    files = []
    for part in str(path).split(","):
        part = part.strip().rstrip("/")
        if any(c in part.rpartition("/")[2] for c in "*?["):
            files += fs.glob(part)
        elif part.endswith(SUFFIXES):
            files.append(part)
        else:
            names = fs.listdir(part)
            if not names:
                raise FileNotFoundError(f"{part}: no such file or directory")
            # Dot files are temp files of writes a kill interrupted (fs.write_bytes), never data.
            files += [fs.join(part, n) for n in names
                      if n.endswith(SUFFIXES) and not n.startswith(".")]
    missing = [f for f in files if not f.endswith(SUFFIXES)]
    if missing:
        raise ValueError(f"{missing[0]}: unknown format; expected one of {SUFFIXES}")
    return files


def _raw_records(path: str, bad: BadRecords) -> Iterator[tuple[str, dict]]:
    """(location, record) for every JSON object / Parquet row of one file."""
    if path.endswith(".parquet"):
        yield from _parquet_records(path)
        return
    with fs.open_read(path) as raw:
        f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        n = 0
        try:
            for n, line in enumerate(f, start=1):
                where = f"{path}:{n}"
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad.add("invalid_utf8", where, str(e))
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    bad.add("malformed_json", where, str(e))
                    continue
                if not isinstance(record, dict):
                    bad.add("malformed_json", where, "not a JSON object")
                    continue
                yield where, record
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ValueError(f"{path}: unreadable after line {n}: {e}") from e


def _parquet_records(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_read(path) as f:
        try:
            pf = pq.ParquetFile(f)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    row += 1
                    yield f"{path}:row {row}", record
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path}: unreadable Parquet file: {e}") from e


def _text_field(record: dict, key: str, where: str, bad: BadRecords):
    value = record.get(key)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.add("invalid_utf8", where, f"field {key!r}: {e}")
            return None
    if not isinstance(value, str):
        bad.add("missing_field", where, f"{key!r} must be a string, got {type(value).__name__}")
        return None
    return value


def read_docs(path: str, bad: BadRecords | None = None) -> Iterator[dict]:
    """Yields {"id": str, "text": str, "where": "file:line"}; ids that are ints become strings."""
    bad = bad if bad is not None else BadRecords()
    for file in expand(path):
        for where, record in _raw_records(file, bad):
            doc_id = record.get("id")
            if isinstance(doc_id, int) and not isinstance(doc_id, bool):
                doc_id = str(doc_id)
            if not isinstance(doc_id, str):
                bad.add("missing_field", where, "'id' must be a string")
                continue
            text = _text_field(record, "text", where, bad)
            if text is not None:
                yield {"id": doc_id, "text": text, "where": where}


def read_generations(path: str, bad: BadRecords | None = None) -> Iterator[dict]:
    """Yields generation records (the shared schema) plus "where"; checks the fields megadocs use.
    A method's legacy spelling (methods.LEGACY_NAMES) is read as its name."""
    bad = bad if bad is not None else BadRecords()
    for file in expand(path):
        for where, record in _raw_records(file, bad):
            if record.get("method") in methods_lib.LEGACY_NAMES:
                record = dict(record, method=methods_lib.LEGACY_NAMES[record["method"]])
            problem = _generation_problem(record)
            if problem:
                bad.add("missing_field", where, problem)
                continue
            text = _text_field(record, "text", where, bad)
            if text is not None:
                yield dict(record, text=text, doc_id=str(record["doc_id"]), where=where)


def _generation_problem(record: dict) -> str | None:
    if not isinstance(record.get("doc_id"), (str, int)) or isinstance(record.get("doc_id"), bool):
        return "'doc_id' must be a string"
    if record.get("method") not in methods_lib.METHODS:
        return f"'method' must be one of {tuple(methods_lib.METHODS)}, got {record.get('method')!r}"
    if type(record.get("sample")) is not int:  # bool is an int to isinstance
        return "'sample' must be an int"
    if methods_lib.METHODS[record["method"]].offsets and type(record.get("offset")) is not int:
        return f"a {record['method']} record needs an int 'offset'"
    return None


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    """One atomic write; gzip-compressed when the path ends in .gz."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fs.write_bytes(path, gzip.compress(data) if path.endswith(".gz") else data)
