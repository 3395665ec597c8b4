from django.urls import path

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
]
