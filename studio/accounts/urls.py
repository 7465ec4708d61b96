from django.urls import path

from studio.accounts import views

urlpatterns = [
    path("tokens/", views.api_token_list, name="api-token-list"),
    path("tokens/<int:token_id>/revoke/", views.api_token_revoke_view, name="api-token-revoke"),
    path("webhooks/", views.webhook_list, name="webhook-list"),
    path("webhooks/<int:endpoint_id>/delete/", views.webhook_delete_view, name="webhook-delete"),
]
