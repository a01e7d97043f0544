"""Checkpoints in <workdir>/checkpoints via orbax: async saves, keep-last-K, exact restore.

Each checkpoint step directory holds `state` (step, params, optimizer state) and `run` (the
run's config and store identities as JSON, checked on resume); the data position is the step
itself. Orbax writes a step into a temporary
directory and renames (or, on GCS, marks) it only when every item is complete, and
`latest_step()` lists finalized steps only, so a save killed midway is ignored, never half-read.
"""
from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp

from megadoc import fs
from megadoc.models import llama
from megadoc.train import config as config_lib


def directory(workdir: str) -> str:
    return fs.join(workdir, "checkpoints")


def manager(workdir: str, keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(fs.storage_path(directory(workdir)), options=options,
                                 item_names=("state", "run"))


def save(mgr: ocp.CheckpointManager, state: dict, run: dict) -> None:
    """Start an async save at `state["step"]`; returns once the arrays are copied off device."""
    step = int(jax.device_get(state["step"]))
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           run=ocp.args.JsonSave(run)), force=True)


def read_run(mgr: ocp.CheckpointManager, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]


def check_run(saved: dict, current: dict, where: str) -> None:
    """Refuse to resume a different run: name every field that differs."""
    diffs = config_lib.differing_fields(saved, current)
    if diffs:
        a, b = config_lib.flatten(saved), config_lib.flatten(current)
        lines = "\n".join(f"  {k}: checkpoint {a.get(k)!r} != now {b.get(k)!r}" for k in diffs)
        raise ValueError(f"{where} holds checkpoints of another run; differing fields:\n{lines}\n"
                         f"use a new --workdir, or rerun with the checkpoint's settings")


def restore_state(mgr: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """The state at `step`, laid out as `target` (ShapeDtypeStructs with shardings) says, so a
    checkpoint from any device count or mesh shape restores onto the current one."""
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored["state"]


def restore_newest(mgr: ocp.CheckpointManager, target: dict, check) -> tuple[dict, int] | None:
    """(state, step) of the newest checkpoint that restores, after `check(its run record)`
    (which raises to refuse another run's checkpoints); None when there is none. An unreadable
    one (a save cut short by a full disk, a truncated or deleted file) is reported, deleted so
    that the run can save that step again, and the next older one tried."""
    skipped = []
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            run = read_run(mgr, step)
        except Exception as e:  # noqa: BLE001 — orbax raises many kinds on damaged files
            skipped.append(_skip(mgr, step, e))
            continue
        check(run)
        try:
            return restore_state(mgr, step, target), step
        except Exception as e:  # noqa: BLE001
            skipped.append(_skip(mgr, step, e))
    if skipped:
        raise ValueError(f"{mgr.directory}: no checkpoint restores ({'; '.join(skipped)}); "
                         f"use a new --workdir or remove the checkpoints to start afresh")
    return None


def _skip(mgr: ocp.CheckpointManager, step: int, error: Exception) -> str:
    reason = f"checkpoint {step}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
    print(f"[train] {mgr.directory}: skipping unreadable {reason}; deleting it", flush=True)
    mgr.delete(step)
    return reason


def load_params(workdir: str, step: int | None = None) -> tuple[llama.LlamaConfig, dict]:
    """(model_config, params) of the newest complete checkpoint in `workdir` (or of `step`).
    Params come back replicated on the local devices' default placement."""
    mgr = manager(workdir, read_only=True)
    steps = mgr.all_steps()
    if not steps:
        raise FileNotFoundError(f"{directory(workdir)}: no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{directory(workdir)}: no checkpoint at step {step}; have {steps}")
    model_config = model_config_from_dict(read_run(mgr, step)["model"])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.eval_shape(lambda: llama.init(model_config, jax.random.key(0)))
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True,
        restore_args={"params": jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                                             target)})))
    mgr.close()
    return model_config, restored["state"]["params"]


def tokenizer_fingerprint(workdir: str) -> str | None:
    """The fingerprint of the tokenizer the run's training data was prepared with, from its
    newest checkpoint's run record (None when the run recorded none)."""
    mgr = manager(workdir, read_only=True)
    try:
        step = mgr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory(workdir)}: no complete checkpoint")
        stores = read_run(mgr, step).get("stores") or {}
    finally:
        mgr.close()
    return (stores.get("real") or {}).get("tokenizer_fingerprint")


def check_tokenizer(workdir: str, tokenizer) -> None:
    """Refuse to score a run with a tokenizer other than its training data's: same vocab size
    or not, the token ids would mean other strings and every accuracy would be wrong."""
    want = tokenizer_fingerprint(workdir)
    if want is not None and want != tokenizer.fingerprint:
        raise ValueError(f"{getattr(tokenizer, 'path', 'tokenizer')}: fingerprint "
                         f"{tokenizer.fingerprint}, but {workdir} was trained on data tokenized "
                         f"with {want}; pass the tokenizer its stores were prepared with")


def model_config_from_dict(d: dict) -> llama.LlamaConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = llama.RopeScaling(**d["rope_scaling"])
    return llama.LlamaConfig(**d)


def save_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        fs.write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
