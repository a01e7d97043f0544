"""Synthetic Bootstrapped Pretraining's analysis: how many real epochs each student gets for
equal compute, and the students' table and plot (the pipeline: megadoc/pipelines/sbp.py)."""
from __future__ import annotations

import io
import json

from megadoc import fs

STUDENTS = ("real", "sbp", "oracle")


def student_epochs(sbp_epochs: int, mix: float) -> dict:
    """Real epochs per student for equal compute: the SBP student spends (1 - mix) of each batch
    on real windows, so real only takes 1 / (1 - mix) times its epochs (rounded), and the
    oracle, with 1 / (1 - mix) times its documents, as many."""
    return {"real": max(1, round(sbp_epochs / (1 - mix))), "sbp": sbp_epochs,
            "oracle": sbp_epochs}


def write_results(workdir: str, results: dict) -> None:
    """results.json, results.md (the table) and val_loss.png (the students' bars) in `workdir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fs.write_text(fs.join(workdir, "results.json"), json.dumps(results, indent=1) + "\n")
    p, c, s = results["pairs"], results["conditional"], results["synthesis"]
    lines = [f"# SBP results (base {cfg['base']})", "",
             f"Pairs: {p['pairs']} over {p['documents']} documents (threshold "
             f"{cfg['threshold']}, {p['duplicates_excluded']} near-duplicates excluded); "
             f"neighbour scores {p['neighbour_scores']}.",
             f"Conditional training: {c['steps']} steps, masked loss {c['first_loss']:.4f} → "
             f"{c['last_loss']:.4f}. Synthesis: {s['records']} documents, "
             f"{s['generated_tokens']:,} tokens ({s['finish_reason']}).", "",
             "| student | real docs | real epochs | synthetic fraction | steps | tokens | "
             "i.i.d. val loss | Δ vs real |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['student']} | {r['real_docs']} | {r['real_epochs']} | "
              f"{r['synthetic_fraction']} | {r['steps']} | {r['tokens']:,} | "
              f"{r['val_loss']:.4f} | {r['delta_vs_real']:+.4f} |" for r in results["students"]]
    fs.write_text(fs.join(workdir, "results.md"), "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = results["students"]
    ax.bar([r["student"] for r in rows], [r["val_loss"] for r in rows],
           color=["gray", "tab:blue", "tab:green"][:len(rows)])
    low = min(r["val_loss"] for r in rows)
    ax.set_ylim(low - 0.1 * abs(low), max(r["val_loss"] for r in rows) + 0.05 * abs(low))
    ax.set_ylabel("i.i.d. validation loss")
    ax.set_title("SBP: students at equal compute")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    fs.write_bytes(fs.join(workdir, "val_loss.png"), buf.getvalue())
