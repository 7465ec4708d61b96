from django.urls import path

from studio.workers import views

urlpatterns = [
    path("", views.worker_list, name="worker-list"),
    path("table/", views.worker_table, name="worker-table"),
]
