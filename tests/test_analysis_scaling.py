import math

import numpy as np
import pytest

from megadoc.analysis import scaling

# The four published points of the infinite-compute paper's data law (D in billions of tokens).
PAPER_D = [0.2097, 0.4194, 0.8389, 1.6777]
PAPER_L = [3.74974, 3.48073, 3.24516, 3.05917]


def test_reference_law_gives_the_papers_data_efficiencies():
    assert scaling.data_efficiency(3.1735, 3.74974) == pytest.approx(5.17, abs=0.005)
    assert scaling.data_efficiency(3.41, 3.5544) == pytest.approx(1.49, abs=0.005)
    law = scaling.REFERENCE_DATA_LAW
    assert (law.A, law.B, law.C) == (1.115, 0.258, 2.082)


def test_refitting_the_published_points_recovers_the_law():
    law = scaling.fit_power_law(PAPER_D, PAPER_L)
    assert law.A == pytest.approx(1.115, abs=0.005)
    assert law.B == pytest.approx(0.258, abs=0.002)
    assert law.C == pytest.approx(2.082, abs=0.005)
    assert 0 < law.C_stderr < 1
    np.testing.assert_allclose(law(PAPER_D), PAPER_L, atol=5e-3)  # the points scatter ~4e-3
    assert scaling.data_efficiency(3.1735, 3.74974, law) == pytest.approx(5.17, abs=0.05)


def test_fit_is_unit_free_and_inverse_round_trips():
    tokens = np.array(PAPER_D) * 1e9  # the same points in tokens instead of billions
    law = scaling.fit_power_law(tokens, PAPER_L)
    assert law.B == pytest.approx(0.258, abs=0.002)
    assert law.C == pytest.approx(2.082, abs=0.005)
    assert law.inverse(float(law(3e8))) == pytest.approx(3e8, rel=1e-6)


def test_fit_recovers_an_exact_law_and_its_asymptote():
    true = scaling.PowerLaw(A=0.9, B=0.7, C=1.3)
    k = np.arange(1, 9)
    law = scaling.fit_power_law(k, true(k))
    assert (law.A, law.B, law.C) == pytest.approx((0.9, 0.7, 1.3), abs=1e-4)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 3 points"):
        scaling.fit_power_law([1.0, 2.0], [3.0, 2.5])
    with pytest.raises(ValueError, match="x has 3 values but y has 2"):
        scaling.fit_power_law([1.0, 2.0, 3.0], [3.0, 2.5])
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_power_law([0.0, 2.0, 3.0], [3.0, 2.5, 2.4])


def test_loss_at_or_below_the_asymptote_has_no_data_efficiency():
    with pytest.raises(ValueError, match="data efficiency is undefined.*asymptote"):
        scaling.data_efficiency(2.0, 3.74974)
    with pytest.raises(ValueError, match="baseline_loss=2.082"):
        scaling.data_efficiency(3.0, 2.082)
    with pytest.raises(ValueError, match="below the law's asymptote"):
        scaling.REFERENCE_DATA_LAW.inverse(2.0)
    assert math.isnan(scaling.REFERENCE_DATA_LAW.C_stderr)
