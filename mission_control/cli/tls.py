# -*- test-case-name: tests.test_cli_publish,tests.test_cli_watch -*-
"""
How C{publish} and C{watch} reach a hub: one loader of the C{--cafile} trust root, one TLS
client configuration (that trust root, or the system's CAs, and the host name checked against
the certificate), and one endpoint, plain TCP or TLS over it, for both commands.

C{watch} connects through L{hub_endpoint} itself; C{publish} hands L{HubEndpointFactory} to
Twisted's L{Agent}, so that its requests go through the same endpoint, with no proxy, whatever
the environment says.
"""

from __future__ import annotations

from typing import Any, cast

from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


def load_trust_root(path: str) -> Certificate:
    """
    The CA certificate in the PEM file C{path} (C{--cafile}).

    @raise usage.UsageError: when it cannot be read or holds no PEM certificate.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise usage.UsageError(f"cannot read --cafile {path}: {e.strerror}") from None
    try:
        return Certificate.loadPEM(data)
    except (OpenSSLError, ValueError):
        raise usage.UsageError(f"--cafile {path} holds no PEM certificate") from None


def client_tls(hostname: str,
               trust_root: Certificate | None = None) -> IOpenSSLClientConnectionCreator:
    """
    TLS for a connection to C{hostname}: its certificate must be signed by C{trust_root}, or by
    one of the system's CAs without one, and be issued for C{hostname} (a name or an address).
    """
    return optionsForClientTLS(hostname, trustRoot=trust_root)


def hub_endpoint(reactor: Any, scheme: str, host: str, port: int | None,
                 trust_root: Certificate | None, timeout: float) -> IStreamClientEndpoint:
    """
    The endpoint of a hub at C{host}: TLS over TCP for C{https} and C{wss} (default port 443),
    plain TCP for C{http} and C{ws} (80); connecting gives up after C{timeout} seconds.
    """
    secure = scheme in ("https", "wss")
    # HostnameEndpoint declares the interface with zope, which the type checker does not read.
    tcp = cast(IStreamClientEndpoint,
               HostnameEndpoint(reactor, host, port or (443 if secure else 80), timeout=timeout))
    if not secure:
        return tcp
    return wrapClientTLS(client_tls(host, trust_root), tcp)


@implementer(IAgentEndpointFactory)
class HubEndpointFactory:
    """
    For L{Agent.usingEndpointFactory}: every request goes to L{hub_endpoint} for its URL, with
    C{trust_root} for TLS.
    """

    def __init__(self, reactor: Any, trust_root: Certificate | None, timeout: float) -> None:
        self.reactor = reactor
        self.trust_root = trust_root
        self.timeout = timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return hub_endpoint(self.reactor, uri.scheme.decode("ascii"), uri.host.decode("idna"),
                            uri.port, self.trust_root, self.timeout)
