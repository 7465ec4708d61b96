"""/v1/: the OpenAI-compatible endpoint (views_openai.py). Every pattern
here must appear in openapi.py, as the /api/v1/ ones (a test checks)."""

from django.urls import path, re_path

from studio.api import views_openai as openai

urlpatterns = [
    path("models", openai.models_list, name="openai-models"),
    path("models/<str:model_id>", openai.model_retrieve, name="openai-model"),
    path("chat/completions", openai.chat_completions, name="openai-chat-completions"),
    path("completions", openai.completions, name="openai-completions"),
    re_path(r"^(?P<rest>.*)$", openai.not_found, name="openai-not-found"),  # last: OpenAI's 404 for the rest
]
