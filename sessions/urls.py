from django.urls import path, re_path

from sessions import api, views

app_name = "sessions"

urlpatterns = [
    path("", views.models_page, name="models"),
    path("sessions/start/", views.start_training, name="start"),
    path("sessions/<int:pk>/", views.session_detail, name="detail"),
    path("sessions/<int:pk>/stop/", views.stop_training, name="stop"),
    path(
        "sessions/<int:pk>/metrics.csv", views.session_metrics_csv, name="metrics-csv"
    ),
    path(
        "sessions/<int:pk>/metrics.json",
        views.session_metrics_json,
        name="metrics-json",
    ),
    path("sessions/compare/", views.compare, name="compare"),
    path("api/ml/models", api.models, name="api-models"),
    path("api/ml/training-data", api.training_data, name="api-training-data"),
    path("api/ml/start-training", api.start_training, name="api-start"),
    path("api/ml/stop-training/<int:session_id>", api.stop_training, name="api-stop"),
    path(
        "api/ml/training-session/<int:session_id>",
        api.training_session,
        name="api-session",
    ),
    path(
        "api/ml/training-metrics/<int:session_id>",
        api.training_metrics,
        name="api-metrics",
    ),
    path(
        "api/ml/real-time-updates", api.real_time_updates, name="api-real-time-updates"
    ),
    path("api/ml/runs", api.create_run, name="api-runs"),
    path(
        "api/ml/runs/<int:session_id>/metrics", api.log_metrics, name="api-run-metrics"
    ),
    path("api/ml/runs/<int:session_id>/finish", api.finish_run, name="api-run-finish"),
    path(
        "api/ml/runs/<int:session_id>/heartbeat",
        api.heartbeat,
        name="api-run-heartbeat",
    ),
    path("api/openapi.json", api.openapi_document, name="api-openapi"),
    path("api/docs", api.docs_page, name="api-docs"),
    re_path(r"^api/", api.not_found),
]
