"""The conditional objective: trained through the one loop from --init on a pair store, its loss
is the next-token loss over x2's tokens only, computed here by hand; a masked store is refused
where its mask would be ignored."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from megadoc.data import pairs as pairs_lib
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import hf, llama
from megadoc.train import config as config_lib
from megadoc.train import loop
from megadoc.train import step as step_lib
from knowledge_fixtures import make_hf_model


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("masked")
    model = make_hf_model(str(d / "base"), max_seq_len=64)
    texts = ["The old house stood at the end of the lane.",
             "At the lane's end there was an old house.",
             "Nobody had lived there for years, the villagers said.",
             "For years, said the villagers, the house had been empty.",
             "A light was seen in the window one night in winter.",
             "One winter night someone saw a light in its window.",
             "The children dared each other to knock on the door.",
             "Knocking on that door became the children's dare."]
    (d / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                          for i, t in enumerate(texts)))
    (d / "pairs.jsonl").write_text("".join(
        json.dumps({"x1": f"d{i}", "x2": f"d{i ^ 1}", "score": 0.9}) + "\n" for i in range(8)))
    pairs_lib.build(pairs_lib.PairStoreConfig(
        docs=str(d / "docs.jsonl"), pairs=str(d / "pairs.jsonl"), tokenizer=model, seq_len=63,
        output=str(d / "pairs")))
    return {"model": model, "store": str(d / "pairs"), "dir": d}


def _config(setup, workdir, **kw):
    model, _ = hf.load(setup["model"])
    return config_lib.TrainConfig(
        model=model, init=setup["model"], workdir=str(workdir),
        data=config_lib.DataConfig(real=setup["store"], epochs=1, global_batch=8),
        optimizer=config_lib.OptimizerConfig(lr=1e-3, weight_decay=0.0),
        checkpoint_every_minutes=0, **kw)


def _hand_loss(setup) -> float:
    """-log p(x2 token | everything before it), averaged over the x2 tokens (and x2's EOS) of
    every pair, found from the window layout: after the separator EOS BOS, up to the next EOS."""
    config, params = hf.load(setup["model"])
    tokenizer = tokenizer_lib.load(setup["model"])
    sep = pairs_lib.separator(tokenizer)
    tokens = store_lib.open(setup["store"]).read(np.arange(8))["tokens"]
    logits = llama.forward(config, params, jnp.asarray(tokens[:, :-1]))
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    losses = []
    for r, row in enumerate(tokens.tolist()):
        start = next(i for i in range(len(row)) if row[i:i + len(sep)] == sep) + len(sep)
        end = row.index(tokenizer.eos_id, start)  # x2's EOS, a target too
        losses += [-logp[r, t - 1, row[t]] for t in range(start, end + 1)]
    return float(np.mean(losses))


def test_first_loss_is_the_hand_computed_loss_over_x2_tokens(pair_store, tmp_path):
    summary = loop.train(_config(pair_store, tmp_path / "run"))
    assert summary["status"] == "finished" and summary["final_step"] == 1
    assert summary["config"]["objective"] == "masked_language_model"
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    hand = _hand_loss(pair_store)
    assert first["loss"] == pytest.approx(hand, rel=2e-3)
    config, params = hf.load(pair_store["model"])  # the unmasked loss is another number
    batch = store_lib.open(pair_store["store"]).read(np.arange(8))
    unmasked = float(step_lib.mean_loss(config, params, batch["tokens"], batch["segment_ids"]))
    assert abs(unmasked - hand) > 0.05


def test_a_masked_store_is_refused_where_its_mask_would_be_ignored(pair_store, tmp_path):
    cfg = _config(pair_store, tmp_path / "lm")
    with pytest.raises(ValueError, match="a loss mask, but the objective reads"):
        loop.train(cfg, step_lib.language_model(cfg.model))
    cfg = _config(pair_store, tmp_path / "val", val=(("pairs", pair_store["store"]),))
    with pytest.raises(ValueError, match="loss-masked store; validation scores every token"):
        loop.train(cfg)
