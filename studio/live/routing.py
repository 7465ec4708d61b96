from django.urls import path

from studio.live.consumers import JobEventsConsumer
from studio.live.playground import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", JobEventsConsumer.as_asgi()),
    path("ws/playground/", PlaygroundConsumer.as_asgi()),
]
