-- moxy.upstream: the upstream pools' running state, shared by every worker:
-- which peers are up, ejected (passive health), unhealthy (health checks),
-- drained or unresolved, with their requests in flight, latency EWMA and
-- counters; and draining a peer (no new requests, those in flight finish).
-- Over the C exports of core/proxy/upstream.c; the cdef below must match
-- core/api/ffi.h (checked by tools/check-ffi.lua).
--
--   for _, p in ipairs(moxy.upstream.peers("app")) do
--     moxy.log.info(p.addr, " ", p.state, " ", p.active)
--   end
--   moxy.upstream.drain("app", "127.0.0.1:9002")   -- for every worker
--   moxy.upstream.enable("app", "127.0.0.1:9002")
--
-- In hooks, timers and init.  Unknown pools and peers are nil, err.
local ffi = require "ffi"
require "moxy.txn" -- checks that the binary's FFI ABI matches these modules

if not pcall(ffi.typeof, "moxy_ffi_peer_t") then
ffi.cdef [[
typedef struct {
    const char *addr;
    int state;
    int weight;
    double weight_now;
    int backup, max_conns;
    int active;
    double ewma_ms;
    int fails;
    double down_for;
    unsigned long long requests, failures, checks;
    unsigned long long ejections;
    unsigned long long transitions;
    char check_error[96];
} moxy_ffi_peer_t;
int moxy_ffi_upstream_npeers(const char *name, size_t len);
int moxy_ffi_upstream_peer(const char *name, size_t len, int i, moxy_ffi_peer_t *out);
int moxy_ffi_upstream_usable(const char *name, size_t len);
int moxy_ffi_upstream_drain(const char *name, size_t len, const char *addr, size_t alen, int drained);
int moxy_ffi_upstream_retries(const char *name, size_t len, unsigned long long *retries,
                              unsigned long long *denied);
]]
end

local C = ffi.C
local ffi_string, tonumber, type, error = ffi.string, tonumber, type, error
local OK = 0

local STATES = { [0] = "up", "down", "unhealthy", "drained", "unresolved" }

local peer = ffi.new("moxy_ffi_peer_t")
local counts = ffi.new("unsigned long long[2]")

local M = {}

local function check_pool(fn, pool)
  if type(pool) ~= "string" then error("moxy.upstream." .. fn .. ": pool name must be a string", 3) end
  local n = C.moxy_ffi_upstream_npeers(pool, #pool)
  if n == -2 then error("moxy.upstream." .. fn .. ": only in hooks, timers and init", 3) end
  return n
end

--- moxy.upstream.peers(pool) -> list of peers, or nil, "no pool named ...".
-- Each peer: { addr, state ("up", "down", "unhealthy", "drained",
-- "unresolved"), weight, weight_now (slow start), backup, max_conns,
-- active (requests in flight, all workers), ewma_ms (latency to the
-- response head, 0: no sample), fails (consecutive), down_for (seconds of
-- ejection left), requests, failures, checks, ejections (passive), transitions
-- (health-check verdict changes), check_error }.
function M.peers(pool)
  local n = check_pool("peers", pool)
  if n < 0 then return nil, "no pool named \"" .. pool .. "\"" end
  local out = {}
  for i = 0, n - 1 do
    if C.moxy_ffi_upstream_peer(pool, #pool, i, peer) == OK then
      out[#out + 1] = {
        addr = ffi_string(peer.addr),
        state = STATES[peer.state] or "up",
        weight = peer.weight,
        weight_now = peer.weight_now,
        backup = peer.backup ~= 0,
        max_conns = peer.max_conns,
        active = peer.active,
        ewma_ms = peer.ewma_ms,
        fails = peer.fails,
        down_for = peer.down_for,
        requests = tonumber(peer.requests),
        failures = tonumber(peer.failures),
        checks = tonumber(peer.checks),
        ejections = tonumber(peer.ejections),
        transitions = tonumber(peer.transitions),
        check_error = ffi_string(peer.check_error),
      }
    end
  end
  return out
end

--- moxy.upstream.usable(pool) -> the number of its peers that can take a
-- request now (up, not drained, under max_conns), or nil, err.  Cheap:
-- for routing decisions on every request.
function M.usable(pool)
  if type(pool) ~= "string" then error("moxy.upstream.usable: pool name must be a string", 2) end
  local n = C.moxy_ffi_upstream_usable(pool, #pool)
  if n == -2 then error("moxy.upstream.usable: only in hooks, timers and init", 2) end
  if n < 0 then return nil, "no pool named \"" .. pool .. "\"" end
  return n
end

local function set_drain(fn, pool, addr, drained)
  local n = check_pool(fn, pool)
  if type(addr) ~= "string" then error("moxy.upstream." .. fn .. ": peer address must be a string", 3) end
  if n < 0 then return nil, "no pool named \"" .. pool .. "\"" end
  if C.moxy_ffi_upstream_drain(pool, #pool, addr, #addr, drained) ~= OK then
    return nil, "no peer " .. addr .. " in pool " .. pool
  end
  return true
end

--- moxy.upstream.drain(pool, addr) -> true, or nil, err: the peer gets no
-- new requests (in every worker); those in flight finish.
function M.drain(pool, addr) return set_drain("drain", pool, addr, 1) end

--- moxy.upstream.enable(pool, addr) -> true, or nil, err: undo drain (with
-- the peer's slow start, if it has one).
function M.enable(pool, addr) return set_drain("enable", pool, addr, 0) end

--- moxy.upstream.stats(pool) -> { retries, retries_denied } since start
-- (retries_denied: refused by the retry budget), or nil, err.
function M.stats(pool)
  if check_pool("stats", pool) < 0 then return nil, "no pool named \"" .. pool .. "\"" end
  C.moxy_ffi_upstream_retries(pool, #pool, counts, counts + 1)
  return { retries = tonumber(counts[0]), retries_denied = tonumber(counts[1]) }
end

return M
