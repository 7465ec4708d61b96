from django.urls import path

from studio.notifications import views_webhooks

urlpatterns = [
    path("", views_webhooks.webhook_list, name="webhook-list"),
    path("<int:endpoint_id>/delete/", views_webhooks.webhook_delete_view, name="webhook-delete"),
]
