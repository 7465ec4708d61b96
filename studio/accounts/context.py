from studio.accounts.selectors import memberships_for_user, pick_current


def teams(request):
    """The header's team switcher and Team link: the user's teams and the current one (one query)."""
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated:
        return {}
    memberships = memberships_for_user(user=user)
    current = pick_current(memberships)
    return {"user_teams": [m.team for m in memberships], "current_team": current.team if current else None}
