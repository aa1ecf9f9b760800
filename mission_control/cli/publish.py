# -*- test-case-name: tests.test_cli_publish -*-
"""
C{mission-control publish status|activity}: their options, and L{publish_command}, which POSTs
the event through the hub's HTTP API (L{mission_control.cli.exchange}: treq, on the reactor, no
proxies, no redirects) and prints its seq, or the hub's error, or why the request failed.  The
console script runs it under L{task.react}, like C{watch}.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, TextIO
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.python import usage

from mission_control import events, ids
from mission_control.ids import ID_RULE
from mission_control.cli.connect_options import (
    DEFAULT_HTTP_URL,
    USER_AGENT,
    _ServerOptions,
    token_help,
)
from mission_control.cli.credentials import LOCAL_TOKEN_TTL, Credentials
from mission_control.cli.errors import describe_error, printable
from mission_control.cli.exchange import ExchangeFailed, Reply, post
from mission_control.cli.options import ENV_PREFIX, parse_json_object
from mission_control.cli.urls import display_url, http_base_url

#: How long a publish waits for the hub, connecting included (seconds).
HTTP_TIMEOUT = 10.0
#: How much of the hub's answer is read: an event's answer is small.
MAX_RESPONSE_BYTES = 1024 * 1024


# mission-control publish


class _PublishConnectionOptions(_ServerOptions):
    """Where and how C{publish} posts: the hub's HTTP URL, an admin token by default."""

    local_role = "admin"
    default_url = DEFAULT_HTTP_URL
    optParameters = [
        ["url", None, None,
         f"The hub's HTTP URL. [env {ENV_PREFIX}URL, default {DEFAULT_HTTP_URL}]"],
        ["token", None, None, token_help("admin")],
    ]

    def normalize_url(self, value: str) -> str:
        return http_base_url(value)


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
        if not ids.is_valid_id(self["subject"]):
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


def publish_command(reactor: Any, options: _PublishEventOptions, stdout: TextIO, stderr: TextIO,
                    timeout: float = HTTP_TIMEOUT) -> defer.Deferred[int]:
    """
    POST the event; print C{published <type> seq=<n>}, or the hub's error, or why it failed.
    Fires with the exit code: 0, or 1 when the event was not published.
    """
    prefix = options.command_name()
    url = options["url"] + options["path"]
    credentials: Credentials = options["credentials"]
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {credentials.token(reactor.seconds())}",
        "User-Agent": USER_AGENT,
    }

    def answered(reply: Reply) -> int:
        if not reply.ok:
            hint = credentials.refusal_hint() if reply.code == 401 else ""
            stderr.write(f"{prefix}: {reply.code} {printable(reply.phrase)}"
                         f"{_error_message(reply.body)}{hint}\n")
            return 1
        try:
            event = json.loads(reply.body)["event"]
            line = f"published {printable(str(event['type']))} seq={printable(str(event['seq']))}"
        except (ValueError, KeyError, TypeError):
            stderr.write(f"{prefix}: {display_url(url)} did not answer like a mission-control "
                         f"hub\n")
            return 1
        stdout.write(line + "\n")
        return 0

    def failed(failure: Any) -> int:
        failure.trap(ExchangeFailed)
        error: ExchangeFailed = failure.value
        why = "timed out" if error.timed_out else describe_error(
            error.reason, urlsplit(url).hostname, options["cafile"])
        if error.connected:
            stderr.write(f"{prefix}: request to {display_url(url)} failed: {why}\n")
        else:
            stderr.write(f"{prefix}: cannot reach {display_url(url)}: {why}\n")
        return 1

    d = post(reactor, url, events.encode_json(options["body"]), headers, options["trust_root"],
             timeout, MAX_RESPONSE_BYTES)
    return d.addCallbacks(answered, failed)


def _error_message(body: bytes) -> str:
    """C{": <message>"} from the hub's C{{"error": {"code", "message"}}} body, or nothing."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {printable(str(message))}" if message else ""
