"""Loss against generations per document with searched hyper-parameters (the megadocs paper's
Figures 1 and 5): for each count N, prepare the store of the first N generations of every
document, run the certified search (one per count, each starting from the previous count's
optimum, as the paper did; N = 0 is the real-only baseline, always run, from the published
optimum of the preset), and tabulate (megadoc.analysis.sweep).

Everything resumes: complete stores are kept, each search keeps its finished runs in
<workdir>/searches/<name>/results.jsonl and each run its checkpoints, so rerunning a finished
sweep trains nothing and an interrupted one continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json

from megadoc import fs
from megadoc.analysis import plots, search, sweep
from megadoc.data import leakage
from megadoc.data import prepare
from megadoc.data import store as store_lib
from megadoc.pipelines import runs
from megadoc.pipelines import search as search_pipeline
from megadoc.train import config, published

GRIDS = {"paper": ("real", "synthetic"), "toy": ("toy-real", "toy-synthetic")}
RECIPES = ("simple", "stitched", "latent")
BASELINE = "real"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One recipe's sweep over generation counts (another recipe adds its rows to the same
    workdir's table)."""
    recipe: str
    """the synthetic stream: simple | stitched | latent"""
    docs: str
    """real documents {id, text} (JSONL/Parquet file, dir or glob)"""
    generation_records: str
    """generation records of one synthesis run with at least max(--counts) samples per
    document (latent: a run with --splits=<the counts>, each count's thoughts at its own equal
    split points)"""
    tokenizer: str
    """sentencepiece .model, tokenizer.json, or a dir with one"""
    seq_len: int
    """window length of every store"""
    val: tuple[tuple[str, str], ...]
    """validation sets: a window store or documents, as experiments.train takes them (the first
    is minimised)"""
    workdir: str
    """stores, searches and the table (local or gs://)"""
    counts: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)
    """generations per document; 0 (the real-only baseline) is always run"""
    preset: str = "300m"
    """training preset of every run: tiny | 150m | 300m | 600m | 1.5b"""
    grid: str = "paper"
    """paper: the papers' grids (megadoc.analysis.search); toy: 2 values an axis"""
    data_fractions: tuple[float, ...] = ()
    """also search real-only baselines on these fractions of the documents and fit the data law
    on them (e.g. 0.125,0.25,0.5)"""
    real_position: str = "last"
    """stitched: where the real document sits (last | first | none)"""
    seed: int = 0
    """seed of the stores' permutations, the data order and the init"""
    mesh: tuple[int, int, int] = (1, -1, 1)
    """mesh shape data,fsdp,tensor of every run"""

    def __post_init__(self):
        if self.recipe not in RECIPES or self.grid not in GRIDS:
            raise ValueError(f"recipe {self.recipe!r}, grid {self.grid!r}: expected one of "
                             f"{RECIPES} and one of {tuple(GRIDS)}")
        if not self.val:
            raise ValueError("at least one validation set (--val=NAME=PATH) is required")
        if min(self.counts, default=0) < 0:
            raise ValueError(f"counts {self.counts}: counts are >= 0")
        if any(not 0 < x < 1 for x in self.data_fractions) or len(self.data_fractions) == 1:
            raise ValueError(f"data_fractions {self.data_fractions}: each in (0, 1), and at "
                             f"least 2 (with the full data, 3 points fit A / D^B + C)")


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The table's rows (one per recipe and count) and the data law (also sweep.json)."""
    rows: tuple[dict, ...]
    data_law: dict

    def as_dict(self) -> dict:
        return {"rows": list(self.rows), "data_law": self.data_law}


def _prepare(cfg: SweepConfig, name: str, **settings) -> str:
    from megadoc.data import prepare

    output = fs.join(cfg.workdir, "stores", name)
    fields = dict(docs=cfg.docs, recipe="real", tokenizer=cfg.tokenizer, seq_len=cfg.seq_len,
                  seed=cfg.seed, output=output)
    prepare.prepare(prepare.PrepareConfig(**fields | settings))
    return output


def _fraction_docs(cfg: SweepConfig, fraction: float) -> str:
    """The first `fraction` of the documents in the seeded permutation, written once."""
    from megadoc.data import docs as docs_lib
    from megadoc.data.prepare import shuffle_key

    path = fs.join(cfg.workdir, "docs", f"real-f{fraction}.jsonl")
    if not fs.exists(path):
        every = sorted(({"id": d["id"], "text": d["text"]} for d in docs_lib.read_docs(cfg.docs)),
                       key=lambda d: (shuffle_key(cfg.seed, d["id"]), d["id"]))
        docs_lib.write_jsonl(path, every[:max(1, round(fraction * len(every)))])
    return path


def _search(cfg: SweepConfig, name: str, grid_name: str, start: dict, real: str,
            synthetic: str | None, facts: dict) -> dict:
    """One certified search in <workdir>/searches/<name>, its runs trained in this process;
    returns its search.json."""
    root = fs.join(cfg.workdir, "searches", name)
    grid = search.grid_preset(grid_name)
    first = sweep.start_point(grid, start)
    train = runs.train_config(dict(
        preset=cfg.preset, real=real, synthetic=synthetic, workdir=root, seed=cfg.seed,
        mesh=cfg.mesh, val=cfg.val, mix=first.get("mix", 0.0), epochs=first["epochs"],
        lr=first["lr"], weight_decay=first["weight_decay"]))
    found = search_pipeline.run_search(grid, first, root, search_pipeline.launcher(
        train, fs.join(root, "runs"), cfg.val[0][0]))
    summary = dict(facts, **found.as_dict())
    fs.write_text(fs.join(root, "search.json"), json.dumps(summary, indent=1) + "\n")
    return summary


def _audit_leakage(cfg: SweepConfig) -> None:
    """No generation source may be a validation document: the --val sets given as documents
    are checked against --docs before anything is prepared (data/leakage.py)."""
    documents = tuple((n, p) for n, p in cfg.val if leakage.is_document_set(p))
    if documents:
        leakage.check(cfg.docs, documents)
    for name, path in cfg.val:
        if (name, path) not in documents:
            print(f"[sweep] --val={name}={path} is a window store: no leakage audit against it "
                  f"(give its documents to have one)", flush=True)


def run(cfg: SweepConfig) -> SweepResult:
    """Prepare, search every count, and write the table and figure."""
    real_grid, synthetic_grid = GRIDS[cfg.grid]
    _audit_leakage(cfg)
    counted = sorted(n for n in cfg.counts if n)  # every count checked up front
    for n in counted if cfg.recipe == "latent" else counted[-1:]:
        prepare.check_samples(cfg.generation_records, n)
    real = _prepare(cfg, "real")
    preset = config.preset(cfg.preset)
    if cfg.preset in published.REAL_ONLY:  # the published optimum is the first guess
        previous = published.REAL_ONLY[cfg.preset].as_flags()
    else:
        previous = {"lr": preset.lr, "weight_decay": preset.weight_decay, "epochs": 16}
    tokens = store_lib.open(real).metadata["num_tokens"]
    previous = _search(cfg, BASELINE, real_grid, previous, real, None,
                       {"recipe": BASELINE, "generations": 0, "fraction": 1.0,
                        "tokens": tokens})["best"]
    baseline_start = previous
    for fraction in cfg.data_fractions:
        store = _prepare(cfg, f"real-f{fraction}", docs=_fraction_docs(cfg, fraction))
        _search(cfg, f"real-f{fraction}", real_grid, baseline_start, store, None,
                {"recipe": BASELINE, "fraction": fraction,
                 "tokens": store_lib.open(store).metadata["num_tokens"]})
    for n in sorted({0, *cfg.counts}):
        if n == 0:
            continue
        name = f"{cfg.recipe}-n{n}"
        synthetic = _prepare(cfg, name, recipe=cfg.recipe, generations=cfg.generation_records,
                             max_generations=n, real_position=cfg.real_position)
        previous = _search(cfg, name, synthetic_grid, previous, real, synthetic,
                           {"recipe": cfg.recipe, "generations": n})["best"]
    return write_table(cfg.workdir)


def write_table(workdir: str) -> SweepResult:
    """sweep.json, sweep.md and sweep.png from every finished search under <workdir>/searches."""
    searches = fs.join(workdir, "searches")
    found = [json.loads(fs.read_text(fs.join(searches, name, "search.json")))
             for name in fs.listdir(searches)
             if fs.exists(fs.join(searches, name, "search.json"))]
    baselines = [f for f in found if f["recipe"] == BASELINE]  # the full data and fractions
    law = sweep.data_law([(f["tokens"] / 1e9, f["best_loss"]) for f in baselines])
    full = [f for f in baselines if f["fraction"] == 1.0]
    baseline_loss = full[0]["best_loss"] if full else None
    counted = [f for f in found if "generations" in f]  # not the fraction baselines
    rows = [sweep.row(f["recipe"], f["generations"], f, law, baseline_loss)
            for f in sorted(counted, key=lambda f: (f["recipe"] != BASELINE, f["recipe"],
                                                    f["generations"]))]
    result = SweepResult(tuple(rows), law.as_dict())
    fs.write_text(fs.join(workdir, "sweep.json"), json.dumps(result.as_dict(), indent=1) + "\n")
    fs.write_text(fs.join(workdir, "sweep.md"), sweep.markdown(rows, law))
    plots.plot_generations(rows, fs.join(workdir, "sweep.png"), baseline_recipe=BASELINE)
    print(sweep.markdown(rows, law), flush=True)
    return result
