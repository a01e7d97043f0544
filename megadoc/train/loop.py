"""The training loop: restore or init, step, log, evaluate, checkpoint, finish.

Step numbering: checkpoint k and metrics row `step` k both mean "after k updates"; the batch of
update k is the schedule's batch k-1. The host dispatches update k before reading update k-1's
metrics, so it never waits on the device except at saves and evals.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from megadoc import fs
from megadoc.data import loader as loader_lib
from megadoc.data import schedule as schedule_lib
from megadoc.data import store as store_lib
from megadoc.data import validation
from megadoc.models import llama, sharding
from megadoc.train import checkpoint, evaluate, metrics
from megadoc.train import config as config_lib
from megadoc.train import optimizer as optimizer_lib
from megadoc.train import plan, pretrained
from megadoc.train import state as state_lib
from megadoc.train import step as step_lib
from megadoc.train import workdir_lock

# content_id: what the store holds (data.prepare); the sizes alone would let a store of another
# corpus with the same counts pass as this run's.
STORE_IDENTITY = ("tokenizer_fingerprint", "vocab_size", "seq_len", "num_windows", "num_tokens",
                  "recipe", "content_id")


def open_stores(cfg: config_lib.TrainConfig) -> dict:
    """{"real", "synthetic" (or None), "val": {name: store}}, checked to share one tokenizer and
    to fit the model."""
    real = store_lib.open(cfg.data.real)
    synthetic = store_lib.open(cfg.data.synthetic) if cfg.data.synthetic else None
    val = validation.open_sets(cfg.val, real)
    fingerprint = real.metadata.get("tokenizer_fingerprint")
    for s in [synthetic, *val.values()]:
        if s is not None and s.metadata.get("tokenizer_fingerprint") != fingerprint:
            raise ValueError(
                f"{s.path}: tokenized with {s.metadata.get('tokenizer_fingerprint')} "
                f"({s.metadata.get('tokenizer_path')}), but {real.path} with {fingerprint} "
                f"({real.metadata.get('tokenizer_path')}); prepare every store with one tokenizer")
    if cfg.init:  # the pre-trained model's ids must mean what the stores' ids mean
        pretrained.check_store(cfg.init, real)
    vocab = real.metadata.get("vocab_size", 0)
    if vocab > cfg.model.vocab_size:
        raise ValueError(f"{real.path}: tokenizer vocab {vocab} exceeds the model's "
                         f"vocab_size {cfg.model.vocab_size}")
    for s in [real, synthetic, *val.values()]:
        if s is not None and s.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"{s.path}: windows of {s.seq_len} tokens exceed the model's "
                             f"max_seq_len {cfg.model.max_seq_len}")
    return {"real": real, "synthetic": synthetic, "val": val}


def run_record(cfg: config_lib.TrainConfig, stores: dict, num_steps: int) -> dict:
    """What makes a run this run: its config plus the identity of its training stores."""
    def identity(s):
        return None if s is None else {k: s.metadata.get(k) for k in STORE_IDENTITY}
    return config_lib.to_dict(cfg) | {"stores": {"real": identity(stores["real"]),
                                                 "synthetic": identity(stores["synthetic"])},
                                      "num_steps": num_steps}


def make_mesh(shape: tuple[int, int, int]) -> jax.sharding.Mesh:
    """(data, fsdp, tensor) with at most one -1, which takes the remaining devices."""
    known = math.prod(d for d in shape if d != -1)
    n = jax.device_count()
    if list(shape).count(-1) > 1 or n % known:
        raise ValueError(f"mesh {shape} does not fit {n} devices")
    return sharding.make_mesh(*(n // known if d == -1 else d for d in shape))


def check_writable(workdir: str) -> None:
    if jax.process_index() != 0:
        return
    probe = fs.join(workdir, ".write_probe")
    try:
        fs.makedirs(workdir)
        fs.write_text(probe, "ok")
        fs.remove(probe)
    except OSError as e:
        raise PermissionError(f"{workdir}: workdir is not writable ({e})") from e


def params_sha256(params) -> str:
    """sha256 over every param's bytes, leaves in tree order (gathered across processes)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        if jax.process_count() > 1:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class _Stop:
    """SIGTERM (TPU preemption notice) → save at the current step and exit. With several
    processes jax's preemption service catches the signal and picks a step all agree on."""

    def __init__(self):
        self.requested = False
        self.multi = jax.process_count() > 1
        if not self.multi:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self, step: int) -> bool:
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if not self.multi:
            signal.signal(signal.SIGTERM, self._previous)


def _agree(flag: bool) -> bool:
    """Process 0's decision, on every process (for decisions taken from a host clock)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _restore_or_init(cfg, mgr, optimizer, mesh, run: dict) -> tuple[dict, int]:
    """(state, completed steps): the newest complete checkpoint laid out on this mesh, after
    checking it belongs to this run; or a fresh state."""
    where = checkpoint.directory(cfg.workdir)
    restored = checkpoint.restore_newest(mgr, state_lib.abstract(cfg.model, optimizer, mesh),
                                         lambda saved: checkpoint.check_run(saved, run, where))
    if restored is None and cfg.init:
        print(f"[train] continued pre-training from {cfg.init}", flush=True)
        _, params = pretrained.load(cfg.init, mesh)
        return state_lib.from_params(cfg.model, optimizer, mesh, params), 0
    if restored is None:
        return state_lib.create(cfg.model, optimizer, mesh, jax.random.key(cfg.data.seed)), 0
    state, start = restored
    print(f"[train] resumed from {where} at step {start}", flush=True)
    return state, start


class Diverged(FloatingPointError):
    """The run's loss or gradient norm became non-finite at `step`: a result of its
    hyper-parameters (a search counts it as the worst loss), not a fault of the machinery."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


def train(cfg: config_lib.TrainConfig, objective: step_lib.Objective | None = None) -> dict:
    """Train (or resume) the run `cfg` describes, minimising `objective` (default: the
    next-token loss); returns the summary also written to summary.json, or
    {"status": "preempted", "step": k} after a SIGTERM save; raises `Diverged` on a non-finite
    loss (after saving the state before it). One job per workdir: a second one
    refuses to start (workdir_lock)."""
    objective = objective or step_lib.language_model(cfg.model)
    check_writable(cfg.workdir)
    with workdir_lock.held(cfg.workdir, enabled=jax.process_index() == 0):
        return _train(cfg, objective)


def _train(cfg: config_lib.TrainConfig, objective: step_lib.Objective) -> dict:
    stores = open_stores(cfg)
    mesh = make_mesh(cfg.mesh)
    synthetic = stores["synthetic"]
    schedule = schedule_lib.MixSchedule(
        len(stores["real"]), len(synthetic) if synthetic else 0, cfg.data.global_batch,
        cfg.data.mix, cfg.data.epochs, cfg.data.seed)
    num_steps = schedule.num_steps
    shards = plan.batch_shards(mesh)
    microbatches = cfg.microbatches or config_lib.microbatches_for(
        cfg.data.global_batch, shards, cfg.rows_per_device)
    config_lib.check_batch_split(cfg.data.global_batch, microbatches, shards)
    optimizer = optimizer_lib.make(cfg.optimizer, num_steps)
    lr = optimizer_lib.lr_schedule(cfg.optimizer, num_steps)
    shardings = state_lib.shardings(cfg.model, optimizer, mesh)
    run = run_record(cfg, stores, num_steps) | objective.record
    seq_len = stores["real"].seq_len
    train_step = step_lib.make_train_step(cfg.model, optimizer, lr, shardings, mesh,
                                          microbatches, objective)
    plan.compile_or_advise(train_step, cfg.model, plan.Layout(
        microbatches, cfg.model.remat, tuple(mesh.shape.values())), mesh,
        cfg.data.global_batch, seq_len, optimizer)

    mgr = checkpoint.manager(cfg.workdir, keep=cfg.keep_checkpoints)
    state, start = _restore_or_init(cfg, mgr, optimizer, mesh, run)
    summary_path = fs.join(cfg.workdir, "summary.json")
    if start == num_steps and fs.exists(summary_path):  # a rerun of a finished run
        finished = json.loads(fs.read_text(summary_path))
        if set(finished.get("eval") or {}) == set(stores["val"]):  # no new --val (or halves)
            mgr.close()
            print(f"[train] {cfg.workdir}: finished before at step {start}; nothing to do",
                  flush=True)
            return finished
    checkpoint.save_json(fs.join(cfg.workdir, "config.json"), run)

    writer = metrics.Writer(cfg.workdir, num_steps, cfg.log_every)
    writer.truncate_after(start)
    tokens_per_step = cfg.data.global_batch * seq_len
    flops_per_step = (metrics.flops_per_token(cfg.model, seq_len)
                      + objective.flops_per_token) * tokens_per_step
    peak = metrics.total_peak_flops(cfg.peak_flops)
    evaluator = evaluate.Evaluator(cfg.model, mesh, cfg.eval_batch_size or cfg.data.global_batch)
    loader = loader_lib.BatchLoader(schedule, stores["real"], synthetic,
                                   sharding.batch_sharding(mesh), start_step=start)
    stop = _Stop()

    def run_eval(step: int) -> dict:
        losses = {name: evaluator(state["params"], s) for name, s in stores["val"].items()}
        if losses:
            writer.write({"step": step, **{f"eval/{k}/loss": v for k, v in losses.items()}})
            print(f"[train] eval at step {step}: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)
        return losses

    def save() -> None:
        step = int(jax.device_get(state["step"]))
        if step not in mgr.all_steps():
            writer.flush()
            checkpoint.save(mgr, state, run)

    last = {"time": time.perf_counter()}

    def report(step: int, out: dict) -> None:
        out = jax.device_get(out)
        now = time.perf_counter()
        dt, last["time"] = now - last["time"], now
        loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            save()
            mgr.wait_until_finished()
            writer.flush()
            what = f"loss is {loss}" if not math.isfinite(loss) else f"grad_norm is {grad_norm}"
            raise Diverged(step, f"{what} at step {step}; the state before that update is "
                           f"saved as checkpoint {step - 1} in "
                           f"{checkpoint.directory(cfg.workdir)} (resuming reproduces the NaN)")
        writer.write({"step": step, "loss": loss, "lr": float(out["lr"]),
                      "grad_norm": grad_norm,
                      **{name: float(out[name]) for name in objective.metric_names},
                      "tokens_per_s": tokens_per_step / dt, "mfu": flops_per_step / dt / peak,
                      "data_fingerprint": metrics.fingerprint_hex(out["data_fingerprint"])})

    evals = run_eval(0) if start == 0 and cfg.eval_every else {}
    pending = None
    last_save = time.monotonic()
    try:
        for batch_index, batch in loader:
            step = batch_index + 1
            state, out = train_step(state, batch, batch_index)
            if pending:
                report(*pending)
            pending = (step, out)
            if step == num_steps:
                break
            if stop(step):
                report(*pending)
                save()
                mgr.wait_until_finished()
                writer.flush()
                print(f"[train] SIGTERM: saved checkpoint at step {step} in "
                      f"{checkpoint.directory(cfg.workdir)}; exiting", flush=True)
                return {"status": "preempted", "step": step}
            if cfg.eval_every and step % cfg.eval_every == 0:
                run_eval(step)
            due = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
            if cfg.checkpoint_every_minutes and step % max(1, cfg.log_every) == 0:
                overdue = time.monotonic() - last_save > 60 * cfg.checkpoint_every_minutes
                due = due or _agree(overdue)
            if due:
                save()
                last_save = time.monotonic()
        if pending:
            report(*pending)
        if stores["val"]:
            evals = run_eval(num_steps)
        save()
        mgr.wait_until_finished()
    finally:
        stop.close()
        writer.flush()
        mgr.close()
    summary = {"status": "finished", "config": run, "final_step": num_steps,
               "eval": evals, **{f"val/{k}": v for k, v in evals.items()},
               "windows": schedule.counts(), "params_sha256": params_sha256(state["params"]),
               "num_params": llama.num_params(cfg.model), "tokens": num_steps * tokens_per_step}
    checkpoint.save_json(summary_path, summary)
    return summary
