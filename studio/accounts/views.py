"""The API tokens page (the team webhooks page under it lives in
``studio.notifications.views_webhooks``). htmx-friendly: a form posts and
gets back its section; without htmx the whole page is drawn again (or the
browser is redirected)."""

from django import forms
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.audit.services import audit_record
from studio.accounts.models import ApiToken
from studio.accounts.selectors import api_token_list_for_user, teams_for_user
from studio.accounts.services import api_token_create, api_token_revoke

ALL_TEAMS = ""


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “nightly eval script”.")
    team = forms.ChoiceField(required=False, help_text="A token tied to one team can act only there.")

    def __init__(self, *args, teams, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = [(ALL_TEAMS, "All my teams")] + [(str(t.pk), t.name) for t in teams]


def _tokens_context(request, form=None, new_secret=None, new_token=None) -> dict:
    teams = teams_for_user(user=request.user)
    return {"form": form or ApiTokenForm(teams=teams), "tokens": api_token_list_for_user(user=request.user),
            "new_secret": new_secret, "new_token": new_token}


@require_http_methods(["GET", "POST"])
def api_token_list(request):
    """The user's own tokens and the form to make one; the secret of a new
    token is in this one response and never again."""
    if request.method == "GET":
        return render(request, "accounts/tokens.html", _tokens_context(request))
    teams = teams_for_user(user=request.user)
    form = ApiTokenForm(request.POST, teams=teams)
    context, status = None, 400
    if form.is_valid():
        team = next((t for t in teams if str(t.pk) == form.cleaned_data["team"]), None)
        token, secret = api_token_create(user=request.user, name=form.cleaned_data["name"], team=team)
        for audited in [token.team] if token.team else teams:
            audit_record(user=request.user, team=audited, action="token.created", target=token, request=request)
        context, status = _tokens_context(request, new_secret=secret, new_token=token), 200
    context = context or _tokens_context(request, form=form)
    template = "accounts/_tokens.html" if request.htmx else "accounts/tokens.html"
    response = render(request, template, context, status=200 if request.htmx else status)
    response["Cache-Control"] = "no-store"  # the page may hold a secret
    return response


@require_POST
def api_token_revoke_view(request, token_id: int):
    try:
        token = api_token_revoke(user=request.user, token_id=token_id)
    except ApiToken.DoesNotExist:  # another user's token: as if it did not exist
        return render(request, "accounts/_tokens.html", _tokens_context(request), status=404)
    for audited in [token.team] if token.team else teams_for_user(user=request.user):
        audit_record(user=request.user, team=audited, action="token.revoked", target=token, request=request)
    if request.htmx:
        return render(request, "accounts/_tokens.html", _tokens_context(request))
    return redirect("api-token-list")
