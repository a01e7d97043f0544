"""Who runs a synthesis job's shards: this process (`local`, the default) or a Ray cluster's
workers (`ray`, the optional extra `pip install '.[ray]'`).

With Ray, each worker is an actor holding one copy of the generator (one sampler per host or
accelerator, as Marin runs its generation); the driver hands out one shard at a time to
whichever worker is free. A worker that dies (a killed process, a lost host) has its shard
handed to a new worker. Exactly-once does not rest on Ray: a shard is written whole and
atomically before its checksummed marker, the same bytes whoever writes it, and a worker skips
shards whose marker is intact, so a shard run twice is written twice identically, never twice
over. Each worker appends the shards it starts to `_job/claims-w<i>.jsonl` (host, pid, time).
"""
from __future__ import annotations

import collections
import os
import socket
import time

from megadoc import fs
from megadoc.synth import job

MAX_ATTEMPTS = 3  # a shard whose worker died this often is an error, not bad luck


def run(cfg: job.JobConfig) -> dict:
    """The job's dry-run estimate, or its summary after running it with its executor."""
    if cfg.dry_run:
        return job.estimate(cfg)
    if cfg.executor == "local":
        return job.run(cfg)
    return run_ray(cfg)


class ShardWorker:
    """One Ray worker: prepares the job (documents, generator) on its first shard."""

    def __init__(self, cfg: job.JobConfig, index: int):
        self.cfg, self.index, self.runner = cfg, index, None

    def run_shard(self, shard: int) -> dict:
        if self.runner is None:
            self.runner = job.Runner(job.plan(self.cfg))
            self.runner.check_output()
        fs.append_jsonl(fs.join(self.cfg.output, "_job", f"claims-w{self.index}.jsonl"),
                        [{"shard": shard, "worker": self.index, "host": socket.gethostname(),
                          "pid": os.getpid(), "time": round(time.time(), 1)}])
        return self.runner.run_shards([shard], f"w{self.index}")


def run_ray(cfg: job.JobConfig) -> dict:
    """Run every unfinished shard on `cfg.workers` Ray workers; returns the summary."""
    try:
        import ray
    except ImportError:
        raise ValueError("executor ray needs the ray package: pip install '.[ray]'") from None
    start = time.time()
    job_plan = job.plan(cfg)
    fs.check_writable(cfg.output)  # validated first: a refused job leaves no --output behind
    fs.makedirs(fs.join(cfg.output, "_job"))
    done = job.finished_shards(cfg.output, range(job_plan.num_shards))
    todo = collections.deque(j for j in range(job_plan.num_shards) if j not in done)
    print(f"[synth] {len(job_plan.docs)} docs in {job_plan.num_shards} shards, {len(done)} "
          f"already done; {len(todo)} to run on {cfg.workers} Ray worker(s)", flush=True)
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    # One CPU each, spread over the cluster's nodes: on accelerator hosts, one worker per host.
    actor = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(ShardWorker)
    started = 0

    def new_worker():
        nonlocal started
        started += 1
        return actor.remote(cfg, started - 1)

    idle = [new_worker() for _ in range(min(cfg.workers, len(todo)))]
    running, attempts, costs = {}, collections.Counter(), []
    while todo or running:
        while idle and todo:
            worker, shard = idle.pop(), todo.popleft()
            running[worker.run_shard.remote(shard)] = (worker, shard)
        [ready], _ = ray.wait(list(running), num_returns=1)
        worker, shard = running.pop(ready)
        try:
            costs.append(ray.get(ready))
            idle.append(worker)
        except ray.exceptions.RayActorError as e:
            attempts[shard] += 1
            if attempts[shard] >= MAX_ATTEMPTS:
                raise RuntimeError(f"shard {shard}: its worker died {attempts[shard]} times; "
                                   f"last: {e}") from None
            print(f"[synth] a worker died running shard {shard}; retrying it on a new worker",
                  flush=True)
            todo.appendleft(shard)
            idle.append(new_worker())
    return job.write_summary(cfg, job_plan, _total_cost(costs), {
        "executor": "ray", "workers_started": started, "shards_retried": sum(attempts.values()),
        "shards_written_now": sum(len(c["written"]) for c in costs),
        "elapsed_s": round(time.time() - start, 1)})


def _total_cost(costs: list[dict]) -> dict:
    """The cost summary of several samplers' runs (their raw counts added up)."""
    from megadoc.synth import sampler

    total = sampler.Cost()
    for c in costs:
        for name, value in c["raw"].items():
            if name != "devices":
                setattr(total, name, getattr(total, name) + value)
        total.devices = c["raw"]["devices"]
    return total.summary()
