import math
import random

import pytest

from sessions.downsample import downsample_series, min_max_indices


def test_a_short_series_is_kept_whole():
    assert min_max_indices([0.5, 0.4, 0.3], 1000) == [0, 1, 2]


def test_missing_values_are_never_kept():
    assert min_max_indices([None, 1.0, math.nan, 2.0], 1000) == [1, 3]


def test_a_long_series_fits_in_max_points():
    values = [random.random() for _ in range(100_000)]
    kept = min_max_indices(values, 1000)
    assert 900 <= len(kept) <= 1000
    assert kept == sorted(set(kept))


def test_it_keeps_the_first_and_last_points():
    values = [float(i) for i in range(10_000)]
    kept = min_max_indices(values, 100)
    assert kept[0] == 0 and kept[-1] == 9_999


def test_a_single_spike_and_a_single_dip_survive():
    values = [1.0] * 100_000
    values[12_345] = 50.0  # a loss spike
    values[87_654] = -3.0  # a dip
    kept = min_max_indices(values, 1000)
    assert 12_345 in kept and 87_654 in kept


def test_the_extremes_of_every_bucket_are_kept():
    rng = random.Random(7)
    values = [rng.gauss(0, 1) for _ in range(5000)]
    kept = set(min_max_indices(values, 102))
    assert values.index(max(values)) in kept
    assert values.index(min(values)) in kept


def test_each_series_is_thinned_on_its_own():
    series = {"a": [float(i) for i in range(5000)], "b": [None] * 4999 + [1.0]}
    kept = downsample_series(series, 500)
    assert len(kept["a"]) <= 500 and kept["b"].tolist() == [4999]


def test_it_rejects_a_budget_below_two_points():
    with pytest.raises(ValueError, match="at least 2"):
        min_max_indices([1.0, 2.0, 3.0], 1)


def test_the_first_of_equal_extremes_is_kept():
    # Buckets of 4: [1, 0, 0, 1] and [2, 2, 3, 3].
    values = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert min_max_indices(values, 6) == [0, 1, 4, 6, 7]
