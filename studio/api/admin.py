from django.contrib import admin

from studio.api.models import WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "team", "active", "created_at")
    list_filter = ("active", "team")
    exclude = ("secret",)  # shown once to the team admin who adds it; never on a list page


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Read-only: what was sent and how each endpoint answered."""

    list_display = ("event_type", "endpoint", "job", "status", "attempts", "response_status", "created_at")
    list_filter = ("status", "event_type")
    readonly_fields = [field.name for field in WebhookDelivery._meta.fields]

    def has_add_permission(self, request):
        return False
