"""The OpenAI-compatible routes, mounted at /v1/."""

from django.urls import path

from routerapp.api import views_openai, views_responses

urlpatterns = [
    path("chat/completions", views_openai.ChatCompletions.as_view(), name="v1-chat-completions"),
    path("completions", views_openai.Completions.as_view(), name="v1-completions"),
    path("responses", views_responses.Responses.as_view(), name="v1-responses"),
    path(
        "responses/<str:response_id>",
        views_responses.ResponseDetail.as_view(),
        name="v1-response",
    ),
    path("embeddings", views_openai.Embeddings.as_view(), name="v1-embeddings"),
    path("models", views_openai.Models.as_view(), name="v1-models"),
    path("models/<path:model_id>", views_openai.ModelDetail.as_view(), name="v1-model"),
]
