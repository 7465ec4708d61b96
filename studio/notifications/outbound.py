"""Requests the studio makes to URLs its users typed (webhooks), kept out of
the studio's own network.

A user-supplied URL could name the metadata service (169.254.169.254), the
database or Redis on a private address, or the studio itself, and the
delivery log would turn that into a port scanner. So the host is resolved
when the request is made, every address it resolves to must be public, and
the connection goes to the address that was checked, never to a second
lookup (a DNS answer that changes in between — rebinding — gains nothing).
Intranet receivers an admin trusts are named in ``WEBHOOK_ALLOWED_HOSTS``
(host names, addresses or networks such as ``10.1.0.0/16``). The same guard
keeps a judged comparison's judge endpoint (``JUDGE_ALLOWED_HOSTS``) out of
the studio's network: ``pin_request`` is the hook that holds its HTTP client
to the checked address.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

from django.conf import settings


class AddressRefused(Exception):
    """The URL's host is not a public address and not on the admin's allow-list."""


WEBHOOKS = "WEBHOOK_ALLOWED_HOSTS"  # the setting that names the allow-list; each kind of receiver has its own


def _allow_list(allowed: str = WEBHOOKS) -> tuple[set[str], list]:
    names, networks = set(), []
    for entry in getattr(settings, allowed, []):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower())
    return names, networks


def _is_public(address) -> bool:
    # is_global is False for loopback, private, link-local, shared (100.64/10),
    # reserved and documentation ranges; multicast is global but never a receiver.
    return address.is_global and not address.is_multicast


def _allowed(host: str, address, allowed: str = WEBHOOKS) -> bool:
    names, networks = _allow_list(allowed)
    return host.lower() in names or any(address in network for network in networks)


def check_literal_host(host: str, *, allowed: str = WEBHOOKS) -> None:
    """Refuse at once a host that is written as a non-public address or is a
    local name (no DNS lookup: that happens when a request is made)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        if host.lower() not in _allow_list(allowed)[0]:
            raise AddressRefused(f"{host} is this machine")
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked when it is resolved
    if not _is_public(address) and not _allowed(host, address, allowed):
        raise AddressRefused(f"{host} is not a public address")


def resolve_public(host: str, port: int, *, allowed: str = WEBHOOKS) -> str:
    """The address to connect to for ``host``: every address it resolves to
    must be public (or allowed by the admin), else AddressRefused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    refused = [a for a in addresses if not _is_public(a) and not _allowed(host, a, allowed)]
    if refused or not addresses:
        raise AddressRefused(f"{host} resolves to a non-public address")
    return str(addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, *, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, *, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        raw = socket.create_connection((self.address, self.port), self.timeout)
        # The certificate is checked against the host name, as for any HTTPS request.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def post(url: str, body: bytes, *, headers: dict, timeout: float) -> int:
    """POST ``body`` to ``url`` on a public address; the HTTP status. Redirects
    are not followed (a 3xx is returned like any status). Raises
    AddressRefused, or OSError when the receiver cannot be reached."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("only http and https URLs with a host are allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    check_literal_host(parts.hostname)
    address = resolve_public(parts.hostname, port)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, port, address=address, timeout=timeout)
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body,
                           headers=headers)
        return connection.getresponse().status
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {exc}") from None
    finally:
        connection.close()


def pin_request(request, *, allowed: str) -> None:
    """An HTTP client's request hook (httpx's ``event_hooks``, which the ``openai`` client takes): checks the
    request's host like ``post`` does, before any connection, and sends the request to the address that was
    checked, keeping the host name for the Host header and the certificate (TLS SNI). Runs again for each
    redirect. Raises AddressRefused."""
    url = request.url
    if url.scheme not in ("http", "https") or not url.host:
        raise AddressRefused("only http and https URLs with a host are allowed")
    check_literal_host(url.host, allowed=allowed)
    address = resolve_public(url.host, url.port or (443 if url.scheme == "https" else 80), allowed=allowed)
    request.extensions = {**request.extensions, "sni_hostname": url.host}
    request.url = url.copy_with(host=address)
