from django.urls import path

from sessions.consumers import TrainingConsumer

websocket_urlpatterns = [
    path("ws/training/", TrainingConsumer.as_asgi()),
    path("ws/training/<int:session_id>/", TrainingConsumer.as_asgi()),
]
