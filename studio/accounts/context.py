from studio.accounts.selectors import invitations_for_user, memberships_for_user, pick_current


def teams(request):
    """The header's team switcher and Team link: the user's teams and the current one (one query), and
    how many invitations wait for the user (the Invitations link)."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated:
        return {}
    memberships = memberships_for_user(user=user)
    current = pick_current(memberships)
    return {"user_teams": [m.team for m in memberships], "current_team": current.team if current else None,
            "pending_invitations": len(invitations_for_user(user=user))}
