# -*- test-case-name: tests.test_cli -*-
"""
C{mission-control publish status|activity}: their options, and L{publish_command}, which POSTs
the event through the hub's HTTP API with urllib (blocking; no proxies, no redirects) and prints
its seq, or the hub's error, or why the request failed.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any, Callable, TextIO
from urllib.parse import quote, urlsplit

from twisted.python import usage

from mission_control import auth, events
from mission_control.ids import ID_RULE
from mission_control.cli.common import (
    DEFAULT_HTTP_URL,
    ENV_PREFIX,
    HTTP_TIMEOUT,
    LOCAL_TOKEN_TTL,
    MAX_RESPONSE_BYTES,
    USER_AGENT,
    Credentials,
    _read_cafile,
    _ServerOptions,
    _token_help,
    describe_error,
    display_url,
    http_base_url,
    parse_json_object,
    printable,
)


# mission-control publish


class _PublishConnectionOptions(_ServerOptions):
    """Where and how C{publish} posts: the hub's HTTP URL, an admin token by default."""

    local_role = "admin"
    default_url = DEFAULT_HTTP_URL
    optParameters = [
        ["url", None, None,
         f"The hub's HTTP URL. [env {ENV_PREFIX}URL, default {DEFAULT_HTTP_URL}]"],
        ["token", None, None, _token_help("admin")],
    ]

    def normalize_url(self, value: str) -> str:
        return http_base_url(value)

    def load_tls(self, path: str, url: str) -> ssl.SSLContext:
        data = _read_cafile(path)
        try:
            return ssl.create_default_context(cadata=data.decode("ascii"))
        except (ssl.SSLError, ValueError):
            raise usage.UsageError(f"--cafile {path} holds no PEM certificate") from None


class _PublishEventOptions(_PublishConnectionOptions):
    """A C{publish} subcommand: an event payload from positional arguments and options."""

    #: the names of the two positional arguments, for messages
    arguments: tuple[str, str] = ("ID", "VALUE")
    validator: Callable[..., dict]
    path_template: str

    def parseArgs(self, *args: str) -> None:
        if len(args) < 2:
            missing = " and ".join(self.arguments[len(args):])
            raise usage.UsageError(f"missing {missing}")
        if len(args) > 2:
            raise usage.UsageError(f"unexpected argument {args[2]!r} (quote text with spaces)")
        self["subject"], self["value"] = args

    def postOptions(self) -> None:
        if not auth.is_valid_id(self["subject"]):
            raise usage.UsageError(
                f"{self.arguments[0]} must be {ID_RULE}"
            )
        body = self.body()
        try:
            self.validator(body, time.time(), self["subject"])
        except events.ValidationError as e:
            raise usage.UsageError(e.message) from None
        self["body"] = body
        self["path"] = self.path_template.format(quote(self["subject"], safe=""))
        self.resolve_connection()

    def body(self) -> dict:
        raise NotImplementedError


class PublishStatusOptions(_PublishEventOptions):
    synopsis = "AGENT_ID STATUS [--message TEXT] [--name NAME] [--metadata JSON] [options]"
    longdesc = (
        "POST /api/agents/AGENT_ID/status. STATUS is one of: " + ", ".join(events.STATUSES) + "."
    )
    optParameters = [
        ["message", "m", None, "What the agent is doing (at most 1024 characters)."],
        ["name", None, None, "The agent's display name."],
        ["metadata", None, None, "A JSON object (at most 8 KiB)."],
    ]
    arguments = ("AGENT_ID", "STATUS")
    validator = staticmethod(events.agent_status)
    path_template = "/api/agents/{}/status"

    def body(self) -> dict:
        body: dict[str, Any] = {"status": self["value"]}
        for name in ("message", "name"):
            if self[name] is not None:
                body[name] = self[name]
        if self["metadata"] is not None:
            body["metadata"] = parse_json_object(self["metadata"], "--metadata")
        return body


class PublishActivityOptions(_PublishEventOptions):
    synopsis = "SESSION_ID ACTIVITY [--agent AGENT_ID] [--summary TEXT] [--detail JSON] [options]"
    longdesc = (
        "POST /api/sessions/SESSION_ID/activity. ACTIVITY is a short word: started, message, "
        "tool_call, completed, failed, ..."
    )
    optParameters = [
        ["agent", None, None, "The agent the activity belongs to."],
        ["summary", "s", None, "One line about it (at most 1024 characters)."],
        ["detail", None, None, "A JSON object (at most 8 KiB)."],
    ]
    arguments = ("SESSION_ID", "ACTIVITY")
    validator = staticmethod(events.session_activity)
    path_template = "/api/sessions/{}/activity"

    def body(self) -> dict:
        body: dict[str, Any] = {"activity": self["value"]}
        if self["agent"] is not None:
            body["agentId"] = self["agent"]
        if self["summary"] is not None:
            body["summary"] = self["summary"]
        if self["detail"] is not None:
            body["detail"] = parse_json_object(self["detail"], "--detail")
        return body


class PublishOptions(_PublishConnectionOptions):
    synopsis = "status|activity ... [--url URL] [--token JWT] [--cafile PEM]"
    longdesc = (
        "Publish an event through the hub's HTTP API and print its seq. Without --token, a "
        f"{LOCAL_TOKEN_TTL // 60}-minute admin token is minted from the local development secret "
        "(--data-dir, --jwt-secret-file). Connection options go before or after the subcommand."
    )
    subCommands = [
        ["status", None, PublishStatusOptions, "Publish an agent:status event."],
        ["activity", None, PublishActivityOptions, "Publish a session:activity event."],
    ]

    def postOptions(self) -> None:
        self.require_subcommand()


def publish_command(options: _PublishEventOptions, stdout: TextIO, stderr: TextIO,
                    now: float) -> int:
    """POST the event; print C{published <type> seq=<n>}, or the hub's error, or why it failed."""
    prefix = options.command_name()
    url = options["url"] + options["path"]
    credentials: Credentials = options["credentials"]
    request = urllib.request.Request(
        url,
        data=events.encode_json(options["body"]),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {credentials.token(now)}",
            "User-Agent": USER_AGENT,
        },
    )
    try:
        with _opener(options["tls"]).open(request, timeout=HTTP_TIMEOUT) as response:
            answer = response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as e:
        with e:
            message = _error_message(e.read(MAX_RESPONSE_BYTES))
        hint = credentials.refusal_hint() if e.code == 401 else ""
        stderr.write(f"{prefix}: {e.code} {printable(str(e.reason))}{message}{hint}\n")
        return 1
    except urllib.error.URLError as e:
        why = describe_error(e.reason, urlsplit(url).hostname, options["cafile"])
        stderr.write(f"{prefix}: cannot reach {display_url(url)}: {why}\n")
        return 1
    except (OSError, http.client.HTTPException) as e:
        stderr.write(f"{prefix}: request to {display_url(url)} failed: {describe_error(e)}\n")
        return 1
    try:
        event = json.loads(answer)["event"]
        line = f"published {printable(str(event['type']))} seq={printable(str(event['seq']))}"
    except (ValueError, KeyError, TypeError):
        stderr.write(f"{prefix}: {display_url(url)} did not answer like a mission-control hub\n")
        return 1
    stdout.write(line + "\n")
    return 0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The hub never redirects; following one would hand the bearer token to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirects(),
        urllib.request.HTTPSHandler(context=context or ssl.create_default_context()),
    )


def _error_message(body: bytes) -> str:
    """C{": <message>"} from the hub's C{{"error": {"code", "message"}}} body, or nothing."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {printable(str(message))}" if message else ""
