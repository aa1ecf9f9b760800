# -*- test-case-name: tests.test_cli_errors -*-
"""
How C{publish} and C{watch} show what went wrong: one short, plain line for a failure, whichever
layer raised it (the endpoint, TLS, Twisted's HTTP client), and untrusted text with anything a
terminal would act on escaped (L{printable}).

Twisted's HTTP client wraps the reason a request failed in L{ResponseNeverReceived} and its
kin; L{root_cause} digs it out, so that C{publish} says "connection refused" or names the
certificate problem exactly as C{watch} does.  Everything here is pure: it reads exceptions and
returns text.
"""

from __future__ import annotations

from OpenSSL.SSL import Error as OpenSSLError
from service_identity import VerificationError as ServiceIdentityError
from twisted.internet import defer
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed


def printable(text: str) -> str:
    """C{text} with anything a terminal would act on (escapes, line breaks) shown as an escape."""
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def root_cause(error: BaseException | Failure | None) -> BaseException | None:
    """
    The exception that says why, under the L{Failure} and the wrappers of Twisted's HTTP client
    (L{ResponseNeverReceived}, L{RequestTransmissionFailed}, L{ResponseFailed}).  Of the reasons
    such a wrapper holds, the first that says more than "the connection was lost" wins: a TLS
    failure also ends the connection, and the TLS failure is the news.
    """
    if isinstance(error, Failure):
        error = error.value
    while isinstance(error, (ResponseFailed, RequestTransmissionFailed)) and error.reasons:
        causes = [reason.value for reason in error.reasons]
        telling = [c for c in causes if not isinstance(c, (ConnectionDone, ConnectionLost))]
        error = (telling or causes)[0]
    return error


def is_tls_failure(error: BaseException | Failure | None) -> bool:
    """Whether C{error} is the TLS handshake's: the certificate, or TLS itself, failed."""
    return isinstance(root_cause(error), (OpenSSLError, ServiceIdentityError))


def never_connected(error: BaseException | Failure | None) -> bool:
    """
    Whether C{error} says the hub was never reached: no connection, no name, no TLS session, or
    connecting was given up.  (A failure after that is one of the request: the hub may have
    seen it.)
    """
    cause = root_cause(error)
    return isinstance(cause, (ConnectError, ConnectingCancelledError, DNSLookupError)) \
        or is_tls_failure(cause)


def certificate_problem(error: BaseException | Failure | None, host: str | None,
                        cafile: str | None) -> str | None:
    """
    What is wrong with the server's certificate, when C{error} (a failed TLS connection) says
    it could not be verified; C{None} for any other error.

    Such a failure is not worth retrying: the certificate will be the same next time.  The text
    says what to do about it, naming C{--cafile}.
    """
    cause = root_cause(error)
    if isinstance(cause, OpenSSLError) and "certificate verify failed" in str(cause):
        return _untrusted("certificate verify failed", cafile)
    if isinstance(cause, ServiceIdentityError):
        return _wrong_host(host)
    return None


def _untrusted(detail: str, cafile: str | None) -> str:
    if cafile:
        return (f"the hub's certificate is not trusted by --cafile {printable(cafile)} ({detail}); "
                f"is that the certificate of the CA that signed the hub's?")
    return (f"the hub's certificate is not trusted ({detail}); pass --cafile with the "
            f"certificate of the CA that signed it")


def _wrong_host(host: str | None) -> str:
    where = f"for {printable(host)}" if host else "for this host name"
    return (f"the hub's certificate is not valid {where}; use a host name the certificate was "
            f"issued for")


def describe_error(error: BaseException | Failure | None, host: str | None = None,
                   cafile: str | None = None) -> str:
    """
    One short, plain line for a network error; C{host} and C{cafile} (the C{--cafile} given, if
    any) make a certificate failure's line precise.
    """
    cause = root_cause(error)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is the hub running there?)"
    if isinstance(cause, DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(cause, (ConnectTimeoutError, defer.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(cause, ConnectionResetError):
        return "the connection was reset"
    if isinstance(cause, (ConnectionDone, ConnectionLost)):
        # Twisted's own text ("Connection to the other side was lost in a non-clean fashion")
        # does not say what to check; the usual cause is a URL that does not match the listener.
        return ("the connection closed before the hub answered (is a mission-control hub "
                "listening there, with TLS if the URL says https or wss?)")
    problem = certificate_problem(cause, host, cafile)
    if problem is not None:
        return problem
    text = str(cause).strip() or type(cause).__name__
    return printable(text.splitlines()[0][:200])

