"""``{% if user|may_delete:obj %}``: the Delete… link shows only where the
one policy (studio.storage.services.may_delete) would allow it."""

from django import template

from studio.storage.services import may_delete as may_delete_now

register = template.Library()


@register.filter
def may_delete(user, obj) -> bool:
    return may_delete_now(user=user, obj=obj)
