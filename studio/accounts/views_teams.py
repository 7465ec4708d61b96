"""The team page (members, roles, invitations, quotas and usage), the join
page an invitation link opens, and the header's team switcher. Who may do
what is the one policy (``Action.MANAGE`` for admins); another team's page is
404 as everywhere."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from studio.accounts.forms import InvitationForm, JoinForm
from studio.accounts.models import Invitation, Membership, Team
from studio.accounts.policy import Action, allows
from studio.accounts.selectors import current_team, invitations_for_user, team_ids_for_user
from studio.accounts.views_login import PASSWORDS_OFF
from studio.accounts.teams import (TeamRefusal, invitation_accept, invitation_accept_addressed, invitation_create,
                                   invitation_decline, invitation_for_token, invitation_revoke, member_remove,
                                   member_set_role, team_switch, invitation_accept_as_new_user)
from studio.jobs.models import TeamQuota
from studio.storage.selectors import team_storage_usage


def _team(request, slug: str | None) -> Team:
    if slug is None:
        team = current_team(user=request.user)
        if team is None:
            raise Http404("You are in no team yet; a team admin can send you an invitation link")
        return team
    return get_object_or_404(Team.objects.filter(pk__in=team_ids_for_user(user=request.user)), slug=slug)


def team_page(request, slug: str | None = None, *, form=None, error: str = "", link: str = "", status: int = 200):
    team = _team(request, slug)
    admin = allows(user=request.user, action=Action.MANAGE, team_id=team.pk)
    return render(request, "accounts/team.html", {
        "team": team, "admin": admin, "error": error, "new_link": link,
        "members": Membership.objects.filter(team=team).select_related("user").order_by("user__username"),
        "invitations": (Invitation.objects.filter(team=team, accepted_at=None, revoked_at=None)
                        .select_related("created_by") if admin else []),
        "form": form or InvitationForm(), "roles": Membership.Role.choices,
        "quota": TeamQuota.objects.filter(team=team).first(), "usage": team_storage_usage(team_id=team.pk),
    }, status=status)


def _act(request, slug: str, action) -> object:
    team = _team(request, slug)
    try:
        action(team)
    except TeamRefusal as refusal:
        return team_page(request, slug, error=refusal.message, status=refusal.status)
    return redirect("team-page", slug=team.slug)


@require_POST
def team_invite(request, slug: str):
    team = _team(request, slug)
    form = InvitationForm(request.POST)
    if not form.is_valid():
        return team_page(request, slug, form=form, status=400)
    try:
        _, raw = invitation_create(user=request.user, team=team, request=request,
                                   join_url=lambda raw: request.build_absolute_uri(reverse("team-join", args=[raw])),
                                   **form.cleaned_data)
    except TeamRefusal as refusal:
        return team_page(request, slug, form=form, error=refusal.message, status=refusal.status)
    return team_page(request, slug, link=request.build_absolute_uri(reverse("team-join", args=[raw])))


@require_POST
def team_invitation_revoke(request, slug: str, invitation_id: int):
    def revoke(team):
        get_object_or_404(Invitation, pk=invitation_id, team=team)
        invitation_revoke(user=request.user, invitation_id=invitation_id, request=request)
    return _act(request, slug, revoke)


@require_POST
def team_member_role(request, slug: str, user_id: int):
    return _act(request, slug, lambda team: member_set_role(user=request.user, team=team, member_id=user_id,
                                                             role=request.POST.get("role", ""), request=request))


@require_POST
def team_member_remove(request, slug: str, user_id: int):
    team = _team(request, slug)
    try:
        member_remove(user=request.user, team=team, member_id=user_id, request=request)
    except TeamRefusal as refusal:
        return team_page(request, slug, error=refusal.message, status=refusal.status)
    if user_id == request.user.pk:  # left: the team's page is no longer theirs
        return redirect("home")
    return redirect("team-page", slug=team.slug)


@require_POST
def team_switch_view(request):
    try:
        team_switch(user=request.user, team_id=int(request.POST.get("team", 0)))
    except (TeamRefusal, ValueError):
        pass  # not one of the user's teams: nothing changes
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = reverse("home")
    return redirect(back)


@login_not_required
def team_join(request, token: str):
    """An invitation link: a signed-in user joins with one click; someone without an account makes one."""
    invitation = invitation_for_token(token)
    if invitation is None:
        return render(request, "accounts/join.html", {"error": "This invitation link is used up, revoked or "
                                                               "expired; ask a team admin for a new one."}, status=410)
    form, error, status = JoinForm(initial={"email": invitation.email}), "", 400
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                invitation_accept(user=request.user, raw=token, request=request)
                team_switch(user=request.user, team_id=invitation.team_id)
                return redirect("team-page", slug=invitation.team.slug)
            if not settings.LOCAL_PASSWORDS:  # accounts come from the identity provider only
                raise TeamRefusal(PASSWORDS_OFF, status=403)
            form = JoinForm(request.POST)
            if form.is_valid():
                user = invitation_accept_as_new_user(raw=token, request=request, **form.cleaned_data)
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                return redirect("team-page", slug=invitation.team.slug)
        except TeamRefusal as refusal:
            error, status = refusal.message, 403 if refusal.status == 403 else 400
        except ValidationError as invalid:
            form.add_error("password", invalid)
    return render(request, "accounts/join.html", {"invitation": invitation, "form": form, "error": error,
                                                  "local_passwords": settings.LOCAL_PASSWORDS,
                                                  "oidc": bool(settings.OIDC_ISSUER),
                                                  "provider": settings.OIDC_PROVIDER_NAME},
                  status=status if request.method == "POST" else 200)


def invitation_list(request, *, error: str = "", status: int = 200):
    """The invitations sent to the user's verified address: accept or decline, no link needed."""
    return render(request, "accounts/invitations.html",
                  {"invitations": invitations_for_user(user=request.user), "error": error}, status=status)


@require_POST
def invitation_respond(request, invitation_id: int, answer: str):
    if answer not in ("accept", "decline"):
        raise Http404("answer is accept or decline")
    try:
        if answer == "accept":
            membership = invitation_accept_addressed(user=request.user, invitation_id=invitation_id, request=request)
            team_switch(user=request.user, team_id=membership.team_id)
            return redirect("team-page", slug=membership.team.slug)
        invitation_decline(user=request.user, invitation_id=invitation_id, request=request)
    except TeamRefusal as refusal:
        return invitation_list(request, error=refusal.message, status=refusal.status)
    return redirect("invitation-list")
