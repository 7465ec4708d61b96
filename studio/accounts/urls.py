from django.urls import path

from studio.accounts import views

urlpatterns = [
    path("tokens/", views.api_token_list, name="api-token-list"),
    path("tokens/<int:token_id>/revoke/", views.api_token_revoke_view, name="api-token-revoke"),
]
