"""The team webhooks page (under the API tokens page): a team admin adds
and removes signed webhooks and sees their recent deliveries. htmx-friendly
like the tokens page."""

from django import forms
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.accounts.selectors import admin_team_ids_for_user, teams_for_user
from studio.api.models import WEBHOOK_EVENT_TYPES, WebhookEndpoint
from studio.notifications.selectors import webhook_deliveries_recent, webhook_endpoint_list_for_admin
from studio.notifications.webhooks import WebhookError, webhook_endpoint_create, webhook_endpoint_delete


class WebhookForm(forms.Form):
    team = forms.ChoiceField()
    url = forms.URLField(max_length=500, label="URL", assume_scheme="https",
                         help_text="Receives a signed POST when a job finishes.")
    events = forms.MultipleChoiceField(choices=[(e, e) for e in WEBHOOK_EVENT_TYPES], initial=WEBHOOK_EVENT_TYPES,
                                       widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args, teams, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = [(str(t.pk), t.name) for t in teams]


def _webhooks_context(request, form=None, new_endpoint=None) -> dict:
    admin_ids = set(admin_team_ids_for_user(user=request.user))
    admin_teams = [t for t in teams_for_user(user=request.user) if t.pk in admin_ids]
    endpoints = [(endpoint, webhook_deliveries_recent(endpoint=endpoint))
                 for endpoint in webhook_endpoint_list_for_admin(user=request.user)]
    return {"form": form or WebhookForm(teams=admin_teams), "admin_teams": admin_teams, "endpoints": endpoints,
            "new_endpoint": new_endpoint}


@require_http_methods(["GET", "POST"])
def webhook_list(request):
    """Webhooks of the teams the user administers (others see why not)."""
    if request.method == "GET":
        return render(request, "accounts/webhooks.html", _webhooks_context(request))
    context = _webhooks_context(request)
    form = WebhookForm(request.POST, teams=context["admin_teams"])
    status = 400
    if form.is_valid():
        team = next(t for t in context["admin_teams"] if str(t.pk) == form.cleaned_data["team"])
        try:
            endpoint = webhook_endpoint_create(user=request.user, team=team, url=form.cleaned_data["url"],
                                               events=form.cleaned_data["events"])
        except WebhookError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            context, status = _webhooks_context(request, new_endpoint=endpoint), 200
    if status == 400:
        context["form"] = form
    template = "accounts/_webhooks.html" if request.htmx else "accounts/webhooks.html"
    response = render(request, template, context, status=200 if request.htmx else status)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def webhook_delete_view(request, endpoint_id: int):
    try:
        webhook_endpoint_delete(user=request.user, endpoint_id=endpoint_id)
    except WebhookEndpoint.DoesNotExist:
        return render(request, "accounts/_webhooks.html", _webhooks_context(request), status=404)
    if request.htmx:
        return render(request, "accounts/_webhooks.html", _webhooks_context(request))
    return redirect("webhook-list")
