from studio.accounts.selectors import admin_team_ids_for_user
from studio.api.models import WebhookEndpoint
from studio.notifications.models import Notification


def notifications_for_user(*, user, limit: int = 100):
    return Notification.objects.filter(user=user).select_related("job")[:limit]


def unread_count(*, user) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def webhook_endpoint_list_for_admin(*, user):
    """Endpoints of the teams the user administers, with recent deliveries."""
    return WebhookEndpoint.objects.filter(team_id__in=admin_team_ids_for_user(user=user)).select_related("team")


def webhook_deliveries_recent(*, endpoint, limit: int = 10):
    return endpoint.deliveries.order_by("-created_at", "-pk")[:limit]
