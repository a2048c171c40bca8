"""The Lua scripts of RedisFleetStore. Each touches the keys of one hash slot only (one shard,
or the fleet's global slot), so every script runs atomically on Redis Cluster too.

Shard records are cmsgpack arrays `{access_count, last_access_ms, p1, p2, ...}` with each
placement `{instance_id, incarnation, tier (1|2), backend, size_bytes, shared (0|1)}`; the rules
are those of `lmcache_core.fleet.ledger.Ledger` (the contract suite holds both to them)."""

from __future__ import annotations

SEP = "\x1f"
"""Separator inside usage-counter field names (ids and backends never hold control characters)."""

_PRELUDE = r"""
local SEP = '\31'
local function find(rec, tier, backend, shared, inst)
  for i = 3, #rec do
    local p = rec[i]
    if p[3] == tier and p[4] == backend and p[6] == shared and (shared == 1 or p[1] == inst) then
      return i
    end
  end
  return nil
end
local function has_l2(rec)
  for i = 3, #rec do if rec[i][3] == 2 then return true end end
  return false
end
local function holds_l1(rec, inst)
  for i = 3, #rec do if rec[i][3] == 1 and rec[i][1] == inst then return true end end
  return false
end
local function account(U, p, sign)
  local t = p[3]
  -- -1 * 0 is -0 in Lua, which Redis formats as "-0" and HINCRBY refuses: a 0-byte placement
  -- (a resync entry of unknown size) must still be removable.
  local bytes = sign * p[5]
  if bytes == 0 then bytes = 0 end
  redis.call('HINCRBY', U, 'c' .. t, sign)
  redis.call('HINCRBY', U, 'b' .. t, bytes)
  local owner = p[1]
  if p[6] == 1 then owner = '' end
  local f = 'o' .. SEP .. owner .. SEP .. t .. SEP .. p[4]
  if redis.call('HINCRBY', U, f, bytes) <= 0 and sign < 0 then redis.call('HDEL', U, f) end
end
-- Write a record back (or drop it), keeping the key count, LRU and in-flight sets true.
local function settle(DIR, LRU, U, EV, k, rec, existed)
  if #rec < 3 then
    if existed then
      redis.call('HDEL', DIR, k)
      redis.call('HINCRBY', U, 'n', -1)
    end
  else
    redis.call('HSET', DIR, k, cmsgpack.pack(rec))
    if not existed then redis.call('HINCRBY', U, 'n', 1) end
  end
  if #rec < 3 or not has_l2(rec) then
    redis.call('ZREM', LRU, k)
    redis.call('ZREM', EV, k)
  end
end
local function l1_count(U, L1, inst)
  local n = redis.call('SCARD', L1)
  if n > 0 then redis.call('HSET', U, 'k' .. SEP .. inst, n) else redis.call('HDEL', U, 'k' .. SEP .. inst) end
end
-- Drop inst's L1 placements (below an incarnation, or all when below is nil) from the keys
-- returned by one SSCAN step; returns the number removed.
local function fence_keys(DIR, LRU, U, L1, EV, inst, below, keys)
  local removed = 0
  for _, k in ipairs(keys) do
    local raw = redis.call('HGET', DIR, k)
    if raw then
      local rec = cmsgpack.unpack(raw)
      local kept = {rec[1], rec[2]}
      for i = 3, #rec do
        local p = rec[i]
        if p[3] == 1 and p[1] == inst and (below == nil or p[2] < below) then
          account(U, p, -1)
          removed = removed + 1
        else
          kept[#kept + 1] = p
        end
      end
      if not holds_l1(kept, inst) then redis.call('SREM', L1, k) end
      settle(DIR, LRU, U, EV, k, kept, true)
    else
      redis.call('SREM', L1, k)
    end
  end
  return removed
end
"""

APPLY = (
    _PRELUDE
    + r"""
-- KEYS: dir lru usage cursors l1(inst) evicting
-- ARGV: inst inc seq tier backend shared now_ms check {op keyid size}...
local DIR, LRU, U, CUR, L1, EV = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local inst, inc, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tier, backend, shared, now = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local l1_touched = false
if ARGV[8] == '1' then
  local c = redis.call('HGET', CUR, inst)
  if c then
    local sep = string.find(c, ':', 1, true)
    local ci, cs = tonumber(string.sub(c, 1, sep - 1)), tonumber(string.sub(c, sep + 1))
    if inc < ci or (inc == ci and seq <= cs) then return 0 end
    if inc > ci then
      fence_keys(DIR, LRU, U, L1, EV, inst, inc, redis.call('SMEMBERS', L1))
      l1_touched = true
    end
  end
  redis.call('HSET', CUR, inst, ARGV[2] .. ':' .. ARGV[3])
end
for j = 9, #ARGV, 3 do
  local op, k, size = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2])
  local raw = redis.call('HGET', DIR, k)
  if op == 's' then
    local rec
    if raw then rec = cmsgpack.unpack(raw) else rec = {0, now} end
    local i = find(rec, tier, backend, shared, inst)
    if size < 0 then
      -- a resync entry of unknown size (UNKNOWN_SIZE): keep the slot's known size
      if i then size = rec[i][5] else size = 0 end
    end
    local p = {inst, inc, tier, backend, size, shared}
    if i then account(U, rec[i], -1); rec[i] = p else rec[#rec + 1] = p end
    account(U, p, 1)
    rec[2] = now
    settle(DIR, LRU, U, EV, k, rec, raw ~= false)
    if tier == 1 then redis.call('SADD', L1, k); l1_touched = true end
    if has_l2(rec) then redis.call('ZADD', LRU, now, k) end
  elseif raw then
    local rec = cmsgpack.unpack(raw)
    if op == 'd' then
      local i = find(rec, tier, backend, shared, inst)
      if i then account(U, rec[i], -1); table.remove(rec, i) end
      if tier == 1 and not holds_l1(rec, inst) then redis.call('SREM', L1, k); l1_touched = true end
      settle(DIR, LRU, U, EV, k, rec, true)
    else
      rec[1] = rec[1] + 1
      rec[2] = now
      redis.call('HSET', DIR, k, cmsgpack.pack(rec))
      if has_l2(rec) then redis.call('ZADD', LRU, 'XX', now, k) end
    end
  end
end
if l1_touched then l1_count(U, L1, inst) end
return 1
"""
)

FENCE = (
    _PRELUDE
    + r"""
-- KEYS: dir lru usage cursors l1(inst) evicting
-- ARGV: inst below('' = all) scan_cursor count ; returns {next_cursor, removed}
local DIR, LRU, U, CUR, L1, EV = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local inst = ARGV[1]
local below = nil
if ARGV[2] ~= '' then below = tonumber(ARGV[2]) end
local step = redis.call('SSCAN', L1, ARGV[3], 'COUNT', ARGV[4])
local removed = fence_keys(DIR, LRU, U, L1, EV, inst, below, step[2])
if step[1] == '0' then
  if below == nil then
    redis.call('HDEL', CUR, inst)
  else
    local c = redis.call('HGET', CUR, inst)
    local ci = -1
    if c then ci = tonumber(string.sub(c, 1, string.find(c, ':', 1, true) - 1)) end
    if ci < below then redis.call('HSET', CUR, inst, ARGV[2] .. ':0') end
  end
  l1_count(U, L1, inst)
end
return {step[1], removed}
"""
)

COLDEST = _PRELUDE + r"""
-- KEYS: dir lru pins evicting ; ARGV: limit now_ms retry_ms scan_cap
-- returns {in_flight_l2_bytes, keyid, score, record, ...} coldest first, skipping pinned and
-- in-flight keys
local DIR, LRU, PIN, EV = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, now, retry, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local in_flight = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', EV, '(' .. (now - retry), '+inf')) do
  local raw = redis.call('HGET', DIR, k)
  if raw then
    local rec = cmsgpack.unpack(raw)
    for i = 3, #rec do if rec[i][3] == 2 then in_flight = in_flight + rec[i][5] end end
  end
end
local out, found, pos, scanned = {in_flight}, 0, 0, 0
while found < limit and scanned < cap do
  local page = redis.call('ZRANGE', LRU, pos, pos + 511, 'WITHSCORES')
  if #page == 0 then break end
  for j = 1, #page, 2 do
    local k = page[j]
    scanned = scanned + 1
    local k0 = string.sub(k, 1, #k - 4) .. '\0\0\0\0'
    local sent = redis.call('ZSCORE', EV, k)
    if redis.call('HEXISTS', PIN, k0) == 0 and not (sent and now - tonumber(sent) < retry) then
      local raw = redis.call('HGET', DIR, k)
      if raw then
        out[#out + 1] = k; out[#out + 1] = page[j + 1]; out[#out + 1] = raw
        found = found + 1
        if found >= limit then break end
      end
    end
  end
  pos = pos + 512
end
return out
"""

PIN = r"""
-- KEYS: pins ; ARGV: delta keyid0...
local delta = tonumber(ARGV[1])
for j = 2, #ARGV do
  if redis.call('HINCRBY', KEYS[1], ARGV[j], delta) <= 0 then redis.call('HDEL', KEYS[1], ARGV[j]) end
end
return 1
"""

ADVANCE = r"""
-- KEYS: cursors stats ; ARGV: inst inc seq n_entries legacy known('' | duplicate | stale)
-- The stream cursor's check-and-set: decides each batch's verdict exactly once.
local inst, inc, seq, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local c = redis.call('HGET', KEYS[1], inst)
local gap = 0
local verdict = 'applied'
if c then
  local a = string.find(c, ':', 1, true)
  local b = string.find(c, ':', a + 1, true)
  local ci, cs, cg = tonumber(string.sub(c, 1, a - 1)), tonumber(string.sub(c, a + 1, b - 1)), string.sub(c, b + 1)
  if inc < ci then verdict = 'stale'
  elseif inc == ci and seq <= cs then verdict = 'duplicate'
  elseif inc == ci then
    if cg == '1' or seq > cs + 1 then gap = 1 end
  elseif seq > 1 then gap = 1 end
elseif seq > 1 then gap = 1 end
if verdict == 'applied' and ARGV[6] ~= '' then verdict = ARGV[6] end
if verdict ~= 'applied' then
  redis.call('HINCRBY', KEYS[2], 'batches_' .. verdict, 1)
  return verdict
end
if ARGV[5] == '1' then gap = 0 end
redis.call('HSET', KEYS[1], inst, ARGV[2] .. ':' .. ARGV[3] .. ':' .. gap)
redis.call('HINCRBY', KEYS[2], 'batches_applied', 1)
redis.call('HINCRBY', KEYS[2], 'events_applied', n)
redis.call('HINCRBY', KEYS[2], 'events_applied:' .. inst, n)
return verdict
"""

CAPACITY = r"""
-- KEYS: capacity(inst) capids ; ARGV: inst_id inc rev tier backend shared capacity
-- One declaration is every batch of one (incarnation, revision): a newer one replaces it.
local inc, rev = tonumber(ARGV[2]), tonumber(ARGV[3])
local stamp = redis.call('HGET', KEYS[1], '_stamp')
if stamp then
  local a = string.find(stamp, ':', 1, true)
  local si, sr = tonumber(string.sub(stamp, 1, a - 1)), tonumber(string.sub(stamp, a + 1))
  if inc < si or (inc == si and rev < sr) then return 0 end
  if inc > si or rev > sr then redis.call('DEL', KEYS[1]) end
end
redis.call('HSET', KEYS[1], '_stamp', ARGV[2] .. ':' .. ARGV[3], ARGV[4] .. '\31' .. ARGV[5], ARGV[6] .. ':' .. ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

REGISTER = r"""
-- KEYS: members info epoch ; ARGV: id lease_ms info_json ; returns {existed, epoch}
local existed = redis.call('HEXISTS', KEYS[2], ARGV[1])
local epoch = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], epoch .. ' ' .. ARGV[3])
return {existed, epoch}
"""

HEARTBEAT = r"""
-- KEYS: members ; ARGV: id lease_ms
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

CLAIM_EXPIRED = r"""
-- KEYS: members info ; ARGV: now_ms ; removes and returns the lapsed ids (one claimer each)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return ids
"""

LEAD = r"""
-- KEYS: lease ; ARGV: holder ttl_ms
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RESIGN = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
