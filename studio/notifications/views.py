from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from studio.notifications.selectors import notifications_for_user, unread_count
from studio.notifications.services import notifications_mark_read


def notification_list(request):
    return render(request, "notifications/list.html", {"notifications": notifications_for_user(user=request.user)})


def notification_bell(request):
    """The nav link with the unread count; polled by every page."""
    return render(request, "notifications/_bell.html", {"unread": unread_count(user=request.user)})


@require_POST
def notification_read_all(request):
    notifications_mark_read(user=request.user)
    if request.htmx:
        return render(request, "notifications/_bell.html", {"unread": 0})
    return redirect("notification-list")
