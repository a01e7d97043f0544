import collections

import numpy as np
import pytest

from megadoc.data.schedule import REAL, SYNTHETIC, MixSchedule


def all_batches(s):
    return [s.batch_indices(step) for step in range(s.num_steps)]


@pytest.mark.parametrize("num_real,batch,mix,epochs", [(50, 8, 0.5, 3), (48, 8, 0.25, 2), (7, 4, 0.0, 5)])
def test_real_windows_seen_exactly_epochs_times_and_mix_is_exact(num_real, batch, mix, epochs):
    s = MixSchedule(num_real, 13, batch, mix, epochs, seed=1)
    assert s.synthetic_per_batch == round(mix * batch)
    assert s.num_steps == -(-epochs * num_real // s.real_per_batch)
    real_rows = []
    for streams, windows in all_batches(s):
        assert (streams == SYNTHETIC).sum() == s.synthetic_per_batch
        real_rows.append(windows[streams == REAL])
    views = collections.Counter(np.concatenate(real_rows).tolist())
    assert len(views) == num_real
    # the last batch wraps into the start of the same permutation: exactly num_wrapped extras
    extra = {w for w, n in views.items() if n == epochs + 1}
    assert set(views.values()) <= {epochs, epochs + 1} and len(extra) == s.num_wrapped
    first_batches = np.concatenate(real_rows[:max(1, -(-s.num_wrapped // s.real_per_batch))]).tolist()
    assert extra <= set(first_batches)


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


def test_rounding_is_half_up_and_bad_settings_are_refused():
    assert MixSchedule(10, 10, 4, 0.625, 1, 0).synthetic_per_batch == 3  # 2.5 -> 3, not 2
    assert MixSchedule(10, 0, 8, 0.0, 1, 0).batch_indices(0)[0].tolist() == [REAL] * 8
    with pytest.raises(ValueError, match="synthetic store is empty"):
        MixSchedule(10, 0, 8, 0.5, 1, 0)
    with pytest.raises(ValueError, match="no real window"):
        MixSchedule(10, 10, 4, 0.9, 1, 0)
    with pytest.raises(IndexError):
        MixSchedule(10, 10, 4, 0.5, 1, 0).batch_indices(5)
