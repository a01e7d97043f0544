"""Optimizer, schedule, config checks, flags, fingerprint and TensorBoard records (no training)."""
import dataclasses
import json
import importlib
import struct

import google_crc32c
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from megadoc.models import llama, sharding
from megadoc.train import config, metrics, optimizer, tfevents
from train_fixtures import make_store


def test_schedule_warms_up_linearly_then_cosines_to_zero_at_the_last_step():
    f = optimizer.lr_schedule(config.OptimizerConfig(lr=2.0, weight_decay=0.0), 200)
    lrs = np.array([float(f(c)) for c in range(200)])  # lrs[c] is the lr of update c + 1
    np.testing.assert_allclose(lrs[:2], [1.0, 2.0])  # 1% of 200 = 2 warmup updates
    assert np.all(np.diff(lrs[2:]) < 0) and lrs[-1] == 0.0
    np.testing.assert_allclose(lrs[100], 1.0, atol=1e-6)  # half-way through the cosine


def test_adamw_decays_linear_weights_by_lr_times_wd_but_not_embedding_or_norms():
    """Levanter's reasonable_default: the token embedding and norms are not decayed; the untied
    output layer and every other linear weight are."""
    cfg = config.OptimizerConfig(lr=0.5, weight_decay=0.2, warmup_frac=0.0)
    opt = optimizer.make(cfg, 10**6)
    params = {"layers": {"attn_norm": jnp.ones((2, 3)), "q": jnp.ones((2, 3))}, "embed": jnp.ones((4, 3)),
              "final_norm": jnp.ones(3), "lm_head": jnp.ones((3, 4))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero_grads, opt.init(params), params)
    for name in ("embed", "final_norm"):
        assert float(jnp.abs(updates[name]).max()) == 0.0, name
    assert float(updates["layers"]["attn_norm"][0, 0]) == 0.0
    np.testing.assert_allclose(updates["layers"]["q"], -0.5 * 0.2, rtol=1e-5)  # decoupled, × lr
    np.testing.assert_allclose(updates["lm_head"], -0.5 * 0.2, rtol=1e-5)  # the output layer decays


def test_clip_by_global_norm_one():
    opt = optimizer.make(config.OptimizerConfig(lr=1.0, weight_decay=0.0, b1=0.0, b2=0.0,
                                                eps=0.0, warmup_frac=0.0), 10**6)
    p = {"w": jnp.zeros(4)}
    # After clipping to norm 1 and Adam with b1 = b2 = 0, the update is -sign(g) · lr.
    updates, _ = opt.update({"w": jnp.array([30.0, -40.0, 0.0, 0.0])}, opt.init(p), p)
    np.testing.assert_allclose(updates["w"][:2], [-1.0, 1.0], rtol=1e-5)


def test_differing_fields_names_what_changed_and_ignores_resumable_fields():
    m = llama.preset("tiny")
    a = config.TrainConfig(model=m, data=config.DataConfig(real="a"),
                           optimizer=config.OptimizerConfig(lr=1e-3, weight_decay=0.1), workdir="w")
    b = dataclasses.replace(a, workdir="other", mesh=(2, 2, 2), data=config.DataConfig(real="b", epochs=3),
                            optimizer=dataclasses.replace(a.optimizer, weight_decay=0.4))
    diffs = config.differing_fields(config.to_dict(a), config.to_dict(b))
    assert diffs == ["data.epochs", "optimizer.weight_decay"]


def test_training_presets_are_the_papers_batch_and_known_models():
    for name in ["150m", "300m", "600m", "1.5b"]:
        p = config.preset(name)
        assert p.global_batch == 64 and p.rows_per_device > 0
        llama.preset(p.model)
    with pytest.raises(ValueError, match="known: tiny, 150m"):
        config.preset("7b")


def test_fingerprint_is_the_same_on_any_layout_and_changes_with_any_token():
    tokens = np.random.default_rng(0).integers(0, 1000, (8, 33)).astype(np.int32)
    f = jax.jit(metrics.batch_fingerprint)
    ref = metrics.fingerprint_hex(f(tokens))
    for shape in [(8, 1, 1), (2, 4, 1), (1, 2, 4)]:
        mesh = sharding.make_mesh(*shape)
        assert metrics.fingerprint_hex(f(jax.device_put(tokens, sharding.batch_sharding(mesh)))) == ref
    swapped = tokens.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert metrics.fingerprint_hex(f(swapped)) != ref


def _event_class():
    """Event/Summary protos as TensorBoard defines them, built here to decode our records."""
    fd = descriptor_pb2.FileDescriptorProto(name="ev.proto", package="t", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    val = fd.message_type.add(name="Value")
    val.field.add(name="tag", number=1, type=F.TYPE_STRING)
    val.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT)
    summ = fd.message_type.add(name="Summary")
    summ.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".t.Value", label=F.LABEL_REPEATED)
    ev = fd.message_type.add(name="Event")
    ev.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE)
    ev.field.add(name="step", number=2, type=F.TYPE_INT64)
    ev.field.add(name="file_version", number=3, type=F.TYPE_STRING)
    ev.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".t.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_tensorboard_records_are_valid_tfrecords_of_scalar_events(tmp_path):
    w = tfevents.EventWriter(str(tmp_path))
    w.scalar("train/loss", 2.5, 7)
    w.scalar("eval/iid/loss", 3.25, 300)
    w.flush()
    data, events, pos = open(w.path, "rb").read(), [], 0
    masked = lambda b: struct.pack("<I", ((((c := google_crc32c.value(b)) >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
    Event = _event_class()
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert data[pos + 8:pos + 12] == masked(header)
        payload = data[pos + 12:pos + 12 + n]
        assert data[pos + 12 + n:pos + 16 + n] == masked(payload)
        events.append(Event.FromString(payload))
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert got == [(7, "train/loss", 2.5), (300, "eval/iid/loss", 3.25)]


def test_every_flag_reaches_the_config(tmp_path):
    from experiments import train as train_main
    real = make_store(str(tmp_path / "real"), 8, seq_len=16)
    argv = ["train", "--preset=tiny", f"--workdir={tmp_path}/w", f"--real={real}",
            "--synthetic=SYN", "--mix=0.5", "--epochs=3", "--seed=7", "--lr=0.02",
            "--weight_decay=1.6", "--warmup=0.05", "--global_batch=16", "--microbatches=2",
            "--remat=dots", "--nocross_document_attention", "--mesh=2,2,2", "--val=a=A", "--val=b=B",
            "--eval_every=5", "--eval_batch_size=4", "--checkpoint_every_steps=9",
            "--checkpoint_every_minutes=2.5", "--keep_checkpoints=4", "--log_every=3",
            "--peak_flops=1e12"]
    f = train_main.FLAGS
    f.unparse_flags()
    f(argv)
    c = train_main.build_config(f)
    assert (c.workdir, c.data.real, c.data.synthetic) == (f"{tmp_path}/w", real, "SYN")
    assert c.data == config.DataConfig(real=real, synthetic="SYN", mix=0.5, epochs=3, seed=7, global_batch=16)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.warmup_frac) == (0.02, 1.6, 0.05)
    assert (c.microbatches, c.model.remat, c.model.cross_document_attention) == (2, "dots", False)
    assert (c.model.vocab_size, c.model.max_seq_len, c.mesh) == (64, 16, (2, 2, 2))
    assert c.val == (("a", "A"), ("b", "B"))
    assert (c.eval_every, c.eval_batch_size, c.checkpoint_every_steps) == (5, 4, 9)
    assert (c.checkpoint_every_minutes, c.keep_checkpoints, c.log_every, c.peak_flops) == (2.5, 4, 3, 1e12)
    f.unparse_flags()
    f(["train", "--preset=150m", f"--workdir={tmp_path}/w", f"--real={real}"])
    c = train_main.build_config(f)
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.model.remat) == (3e-3, 0.8, "dots")
    assert (c.microbatches, c.rows_per_device) == (0, 4)  # the count follows from the mesh
    assert c.model.hidden == 512 and c.data.global_batch == 64
    f.unparse_flags()


@pytest.mark.parametrize("module,recipe", [("baseline", None), ("simple_rephrase", "simple"),
                                           ("stitched", "stitched"), ("latent_thoughts", "latent")])
def test_paper_experiment_modules_compose_the_train_flags(tmp_path, module, recipe):
    from absl import app
    from experiments import train as train_main
    mod = importlib.import_module(f"experiments.{module}")
    assert f"python -m experiments.{module} " in mod.__doc__
    f = train_main.FLAGS
    old = {k: f[k].default for k in mod.DEFAULTS}
    real = make_store(str(tmp_path / "real"), 8, seq_len=16)
    syn = make_store(str(tmp_path / "syn"), 8, seq_len=16, recipe=recipe or "simple")
    wrong = make_store(str(tmp_path / "wrong"), 8, seq_len=16, recipe="real")
    try:
        for k, v in mod.DEFAULTS.items():
            f.set_default(k, v)
        f.unparse_flags()
        f(["x", f"--workdir={tmp_path}/w", f"--real={real}"] + ([f"--synthetic={syn}"] if recipe else []))
        train_main.check_recipe(recipe)
        c = train_main.build_config()
        want = (768, mod.DEFAULTS["epochs"], mod.DEFAULTS["mix"], mod.DEFAULTS["lr"], mod.DEFAULTS["weight_decay"])
        assert (c.model.hidden, c.data.epochs, c.data.mix, c.optimizer.lr, c.optimizer.weight_decay) == want
        assert c.model.cross_document_attention and c.data.global_batch == 64
        f.unparse_flags()
        f(["x", f"--workdir={tmp_path}/w", f"--real={real}", f"--synthetic={wrong}"])
        with pytest.raises(app.UsageError, match="recipe 'real'" if recipe else "real data only"):
            train_main.check_recipe(recipe)
    finally:
        f.unparse_flags()
        for k, v in old.items():
            f.set_default(k, v)


def test_generations_flag_takes_the_published_optimum_and_explicit_flags_win(tmp_path):
    from absl import app
    from experiments import train as train_main
    from megadoc.data import store as store_lib
    f = train_main.FLAGS
    train_main.define_generations_flag()
    real = make_store(str(tmp_path / "real"), 8, seq_len=16)
    syn = make_store(str(tmp_path / "syn"), 8, seq_len=16, recipe="stitched")
    base = ["x", "--preset=300m", f"--workdir={tmp_path}/w", f"--real={real}", f"--synthetic={syn}"]
    try:
        f.unparse_flags()
        f([*base, "--generations=32"])
        train_main.apply_published("stitched")
        c = train_main.build_config()
        assert (c.data.epochs, c.optimizer.lr, c.optimizer.weight_decay, c.data.mix) == (32, 1e-3, 0.4, 0.9)
        f.unparse_flags()
        f([*base, "--generations=32", "--lr=3e-3"])
        train_main.apply_published("stitched")
        assert (f.lr, f.epochs, f.mix) == (3e-3, 32, 0.9)
        f.unparse_flags()
        f([*base, "--generations=3"])
        with pytest.raises(app.UsageError, match="published: 300m with \\[2, 4, 8, 16, 32\\]"):
            train_main.apply_published("stitched")
        meta = store_lib.open(syn).metadata
        (tmp_path / "syn" / store_lib.METADATA).write_text(json.dumps(dict(meta, max_generations=16)))
        f.unparse_flags()
        f([*base, "--generations=32"])
        with pytest.raises(app.UsageError, match="max_generations=16, but --published_generations=32"):
            train_main.check_recipe("stitched")
    finally:
        f.unparse_flags()


def test_paper_defaults_are_the_published_optima(tmp_path):
    """Marin experiments/data_efficiency: synth_data_regularized_baselines.py (real only, per
    size) and synth_data_eval_models.py (300m with synthetic data)."""
    from experiments import baseline, latent_thoughts, simple_rephrase, stitched
    from experiments import train as train_main
    point = lambda m: (m.DEFAULTS["mix"], m.DEFAULTS["epochs"], m.DEFAULTS["lr"], m.DEFAULTS["weight_decay"])  # noqa: E731
    assert point(simple_rephrase) == (0.75, 8, 3e-3, 0.8)
    assert point(stitched) == point(latent_thoughts) == (0.75, 16, 3e-3, 0.4)
    f = train_main.FLAGS
    real = make_store(str(tmp_path / "real"), 8, seq_len=16)
    old = {k: f[k].default for k in baseline.DEFAULTS}
    try:
        for k, v in baseline.DEFAULTS.items():
            f.set_default(k, v)
        for preset, want in [("150m", (16, 3e-3, 0.8)), ("300m", (16, 3e-3, 1.6)),
                             ("600m", (8, 1e-3, 3.2)), ("1.5b", (8, 1e-3, 3.2))]:
            f.unparse_flags()
            f(["x", f"--workdir={tmp_path}/w", f"--real={real}", f"--preset={preset}"])
            train_main.apply_preset_defaults(baseline.BY_PRESET)
            c = train_main.build_config()
            assert (c.data.epochs, c.optimizer.lr, c.optimizer.weight_decay) == want, preset
        f.unparse_flags()
        f(["x", f"--workdir={tmp_path}/w", f"--real={real}", "--preset=600m", "--epochs=4"])
        train_main.apply_preset_defaults(baseline.BY_PRESET)
        assert train_main.build_config().data.epochs == 4  # the command line wins
    finally:
        f.unparse_flags()
        for k, v in old.items():
            f.set_default(k, v)


def test_gradient_accumulation_matches_one_big_batch():
    from megadoc.train import step
    model = dataclasses.replace(llama.preset("tiny"), vocab_size=64, max_seq_len=16, layers=1,
                                dtype="float32")
    params = llama.init(model, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 17)), jnp.int32)
    batch = {"tokens": tokens, "segment_ids": jnp.ones_like(tokens)}
    mesh = sharding.make_mesh(1, 2, 1, devices=jax.devices()[:2])
    objective = step.language_model(model)
    out = {}
    for m in (1, 4):
        with jax.set_mesh(mesh):
            out[m] = jax.jit(lambda p, b: step.grads_and_loss(objective, p, None, b, m, mesh))(
                params, batch)
    np.testing.assert_allclose(out[4][0][0], out[1][0][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[4][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
