"""The admin: the history of every training session, and API tokens.

Sessions are read-only here. Their status and metrics belong to the worker, and
a hand-edited status or epoch would contradict the rows the charts are drawn from;
the only change the admin can make is the one the page and API make too: ask a
run to stop.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.timezone import now

from sessions import events
from sessions.models import STANDARD_METRICS, ApiToken, EpochMetric, TrainingSession

# A run can have 100,000 epochs: the change page shows the two ends and links to
# the chart, which downsamples, for the middle.
EPOCH_TABLE_EDGE = 200

CSV_FIELDS = (
    "id",
    "name",
    "owner",
    "model_type",
    "dataset",
    "status",
    "current_epoch",
    "total_epochs",
    "best_val_accuracy",
    "duration_seconds",
    "created",
    "started_at",
    "finished_at",
    "task_id",
    "error",
)


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _csv_safe(value: Any) -> Any:
    """Keep spreadsheets from running a session name such as =HYPERLINK(...)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2)
    return format_html('<pre class="mltrack-pre">{}</pre>', text)


def epoch_table_rows(
    session: TrainingSession, edge: int = EPOCH_TABLE_EDGE
) -> tuple[list[EpochMetric], list[EpochMetric], int]:
    """The first and last `edge` epochs (the second list is empty when the first
    holds them all) and how many lie between."""
    epochs = EpochMetric.objects.filter(session=session)
    total = epochs.count()
    if total <= 2 * edge:
        return list(epochs.order_by("epoch")), [], 0
    head = list(epochs.order_by("epoch")[:edge])
    tail = list(epochs.order_by("-epoch")[:edge])[::-1]
    return head, tail, total - 2 * edge


@admin.register(TrainingSession)
class TrainingSessionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "model_type",
        "dataset",
        "owner",
        "status",
        "epochs",
        "best_accuracy",
        "duration",
        "created",
        "live_page",
    )
    list_display_links = ("id", "model_type")
    list_filter = (
        "status",
        "model_type",
        "dataset",
        # Only users who have sessions, not every account.
        ("owner", admin.RelatedOnlyFieldListFilter),
        "created",
    )
    list_select_related = ("owner",)
    search_fields = ("name", "model_type", "dataset", "owner__username", "task_id")
    search_help_text = "Session number, name, model, data set, owner or task id."
    date_hierarchy = "created"
    list_per_page = 50
    actions = ("stop_selected", "export_csv")
    fieldsets = (
        (None, {"fields": ("live_page", "name", "owner", "status", "created")}),
        ("Run", {"fields": ("model_type", "dataset", "params_block", "task_id")}),
        (
            "Progress",
            {
                "fields": (
                    "epochs",
                    "best_accuracy",
                    "final_metrics_block",
                    "diagnostics_block",
                    "report_block",
                )
            },
        ),
        (
            "Timing",
            {"fields": ("started_at", "finished_at", "heartbeat_at", "duration")},
        ),
        ("Epoch metrics", {"fields": ("epoch_table",)}),
    )
    failure_fieldset = ("Failure", {"fields": ("error", "traceback_block")})

    def get_queryset(self, request: HttpRequest) -> QuerySet[TrainingSession]:
        # Sortable duration; NULL for runs that have not finished.
        return (
            super()
            .get_queryset(request)
            .annotate(
                run_time=ExpressionWrapper(
                    F("finished_at") - F("started_at"), output_field=DurationField()
                )
            )
        )

    def get_fieldsets(
        self, request: HttpRequest, obj: TrainingSession | None = None
    ) -> Any:
        fieldsets = list(self.fieldsets)
        if obj is not None and (obj.error or obj.traceback):
            fieldsets.insert(1, self.failure_fieldset)
        return fieldsets

    def get_readonly_fields(
        self, request: HttpRequest, obj: TrainingSession | None = None
    ) -> tuple[str, ...]:
        return tuple(
            name
            for _, options in self.get_fieldsets(request, obj)
            for name in options["fields"]
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        results, may_have_duplicates = super().get_search_results(
            request, queryset, search_term
        )
        number = search_term.strip().lstrip("#")
        if number.isdigit():
            results |= queryset.filter(pk=int(number))
        return results, may_have_duplicates

    # Sessions start from the page, the API or the command, which validate them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # View-only change page: there is no form that could save a status or a metric.
    def has_change_permission(
        self, request: HttpRequest, obj: TrainingSession | None = None
    ) -> bool:
        return False

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.change_trainingsession")

    def has_delete_permission(
        self, request: HttpRequest, obj: TrainingSession | None = None
    ) -> bool:
        # A worker still writes to an active session: stop it first.
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="Epochs", ordering="current_epoch")
    def epochs(self, obj: TrainingSession) -> str:
        return f"{obj.current_epoch}/{obj.total_epochs or '?'}"

    @admin.display(description="Best val. accuracy", ordering="best_val_accuracy")
    def best_accuracy(self, obj: TrainingSession) -> str:
        if obj.best_val_accuracy is None:
            return "–"
        return f"{obj.best_val_accuracy:.4f}"

    @admin.display(description="Duration", ordering="run_time")
    def duration(self, obj: TrainingSession) -> str:
        return _format_duration(obj.duration_seconds)

    @admin.display(description="Live page")
    def live_page(self, obj: TrainingSession) -> str:
        return format_html(
            '<a href="{}" class="mltrack-live-link">Session #{} ↗</a>',
            obj.get_absolute_url(),
            obj.pk,
        )

    @admin.display(description="Parameters")
    def params_block(self, obj: TrainingSession) -> str:
        return _pre(obj.params)

    @admin.display(description="Final metrics")
    def final_metrics_block(self, obj: TrainingSession) -> str:
        return _pre(obj.final_metrics)

    @admin.display(description="Diagnostics")
    def diagnostics_block(self, obj: TrainingSession) -> str:
        return _pre(obj.diagnostics) if obj.diagnostics else "–"

    @admin.display(description="Report")
    def report_block(self, obj: TrainingSession) -> str:
        return _pre(obj.report) if obj.report else "–"

    @admin.display(description="Traceback")
    def traceback_block(self, obj: TrainingSession) -> str:
        return _pre(obj.traceback) if obj.traceback else "–"

    @admin.display(description="Per epoch")
    def epoch_table(self, obj: TrainingSession) -> str:
        head, tail, hidden = epoch_table_rows(obj)
        rows = head + tail
        columns = [
            name
            for name in STANDARD_METRICS
            if any(getattr(row, name) is not None for row in rows)
        ]
        extra = sorted({name for row in rows for name in row.extra})
        return render_to_string(
            "admin/training/trainingsession/epoch_table.html",
            {
                "session": obj,
                "columns": columns + extra,
                "head": [_table_row(row, columns, extra) for row in head],
                "tail": [_table_row(row, columns, extra) for row in tail],
                "hidden": hidden,
                "edge": EPOCH_TABLE_EDGE,
            },
        )

    @admin.action(description="Stop selected sessions", permissions=["stop"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        stopped = 0
        finished = []
        for session in queryset.select_related("owner"):
            if session.request_stop():
                events.push_status(session)
                stopped += 1
            else:
                finished.append(f"#{session.pk}")
        if stopped:
            self.message_user(
                request,
                f"Asked {stopped} session(s) to stop: queued ones are stopped now, "
                "running ones stop after their current epoch.",
                messages.SUCCESS,
            )
        if finished:
            self.message_user(
                request,
                f"Already finished, left as they were: {', '.join(finished)}.",
                messages.WARNING,
            )

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        sessions = list(queryset.select_related("owner").order_by("pk"))
        params = sorted({name for s in sessions for name in s.params})
        metrics = sorted({name for s in sessions for name in s.final_metrics})
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="training-sessions-{now():%Y%m%d-%H%M%S}.csv"'
        )
        writer = csv.writer(response)
        writer.writerow(
            [
                *CSV_FIELDS,
                *(f"param.{p}" for p in params),
                *(f"final.{m}" for m in metrics),
            ]
        )
        for session in sessions:
            values = {
                field: getattr(session, field)
                for field in CSV_FIELDS
                if field != "owner"
            }
            values["owner"] = session.owner.get_username()
            for field in ("created", "started_at", "finished_at"):
                values[field] = values[field].isoformat() if values[field] else ""
            writer.writerow(
                [_csv_safe(values[field]) for field in CSV_FIELDS]
                + [_csv_safe(_csv_cell(session.params.get(p))) for p in params]
                + [_csv_cell(session.final_metrics.get(m)) for m in metrics]
            )
        return response


def _table_row(row: EpochMetric, columns: list[str], extra: list[str]) -> dict:
    values = [getattr(row, name) for name in columns]
    values += [row.extra.get(name) for name in extra]
    return {
        "epoch": row.epoch,
        "values": [_cell(value) for value in values],
        "duration": _cell(row.duration),
    }


def _cell(value: Any) -> str:
    # Four significant digits: a loss of 3e-05 stays readable, unlike 0.0000.
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("live", "Live"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "live":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created", "last_used_at", "live")
    list_filter = (TokenStateFilter,)
    list_select_related = ("user",)
    search_fields = ("prefix", "name", "user__username")
    actions = ("revoke_selected",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        if obj is None:
            return ("user", "name")
        return ("prefix", "user", "name", "created", "last_used_at", "revoked_at")

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        # Only the name can change: moving a token to another user, or clearing its
        # revocation by hand, would grant access nobody issued.
        if obj is None:
            return ()
        return ("prefix", "user", "created", "last_used_at", "revoked_at")

    @admin.display(description="Live", boolean=True)
    def live(self, obj: ApiToken) -> bool:
        return obj.revoked_at is None

    def save_model(
        self, request: HttpRequest, obj: ApiToken, form: Any, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, raw = ApiToken.issue(obj.user, obj.name)
        obj.pk = token.pk
        obj.refresh_from_db()
        # Kept on the instance for the response below, never stored: only the
        # hash is in the database.
        obj.raw_key = raw

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: Any = None
    ) -> HttpResponse:
        # Show the key in this response instead of redirecting: a redirect would
        # have to park it in a cookie or the session store until the next page.
        ctx = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": obj,
            "raw_key": obj.raw_key,
            "title": "API token created",
        }
        response = TemplateResponse(
            request, "admin/training/apitoken/token_created.html", ctx
        )
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        live = list(queryset.filter(revoked_at__isnull=True))
        for token in live:
            token.revoke()
        self.message_user(
            request,
            f"Revoked {len(live)} token(s); clients using them now get 401.",
            messages.SUCCESS,
        )
