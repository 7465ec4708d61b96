"""/api/v1/teams/{team}/…: a team's members and invitations, so that a team
can be provisioned by a script. The same services and access rule as the
team page (team admins manage; every member reads the member list).
/api/v1/invitations: the invitations sent to the caller's verified address,
to accept or decline as on their Invitations page."""

from __future__ import annotations

from django.urls import reverse

from studio.accounts.models import Membership
from studio.accounts.selectors import invitations_for_user
from studio.accounts.teams import (TeamRefusal, invitation_accept_addressed, invitation_create, invitation_decline,
                                   member_remove, member_set_role)
from studio.api.auth import api_view
from studio.api.bodies import json_body
from studio.api.errors import ApiError
from studio.api.serializers import unix


def _member_json(membership: Membership) -> dict:
    return {"object": "member", "user_id": membership.user_id, "username": membership.user.username,
            "role": membership.role, "joined_at": unix(membership.created_at)}


def _refused(refusal: TeamRefusal) -> ApiError:
    return ApiError(refusal.status, refusal.message, field=refusal.field)


@api_view("GET")
def members_collection(request, team: str):
    team = request.caller.team(team)
    members = Membership.objects.filter(team=team).select_related("user").order_by("user__username")
    return {"object": "list", "data": [_member_json(m) for m in members], "has_more": False}


@api_view("PATCH", "DELETE")
def member_detail(request, team: str, user_id: int):
    """PATCH {"role": "viewer" | "member" | "admin"}; DELETE removes the member (or, for yourself, leaves)."""
    team = request.caller.team(team)
    try:
        if request.method == "DELETE":
            member_remove(user=request.caller.user, team=team, member_id=user_id, request=request)
            return {"object": "member", "user_id": user_id, "deleted": True}
        role = json_body(request).get("role")
        if not isinstance(role, str):
            raise ApiError(400, 'send {"role": "viewer" | "member" | "admin"}', field="role")
        return _member_json(member_set_role(user=request.caller.user, team=team, member_id=user_id, role=role,
                                            request=request))
    except TeamRefusal as refusal:
        raise _refused(refusal) from None
    except Membership.DoesNotExist:
        raise ApiError(404, f"No member {user_id} in this team", field="user_id") from None


@api_view("POST")
def invitations_collection(request, team: str):
    """POST {"role", "email"?, "days"?}: a single-use invitation; its link is in the answer, and only there."""
    team = request.caller.team(team)
    body = json_body(request)
    days = body.get("days", 7)
    if not isinstance(days, int) or isinstance(days, bool):
        raise ApiError(400, "days must be a whole number", field="days")
    try:
        invitation, raw = invitation_create(
            user=request.caller.user, team=team, role=str(body.get("role", Membership.Role.MEMBER)),
            email=str(body.get("email") or ""), days=days, request=request,
            join_url=lambda raw: request.build_absolute_uri(reverse("team-join", args=[raw])))
    except TeamRefusal as refusal:
        raise _refused(refusal) from None
    return {"_status": 201, "object": "invitation", "id": invitation.pk, "role": invitation.role,
            "email": invitation.email or None, "expires_at": unix(invitation.expires_at),
            "url": request.build_absolute_uri(reverse("team-join", args=[raw]))}



def _addressed_json(invitation) -> dict:
    return {"object": "invitation", "id": invitation.pk, "team": invitation.team.slug, "role": invitation.role,
            "email": invitation.email, "expires_at": unix(invitation.expires_at)}


@api_view("GET")
def my_invitations(request):
    return {"object": "list", "data": [_addressed_json(i) for i in invitations_for_user(user=request.caller.user)],
            "has_more": False}


def _answering(request) -> object:
    """The caller, who may answer invitations: not with a token tied to one team (it acts only there)."""
    if request.caller.token is not None and request.caller.token.team_id is not None:
        raise ApiError(403, "A token tied to one team cannot answer invitations to others; use a token for all "
                            "your teams")
    return request.caller.user


@api_view("POST")
def my_invitation_accept(request, invitation_id: int):
    try:
        membership = invitation_accept_addressed(user=_answering(request), invitation_id=invitation_id,
                                                 request=request)
    except TeamRefusal as refusal:
        raise _refused(refusal) from None
    return {**_member_json(membership), "team": membership.team.slug}


@api_view("POST")
def my_invitation_decline(request, invitation_id: int):
    try:
        invitation = invitation_decline(user=_answering(request), invitation_id=invitation_id, request=request)
    except TeamRefusal as refusal:
        raise _refused(refusal) from None
    return {**_addressed_json(invitation), "declined": True}
