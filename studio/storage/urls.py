from django.urls import path

from studio.storage import views

urlpatterns = [
    path("", views.storage_page, name="storage"),
    path("delete/<str:kind>/<int:pk>/", views.storage_delete_view, name="storage-delete"),
    path("deletions/<int:deletion_id>/restore/", views.storage_restore_view, name="storage-restore"),
]
