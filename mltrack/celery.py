from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mltrack.settings")

app = Celery("mltrack")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _watch_for_lost_workers(**kwargs: object) -> None:
    # Every worker checks for sessions whose worker died, so no extra process (beat)
    # has to be remembered; the check is a conditional UPDATE, safe to run twice.
    from sessions.tasks import start_lost_worker_watch

    start_lost_worker_watch()


@worker_init.connect
def _train_below_the_web_process(**kwargs: object) -> None:
    # Training is batch work that can keep every core busy; the web process and
    # Redis must not queue behind it, or live events arrive late. The pool's
    # threads (or processes) inherit this niceness.
    from django.conf import settings

    os.nice(settings.MLTRACK_WORKER_NICENESS)


@worker_init.connect
def _push_from_one_loop(**kwargs: object) -> None:
    # A worker pushes every epoch: keep its Redis connections (events.py). Sent in
    # the main process before the pool starts, so it holds for every pool: threads
    # share the flag, prefork children inherit it.
    from sessions import events

    events.push_from_one_loop()
