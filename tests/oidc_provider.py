"""A small OpenID Connect provider on 127.0.0.1 for the sign-in tests, built
from authlib's server parts (the authorization code grant with its OpenID
and PKCE extensions) on Flask: discovery, /authorize, /token, /userinfo and the JWKS,
ID tokens signed RS256 with a key made for the run. The person signing in is
whoever the test says is signed in at the provider (``provider.person``),
as when a colleague is already logged in at the company's identity
provider; the provider then answers /authorize at once, as real ones do
after consent was given."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

CLIENT_ID, CLIENT_SECRET = "tuning-studio", "client-secret-for-the-test"


@dataclass
class Client:
    redirect_uris: list[str]
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope):
        return " ".join(s for s in scope.split() if s in ("openid", "email", "profile", "groups"))

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    person: dict
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None


@dataclass
class Token:
    access_token: str
    scope: str
    person: dict
    client_id: str
    issued_at: float = field(default_factory=time.time)

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 3600

    def is_expired(self):
        return time.time() > self.issued_at + 3600

    def is_revoked(self):
        return False

    def get_user(self):
        return self.person


class OidcProvider:
    """``start()`` serves it on a free port and returns the issuer URL; ``person`` holds the claims of
    who is signed in there (sub, email, email_verified, preferred_username, groups)."""

    def __init__(self):
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.published_key = self.key  # what the JWKS serves: a test swaps it to see a forged signature refused
        self.client = Client(redirect_uris=[])
        self.person: dict = {}
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, Token] = {}
        self.requests: list[str] = []  # the paths the studio asked for, in order
        self.issuer = ""

    def start(self) -> str:
        self.server = make_server("127.0.0.1", 0, self._app(), threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.issuer

    def stop(self) -> None:
        self.server.shutdown()

    def _app(self) -> Flask:
        provider = self
        app = Flask("oidc-test-provider")

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, req):
                provider.codes[code] = Code(code=code, client_id=req.client.client_id,
                                            redirect_uri=req.payload.redirect_uri, scope=req.payload.scope,
                                            nonce=req.payload.data.get("nonce"), person=dict(req.user),
                                            code_challenge=req.payload.data.get("code_challenge"),
                                            code_challenge_method=req.payload.data.get("code_challenge_method"))

            def query_authorization_code(self, code, client):
                found = provider.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code):
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return authorization_code.person

        class IdToken(OpenIDCode):
            def exists_nonce(self, nonce, req):
                return any(code.nonce == nonce for code in provider.codes.values())

            def resolve_client_private_key(self, client):
                return provider.key

            def get_client_algorithm(self, client):
                return "RS256"

            def get_client_claims(self, client):
                return {"iss": provider.issuer, "aud": [client.client_id]}

            def get_encode_header(self, client):
                return {"alg": "RS256", "kid": "test-key"}

            def generate_user_info(self, user, scope):
                return UserInfo(**user)

        def save_token(token, req):
            provider.tokens[token["access_token"]] = Token(access_token=token["access_token"], scope=token["scope"],
                                                           person=dict(req.user), client_id=req.client.client_id)

        server = AuthorizationServer(app, query_client=lambda cid: provider.client if cid == CLIENT_ID else None,
                                     save_token=save_token)
        server.register_grant(CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)])

        class Validator(BearerTokenValidator):
            def authenticate_token(self, token_string):
                return provider.tokens.get(token_string)

        protect = ResourceProtector()
        protect.register_token_validator(Validator())

        @app.before_request
        def record():
            provider.requests.append(request.path)

        @app.get("/.well-known/openid-configuration")
        def discovery():
            return jsonify({
                "issuer": provider.issuer, "authorization_endpoint": f"{provider.issuer}/authorize",
                "token_endpoint": f"{provider.issuer}/token", "userinfo_endpoint": f"{provider.issuer}/userinfo",
                "jwks_uri": f"{provider.issuer}/jwks", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            })

        @app.get("/authorize")
        def authorize():
            return server.create_authorization_response(grant_user=provider.person)

        @app.post("/token")
        def token():
            return server.create_token_response()

        @app.get("/userinfo")
        @protect("openid")
        def userinfo():
            return jsonify(current_token.person)

        @app.get("/jwks")
        def jwks():
            return jsonify({"keys": [provider.published_key.as_dict(private=False)]})

        return app
