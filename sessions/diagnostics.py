"""Warnings about a run's loss curves that do not stop it. Knows nothing about Django.

`diagnose()` reads the losses so far and returns the conditions that hold now;
`merge()` adds newly seen ones to those already flagged on the session, so a
warning stays visible (with the epoch it was first seen) after the curve moves on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, TypedDict

# Overfitting: validation loss rose this many epochs in a row while training fell.
OVERFIT_PATIENCE = 3
# Plateau: the best validation loss of the last PLATEAU_WINDOW epochs is not better
# than the best before them by at least PLATEAU_MIN_DELTA (relative), as in Keras'
# ReduceLROnPlateau.
PLATEAU_WINDOW = 5
PLATEAU_MIN_DELTA = 1e-3


class Diagnostic(TypedDict):
    kind: str  # "overfitting" or "plateau"
    epoch: int  # the epoch at which it was first seen
    message: str


def _finite(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and v == v for v in values)


def is_overfitting(
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    patience: int = OVERFIT_PATIENCE,
) -> bool:
    if len(val_loss) < patience + 1 or len(train_loss) < patience + 1:
        return False
    val = val_loss[-patience - 1 :]
    train = train_loss[-patience - 1 :]
    if not (_finite(val) and _finite(train)):
        return False
    val_rising = all(
        later > earlier for earlier, later in zip(val[:-1], val[1:], strict=True)
    )
    return val_rising and train[-1] < train[0]


def is_plateau(
    val_loss: Sequence[float],
    window: int = PLATEAU_WINDOW,
    min_delta: float = PLATEAU_MIN_DELTA,
) -> bool:
    if len(val_loss) < window + 1 or not _finite(val_loss):
        return False
    best_before = min(val_loss[:-window])
    best_recent = min(val_loss[-window:])
    return best_recent > best_before - abs(best_before) * min_delta


def diagnose(
    train_loss: Sequence[float], val_loss: Sequence[float]
) -> list[Diagnostic]:
    """The conditions that hold after the last epoch of these loss curves."""
    return _found(
        len(val_loss), is_overfitting(train_loss, val_loss), is_plateau(val_loss)
    )


def _found(epoch: int, overfitting: bool, plateau: bool) -> list[Diagnostic]:
    if overfitting:
        return [
            Diagnostic(
                kind="overfitting",
                epoch=epoch,
                message=(
                    f"Validation loss has risen for {OVERFIT_PATIENCE} epochs while "
                    "training loss fell: the model is memorizing the training data. "
                    "Consider stopping, more regularization or more data."
                ),
            )
        ]
    if plateau:
        return [
            Diagnostic(
                kind="plateau",
                epoch=epoch,
                message=(
                    f"Validation loss has not improved for {PLATEAU_WINDOW} epochs. "
                    "More epochs are unlikely to help; try another learning rate "
                    "or model."
                ),
            )
        ]
    return []


class LossWatch:
    """diagnose() for curves that grow one epoch at a time, at the same small cost
    every epoch: diagnose() reads the whole curve, so a trainer calling it after
    every epoch spent O(epochs) on it each time (~1 ms an epoch by epoch 20,000).
    It keeps only the tails the checks read, the best validation loss before the
    plateau window, and whether every validation loss so far was finite."""

    def __init__(self) -> None:
        self.epochs = 0
        self.train: deque[float] = deque(maxlen=OVERFIT_PATIENCE + 1)
        self.val: deque[float] = deque(maxlen=OVERFIT_PATIENCE + 1)
        self.recent: deque[float] = deque(maxlen=PLATEAU_WINDOW)
        self.best_before = math.inf
        self.all_finite = True

    def add(self, train_loss: float, val_loss: float) -> list[Diagnostic]:
        """Take one more epoch's losses; return diagnose() of the curves so far."""
        self.epochs += 1
        self.train.append(train_loss)
        self.val.append(val_loss)
        if len(self.recent) == PLATEAU_WINDOW and self.all_finite:
            self.best_before = min(self.best_before, self.recent[0])
        self.recent.append(val_loss)
        self.all_finite = self.all_finite and _finite([val_loss])
        plateau = (
            self.epochs >= PLATEAU_WINDOW + 1
            and self.all_finite
            and is_plateau([self.best_before, *self.recent])
        )
        return _found(
            self.epochs, is_overfitting(list(self.train), list(self.val)), plateau
        )


def merge(
    flagged: Sequence[Diagnostic], found: Sequence[Diagnostic]
) -> list[Diagnostic]:
    """`flagged` plus the kinds in `found` that were not flagged yet."""
    kinds = {d["kind"] for d in flagged}
    return [*flagged, *(d for d in found if d["kind"] not in kinds)]
