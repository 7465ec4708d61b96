"""The workers page: team admins only (others get 404). The table is a
partial that htmx refreshes every 3 s."""

from django.http import Http404
from django.shortcuts import render

from studio.accounts.selectors import admin_team_ids_for_user, team_ids_for_user
from studio.workers.selectors import worker_rows


def _context(request) -> dict:
    if not admin_team_ids_for_user(user=request.user):
        raise Http404
    return {"rows": worker_rows(team_ids=set(team_ids_for_user(user=request.user)))}


def worker_list(request):
    return render(request, "workers/list.html", _context(request))


def worker_table(request):
    return render(request, "workers/_table.html", _context(request))
