from __future__ import annotations

import gc
import os
import sys

from celery import Celery
from celery.signals import worker_init, worker_ready
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")


def _limit_native_threads(count: int) -> None:
    """Cap BLAS and OpenMP threads, unless the environment already does.

    They default to one thread per core for each call, and a worker trains
    several runs at once, one per thread: with two runs on two cores each matrix
    product spun up threads that waited for each other, and small models slowed
    down even alone (mlp/digits 0.76 s with the default, 0.40 s with one thread,
    bench/NOTES.md).
    """
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(count))


def _blas_threads() -> int:
    # Read here, not from the settings: importing them this early would fix them
    # before mltrack/asgi.py sets the web process's defaults (DB_CONN_MAX_AGE).
    value = os.getenv("MLTRACK_WORKER_BLAS_THREADS") or "1"
    if not value.isdigit() or int(value) < 1:
        raise ImproperlyConfigured(
            f"MLTRACK_WORKER_BLAS_THREADS must be a whole number >= 1, not {value!r}"
        )
    return int(value)


# Here, when the worker (or any process) first imports mltrack: the libraries
# read these once, as they load, and the worker's task modules load NumPy before
# any of Celery's signals (sessions.tasks -> metrics -> downsample). The web
# process gets the same cap; its NumPy work (thinning charts) is single-threaded.
_limit_native_threads(_blas_threads())

app = Celery("mltrack")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _watch_for_lost_workers(**kwargs: object) -> None:
    # Every worker checks for sessions whose worker died, so no extra process (beat)
    # has to be remembered; the check is a conditional UPDATE, safe to run twice.
    from sessions.tasks import start_lost_worker_watch

    start_lost_worker_watch()


@worker_ready.connect
def _keep_startup_objects_out_of_collections(**kwargs: object) -> None:
    # After Django, Celery and scikit-learn are loaded the worker holds ~180,000
    # objects for life; each full collection walked them all, ~85 ms in the middle
    # of a run (one in every few 300-epoch runs of 5 ms epochs, bench/NOTES.md).
    # Load scikit-learn now and leave those objects out of every collection.
    from sessions import training

    training.import_libraries()
    gc.freeze()


@worker_init.connect
def _train_below_the_web_process(**kwargs: object) -> None:
    # Training is batch work that can keep every core busy; the web process and
    # Redis must not queue behind it, or live events arrive late. The pool's
    # threads (or processes) inherit this niceness.
    from django.conf import settings

    os.nice(settings.MLTRACK_WORKER_NICENESS)
    # Each epoch's push is a PUBLISH from its training thread; after the reply it
    # needs the GIL back from the other runs' threads, which by default may hold
    # it 5 ms each. A shorter switch interval keeps live events prompt: with 10
    # runs in one worker, 500 us gave a 47 ms median and 218-273 ms p99 from an
    # epoch's end to its viewer on SQLite, 100 us 25 / 86 ms (bench/NOTES.md). It
    # costs only when threads compete: a run alone is never forced to switch.
    sys.setswitchinterval(settings.MLTRACK_WORKER_SWITCH_MICROSECONDS / 1e6)
