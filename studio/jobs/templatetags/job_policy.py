"""``{% may job "cancel" as allowed %}``: the access rule (studio.accounts.policy)
in templates, so a page offers only the buttons its user may press."""

from django import template

from studio.accounts.policy import Action, job_allows
from studio.accounts.selectors import team_roles_for_user

register = template.Library()


@register.simple_tag(takes_context=True)
def may(context, job, action: str) -> bool:
    request = context.get("request")
    if not request:
        return False
    # One role lookup per rendering, however many rows and buttons ask (the queue table polls every 3 s).
    if "team_roles" not in context.render_context:
        context.render_context["team_roles"] = team_roles_for_user(user=request.user)
    return job_allows(user=request.user, job=job, action=Action(action), roles=context.render_context["team_roles"])
