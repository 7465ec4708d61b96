from studio.notifications.models import Notification


def notifications_for_user(*, user, limit: int = 100):
    return Notification.objects.filter(user=user).select_related("job")[:limit]


def unread_count(*, user) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()
