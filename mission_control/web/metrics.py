# -*- test-case-name: tests.test_web_metrics -*-
"""
C{GET /metrics}: what the hub counts (L{mission_control.metrics.Metrics}), in the Prometheus
text format, in two places:

  - on the main listeners, for admins only: the API's tokens guard it (401 without a good one,
    403 for another role, 429 past the read rate), as they guard C{/api};
  - on the C{--metrics-listen} endpoint, if one is given (L{MetricsListener}): a listener of its
    own that serves nothing but C{GET /metrics}, without a token (a JSON 404 for any other path),
    for a Prometheus that cannot hold a token, on an address only it can reach.

Apart from the API because it answers in another format and, on its own listener, without a
token; a thin adapter like the API: the numbers are the hub's.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import Request

from mission_control import policy
from mission_control.listener import ListeningPort, Listener, urls_of
from mission_control.metrics import CONTENT_TYPE, Metrics
from mission_control.web.api import Api, ApiError
from mission_control.web.resources import Root
from mission_control.web.responses import error_body
from mission_control.web.site import HubSite

#: The path it is served at, on either kind of listener.
PATH = b"metrics"


class MetricsPage(resource.Resource):
    """
    C{GET /metrics} (and C{HEAD}): the text format, after C{authorize(request)} lets the caller
    in, when there is one to ask.  C{authorize} raises an L{ApiError} to answer instead.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics,
                 authorize: Callable[[Request], object] | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.authorize = authorize

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            self._check(request)
        except ApiError as e:
            request.setResponseCode(e.status)
            for name, value in e.headers.items():
                request.setHeader(name, value)
            request.setHeader(b"Content-Type", b"application/json")
            return error_body(e.code, e.message)
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return self.metrics.render()

    def _check(self, request: Request) -> None:
        """A path below C{/metrics} is a 404, another method a 405; then the caller's token."""
        if request.postpath not in ([], [b""]):
            raise ApiError(404, "not_found", "no such resource")
        if request.method not in (b"GET", b"HEAD"):
            raise ApiError(405, "method_not_allowed", "method not allowed",
                           {b"Allow": b"GET, HEAD"})
        if self.authorize is not None:
            self.authorize(request)


def admin_page(api: Api) -> MetricsPage:
    """
    C{/metrics} of the main site: the hub's metrics, for admins (L{policy.may_read_metrics})
    whom the API authenticates and charges a read (L{Api.authorize}).
    """
    return MetricsPage(api.hub.metrics,
                       partial(api.authorize, may=policy.may_read_metrics,
                               refusal="admin role required"))


def metrics_site(metrics: Metrics, reactor: Any = None) -> HubSite:
    """
    The site of a C{--metrics-listen} endpoint: C{GET /metrics} without a token, a JSON 404 for
    any other path, and the main site's limits on HTTP connections, heads and bodies.
    """
    root = Root()
    root.putChild(PATH, MetricsPage(metrics))
    return HubSite(root, reactor=reactor)


def metrics_url(description: str, port: ListeningPort) -> str:
    """Where a C{--metrics-listen} port serves C{/metrics}, for the start-up log."""
    host: Any = port.getHost()
    if hasattr(host, "port"):
        return urls_of(description, port)[0] + PATH.decode("ascii")
    name = getattr(host, "name", host)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return f"unix socket {name} (GET /metrics)"


class MetricsListener(Listener):
    """
    The C{--metrics-listen} endpoint: a L{Listener} (started and stopped with the hub's other
    listeners) with the site of L{metrics_site}, which logs its URL once it listens.
    """

    log = Logger()

    def __init__(self, description: str, metrics: Metrics, reactor: IReactorCore) -> None:
        super().__init__(description, metrics_site(metrics, reactor), reactor)

    def startService(self) -> None:
        super().startService()
        if self.port is not None:
            self.log.info("mission-control metrics: {url}",
                          url=metrics_url(self.description, self.port))
