"""The Content-Security-Policy header on every response: scripts only from
this site (no inline handlers, no eval; page behaviours live in
static/studio/*.js), no framing, forms and sockets to this site only.
Styles may be inline: Chart.js and htmx set element styles."""

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self'",  # CSP 3: 'self' covers ws:// and wss:// to this host (the live streams)
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response
