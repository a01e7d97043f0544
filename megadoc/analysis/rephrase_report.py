"""What the generator wrote, for a results page: the distribution of the rephrases' fidelity
and diversity (megadoc/synth/fidelity.py), and the least and the most faithful rephrase next to
their sources."""
from __future__ import annotations

import json

from megadoc import fs
from megadoc.data import docs as docs_lib


def _fenced(text: str, limit: int = 800) -> list[str]:
    text = text if len(text) <= limit else text[:limit] + " …"
    return ["~~~text", text, "~~~"]


def markdown(synth_dir: str, docs_path: str) -> list[str]:
    """Markdown lines: a table of the synthesis summary's quality distributions, then the worst
    and the best scored rephrase with its source."""
    lines = ["", "## What the generator wrote: fidelity and diversity of the rephrases", ""]
    summary = json.loads(fs.read_text(fs.join(synth_dir, "summary.json")))
    quality = summary.get("quality")
    scored = [g for g in docs_lib.read_generations(synth_dir) if g.get("fidelity") is not None]
    if not quality:
        return lines + ["No fidelity scores: these rephrases were synthesized before megadoc "
                        "scored them (rerun the synthesis in a new workdir)."]
    if not scored:
        return lines + ["No rephrase could be scored: none has text that fits the generator's "
                        "context with its source."]
    lines += ["Fidelity: the nats per source token that reading the rephrase adds to the "
              "generator's log-likelihood of the source (higher: more of the source is in it). "
              "Similarity: word-3-gram Jaccard to the document's closest other rephrase. "
              "Source overlap: the share of the rephrase's word 3-grams found in the source "
              "(1: a copy).", "",
              "| measure | count | mean | min | p10 | median | p90 | max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("fidelity", "max_similarity", "source_overlap", "mean_pairwise_similarity"):
        d = quality.get(name)
        if d:
            lines.append(f"| {name} | {d['count']} | " + " | ".join(
                f"{d[k]:.3f}" for k in ("mean", "min", "p10", "median", "p90", "max")) + " |")
    lines += ["", f"Near-duplicate rephrases (similarity >= 0.5 to another of the same "
              f"document): {quality['near_duplicate_generations']}."]
    sources = {d["id"]: d["text"] for d in docs_lib.read_docs(docs_path)}
    ranked = sorted(scored, key=lambda g: g["fidelity"])
    for title, g in (("Least faithful", ranked[0]), ("Most faithful", ranked[-1])):
        lines += ["", f"### {title} rephrase: {g['doc_id']} sample {g['sample']}, fidelity "
                  f"{g['fidelity']:.3f}", "", "Source:", *_fenced(sources.get(g["doc_id"], "")),
                  "", "Rephrase:", *_fenced(g["text"])]
    return lines
