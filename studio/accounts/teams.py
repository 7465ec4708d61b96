"""Teams that run themselves: invitations by single-use link (or e-mail),
roles, removing members, leaving, and the team a user works in. Only a team
admin manages a team (``policy.Action.MANAGE``); a team always keeps at least
one admin. Every change is in the audit log, and the person concerned is told.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from studio.accounts.models import ApiToken, Invitation, Membership, Team, VerifiedEmail
from studio.accounts.policy import Action, allows, invitation_is_for
from studio.accounts.selectors import user_with_verified_email, verified_email_of
from studio.audit.services import audit_record
from studio.channel_sends import group_send_now
from studio.notifications.services import notification_create, send_link_by_email

INVITE_TAG = "inv_"
MAX_INVITATION_DAYS = 30


class TeamRefusal(Exception):
    """What a team change may not do, in words for the page or the API; ``status`` 403 (not allowed)
    or 409 (not possible: the last admin, a used link)."""

    def __init__(self, message: str, *, status: int = 409, field: str | None = None):
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


def user_group_name(user_id: int) -> str:
    """The channel group of one user's open sockets (told to re-check their access)."""
    return f"user-{user_id}"


def _require_admin(user, team: Team) -> None:
    if not allows(user=user, action=Action.MANAGE, team_id=team.pk):
        raise TeamRefusal("Only a team admin can manage the team's members and invitations", status=403)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def invitation_create(*, user, team: Team, role: str = Membership.Role.MEMBER, email: str = "", days: int = 7,
                      join_url=lambda raw: f"/join/{raw}/", request=None) -> tuple[Invitation, str]:
    """A single-use invitation and its token (shown once, as a link). With ``email``, the link is sent there."""
    _require_admin(user, team)
    if role not in Membership.Role.values:
        raise TeamRefusal(f"role must be one of {', '.join(Membership.Role.values)}", status=400, field="role")
    if not 1 <= days <= MAX_INVITATION_DAYS:
        raise TeamRefusal(f"an invitation lasts 1 to {MAX_INVITATION_DAYS} days", status=400, field="days")
    try:
        if email.strip():
            validate_email(email.strip())
    except ValidationError:
        raise TeamRefusal(f"'{email[:100]}' is not an e-mail address", status=400, field="email") from None
    raw = INVITE_TAG + secrets.token_urlsafe(24)
    with transaction.atomic():
        invitation = Invitation.objects.create(team=team, role=role, email=email.strip(), hashed_token=_hash(raw),
                                               created_by=user, expires_at=timezone.now() + timedelta(days=days))
        audit_record(user=user, team=team, action="invitation.created", target=invitation, request=request,
                     detail={"role": role, "email": invitation.email, "expires_at": invitation.expires_at})
        if invitation.email:
            send_link_by_email(address=invitation.email, link=join_url(raw),
                               text=f"{user.get_username()} invites you to the team {team.name} on Tuning Studio "
                                    f"as {role}; the link works once, until {invitation.expires_at:%Y-%m-%d}")
            _tell_the_account_invited(invitation)
    return invitation, raw


def _tell_the_account_invited(invitation: Invitation) -> None:
    """An address that is already an account's (verified): the invitation waits on that user's
    Invitations page, and they are told in the app (the mail with the link went already)."""
    invitee = user_with_verified_email(invitation.email)
    if invitee is None or Membership.objects.filter(user=invitee, team=invitation.team).exists():
        return
    notification_create(user=invitee, by_email=False,
                        message=f"{invitation.created_by.get_username()} invites you to {invitation.team.name} as "
                                f"{invitation.role}: accept it under Invitations in the header")


def _remember_address(user, invitation: Invitation) -> None:
    """Joining through a link sent to the account's own address shows the address is theirs."""
    if (invitation.email and user.email.strip().lower() == invitation.email.lower()
            and not verified_email_of(user=user) and user_with_verified_email(invitation.email) is None):
        VerifiedEmail.objects.create(user=user, email=invitation.email.lower(), how=VerifiedEmail.How.INVITATION)


def invitation_for_token(raw: str) -> Invitation | None:
    """The invitation a link names, if it can still be used."""
    invitation = Invitation.objects.filter(hashed_token=_hash(raw or "")).select_related("team").first()
    if invitation is None or invitation.revoked_at or invitation.accepted_at or invitation.expires_at < timezone.now():
        return None
    return invitation


def invitation_accept(*, user, raw: str, request=None) -> Membership:
    """Join the invitation's team with its role (once: the link is then used up)."""
    with transaction.atomic():
        invitation = invitation_for_token(raw)
        if invitation is None:
            raise TeamRefusal("This invitation link is used up, revoked or expired; ask a team admin for a new one")
        claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at=None).update(
            accepted_at=timezone.now(), accepted_by=user)
        if not claimed:
            raise TeamRefusal("This invitation link was used a moment ago; ask a team admin for a new one")
        return _join(user=user, invitation=invitation, request=request)


def _join(*, user, invitation: Invitation, request=None) -> Membership:
    """The membership an accepted invitation gives (inside the caller's transaction, after it claimed it)."""
    membership, created = Membership.objects.get_or_create(user=user, team=invitation.team,
                                                           defaults={"role": invitation.role})
    if not created:
        raise TeamRefusal(f"You are already in {invitation.team.name} (as {membership.role})")
    audit_record(user=user, team=invitation.team, action="member.added", target=user, request=request,
                 detail={"role": invitation.role, "invitation": invitation.pk})
    _remember_address(user, invitation)
    return membership


def _addressed_to(user, invitation_id: int) -> Invitation:
    """The invitation, if it was sent to the user's verified address; else 404, as if it did not exist."""
    invitation = Invitation.objects.select_related("team").filter(pk=invitation_id).first()
    if invitation is None or not invitation_is_for(user=user, invitation=invitation):
        raise TeamRefusal("No such invitation for you", status=404)
    return invitation


def invitation_accept_addressed(*, user, invitation_id: int, request=None) -> Membership:
    """Accept, from the user's Invitations page, an invitation sent to their verified address."""
    invitation = _addressed_to(user, invitation_id)
    with transaction.atomic():
        claimed = Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None,
                                            expires_at__gt=timezone.now()).update(accepted_at=timezone.now(),
                                                                                  accepted_by=user)
        if not claimed:
            raise TeamRefusal("This invitation is used up, revoked or expired; ask a team admin for a new one",
                              status=410)
        return _join(user=user, invitation=invitation, request=request)


def invitation_decline(*, user, invitation_id: int, request=None) -> Invitation:
    """Turn down an invitation sent to the user's verified address: it stops working, link and all."""
    invitation = _addressed_to(user, invitation_id)
    with transaction.atomic():
        if Invitation.objects.filter(pk=invitation.pk, accepted_at=None, revoked_at=None).update(
                revoked_at=timezone.now()):
            audit_record(user=user, team=invitation.team, action="invitation.revoked", target=invitation,
                         request=request, detail={"declined": True})
    return invitation


def invitation_accept_as_new_user(*, raw: str, username: str, password: str, email: str = "", request=None):
    """An account for someone who came with an invitation link (the join page's sign-up), in the
    invitation's team: both or neither. Raises ValidationError (the password validators' words)."""
    User = get_user_model()
    if User.objects.filter(username__iexact=username).exists():
        raise TeamRefusal("That user name is taken; pick another, or log in first if it is yours", field="username")
    user = User(username=username, email=email)
    validate_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save()
        invitation_accept(user=user, raw=raw, request=request)
    return user


def invitation_revoke(*, user, invitation_id: int, request=None) -> Invitation:
    invitation = Invitation.objects.select_related("team").get(pk=invitation_id)
    _require_admin(user, invitation.team)
    if invitation.revoked_at is None and invitation.accepted_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(user=user, team=invitation.team, action="invitation.revoked", target=invitation, request=request)
    return invitation


def _other_admins(team: Team, user_id: int) -> bool:
    return Membership.objects.filter(team=team, role=Membership.Role.ADMIN).exclude(user_id=user_id).exists()


def member_set_role(*, user, team: Team, member_id: int, role: str, request=None) -> Membership:
    """Change a member's role; it holds from their next request (every surface reads it then)."""
    _require_admin(user, team)
    if role not in Membership.Role.values:
        raise TeamRefusal(f"role must be one of {', '.join(Membership.Role.values)}", status=400, field="role")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().select_related("user").get(team=team, user_id=member_id)
        if membership.role == role:
            return membership
        if membership.role == Membership.Role.ADMIN and not _other_admins(team, member_id):
            raise TeamRefusal("The team's last admin cannot stop being one; make someone else admin first")
        before, membership.role = membership.role, role
        membership.save(update_fields=["role"])
        audit_record(user=user, team=team, action="member.role_changed", target=membership.user, request=request,
                     detail={"from": before, "to": role})
        notification_create(user=membership.user, message=f"{user.get_username()} made you {role} in {team.name}")
    return membership


def _close_sockets(user_id: int) -> None:
    """Tell the user's open sockets to check their access again (they close where it is gone)."""
    layer = get_channel_layer(settings.BROADCAST_CHANNEL_LAYER)
    if layer is not None:
        transaction.on_commit(lambda: group_send_now(user_group_name(user_id), {"type": "access.changed"},
                                                     layer=layer))


def member_remove(*, user, team: Team, member_id: int, request=None) -> None:
    """Take a member out of the team (an admin), or leave it (``member_id`` is the user's own). Their jobs
    stay in the team and keep running; their tokens tied to the team stop at once, and their other tokens
    and open sockets lose the team with the membership."""
    leaving = member_id == user.pk
    if not leaving:
        _require_admin(user, team)
    with transaction.atomic():
        membership = Membership.objects.select_for_update().select_related("user").filter(
            team=team, user_id=member_id).first()
        if membership is None:
            raise TeamRefusal("Not a member of this team", status=404)
        if membership.role == Membership.Role.ADMIN and not _other_admins(team, member_id):
            raise TeamRefusal("The team's last admin cannot leave; make someone else admin first")
        membership.delete()
        ApiToken.objects.filter(user_id=member_id, team=team, revoked_at=None).update(revoked_at=timezone.now())
        audit_record(user=user, team=team, action="member.left" if leaving else "member.removed",
                     target=membership.user, request=request)
        if not leaving:
            notification_create(user=membership.user, message=f"{user.get_username()} removed you from {team.name}")
        _close_sockets(member_id)


def team_switch(*, user, team_id: int) -> Team:
    """Make ``team_id`` the team the user's new work goes to."""
    membership = Membership.objects.select_related("team").filter(user=user, team_id=team_id).first()
    if membership is None:
        raise TeamRefusal("Not a member of this team", status=404)
    with transaction.atomic():
        Membership.objects.filter(user=user, is_current=True).exclude(pk=membership.pk).update(is_current=False)
        Membership.objects.filter(pk=membership.pk).update(is_current=True)
    return membership.team

