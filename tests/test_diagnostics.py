"""The loss-curve diagnostics on their own: no Django, no training."""

import random

from sessions import diagnostics


def kinds(train, val):
    return [d["kind"] for d in diagnostics.diagnose(train, val)]


def test_rising_validation_loss_while_training_loss_falls_is_overfitting():
    train = [1.0, 0.8, 0.6, 0.4, 0.3]
    val = [1.0, 0.9, 0.95, 1.0, 1.1]
    assert kinds(train, val) == ["overfitting"]
    flagged = diagnostics.diagnose(train, val)[0]
    assert flagged["epoch"] == 5 and "Validation loss has risen" in flagged["message"]


def test_a_validation_loss_that_rises_only_twice_is_not_yet_overfitting():
    assert kinds([1.0, 0.8, 0.6, 0.4], [1.0, 0.9, 0.95, 1.0]) == []


def test_both_losses_rising_is_not_overfitting():
    assert "overfitting" not in kinds([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8])


def test_no_improvement_for_the_window_is_a_plateau():
    val = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert kinds(val, val) == ["plateau"]


def test_steady_improvement_is_no_plateau():
    val = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert kinds(val, val) == []


def test_a_short_or_non_finite_history_flags_nothing():
    assert kinds([], []) == []
    nan = float("nan")
    assert kinds([1, 0.8, 0.6, nan], [1, 1.1, 1.2, nan]) == []


def test_merge_keeps_the_first_sighting_of_each_kind():
    first = diagnostics.diagnose([1.0, 0.8, 0.6, 0.4], [1.0, 1.1, 1.2, 1.3])
    later = diagnostics.diagnose([1.0, 0.8, 0.6, 0.4, 0.3], [1.0, 1.1, 1.2, 1.3, 1.4])
    merged = diagnostics.merge(first, later)
    assert merged == first and merged[0]["epoch"] == 4


def test_loss_watch_says_what_diagnose_says_after_every_epoch():
    rng = random.Random(8)
    odd = [float("nan"), float("inf")]
    for _ in range(200):
        watch = diagnostics.LossWatch()
        train, val = [], []
        for _ in range(rng.randint(0, 30)):
            # Few distinct values, so ties, rises and plateaus all happen.
            train.append(rng.choice([1.0, 0.9, 0.8, 0.7, 0.5, float("inf")]))
            val.append(rng.choice([1.2, 1.0, 0.9, 0.8, 0.6, 0.5] * 20 + odd))
            assert watch.add(train[-1], val[-1]) == diagnostics.diagnose(train, val)
