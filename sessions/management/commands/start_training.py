from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils.timezone import now

from sessions import catalog, events
from sessions.forms import StartTrainingForm
from sessions.models import TrainingSession

POLL_SECONDS = 0.5
# Without a terminal (CI logs, pipes) print a progress line at most this often.
PLAIN_LINE_SECONDS = 5.0

# Exit codes of --wait besides 0 (completed); 1 is bad input, 2 a usage error.
EXIT_FAILED = 3
EXIT_STOPPED = 4
EXIT_DETACHED = 130  # Ctrl-C without stopping the run, as shells report SIGINT


class Command(BaseCommand):
    help = (
        "Queue a training session like the page and the API do, and print its id and "
        "page. With --wait, follow it with a progress bar until it ends; exit 0 when "
        f"it completed, {EXIT_FAILED} when it failed, {EXIT_STOPPED} when it was "
        f"stopped, {EXIT_DETACHED} after Ctrl-C without stopping it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "model_type", metavar="MODEL", help=", ".join(catalog.MODEL_TYPES)
        )
        parser.add_argument(
            "--dataset", help=f"{', '.join(catalog.DATASETS)} (default digits)"
        )
        parser.add_argument(
            "--epochs", help=f"default {catalog.DEFAULT_EPOCHS}", metavar="N"
        )
        parser.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A model or data set parameter; repeat for more. VALUE is read as "
            "JSON when it parses (5, 0.1, true, null), else as text (sqrt, 64,32).",
        )
        parser.add_argument(
            "--csv",
            metavar="PATH",
            help="A CSV file to train on, with --dataset csv and --target-column",
        )
        parser.add_argument(
            "--target-column", metavar="NAME", help="The CSV column holding the classes"
        )
        parser.add_argument(
            "--user",
            help="Owner of the session (default: the only superuser)",
        )
        parser.add_argument(
            "--wait", action="store_true", help="Follow the run until it ends"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        owner = self.owner(options["user"])
        with ExitStack() as opened:
            files = {}
            if options["csv"]:
                path = Path(options["csv"])
                if not path.is_file():
                    raise CommandError(f"--csv: no such file {str(path)!r}")
                handle = opened.enter_context(path.open("rb"))
                files["csvFile"] = File(handle, name=path.name)
            form = StartTrainingForm(
                {
                    "modelType": options["model_type"],
                    "dataset": options["dataset"] or "",
                    "epochs": options["epochs"] or "",
                    "params": parse_params(options["param"]),
                    "targetColumn": options["target_column"] or "",
                },
                files,
            )
            if not form.is_valid():
                # The API's message, word for word.
                raise CommandError("; ".join(form.field_errors().values()))
            session = form.save(owner=owner)
        label = catalog.MODEL_TYPES[session.model_type].label
        self.stdout.write(
            f"Queued session {session.pk}: {label} on {session.dataset}, "
            f"{session.total_epochs} epochs, for {owner.get_username()}"
        )
        self.stdout.write(f"Page: {settings.SITE_URL}{session.get_absolute_url()}")
        if options["wait"]:
            self.follow(session)
            self.report(session)

    def owner(self, username: str | None) -> Any:
        users = get_user_model().objects.filter(is_active=True)
        if username:
            user = users.filter(username=username).first()
            if user is None:
                raise CommandError(f"No active user named {username!r}")
            return user
        superusers = list(users.filter(is_superuser=True).order_by("username")[:6])
        if len(superusers) == 1:
            return superusers[0]
        if not superusers:
            raise CommandError(
                "Give --user USERNAME: there is no superuser to own the session"
            )
        names = ", ".join(u.get_username() for u in superusers[:5])
        raise CommandError(
            f"Give --user USERNAME: there are several superusers ({names})"
        )

    def follow(self, session: TrainingSession) -> None:
        """Draw the progress until the session finishes. Ctrl-C asks whether to
        stop the run; declining leaves it running and exits."""
        bar = ProgressBar(self.stdout)
        while True:
            try:
                while session.is_active:
                    bar.draw(session)
                    time.sleep(POLL_SECONDS)
                    session.refresh_from_db()
                bar.draw(session, final=True)
                return
            except KeyboardInterrupt:
                bar.end_line()
                # The interrupt may have landed inside a query: start afresh.
                connection.close()
                if not self.confirm_stop(session):
                    raise CommandError(
                        f"Session {session.pk} keeps running: "
                        f"{settings.SITE_URL}{session.get_absolute_url()}",
                        returncode=EXIT_DETACHED,
                    ) from None

    def confirm_stop(self, session: TrainingSession) -> bool:
        try:
            answer = input(f"Stop session {session.pk}? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            return False
        if answer.strip().lower() not in ("y", "yes"):
            return False
        if session.request_stop():
            events.push_status(session)
            self.stdout.write("Stopping after the current epoch...")
        return True

    def report(self, session: TrainingSession) -> None:
        """Print the final metrics; raise with a non-zero exit code unless the
        session completed."""
        self.stdout.write(
            f"Session {session.pk} {session.status} after "
            f"{session.current_epoch}/{session.total_epochs} epochs"
            + (
                f" in {session.duration_seconds:.1f} s"
                if session.duration_seconds is not None
                else ""
            )
        )
        metrics = {k: v for k, v in session.final_metrics.items() if v is not None}
        if metrics:
            width = max(len(name) for name in metrics)
            for name, value in metrics.items():
                shown = _number(value) if isinstance(value, float) else value
                self.stdout.write(f"  {name:<{width}}  {shown}")
        if session.best_val_accuracy is not None:
            self.stdout.write(f"Best val_accuracy: {session.best_val_accuracy:.4f}")
        if session.status == TrainingSession.Status.FAILED:
            raise CommandError(
                f"Session {session.pk} failed: {session.error}", returncode=EXIT_FAILED
            )
        if session.status == TrainingSession.Status.STOPPED:
            raise CommandError(
                f"Session {session.pk} was stopped", returncode=EXIT_STOPPED
            )
        self.stdout.write(self.style.SUCCESS(f"Session {session.pk} completed"))


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CommandError(f"--param must look like KEY=VALUE, not {pair!r}")
        if name in params:
            raise CommandError(f"--param {name} is given twice")
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


class ProgressBar:
    """One line, redrawn in place on a terminal; elsewhere a line now and then."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_line = ""
        self.last_plain = 0.0
        self.open_line = False

    def draw(self, session: TrainingSession, final: bool = False) -> None:
        line = progress_line(session, self.width())
        if line == self.last_line and not final:
            return
        self.last_line = line
        if self.tty:
            self.out.write("\r\x1b[2K" + line, ending="\n" if final else "")
            self.out.flush()
            self.open_line = not final
        elif final or time.monotonic() - self.last_plain >= PLAIN_LINE_SECONDS:
            self.out.write(line)
            self.out.flush()
            self.last_plain = time.monotonic()

    def end_line(self) -> None:
        if self.open_line:
            self.out.write("")
            self.open_line = False

    def width(self) -> int:
        return shutil.get_terminal_size((100, 24)).columns if self.tty else 100


def progress_line(session: TrainingSession, width: int = 100) -> str:
    """`[#####.....]  45%  epoch 9/20  loss 0.4120  acc 0.8731  12 s left  running`"""
    total = session.total_epochs or 0
    if session.status == TrainingSession.Status.QUEUED:
        facts = "waiting for a worker"
    else:
        metrics = session.final_metrics
        loss = _first(metrics, "val_loss", "train_loss")
        accuracy = _first(metrics, "val_accuracy", "train_accuracy")
        parts = [f"epoch {session.current_epoch}/{total or '?'}"]
        if loss is not None:
            parts.append(f"loss {_number(loss)}")
        if accuracy is not None:
            parts.append(f"acc {_number(accuracy)}")
        left = _seconds_left(session)
        if left is not None:
            parts.append(f"{_clock(left)} left")
        facts = "  ".join(parts)
    facts = f"{session.progress:5.1f}%  {facts}  {session.status}"
    # A fixed bar length, so the bar does not jump as the numbers change.
    cells = 30 if width >= 100 else 20
    filled = round(cells * session.progress / 100)
    return f"[{'#' * filled}{'.' * (cells - filled)}] {facts}"[: width - 1]


def _number(value: float) -> str:
    # Four decimals, but keep a learning rate of 1e-05 from showing as 0.0000.
    if value == 0 or 0.001 <= abs(value) < 10_000:
        return f"{value:.4f}"
    return f"{value:.3g}"


def _first(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        if isinstance(metrics.get(name), int | float):
            return metrics[name]
    return None


def _seconds_left(session: TrainingSession) -> float | None:
    if (
        session.status != TrainingSession.Status.RUNNING
        or not session.started_at
        or not session.current_epoch
        or not session.total_epochs
    ):
        return None
    per_epoch = (now() - session.started_at).total_seconds() / session.current_epoch
    return per_epoch * (session.total_epochs - session.current_epoch)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    if minutes:
        return f"{minutes}:{seconds:02d}"
    return f"{seconds} s"
