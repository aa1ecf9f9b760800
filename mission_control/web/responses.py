# -*- test-case-name: tests.test_web_responses -*-
"""
What every HTTP answer of the hub shares: the headers each response carries, the reason phrase of
a status, and the JSON error body, also as a whole raw response for the answers written below
twisted.web's request machinery (a refused connection, a refused or timed-out body).

Here, apart from the site, because the API, the dashboard and the WebSocket's handshake answer
with the same bodies and phrases.
"""

from __future__ import annotations

from http import HTTPStatus

from mission_control.events import encode_json

SERVER_NAME = b"mission-control"
#: Headers every response carries, whoever writes it.
STANDARD_HEADERS = ((b"Server", SERVER_NAME), (b"X-Content-Type-Options", b"nosniff"))


def status_phrase(code: int) -> str:
    """The standard reason phrase of an HTTP status (C{Error} for one without)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every HTTP error: C{{"error": {"code", "message"}}}."""
    return encode_json({"error": {"code": code, "message": message}})


def raw_error_response(status: int, phrase: bytes, code: str, message: str) -> bytes:
    """
    A whole JSON error response that closes the connection, for the answers written below
    twisted.web's request machinery (a refused connection, a refused or timed-out body).
    """
    body = error_body(code, message)
    head = [b"HTTP/1.1 %d %s" % (status, phrase)]
    head += [name + b": " + value for name, value in STANDARD_HEADERS]
    head += [b"Content-Type: application/json", b"Content-Length: %d" % (len(body),),
             b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
