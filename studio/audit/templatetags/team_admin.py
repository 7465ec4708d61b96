"""``{% if user|is_team_admin %}``: show admin-only links (audit log,
workers) to admins of at least one team. One small query per page."""

from django import template

from studio.accounts.selectors import admin_team_ids_for_user

register = template.Library()


@register.filter
def is_team_admin(user) -> bool:
    return bool(user.is_authenticated and admin_team_ids_for_user(user=user))
