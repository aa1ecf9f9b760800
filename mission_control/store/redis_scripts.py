# -*- test-case-name: tests.test_store_redis_log -*-
"""
The Redis side of the shared store: the names of its keys (L{RedisKeys}) and the Lua scripts
that change them (L{Script}), each run atomically by Redis, so that several hub processes
appending at once still get one gap-free seq, one history and one latest state.

Every key of one hub starts with C{{<prefix>}:}: the braces make the prefix the key's hash tag,
so a Redis Cluster puts all of a hub's keys in one slot and the scripts may touch them together
(the scripts also build some key names themselves, the per-agent session sets, which Redis only
allows because they share that slot).  Cleaning up a hub is C{SCAN MATCH {<prefix>}:*}.

    {P}:epoch            string   the history's name, set once (SET NX) by the first node to load
    {P}:seq              string   the seq of the newest event ever appended (INCR)
    {P}:events           stream   the history: entry id <seq>-0; fields type, payload (JSON),
                                  ts (the envelope's), created (seconds, for retention by age)
    {P}:latest:agents    hash     agentId -> latest agent:status payload (JSON)
    {P}:latest:sessions  hash     sessionId -> latest session:activity payload (JSON)
    {P}:order:agents     zset     agentId, scored by the seq of its latest event: least
    {P}:order:sessions   zset     recently updated first, the eviction order of the caps
    {P}:session-agent    hash     sessionId -> agentId of its latest payload (the per-agent cap)
    {P}:agent-sessions:<agentId>  zset  that agent's sessions in the latest state, by seq
    {P}:owners           hash     sessionId -> the agent that owns it (first agent named)
    {P}:owner-seqs       zset     owned sessionId, scored by the seq of its newest event
    {P}:idem:<n>:<user>:<key>     hash  an idempotency key (n: the length of user), with the
                                  events it produced; expires after the window (EXPIRE)
    {P}:positions        hash     <n>:<user>:<client> -> saved seq
    {P}:position-times   zset     <n>:<user>:<client>, scored by when it was saved
    {P}:appended         channel  one message per script that appended (redis_pubsub)

Why scripts: assigning a seq, writing the history, the latest state, the owners and the key must
be one step, or two nodes interleave them.  A script is not rolled back when a command in it
fails, so each one checks everything that can refuse (epoch, keys, owners) before its first
write; the writes left (INCR, XADD, HSET, ZADD) fail only on a wrong key type or out of memory.
Redis must run with C{maxmemory-policy noeviction}: an evicted key is a corrupted history.

The module is a little over 400 lines because it holds the Lua of every script, which reads
best next to the table of the keys it changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mission_control.events import AGENT_STATUS, SESSION_ACTIVITY, encode_json


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1, for EVALSHA (with EVAL when the server does not know it)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode("utf-8")).hexdigest()
        object.__setattr__(self, "sha", digest)


class RedisKeys:
    """The names of one hub's keys, for the key prefix C{prefix} (see the module's table)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = "{" + prefix + "}:"
        self.epoch = self.base + "epoch"
        self.seq = self.base + "seq"
        self.events = self.base + "events"
        self.latest = {AGENT_STATUS: self.base + "latest:agents",
                       SESSION_ACTIVITY: self.base + "latest:sessions"}
        self.order = {AGENT_STATUS: self.base + "order:agents",
                      SESSION_ACTIVITY: self.base + "order:sessions"}
        self.session_agent = self.base + "session-agent"
        self.agent_sessions = self.base + "agent-sessions:"
        self.owners = self.base + "owners"
        self.owner_seqs = self.base + "owner-seqs"
        self.positions = self.base + "positions"
        self.position_times = self.base + "position-times"
        self.channel = self.base + "appended"
        #: The SCAN MATCH pattern of every key of this hub.
        self.pattern = self.base + "*"

    def idempotency(self, user: str, key: str) -> str:
        """The key of C{user}'s idempotency key C{key}: the length of C{user} keeps it unambiguous."""
        return f"{self.base}idem:{len(user)}:{user}:{key}"

    @staticmethod
    def position_field(user: str, client: str) -> str:
        """The field of C{user}'s client C{client} in the positions hash."""
        return f"{len(user)}:{user}:{client}"

    def append_keys(self) -> list[str]:
        """KEYS of the append scripts, in the order L{APPEND_PRELUDE} reads them."""
        return [self.epoch, self.seq, self.events,
                self.latest[AGENT_STATUS], self.order[AGENT_STATUS],
                self.latest[SESSION_ACTIVITY], self.order[SESSION_ACTIVITY],
                self.owners, self.owner_seqs, self.session_agent]

    def load_keys(self) -> list[str]:
        """KEYS of L{LOAD}."""
        return [self.epoch, self.seq, self.events,
                self.latest[AGENT_STATUS], self.order[AGENT_STATUS],
                self.latest[SESSION_ACTIVITY], self.order[SESSION_ACTIVITY], self.owners]

    def trim_keys(self) -> list[str]:
        """KEYS of L{TRIM}."""
        return [self.events, self.seq, self.owners, self.owner_seqs,
                self.latest[SESSION_ACTIVITY], self.positions, self.position_times]


#: How many ARGV of the append scripts come before the items (see L{APPEND_PRELUDE}).
APPEND_HEADER = 14
#: ARGV per item of L{APPEND_EACH}: type, state key, payload, agentId, claimant, idem key,
#: fingerprint.
EACH_FIELDS = 7
#: ARGV per item of L{APPEND_MANY}: type, state key, payload, agentId.
MANY_FIELDS = 4

# Replies of the append scripts, per item (APPEND_EACH) or for the batch (APPEND_MANY).
APPENDED = 1  # {1, seq}: appended (a batch: seq of its first event)
REPEATED = 2  # {2, first seq, ts, count, type1, payload1, ...}: an idempotent repeat
CONFLICT = 3  # {3}: the key was used for another request
TAKEN = 4  # {4, owner}: the session belongs to another agent than the claimant
#: The error a script answers when the epoch in Redis is not the one the node loaded.
EPOCH_ERROR = "MCEPOCH"

def message_head(epoch: str, created: float) -> bytes:
    """
    The start of the message an append script publishes (redis_pubsub describes it): a JSON
    object left open, which the script continues with the seqs and events it appended.
    """
    return encode_json({"epoch": epoch, "created": created})[:-1]


#: What the append scripts share.  KEYS: epoch, seq, events, latest agents, order agents,
#: latest sessions, order sessions, owners, owner-seqs, session-agent.  ARGV: 1 the epoch the
#: node loaded, 2 now (seconds), 3 ts, 4 ts as JSON, 5 max_events, 6 max_agents, 7 max_sessions,
#: 8 max_sessions_per_agent, 9 the most payload bytes a message carries inline, 10 the prefix
#: of the agent-sessions keys, 11 the channel, 12 the message's head (a JSON object without
#: its closing brace), 13 the idempotency window (seconds), 14 the keys' TTL (seconds).
APPEND_PRELUDE = r"""
local AGENT, SESSION = 'agent:status', 'session:activity'
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('MCEPOCH the history in Redis is not the one this node loaded')
end
local now_s, ts = ARGV[2], ARGV[3]
local now = tonumber(now_s)
local caps = {[AGENT] = tonumber(ARGV[6]), [SESSION] = tonumber(ARGV[7])}
local per_agent = tonumber(ARGV[8])
local latest = {[AGENT] = KEYS[4], [SESSION] = KEYS[6]}
local order = {[AGENT] = KEYS[5], [SESSION] = KEYS[7]}
local window = tonumber(ARGV[13])
local appended = {}

local function int(n) return string.format('%d', n) end

local function unindex(session)
  local agent = redis.call('HGET', KEYS[10], session)
  if agent then
    redis.call('ZREM', ARGV[10] .. agent, session)
    redis.call('HDEL', KEYS[10], session)
  end
end

local function forget(kind, key)
  redis.call('HDEL', latest[kind], key)
  redis.call('ZREM', order[kind], key)
  if kind == SESSION then unindex(key) end
end

-- The latest state, as store/latest.py keeps it: the entry moves to the end of the order, an
-- agent's sessions past its cap go first, then whatever is past the type's cap.
local function set_latest(kind, key, payload, agent, seq)
  redis.call('HSET', latest[kind], key, payload)
  redis.call('ZADD', order[kind], int(seq), key)
  if kind == SESSION then
    unindex(key)
    if agent ~= '' then
      local mine = ARGV[10] .. agent
      redis.call('HSET', KEYS[10], key, agent)
      redis.call('ZADD', mine, int(seq), key)
      while redis.call('ZCARD', mine) > per_agent do
        forget(SESSION, redis.call('ZPOPMIN', mine)[1])
      end
    end
  end
  while redis.call('ZCARD', order[kind]) > caps[kind] do
    forget(kind, redis.call('ZPOPMIN', order[kind])[1])
  end
end

-- A session's first activity naming an agent makes it the owner; every activity of an owned
-- session moves its owner-seq, which says how long the owner must be kept.
local function own(key, agent, seq)
  if redis.call('HEXISTS', KEYS[8], key) == 1 then
    redis.call('ZADD', KEYS[9], int(seq), key)
  elseif agent ~= '' then
    redis.call('HSET', KEYS[8], key, agent)
    redis.call('ZADD', KEYS[9], int(seq), key)
  end
end

local function append(kind, key, payload, agent)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '=', ARGV[5], int(seq) .. '-0',
             'type', kind, 'payload', payload, 'ts', ts, 'created', now_s)
  set_latest(kind, key, payload, agent, seq)
  if kind == SESSION then own(key, agent, seq) end
  appended[#appended + 1] = {seq, kind, payload}
  return seq
end

-- The owner that refuses a claimant's activity in a session, or nil.
local function taken(kind, key, claimant, claims)
  if kind ~= SESSION or claimant == '' then return nil end
  local owner = redis.call('HGET', KEYS[8], key) or (claims and claims[key])
  if owner and owner ~= claimant then return owner end
  return nil
end

-- nil when the key is free (never used, or used longer ago than the window), else 'conflict'
-- or 'repeat'.  A key of a batch is not the key of a single append, and the other way round.
local function remembered(idem, fingerprint, batch)
  if idem == '' then return nil end
  local known = redis.call('HMGET', idem, 'fingerprint', 'batch', 'created')
  if not known[1] or now - tonumber(known[3]) >= window then return nil end
  if known[1] ~= fingerprint or known[2] ~= batch then return 'conflict' end
  return 'repeat'
end

local function replay(idem)
  local head = redis.call('HMGET', idem, 'first', 'count', 'ts')
  local count = tonumber(head[2])
  local reply = {2, tonumber(head[1]), head[3], count}
  for i = 1, count do
    local event = redis.call('HMGET', idem, 'type:' .. i, 'payload:' .. i)
    reply[#reply + 1] = event[1]
    reply[#reply + 1] = event[2]
  end
  return reply
end

local function remember(idem, fingerprint, batch, events)
  redis.call('DEL', idem)
  redis.call('HSET', idem, 'fingerprint', fingerprint, 'batch', batch, 'created', now_s,
             'first', int(events[1][1]), 'count', int(#events), 'ts', ts)
  for i, event in ipairs(events) do
    redis.call('HSET', idem, 'type:' .. i, event[2], 'payload:' .. i, event[3])
  end
  redis.call('EXPIRE', idem, ARGV[14])
end

-- One message for everything this script appended: the head, the seqs it covers, and the
-- events themselves unless their payloads pass the inline limit.
local function publish()
  if #appended == 0 then return end
  local parts = {ARGV[12], ',"first":', int(appended[1][1]), ',"last":',
                 int(appended[#appended][1])}
  local size = 0
  for _, event in ipairs(appended) do size = size + #event[3] end
  if size <= tonumber(ARGV[9]) then
    parts[#parts + 1] = ',"events":['
    for i, event in ipairs(appended) do
      if i > 1 then parts[#parts + 1] = ',' end
      parts[#parts + 1] = '{"seq":' .. int(event[1]) .. ',"type":"' .. event[2] .. '","ts":'
      parts[#parts + 1] = ARGV[4]
      parts[#parts + 1] = ',"payload":'
      parts[#parts + 1] = event[3]
      parts[#parts + 1] = '}'
    end
    parts[#parts + 1] = ']'
  end
  parts[#parts + 1] = '}'
  redis.call('PUBLISH', ARGV[11], table.concat(parts))
end
"""

#: Each item appended, or refused, alone (IEventStore.append_each).  ARGV 15: the number of
#: items; then EACH_FIELDS per item.  Reply: one reply per item, in order.
APPEND_EACH = Script("append_each", APPEND_PRELUDE + r"""
local replies = {}
for i = 0, tonumber(ARGV[15]) - 1 do
  local b = 16 + i * 7
  local kind, key, payload, agent = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local claimant, idem, fingerprint = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local known = remembered(idem, fingerprint, '0')
  if known == 'conflict' then
    replies[#replies + 1] = {3}
  elseif known == 'repeat' then
    replies[#replies + 1] = replay(idem)
  else
    local owner = taken(kind, key, claimant, nil)
    if owner then
      replies[#replies + 1] = {4, owner}
    else
      local seq = append(kind, key, payload, agent)
      if idem ~= '' then remember(idem, fingerprint, '0', {appended[#appended]}) end
      replies[#replies + 1] = {1, seq}
    end
  end
end
publish()
return replies
""")

#: All items or none (IEventStore.append_many).  ARGV 15 the idempotency key's name or '',
#: 16 its fingerprint, 17 the claimant or '', 18 the number of items; then MANY_FIELDS per item.
#: Reply: {1, first seq}, {2, ...} a repeat, {3} a conflict, {4, owner, index} refused.
APPEND_MANY = Script("append_many", APPEND_PRELUDE + r"""
local idem, fingerprint, claimant = ARGV[15], ARGV[16], ARGV[17]
local count = tonumber(ARGV[18])
local known = remembered(idem, fingerprint, '1')
if known == 'conflict' then return {3} end
if known == 'repeat' then return replay(idem) end
local claims = {}
for i = 0, count - 1 do
  local b = 19 + i * 4
  local kind, key, agent = ARGV[b], ARGV[b + 1], ARGV[b + 3]
  local owner = taken(kind, key, claimant, claims)
  if owner then return {4, owner, i} end
  if kind == SESSION and agent ~= '' and not claims[key]
      and redis.call('HEXISTS', KEYS[8], key) == 0 then
    claims[key] = agent
  end
end
local first
for i = 0, count - 1 do
  local b = 19 + i * 4
  local seq = append(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3])
  first = first or seq
end
if idem ~= '' then remember(idem, fingerprint, '1', appended) end
publish()
return {1, first}
""")

#: What a starting node needs, read in one step so that the state matches last_seq exactly.
#: KEYS: epoch, seq, events, latest agents, order agents, latest sessions, order sessions,
#: owners.  ARGV 1: an epoch to set if there is none (a new history).  Also repairs a seq
#: counter behind the stream (its key lost alone), so that XADD's ids keep increasing.
#: Reply: {epoch, created (0/1), last_seq, first_seq, agent payloads, session payloads (each
#: least recently updated first), owners as a flat list}.
LOAD = Script("load", r"""
local created = redis.call('SET', KEYS[1], ARGV[1], 'NX') and 1 or 0
local epoch = redis.call('GET', KEYS[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = nil
if redis.call('EXISTS', KEYS[3]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[3])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local top = tonumber(string.match(info[i + 1], '^(%d+)-'))
      if top > last then
        last = top
        redis.call('SET', KEYS[2], string.format('%d', top))
      end
    elseif info[i] == 'first-entry' and info[i + 1] then
      first = tonumber(string.match(info[i + 1][1], '^(%d+)-'))
    end
  end
end
-- HMGET in chunks: unpack() of more than a few thousand values overflows Lua's stack.
local function state(hash, zset)
  local keys = redis.call('ZRANGE', zset, 0, -1)
  local values = {}
  for i = 1, #keys, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #keys) do chunk[#chunk + 1] = keys[j] end
    local got = redis.call('HMGET', hash, unpack(chunk))
    for j = 1, #chunk do values[#values + 1] = got[j] end
  end
  return values
end
return {epoch, created, last, first or (last + 1), state(KEYS[4], KEYS[5]),
        state(KEYS[6], KEYS[7]), redis.call('HGETALL', KEYS[8])}
""")

#: Retention.  KEYS: events, seq, owners, owner-seqs, latest sessions, positions,
#: position-times.  ARGV: 1 the cutoff (now - max_age), 2 max_events, 3 the most events to
#: look at.  Events older than the cutoff go from the front of the stream, stopping at the first
#: young enough one (the history stays one unbroken range of seqs); owners of sessions with no
#: event left and no latest state go; positions saved before the cutoff go.
#: Reply: {first_seq, more}: more is 1 when the look-at budget ran out first.
TRIM = Script("trim", r"""
redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', ARGV[2])
local cutoff, budget, more = tonumber(ARGV[1]), tonumber(ARGV[3]), 0
local start, oldest = '-', nil
while more == 0 do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  if #page == 0 then break end
  local young = false
  for _, entry in ipairs(page) do
    local fields, created = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'created' then created = tonumber(fields[i + 1]) end
    end
    if created and created >= cutoff then
      young = true
      break
    end
    oldest = entry[1]
    budget = budget - 1
    if budget <= 0 then
      more = 1
      break
    end
  end
  if young then break end
  start = '(' .. page[#page][1]
end
if oldest then
  local seq = tonumber(string.match(oldest, '^(%d+)-'))
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', seq + 1))
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = last + 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '^(%d+)-')) end
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%d', first))
for _, session in ipairs(stale) do
  if redis.call('HEXISTS', KEYS[5], session) == 0 then
    redis.call('HDEL', KEYS[3], session)
    redis.call('ZREM', KEYS[4], session)
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', '(' .. ARGV[1])
for _, client in ipairs(old) do
  redis.call('HDEL', KEYS[6], client)
  redis.call('ZREM', KEYS[7], client)
end
return {first, more}
""")

#: A client's position.  KEYS: positions, position-times.  ARGV: field, seq, now.
SAVE_POSITION = Script("save_position", r"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
""")
