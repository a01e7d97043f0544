import collections
import math

import numpy as np
import pytest

from megadoc.data.schedule import REAL, SYNTHETIC, MixSchedule


def all_batches(s):
    return [s.batch_indices(step) for step in range(s.num_steps)]


@pytest.mark.parametrize("num_real,batch,mix,epochs",
                         [(50, 8, 0.5, 3), (48, 8, 0.25, 2), (7, 4, 0.0, 5), (61, 10, 0.7, 3), (30, 4, 0.9, 2)])
def test_real_windows_seen_exactly_epochs_times_and_mix_is_exact(num_real, batch, mix, epochs):
    s = MixSchedule(num_real, 13, batch, mix, epochs, seed=1)
    assert s.num_steps == math.ceil(epochs * num_real / ((1 - mix) * batch) - 1e-9)
    real_rows, synthetic_so_far = [], 0
    for step, (streams, windows) in enumerate(all_batches(s)):
        synthetic_so_far += (streams == SYNTHETIC).sum()
        assert synthetic_so_far == math.floor(mix * batch * (step + 1) + 1e-9)  # exact at every step
        real_rows.append(windows[streams == REAL])
    views = collections.Counter(np.concatenate(real_rows).tolist())
    assert len(views) == num_real
    # the last batch wraps into the start of the same permutation: exactly num_wrapped extras
    extra = {w for w, n in views.items() if n == epochs + 1}
    assert set(views.values()) <= {epochs, epochs + 1} and len(extra) == s.num_wrapped
    batches_to_cover = np.searchsorted(np.cumsum([len(r) for r in real_rows]), s.num_wrapped) + 1
    assert extra <= set(np.concatenate(real_rows[:batches_to_cover]).tolist())


def test_one_permutation_reused_every_epoch_and_synthetic_cycles():
    s = MixSchedule(12, 5, 6, 0.5, 3, seed=7)  # 3 real per batch: 4 steps per epoch
    batches = [sorted(w[st == REAL]) for st, w in all_batches(s)]
    assert batches[:4] == batches[4:8] == batches[8:12]  # the same order every epoch
    assert sorted(sum(batches[:4], [])) == list(range(12))
    assert batches[0] != [0, 1, 2]  # permuted, not in store order
    synthetic = np.concatenate([w[st == SYNTHETIC] for st, w in all_batches(s)])
    assert sorted(synthetic[:15]) == sorted(list(range(5)) * 3)  # cycles through all 5


def test_batch_is_a_pure_function_of_its_inputs():
    a = MixSchedule(100, 40, 16, 0.75, 2, seed=3)
    b = MixSchedule(100, 40, 16, 0.75, 2, seed=3)
    for step in (a.num_steps - 1, 0, 5):  # any order, fresh objects
        for x, y in zip(a.batch_indices(step), b.batch_indices(step)):
            np.testing.assert_array_equal(x, y)
    other = MixSchedule(100, 40, 16, 0.75, 2, seed=4)
    assert not np.array_equal(a.batch_indices(0)[1], other.batch_indices(0)[1])
    # synthetic rows sit at seeded, step-dependent slots, not a fixed block
    assert not np.array_equal(a.batch_indices(0)[0], a.batch_indices(1)[0])


def test_paper_scale_run_length_and_realised_fraction():
    """B = 64 and mix 0.9 over 4 epochs of 4,973 real windows: ceil(4·4973/6.4) steps, not the
    3,316 that rounding 57.6 synthetic windows per batch up to 58 costs."""
    s = MixSchedule(4973, 100_000, 64, 0.9, 4, seed=0)
    assert s.num_steps == 3109
    counts = s.counts()
    assert abs(counts["synthetic_fraction"] - 0.9) < 1e-3
    assert counts["real_windows"] == 4 * 4973 + s.num_wrapped and 0 <= s.num_wrapped < 64
    assert counts["synthetic_windows"] + counts["real_windows"] == 64 * 3109
    per_batch = {int((s.batch_indices(step)[0] == SYNTHETIC).sum()) for step in range(0, 3109, 7)}
    assert per_batch == {57, 58}


def test_bad_settings_are_refused():
    assert MixSchedule(10, 0, 8, 0.0, 1, 0).batch_indices(0)[0].tolist() == [REAL] * 8
    with pytest.raises(ValueError, match="synthetic store is empty"):
        MixSchedule(10, 0, 8, 0.5, 1, 0)
    with pytest.raises(ValueError, match="mix must be in"):
        MixSchedule(10, 10, 4, 1.5, 1, 0)
    with pytest.raises(ValueError, match="synthetic store is empty"):
        MixSchedule(10, 0, 4, 1.0, 1, 0)
    with pytest.raises(IndexError):
        MixSchedule(10, 10, 4, 0.5, 1, 0).batch_indices(5)


@pytest.mark.parametrize("num_synthetic,batch,epochs", [(20, 4, 3), (23, 8, 2), (5, 8, 1)])
def test_synthetic_only_reads_no_real_row_and_counts_epochs_on_the_synthetic_stream(
        num_synthetic, batch, epochs):
    """mix = 1 (Appendix D.1's "no real data"): the realised windows are the synthetic stream
    seen `epochs` times (plus the last batch's wrap), and not one real window."""
    s = MixSchedule(10, num_synthetic, batch, 1.0, epochs, seed=2)
    assert s.num_steps == math.ceil(epochs * num_synthetic / batch)
    batches = all_batches(s)
    assert all((streams == SYNTHETIC).all() for streams, _ in batches)
    views = collections.Counter(np.concatenate([w for _, w in batches]).tolist())
    assert sorted(views) == list(range(num_synthetic))
    assert sum(views.values()) == epochs * num_synthetic + s.num_wrapped
    assert set(views.values()) <= {epochs, epochs + 1, epochs + 2}  # a wrap may exceed one pass
    assert 0 <= s.num_wrapped < batch
    counts = s.counts()
    assert counts["real_windows"] == 0 and counts["synthetic_fraction"] == 1.0
    assert counts["synthetic_windows"] == batch * s.num_steps
    assert counts["wrapped_windows"] == s.num_wrapped
