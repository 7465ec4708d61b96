from django.urls import path

from studio.audit import views

urlpatterns = [
    path("", views.audit_list, name="audit-list"),
]
