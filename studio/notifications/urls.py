from django.urls import path

from studio.notifications import views

urlpatterns = [
    path("", views.notification_list, name="notification-list"),
    path("bell/", views.notification_bell, name="notification-bell"),
    path("read/", views.notification_read_all, name="notification-read-all"),
]
