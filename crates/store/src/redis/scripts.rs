//! The Lua scripts that make every multi-key step atomic in Redis itself.
//!
//! Each *tag script* works on the keys of one user tag `{T}` (one Cluster slot) and is
//! given `now` by the caller: no script reads Redis's clock. Its arguments start with a
//! common header:
//!
//! | ARGV | what |
//! |---|---|
//! | 1 | the tag's key base `P{T}:` |
//! | 2 | `now`, ms since the epoch (the caller's clock) |
//! | 3 | `ended_retention`, ms |
//! | 4 | slack, ms added to every TTL so Redis never drops a key before the store would |
//! | 5 | the invalidation channel |
//! | 6 | `n`, the number of pending touches, then `n` touches (below) |
//!
//! A touch is five arguments: `id`, the first and the last touch, the session's idle
//! timeout (ms) and `expires_at` (neither ever changes, so the node's copy is good).
//!
//! and the script's own arguments follow. Before doing its work a tag script applies the
//! touches (the node's coalesced idle-timer slides for this tag), so a logout after an
//! unflushed touch is judged on the touched session.
//!
//! Ending a session (`finish`) deletes its hash, writes its tombstone, removes it from the
//! user's set, publishes its id on the invalidation channel and records an *effect* for the
//! cross-user (`{global}`) keys. Effects are a flat list of records:
//!
//! | record | meaning |
//! |---|---|
//! | `c id deadline policy user_new` | created: index it, count it |
//! | `e id reason policy purge_at user_gone` | ended: unindex, schedule the purge, count |
//! | `r id deadline` | still live at the sweep: due again at its new deadline |
//! | `m id user_gone` | its hash had already expired in Redis: unindex it |
//! | `p member reason` | tombstone purged: drop the purge entry, uncount it |
//! | `q member purge_at` | tombstone not yet due: schedule it again |
//! | `v kind id user version reason at` | a change event: `XADD` it to the events stream |
//!
//! Every create, update and end records a `v` effect, so the change event goes wherever the
//! other effects go. On a single Redis (standalone or Sentinel) the global keys are passed
//! as `KEYS[2..6]` and `apply` runs inside the same script: the change, its bookkeeping and
//! its event are one atomic step. In a Cluster they live in another slot; the script returns
//! the effects and the store applies them at once with the `global` script (see
//! `docs/redis.md` for why that second step cannot break the invariants, and what it means
//! for events).

use redis::{Cmd, Script, ToRedisArgs};
use sessiond_core::{SessionId, Timestamp};

use super::cache::Touch;

/// Most change events the stream keeps (trimmed approximately, `MAXLEN ~`): a consumer that
/// is further behind than this gets a reset.
pub(super) const EVENTS_MAXLEN: u64 = 100_000;

/// Applies effects to the global keys `g = {ids, due, purge, stats, events}`. Expects
/// `EVENTS_MAXLEN` to be defined before it.
const APPLY: &str = r#"
local function apply(g, list)
  local function count(field, by)
    if redis.call('HINCRBY', g[4], field, by) <= 0 then redis.call('HDEL', g[4], field) end
  end
  local i = 1
  while i <= #list do
    local k = list[i]
    if k == 'c' then
      redis.call('ZADD', g[1], 0, list[i+1])
      redis.call('ZADD', g[2], list[i+2], list[i+1])
      count('live', 1)
      count('pol:' .. list[i+3], 1)
      if list[i+4] == '1' then count('users', 1) end
      i = i + 5
    elseif k == 'e' then
      redis.call('ZREM', g[1], list[i+1])
      redis.call('ZREM', g[2], list[i+1])
      redis.call('ZADD', g[3], list[i+4], list[i+1] .. ':' .. list[i+2])
      count('live', -1)
      count('pol:' .. list[i+3], -1)
      count('r:' .. list[i+2], 1)
      if list[i+5] == '1' then count('users', -1) end
      i = i + 6
    elseif k == 'r' then
      redis.call('ZADD', g[2], 'XX', list[i+2], list[i+1])
      i = i + 3
    elseif k == 'm' then
      redis.call('ZREM', g[1], list[i+1])
      redis.call('ZREM', g[2], list[i+1])
      if list[i+2] == '1' then count('users', -1) end
      i = i + 3
    elseif k == 'p' then
      redis.call('ZREM', g[3], list[i+1])
      count('r:' .. list[i+2], -1)
      i = i + 3
    elseif k == 'q' then
      redis.call('ZADD', g[3], list[i+2], list[i+1])
      i = i + 3
    elseif k == 'v' then
      if list[i+5] == '' then
        redis.call('XADD', g[5], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', list[i+1],
          'id', list[i+2], 'user', list[i+3], 'ver', list[i+4], 'at', list[i+6])
      else
        redis.call('XADD', g[5], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', list[i+1],
          'id', list[i+2], 'user', list[i+3], 'ver', list[i+4], 'reason', list[i+5],
          'at', list[i+6])
      end
      i = i + 7
    else
      error('sessiond: unknown effect ' .. tostring(k))
    end
  end
end
"#;

/// The header and helpers of every tag script.
const PRELUDE: &str = r#"
local base, now, ret, slack, chan = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local fx = {}
local function I(n) return string.format('%d', n) end
local function add(...)
  for _, v in ipairs({...}) do fx[#fx + 1] = v end
end
local function sk(id) return base .. 's:' .. id end
local function tk(id) return base .. 't:' .. id end
local function uk(user) return base .. 'u:' .. user end
local function flag(b) if b then return '1' end return '0' end
-- Session::deadline: the idle deadline unless max lifetime comes first (ties: max lifetime).
local function deadline(la, idle, exp)
  if la + idle < exp then return la + idle, 'idle_timeout' end
  return exp, 'max_lifetime'
end
-- A TTL relative to `from` (never an absolute time: the caller's clock is not Redis's).
local function expire(key, at, from)
  local ms = at - from + slack
  if ms < 1 then ms = 1 end
  redis.call('PEXPIRE', key, I(ms))
end
-- A session hash lives until its max lifetime and retention are over, whatever its idle
-- timer says (a sweep deletes it once it has idled out), so a touch need not move its TTL.
-- `ttl` marks a hash whose TTL was set that way.
local function expire_session(k, exp, from)
  expire(k, exp + ret, from)
end
-- Applies a node's coalesced touches of `id`, the first at `t1` and the last at `t2`:
-- the node saw each touch land on a live session, so if the first found it live here,
-- the idle timer slides to the last. `idle` and `exp` are the session's own (fixed at
-- create), so only `la` is read.
local function touch(id, t1, t2, idle, exp)
  local k = sk(id)
  local f = redis.call('HMGET', k, 'la', 'ttl')
  if not f[1] then return 0 end
  local la = tonumber(f[1])
  if t2 <= la or t2 >= exp or t1 >= deadline(la, idle, exp) then return 0 end
  if f[2] then
    redis.call('HSET', k, 'la', I(t2))
  else
    -- Written before TTLs ran to the max lifetime (its TTL ends with its idle deadline).
    redis.call('HSET', k, 'la', I(t2), 'ttl', '1')
    expire_session(k, exp, t2)
  end
  return 1
end
-- A touch's arguments (`Call::touch` writes them): id, first, last, idle, exp.
local TOUCH_ARGS = 5
-- Applies the touch whose arguments start at ARGV[j].
local function touch_at(j)
  return touch(ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]),
    tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]))
end
-- Applies the pending touches; returns the index of the script's first own argument.
local function touches()
  local n, moved = tonumber(ARGV[6]), 0
  for i = 0, n - 1 do
    moved = moved + touch_at(7 + TOUCH_ARGS * i)
  end
  return 7 + TOUCH_ARGS * n, moved
end
local function gone(u) return flag(redis.call('EXISTS', u) == 0) end
-- Ends `id`: for `reason` at `now` if it is live, else for its deadline's reason at its
-- deadline. Returns 1 if it was live, 0 if it had expired, nil if there is no session.
local function finish(id, reason)
  local k = sk(id)
  local f = redis.call('HMGET', k, 'vf', 'user', 'pol', 'cr', 'la', 'idle', 'exp', 'ver')
  if not f[1] then return nil end
  local dl, why = deadline(tonumber(f[5]), tonumber(f[6]), tonumber(f[7]))
  local at, live = now, 1
  if now >= dl then at, reason, live = dl, why, 0 end
  local pa = at + ret
  local t = tk(id)
  redis.call('DEL', k)
  redis.call('HSET', t, 'vf', f[1], 'user', f[2], 'pol', f[3], 'r', reason, 'cr', f[4],
    'la', f[5], 'at', I(at), 'pa', I(pa))
  expire(t, pa, now)
  local u = uk(f[2])
  redis.call('ZREM', u, id)
  add('e', id, reason, f[3], I(pa), gone(u))
  -- As the local store does: an end is one more change, so the version moves on.
  add('v', 'ended', id, f[2], I(tonumber(f[8]) + 1), reason, I(at))
  redis.call('PUBLISH', chan, id)
  return live
end
-- The reply: `result` with the effects appended, or applied here when the global keys
-- were passed (a single Redis).
local function done(result)
  if #KEYS >= 6 then
    apply({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, fx)
    fx = {}
  end
  result[#result + 1] = fx
  return result
end
"#;

/// `create`: own ARGV `id user max displace vf policy created_at last_access idle_ms
/// expires_at version blob`. Replies `{created, displaced_ids}`, `{limit}` or `{collision}`.
const CREATE: &str = r#"
local a = touches()
local id, user, max, displace = ARGV[a], ARGV[a+1], tonumber(ARGV[a+2]), ARGV[a+3] == '1'
if redis.call('EXISTS', sk(id)) == 1 or redis.call('EXISTS', tk(id)) == 1 then
  return done({'collision', {}})
end
local u = uk(user)
local live = {}
if max > 0 then
  for _, sid in ipairs(redis.call('ZRANGE', u, 0, -1)) do
    local f = redis.call('HMGET', sk(sid), 'cr', 'la', 'idle', 'exp')
    if not f[1] then
      redis.call('ZREM', u, sid)
      add('m', sid, gone(u))
    elseif now >= deadline(tonumber(f[2]), tonumber(f[3]), tonumber(f[4])) then
      finish(sid, 'idle_timeout')
    else
      live[#live + 1] = {tonumber(f[1]), sid}
    end
  end
end
-- UserLimit::to_displace: room for one more, deny, or end the oldest `n + 1 - max`.
local drop = 0
if max > 0 and #live >= max then
  if not displace then return done({'limit', {}}) end
  drop = #live + 1 - max
end
table.sort(live, function(x, y)
  if x[1] ~= y[1] then return x[1] < y[1] end
  return x[2] < y[2]
end)
local displaced = {}
for i = 1, drop do
  finish(live[i][2], 'displaced')
  displaced[#displaced + 1] = live[i][2]
end
local new = gone(u)
local k = sk(id)
local la, idle, exp = ARGV[a+7], ARGV[a+8], ARGV[a+9]
redis.call('HSET', k, 'vf', ARGV[a+4], 'user', user, 'pol', ARGV[a+5], 'cr', ARGV[a+6],
  'la', la, 'idle', idle, 'exp', exp, 'ver', ARGV[a+10], 'ttl', '1', 'd', ARGV[a+11])
local dl = deadline(tonumber(la), tonumber(idle), tonumber(exp))
expire_session(k, tonumber(exp), now)
redis.call('ZADD', u, 0, id)
add('c', id, I(dl), ARGV[a+5], new)
add('v', 'created', id, user, ARGV[a+10], '', ARGV[a+6])
return done({'created', displaced})
"#;

/// `update`: own ARGV `id seen_version blob`. Replies `{updated, version, last_access}`,
/// `{changed, version}` (someone else changed it since it was read) or `{gone}`.
const UPDATE: &str = r#"
local a = touches()
local id, seen = ARGV[a], tonumber(ARGV[a+1])
local k = sk(id)
local f = redis.call('HMGET', k, 'la', 'idle', 'exp', 'ver', 'user', 'ttl')
if not f[1] then return done({'gone'}) end
local la, idle, exp, ver = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
if now >= deadline(la, idle, exp) then return done({'gone'}) end
if ver ~= seen then return done({'changed', I(ver)}) end
if now > la then la = now end
redis.call('HSET', k, 'd', ARGV[a+2], 'ver', I(ver + 1), 'la', I(la))
if not f[6] then
  redis.call('HSET', k, 'ttl', '1')
  expire_session(k, exp, now)
end
redis.call('PUBLISH', chan, id)
add('v', 'updated', id, f[5], I(ver + 1), '', I(now))
return done({'updated', I(ver + 1), I(la)})
"#;

/// `end`: own ARGV `id reason`. Replies `{ended, was_live, tombstone_fields}` or
/// `{none, tombstone_fields_or_empty}`.
const END: &str = r#"
local a = touches()
local id = ARGV[a]
local live = finish(id, ARGV[a+1])
local t = redis.call('HGETALL', tk(id))
if live == nil then return done({'none', t}) end
return done({'ended', I(live), t})
"#;

/// `end_user`: own ARGV `user reason`. Replies `{live_count, ended_ids}`.
const END_USER: &str = r#"
local a = touches()
local u = uk(ARGV[a])
local count, ended = 0, {}
for _, sid in ipairs(redis.call('ZRANGE', u, 0, -1)) do
  local live = finish(sid, ARGV[a+1])
  if live == nil then
    redis.call('ZREM', u, sid)
    add('m', sid, gone(u))
  else
    count = count + live
    ended[#ended + 1] = sid
  end
end
return done({I(count), ended})
"#;

/// `sweep`: own ARGV the due ids. Replies `{expired, rescheduled, ended_ids}`.
const SWEEP: &str = r#"
local a = touches()
local expired, moved, ended = 0, 0, {}
for i = a, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', sk(id), 'la', 'idle', 'exp')
  if not f[1] then
    add('m', id, '0')
  else
    local dl = deadline(tonumber(f[1]), tonumber(f[2]), tonumber(f[3]))
    if now >= dl then
      finish(id, 'idle_timeout')
      expired = expired + 1
      ended[#ended + 1] = id
    else
      add('r', id, I(dl))
      moved = moved + 1
    end
  end
end
return done({I(expired), I(moved), ended})
"#;

/// `purge`: own ARGV triples `member id reason`. Replies `{purged}`.
const PURGE: &str = r#"
local a = touches()
local purged = 0
for i = a, #ARGV, 3 do
  local member, t = ARGV[i], tk(ARGV[i+1])
  local pa = redis.call('HGET', t, 'pa')
  if pa and tonumber(pa) > now then
    add('q', member, pa)
  else
    redis.call('DEL', t)
    purged = purged + 1
    add('p', member, ARGV[i+2])
  end
end
return done({I(purged)})
"#;

/// `touch_many`: the flush of coalesced touches, for one tag or (on a single Redis only,
/// never in a Cluster, where a script may touch one slot) for many. The header carries no
/// touches of its own; ARGV[7] is the number of tags, then for each tag its key base, its
/// number of touches `n` and `n` touches of five arguments each. Replies `{moved}`.
const TOUCH_MANY: &str = r#"
local moved, j = 0, 8
for _ = 1, tonumber(ARGV[7]) do
  base = ARGV[j]
  local n = tonumber(ARGV[j + 1])
  j = j + 2
  for _ = 1, n do
    moved = moved + touch_at(j)
    j = j + TOUCH_ARGS
  end
end
return done({I(moved)})
"#;

/// `global`: KEYS the five global keys, ARGV an effect list.
const GLOBAL: &str = r#"
apply({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, ARGV)
return 1
"#;

/// `events_read`: KEYS[1] the events stream; ARGV `after count`. Replies `lost` when
/// `after` is no longer in the stream (trimmed away, or never there), else up to `count`
/// entries after it. `0-0` stands for "before the first entry" (the stream was empty): then
/// only a trim loses anything, seen as fewer entries than were ever added (Redis 7+).
const EVENTS_READ: &str = r#"
local after = ARGV[1]
if after ~= '0-0' then
  if #redis.call('XRANGE', KEYS[1], after, after) == 0 then return 'lost' end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  local info, added, len = redis.call('XINFO', 'STREAM', KEYS[1]), nil, nil
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then len = info[i + 1] end
  end
  if added and len and added > len then return 'lost' end
end
return redis.call('XRANGE', KEYS[1], '(' .. after, '+', 'COUNT', ARGV[2])
"#;

/// `nodes`: KEYS[1] the node set; ARGV `key_prefix self_or_empty ttl_ms`. Refreshes this
/// node's heartbeat (unless `self` is empty), forgets nodes whose heartbeat expired, and
/// replies how many are left.
const NODES: &str = r#"
local set, pre, me = KEYS[1], ARGV[1], ARGV[2]
if me ~= '' then
  redis.call('SET', pre .. me, '1', 'PX', ARGV[3])
  redis.call('SADD', set, me)
end
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', set)) do
  if redis.call('EXISTS', pre .. m) == 1 then n = n + 1 else redis.call('SREM', set, m) end
end
return n
"#;

/// Every script, loaded once; called by SHA (EVALSHA), loaded again on `NOSCRIPT`.
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) end: Script,
    pub(super) end_user: Script,
    pub(super) sweep: Script,
    pub(super) purge: Script,
    pub(super) touch_many: Script,
    pub(super) global: Script,
    pub(super) nodes: Script,
    pub(super) events_read: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let cap = format!("local EVENTS_MAXLEN = '{EVENTS_MAXLEN}'\n");
        let tag = |body: &str| Script::new(&format!("{cap}{APPLY}{PRELUDE}{body}"));
        Scripts {
            create: tag(CREATE),
            update: tag(UPDATE),
            end: tag(END),
            end_user: tag(END_USER),
            sweep: tag(SWEEP),
            purge: tag(PURGE),
            touch_many: tag(TOUCH_MANY),
            global: Script::new(&format!("{cap}{APPLY}{GLOBAL}")),
            nodes: Script::new(NODES),
            events_read: Script::new(EVENTS_READ),
        }
    }
}

/// One script call, written straight into its `EVALSHA sha numkeys keys.. args..` command
/// (a touch flush carries thousands of arguments: each is appended to the command's one
/// buffer, none is allocated on its own).
pub(super) struct Call<'a> {
    pub(super) script: &'a Script,
    cmd: Cmd,
}

/// What every tag script's header carries.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header<'a> {
    pub(super) base: &'a str,
    pub(super) now: Timestamp,
    pub(super) retention_ms: u64,
    pub(super) slack_ms: u64,
    pub(super) channel: &'a str,
}

impl<'a> Call<'a> {
    /// A call of a script that takes plain keys and arguments.
    pub(super) fn plain(script: &'a Script, keys: &[String]) -> Call<'a> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for k in keys {
            cmd.arg(k);
        }
        Call { script, cmd }
    }

    /// A tag script call: `route` is a key of the tag (it picks the Cluster node); when
    /// `globals` is given, the effects are applied inside the script.
    pub(super) fn tag(
        script: &'a Script,
        route: &str,
        globals: Option<&[String]>,
        header: Header<'_>,
        touches: &[(SessionId, Touch)],
    ) -> Call<'a> {
        let globals = globals.unwrap_or_default();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1 + globals.len()).arg(route);
        for k in globals {
            cmd.arg(k);
        }
        let mut call = Call { script, cmd };
        call.arg(header.base)
            .arg(header.now.as_millis())
            .arg(header.retention_ms)
            .arg(header.slack_ms)
            .arg(header.channel)
            .arg(touches.len());
        for (id, t) in touches {
            call.touch(id, t);
        }
        call
    }

    pub(super) fn arg(&mut self, value: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(value);
        self
    }

    /// A touch's five arguments: `id first last idle_ms expires_at`.
    pub(super) fn touch(&mut self, id: &SessionId, t: &Touch) -> &mut Self {
        self.arg(&id.hex()[..])
            .arg(t.first.as_millis())
            .arg(t.last.as_millis())
            .arg(t.idle_ms)
            .arg(t.expires_at.as_millis())
    }

    /// The `EVALSHA` command.
    pub(super) fn cmd(&self) -> &Cmd {
        &self.cmd
    }
}
