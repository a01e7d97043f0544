"""Loss against generations per document with searched hyper-parameters (the megadocs paper's
Figures 1 and 5): for each count N, prepare the store of the first N generations of every
document, run the certified search (one per count, each starting from the previous count's
optimum, as the paper did; N = 0 is the real-only baseline, always run, from the published
optimum of the preset), and tabulate.

    python -m experiments.generations_sweep --recipe=stitched --docs=gs://b/dclm/train.jsonl \\
        --generations=gs://b/synth/rephrase --tokenizer=gs://b/llama-3.1-8b-instruct \\
        --seq_len=4096 --val=iid=gs://b/stores/val --counts=0,1,2,4,8,16,32 --preset=300m \\
        --workdir=gs://b/sweeps/dclm [--data_fractions=0.125,0.25,0.5]

Writes <workdir>/sweep.json ({"rows": [{recipe, generations, loss, best, certified, at_bound,
data_efficiency, data_law, runs}], "data_law": {...}}), sweep.md and sweep.png. Running it again
with another --recipe and the same --workdir adds that recipe's rows to the same table and figure
(the baseline is shared). Data efficiency comes from a data law fitted on real-only baselines
trained on --data_fractions of the documents (with the full data: at least 3 points), else from
the infinite-compute paper's published law; the table says which.

Everything resumes: stores that are complete are kept, each search keeps its finished runs in
<workdir>/searches/<name>/results.jsonl and each run its checkpoints, so rerunning a finished
sweep trains nothing and an interrupted one continues where it stopped. --grid=toy (2 values an
axis) with --preset=tiny runs on a CPU in minutes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Callable

from absl import app, flags

from megadoc import cli

FLAGS = flags.FlagValues()
_IN = {"flag_values": FLAGS}
flags.DEFINE_enum("recipe", None, ["simple", "stitched", "latent"], "the synthetic stream", **_IN)
flags.DEFINE_string("docs", None, "real documents {id, text} (JSONL/Parquet file, dir or glob)",
                    **_IN)
flags.DEFINE_string("generations", None, "generation records of one synthesis run with at least "
                    "max(--counts) samples per document (latent: a run with --splits=<the "
                    "counts>, each count's thoughts at its own equal split points)", **_IN)
flags.DEFINE_string("tokenizer", None, "sentencepiece .model, tokenizer.json, or a dir with one",
                    **_IN)
flags.DEFINE_integer("seq_len", None, "window length of every store", **_IN)
flags.DEFINE_multi_string("val", [], "NAME=PATH validation set: a window store or documents, as "
                          "experiments.train takes it (repeatable; the first is minimised)", **_IN)
flags.DEFINE_list("counts", ["0", "1", "2", "4", "8", "16", "32"], "generations per document; 0 "
                  "(the real-only baseline) is always run", **_IN)
flags.DEFINE_string("preset", "300m", "training preset of every run: tiny | 150m | 300m | 600m | "
                    "1.5b", **_IN)
flags.DEFINE_enum("grid", "paper", ["paper", "toy"], "paper: the papers' grids (megadoc.analysis."
                  "search); toy: 2 values an axis", **_IN)
flags.DEFINE_string("workdir", None, "stores, searches and the table (local or gs://)", **_IN)
flags.DEFINE_list("data_fractions", [], "also search real-only baselines on these fractions of the "
                  "documents and fit the data law on them (e.g. 0.125,0.25,0.5)", **_IN)
flags.DEFINE_enum("real_position", "last", ["last", "first", "none"], "stitched: where the real "
                  "document sits", **_IN)
flags.DEFINE_integer("seed", 0, "seed of the stores' permutations, the data order and the init",
                     **_IN)
flags.DEFINE_list("mesh", ["1", "-1", "1"], "mesh shape data,fsdp,tensor of every run", **_IN)

GRIDS = {"paper": ("real", "synthetic"), "toy": ("toy-real", "toy-synthetic")}
BASELINE = "real"


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    recipe: str
    docs: str
    generations: str
    tokenizer: str
    seq_len: int
    val: tuple[tuple[str, str], ...]
    counts: tuple[int, ...]
    workdir: str
    preset: str = "300m"
    grid: str = "paper"
    data_fractions: tuple[float, ...] = ()
    real_position: str = "last"
    seed: int = 0
    mesh: tuple[int, int, int] = (1, -1, 1)


def build_config(f=FLAGS) -> SweepConfig:
    missing = [n for n in ("recipe", "docs", "generations", "tokenizer", "seq_len", "workdir")
               if getattr(f, n) is None]
    if missing or not f.val:
        raise app.UsageError(f"required: {', '.join('--' + n for n in missing + ['val'])}")
    val = []
    for item in f.val:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--val={item!r}: expected NAME=PATH")
        val.append((name, path))
    counts = sorted({0, *(int(c) for c in f.counts)})
    if counts[0] < 0:
        raise app.UsageError(f"--counts={','.join(f.counts)}: counts are >= 0")
    fractions = tuple(float(x) for x in f.data_fractions)
    if any(not 0 < x < 1 for x in fractions) or len(fractions) == 1:
        raise app.UsageError(f"--data_fractions={','.join(f.data_fractions)}: each in (0, 1), and "
                             f"at least 2 (with the full data, 3 points fit A / D^B + C)")
    return SweepConfig(recipe=f.recipe, docs=f.docs, generations=f.generations,
                       tokenizer=f.tokenizer, seq_len=f.seq_len, val=tuple(val),
                       counts=tuple(counts), workdir=f.workdir, preset=f.preset, grid=f.grid,
                       data_fractions=fractions, real_position=f.real_position, seed=f.seed,
                       mesh=tuple(int(x) for x in f.mesh))


def _prepare(cfg: SweepConfig, name: str, **settings) -> str:
    from megadoc import fs
    from megadoc.data import prepare

    output = fs.join(cfg.workdir, "stores", name)
    fields = dict(docs=cfg.docs, recipe="real", tokenizer=cfg.tokenizer, seq_len=cfg.seq_len,
                  seed=cfg.seed, output=output)
    fields.update(settings)
    prepare.prepare(prepare.PrepareConfig(**fields))
    return output


def _fraction_docs(cfg: SweepConfig, fraction: float) -> str:
    """The first `fraction` of the documents in the seeded permutation, written once."""
    from megadoc import fs
    from megadoc.data import docs as docs_lib
    from megadoc.data.prepare import shuffle_key

    path = fs.join(cfg.workdir, "docs", f"real-f{fraction}.jsonl")
    if not fs.exists(path):
        every = sorted(({"id": d["id"], "text": d["text"]} for d in docs_lib.read_docs(cfg.docs)),
                       key=lambda d: (shuffle_key(cfg.seed, d["id"]), d["id"]))
        docs_lib.write_jsonl(path, every[:max(1, round(fraction * len(every)))])
    return path


def train_point(cfg: SweepConfig, root: str, real: str,
                synthetic: str | None) -> Callable[[dict], float]:
    """The search's launcher: point -> final loss on the first validation set, training in this
    process (megadoc.train.loop) in <root>/runs/<point>, which a rerun resumes."""
    from megadoc import fs
    from megadoc.analysis import search
    from megadoc.data import store as store_lib
    from megadoc.models import llama
    from megadoc.train import config, loop

    preset = config.preset(cfg.preset)
    real_store = store_lib.open(real)
    model = dataclasses.replace(llama.preset(preset.model),
                                vocab_size=int(real_store.metadata["vocab_size"]),
                                max_seq_len=real_store.seq_len, remat=preset.remat)

    def run(point: dict) -> float:
        workdir = fs.join(root, "runs", search.point_name(point))
        train_cfg = config.TrainConfig(
            model=model,
            data=config.DataConfig(real=real, synthetic=synthetic, mix=point.get("mix", 0.0),
                                   epochs=point["epochs"], seed=cfg.seed,
                                   global_batch=preset.global_batch),
            optimizer=config.OptimizerConfig(lr=point["lr"], weight_decay=point["weight_decay"]),
            workdir=workdir, microbatches=preset.microbatches, mesh=cfg.mesh, val=cfg.val)
        try:
            summary = loop.train(train_cfg)
        except FloatingPointError as e:
            print(f"[sweep] diverged: {e}", flush=True)
            return math.nan
        if summary["status"] == "preempted":
            sys.exit(143)  # 128 + SIGTERM: rerun the sweep to continue
        return search.final_eval_loss(summary, cfg.val[0][0])

    return run


def _search(cfg: SweepConfig, name: str, grid_name: str, start: dict, real: str,
            synthetic: str | None, facts: dict) -> dict:
    """One certified search in <workdir>/searches/<name>; returns its search.json."""
    from megadoc import fs
    from megadoc.analysis import plots, search, sweep

    root = fs.join(cfg.workdir, "searches", name)
    grid = search.grid_preset(grid_name)
    result = search.search(grid, sweep.start_point(grid, start),
                           train_point(cfg, root, real, synthetic),
                           fs.join(root, "results.jsonl"))
    found = dict(facts, best=result.best, best_loss=result.best_loss, certified=result.certified,
                 at_bound=list(result.at_bound), runs=len(result.results),
                 new_runs=result.new_runs, grid={k: list(v) for k, v in grid.axes})
    fs.write_text(fs.join(root, "search.json"), json.dumps(found, indent=1) + "\n")
    plots.plot_search(grid, result.results, fs.join(root, "search.png"), best=result.best)
    return found


def run_sweep(cfg: SweepConfig) -> dict:
    """Prepare, search every count, and write the table and figure; returns sweep.json."""
    from megadoc.data import store as store_lib
    from megadoc.train import config, published

    from megadoc.data import leakage

    documents = tuple((n, p) for n, p in cfg.val if leakage.is_document_set(p))
    if documents:  # no generation source may be a validation document
        leakage.check(cfg.docs, documents)
    for name, path in cfg.val:
        if (name, path) not in documents:
            print(f"[sweep] --val={name}={path} is a window store: no leakage audit against it "
                  f"(give its documents to have one)", flush=True)
    real_grid, synthetic_grid = GRIDS[cfg.grid]
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
    for n in cfg.counts:
        if n == 0:
            continue
        name = f"{cfg.recipe}-n{n}"
        synthetic = _prepare(cfg, name, recipe=cfg.recipe, generations=cfg.generations,
                             max_generations=n, real_position=cfg.real_position)
        previous = _search(cfg, name, synthetic_grid, previous, real, synthetic,
                           {"recipe": cfg.recipe, "generations": n})["best"]
    return write_table(cfg.workdir)


def write_table(workdir: str) -> dict:
    """sweep.json, sweep.md and sweep.png from every finished search under <workdir>/searches."""
    from megadoc import fs
    from megadoc.analysis import plots, sweep

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
    table = {"rows": rows, "data_law": law.as_dict()}
    fs.write_text(fs.join(workdir, "sweep.json"), json.dumps(table, indent=1) + "\n")
    fs.write_text(fs.join(workdir, "sweep.md"), sweep.markdown(rows, law))
    plots.plot_generations(rows, fs.join(workdir, "sweep.png"), baseline_recipe=BASELINE)
    print(sweep.markdown(rows, law), flush=True)
    return table


def main(argv):
    del argv
    run_sweep(build_config())


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
