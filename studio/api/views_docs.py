"""The API's readable documentation: Swagger UI (vendored in static/vendor,
so it works offline) over /api/v1/openapi.json, after worked examples in
curl and Python. A page like the others: behind the login, in the nav."""

from __future__ import annotations

from django.shortcuts import render


def api_docs(request):
    origin = request.build_absolute_uri("/").rstrip("/")
    return render(request, "api/docs.html", {"origin": origin})
