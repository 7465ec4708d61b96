"""``{% may job "cancel" as allowed %}``: the access rule (studio.accounts.policy)
in templates, so a page offers only the buttons its user may press."""

from django import template

from studio.accounts.policy import Action, job_allows

register = template.Library()


@register.simple_tag(takes_context=True)
def may(context, job, action: str) -> bool:
    request = context.get("request")
    return bool(request) and job_allows(user=request.user, job=job, action=Action(action))
