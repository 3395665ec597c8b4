from django.apps import AppConfig


class TrainingSessionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sessions"
    # "sessions" is taken by django.contrib.sessions.
    label = "training"
    verbose_name = "Training sessions"
