"""Unconditional documents from trained students: the synthetic data of self-distillation (the
megadocs paper §5: "generated unconditionally from a previously trained model of the same
architecture and data") and of ensemble distillation (the infinite-compute paper).

Every document starts from the token that begins a document in the training stream (BOS, or EOS
for a tokenizer without one) and ends at EOS or after `max_new_tokens`. With K members the next
token is drawn from softmax(mean of the K members' logits), each member keeping its own KV rows:
the synthesis job's sampler (`sampler.Sampler(members=K)`), its slots spread over this host's
devices, and its shard writer.

Output: the synthesis job's layout and records (megadoc/synth/job.py): shard-NNNNN.jsonl of
{"doc_id": "unconditional-<i>", "method": "unconditional", "sample": 0, "offset": None, "text",
"finish_reason", "seed", "generator", "template": None}, checksummed done markers that record what
produced them, _job/config.json and summary.json (with the cost). Document i draws from the
stream of key i alone, so a restart redoes only the shards without an intact marker and writes
the same text.
"""
from __future__ import annotations

import dataclasses
import json
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc import fs
from megadoc.models import llama, sharding
from megadoc.synth import generator as generator_lib
from megadoc.synth import job as job_lib
from megadoc.synth import sampler as sampler_lib

METHOD = "unconditional"


@dataclasses.dataclass(frozen=True)
class UnconditionalConfig:
    output: str
    generator: str  # the members' workdirs, comma-separated (recorded with every record)
    num_documents: int
    """unconditional: documents to draw"""
    max_new_tokens: int = 1024
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 64  # documents decoded together
    shard_size: int = 256  # documents per output shard

    def __post_init__(self):
        for name in ("num_documents", "max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


def run(cfg: UnconditionalConfig, model_config: llama.LlamaConfig, stacked: dict,
        tokenizer) -> dict:
    """Sample (or resume) every shard; returns the summary also written to summary.json."""
    start = time.time()
    fs.check_writable(cfg.output)
    fs.makedirs(fs.join(cfg.output, "_job"))
    members = jax.tree.leaves(stacked)[0].shape[0]
    sampling = {"temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens}
    produced_by = {"method": METHOD, "generator": cfg.generator, "members": members,
                   "generator_digest": generator_lib.digest(model_config, stacked),
                   "tokenizer_fingerprint": tokenizer.fingerprint, "sampling": sampling,
                   "seed": cfg.seed}
    job_lib.check_job_config(fs.join(cfg.output, "_job", "config.json"), dict(
        produced_by, num_documents=cfg.num_documents, shard_size=cfg.shard_size))
    num_shards = -(-cfg.num_documents // cfg.shard_size)
    shard_docs = {j: range(j * cfg.shard_size, min((j + 1) * cfg.shard_size, cfg.num_documents))
                  for j in range(num_shards)}
    done = job_lib.finished_shards(cfg.output, range(num_shards), produced_by)
    todo = [j for j in range(num_shards) if j not in done]
    print(f"[synth] {cfg.num_documents} unconditional documents from {members} member(s) in "
          f"{num_shards} shards, {len(done)} already done", flush=True)
    mesh = sharding.make_mesh(devices=jax.local_devices())  # slots over this host's devices
    params = stacked if members > 1 else jax.tree.map(lambda x: x[0], stacked)
    sampler = sampler_lib.Sampler(
        model_config, jax.device_put(params, NamedSharding(mesh, P())),
        sampler_lib.Settings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             stop_tokens=(tokenizer.eos_id,)),
        batch_size=cfg.batch_size, seed=cfg.seed, mesh=mesh, members=members)
    writer = job_lib.ShardWriter(cfg.output, {j: len(shard_docs[j]) for j in todo}, produced_by)
    first = tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id
    requests = (sampler_lib.Request([first], key=i, tag=job_lib.Origin(j, i - shard_docs[j][0],
                                                                       f"{METHOD}-{i:08d}"))
                for j in todo for i in shard_docs[j])
    for c in sampler.run(requests):
        origin = c.request.tag
        record = dict(doc_id=origin.doc_id, method=METHOD, sample=0, offset=None,
                      text=tokenizer.decode(c.tokens), finish_reason=c.finish_reason,
                      seed=cfg.seed, generator=cfg.generator, template=None)
        writer.add(origin.shard, (origin.position,), record, 1, len(c.tokens))
    summary = job_lib.summary(cfg.output, num_shards, sampler.cost.summary(), {
        "method": METHOD, "members": members, "records_total": cfg.num_documents,
        "shards_written_now": len(writer.written), "elapsed_s": round(time.time() - start, 1)})
    fs.write_text(fs.join(cfg.output, "summary.json"), json.dumps(summary, indent=1))
    print("[synth] summary " + json.dumps(summary), flush=True)
    return summary
