from studio.notifications.selectors import unread_count


def unread_notifications(request):
    """The unread count for the bell in every page's header (one query)."""
    user = getattr(request, "user", None)
    return {"notifications_unread": unread_count(user=user) if user and user.is_authenticated else 0}
