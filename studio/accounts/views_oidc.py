"""The identity provider's pages: the sign-in link (off to the provider), the
callback it sends the browser back to, and the page that says why a sign-in
was refused. All open to anonymous visitors (they are how one signs in); 404
when no provider is set up."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from studio.accounts.oidc import REFUSAL, ProviderUnavailable, provider_setting


def _configured():
    if not settings.OIDC_ISSUER:
        raise Http404("No identity provider is set up (OIDC_ISSUER)")


def _refused(request, message: str, status: int = 403):
    return render(request, "accounts/sign_in_refused.html", {"message": message}, status=status)


class SignInView(OIDCAuthenticationRequestView):
    get_settings = staticmethod(provider_setting)

    def __init__(self, *args, **kwargs):  # the library reads the endpoint here; it is read in get()
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)

    def get(self, request):
        _configured()
        try:
            self.OIDC_OP_AUTH_ENDPOINT = self.get_settings("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except ProviderUnavailable as error:
            return _refused(request, f"The identity provider cannot be reached ({error}); try again later.", 502)
        self.OIDC_RP_CLIENT_ID = self.get_settings("OIDC_RP_CLIENT_ID")
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    get_settings = staticmethod(provider_setting)

    @property
    def failure_url(self):
        return reverse("sign-in-refused")

    def get(self, request):
        _configured()
        return super().get(request)


sign_in = login_not_required(SignInView.as_view())
sign_in_callback = login_not_required(CallbackView.as_view())


@login_not_required
def sign_in_refused(request):
    return _refused(request, request.session.pop(REFUSAL, "") or "The sign-in did not complete; try again.")
