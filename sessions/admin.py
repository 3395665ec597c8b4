from django.contrib import admin

from sessions.models import ApiToken, TrainingSession


@admin.register(TrainingSession)
class TrainingSessionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "model_type",
        "dataset",
        "owner",
        "status",
        "current_epoch",
        "total_epochs",
        "best_val_accuracy",
        "created",
    )
    list_filter = ("status", "model_type", "dataset")
    search_fields = ("id", "name", "model_type", "dataset", "owner__username")
    date_hierarchy = "created"
    # Status and metrics are the worker's to change: editing them by hand would make
    # a session that contradicts its epochs.
    readonly_fields = [f.name for f in TrainingSession._meta.fields]

    def has_add_permission(self, request):  # sessions start from the page, API or CLI
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix", "created", "last_used_at")
