"""Read a session's epochs for charts and exports without building model instances.

A 100,000-epoch session must open as fast as a short one, so rows come from
`values_list` and only the points a chart will draw become dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from sessions.downsample import downsample_series
from sessions.models import STANDARD_METRICS, EpochMetric, TrainingSession

CHART_MAX_POINTS = 1000
_COLUMNS = ("epoch", *STANDARD_METRICS, "duration", "created", "extra")


def _in_range(
    rows: QuerySet[EpochMetric], first: int | None, last: int | None
) -> QuerySet[EpochMetric]:
    if first is not None:
        rows = rows.filter(epoch__gte=first)
    if last is not None:
        rows = rows.filter(epoch__lte=last)
    return rows.order_by("epoch")


def epoch_tuples(
    rows: QuerySet[EpochMetric], first: int | None = None, last: int | None = None
) -> Iterator[tuple]:
    """(epoch, *STANDARD_METRICS, duration, created, extra) in epoch order."""
    return _in_range(rows, first, last).values_list(*_COLUMNS).iterator(chunk_size=5000)


def _row(values: tuple, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    epoch, *standard, duration, created, extra = values
    metrics = dict(zip(STANDARD_METRICS, standard, strict=True))
    metrics.update(extra)
    if names is not None:
        metrics = {name: metrics[name] for name in names if name in metrics}
    return {
        "epoch": epoch,
        "metrics": metrics,
        "duration": duration,
        "time": created.isoformat() if created else None,
    }


def chart_rows(
    rows: QuerySet[EpochMetric],
    first: int | None = None,
    last: int | None = None,
    max_points: int | None = None,
) -> dict[str, Any]:
    """The epochs of `rows` in [first, last] as API rows, at most `max_points`
    per series.

    A thinned row carries only the metrics chosen at that epoch, so every series
    keeps its own spikes and dips yet has at most `max_points` points.
    """
    rows = _in_range(rows, first, last)
    # Only the numbers first: timestamps and JSON cost far more to convert, and
    # are needed for the chosen epochs only.
    numbers = list(rows.values_list("epoch", *STANDARD_METRICS).iterator(10_000))
    if max_points is None or len(numbers) <= max_points:
        return {
            "count": len(numbers),
            "downsampled": False,
            "epochs": [_row(values) for values in rows.values_list(*_COLUMNS)],
        }

    epochs = [values[0] for values in numbers]
    series: dict[str, list[Any]] = {
        name: [values[i + 1] for values in numbers]
        for i, name in enumerate(STANDARD_METRICS)
    }
    # Extra metrics come from external runs; most sessions have none.
    extras = dict(rows.exclude(extra={}).values_list("epoch", "extra"))
    for name in sorted({name for extra in extras.values() for name in extra}):
        if name not in series:
            series[name] = [extras.get(epoch, {}).get(name) for epoch in epochs]
    chosen: dict[int, list[str]] = {}
    for name, indices in downsample_series(series, max_points).items():
        for index in indices:
            chosen.setdefault(epochs[index], []).append(name)
    details: dict[int, tuple] = {}
    wanted = sorted(chosen)
    for start in range(0, len(wanted), 500):
        batch = wanted[start : start + 500]
        for epoch, duration, created in rows.filter(epoch__in=batch).values_list(
            "epoch", "duration", "created"
        ):
            details[epoch] = (duration, created)
    result = []
    for index, epoch in enumerate(epochs):
        if epoch not in chosen:
            continue
        duration, created = details.get(epoch, (None, None))
        metrics = {name: series[name][index] for name in chosen[epoch]}
        result.append(
            {
                "epoch": epoch,
                "metrics": metrics,
                "duration": duration,
                "time": created.isoformat() if created else None,
            }
        )
    return {"count": len(numbers), "downsampled": True, "epochs": result}


def csv_lines(session: TrainingSession) -> Iterator[str]:
    """The session's metrics as CSV lines, header first, one epoch per line."""
    import csv
    import io

    extra_names = sorted(
        {
            name
            for extra in session.epochs.values_list("extra", flat=True).iterator(
                chunk_size=5000
            )
            for name in extra
            if name not in STANDARD_METRICS
        }
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(["epoch", *STANDARD_METRICS, *extra_names, "duration", "time"])
    for values in epoch_tuples(session.epochs.all()):
        epoch, *standard, duration, created, extra = values
        extras = [extra.get(name) for name in extra_names]
        cells = [epoch, *standard, *extras, duration, created.isoformat()]
        yield line(["" if cell is None else cell for cell in cells])


def json_chunks(session: TrainingSession) -> Iterator[str]:
    """The session and all its epochs as one JSON document, written in pieces."""
    import json

    head = json.dumps({"session": session.as_dict()})[:-1]
    yield head + ', "epochs": ['
    separator = ""
    for values in epoch_tuples(session.epochs.all()):
        yield separator + json.dumps(_row(values))
        separator = ",\n"
    yield "]}\n"
