-- moxy.test: test a script's hooks without a server, from a busted spec run
-- by `moxy test` (docs/testing.md).
--
--   local t = require "moxy.test"
--   local txn = t.run("scripts/site.lua", t.txn{ path = "/api/x?a=1" },
--                     { upstreams = { api = t.upstream(function(req) return 200, "ok" end) } })
--   assert.equal(200, txn.resp.status)
--
-- The request is a real moxy_req_t (core/api/test_txn.c) with no socket behind
-- it: the hooks get the txn objects of lua/moxy/txn.lua and run on the same
-- C functions as in production.  The phases are driven here, in the order
-- and by the rules of http_client.c and http_upstream.c; a fake origin (a
-- Lua function) stands in for each pool.  The ffi.cdef below must match
-- core/api/ffi.h (tools/check-ffi.lua).
local ffi = require "ffi"
local txn_mod = require "moxy.txn"
local runtime = require "moxy.runtime"
local moxy = require "moxy"
local config = require "moxy.config"

ffi.cdef [[
typedef struct moxy_test_s moxy_test_t;
moxy_test_t *moxy_ffi_test_new(const char **pools, const char **peers, int npools, int default_pool,
                               int tries);
void moxy_ffi_test_free(moxy_test_t *t);
int moxy_ffi_test_mask(moxy_test_t *t, const char **names, int n, const char *server, const char *via);
moxy_req_t *moxy_ffi_test_req(moxy_test_t *t, const char *method, size_t mlen, const char *uri,
                              size_t ulen, int minor, const char *ip, size_t iplen, int port,
                              char *err, size_t errlen);
int moxy_ffi_test_header(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                         size_t vlen);
int moxy_ffi_test_req_start(moxy_req_t *r, const char *body, size_t blen, int has_body, char *err,
                            size_t errlen);
void moxy_ffi_test_try_start(moxy_req_t *r);
int moxy_ffi_test_try_peer(moxy_req_t *r);
int moxy_ffi_test_origin_request(moxy_req_t *r, const char **head, size_t *hlen, const char **body,
                                 size_t *blen);
int moxy_ffi_test_try_failed(moxy_req_t *r, const char *why, size_t len, int upstream_hooks);
int moxy_ffi_test_response(moxy_req_t *r, int status, size_t body_len);
void moxy_ffi_test_masked(moxy_req_t *r);
int moxy_ffi_test_resp_start(moxy_req_t *r, int body_hooks);
void moxy_ffi_test_body_sent(moxy_req_t *r, size_t n, int done);
void moxy_ffi_test_fail(moxy_req_t *r, int status, const char *why, size_t len);
int moxy_ffi_test_answered(moxy_req_t *r);
void moxy_ffi_test_error_page(moxy_req_t *r, int status);
void moxy_ffi_test_local(moxy_req_t *r, const char **body, size_t *len);
int moxy_ffi_test_geoip(const char **names, const char **paths, int n, char *err, size_t errlen);
void moxy_ffi_test_phase(moxy_req_t *r, int phase);
int moxy_ffi_test_cache(moxy_req_t *r, int step, int on, double max_object, double *ttl, const char **why);
]]

local C = ffi.C
local OK, DECLINED = 0, -3
local P = txn_mod.PHASE
local NAMES = runtime.PHASES -- by phase + 1
local F = { method = 0, uri = 1, pool = 9, peer = 11, client_ip = 5 }

local type, tostring, pairs, ipairs, error, pcall = type, tostring, pairs, ipairs, error, pcall
local format, concat, sort = string.format, table.concat, table.sort
local ffi_string = ffi.string

local ERR_LEN = 256
local errbuf = ffi.new("char[?]", ERR_LEN)
local sp = ffi.new("const char *[1]")
local sl = ffi.new("size_t[1]")
local bp = ffi.new("const char *[1]")
local bl = ffi.new("size_t[1]")
local ttlp = ffi.new("double[1]")

local M = {}

local function field(r, f)
  if C.moxy_ffi_req_field(r, f, sp, sl) ~= OK then return nil end
  local s = ffi_string(sp[0], sl[0])
  return s
end

-- moxy.log during a run ------------------------------------------------------

local LEVELS = { "err", "warn", "info", "debug" }
local capture -- the running t.run's log list, or nil
local original_log, capture_log = {}, {}
for _, level in ipairs(LEVELS) do
  local orig = moxy.log[level]
  original_log[level] = orig
  -- stays usable when a script kept it in a local: outside t.run it writes
  -- to the error log as moxy.log does
  capture_log[level] = function(...)
    if not capture then return orig(...) end
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do parts[i] = tostring(parts[i]) end
    capture[#capture + 1] = { level = level, message = concat(parts, " ", 1, n) }
  end
end

-- moxy.log.* are the capturing functions while t.run runs (and while t.load
-- loads scripts, which may keep them in locals)
local function wrap_log(on)
  for _, level in ipairs(LEVELS) do moxy.log[level] = on and capture_log[level] or original_log[level] end
end

-- t.txn ----------------------------------------------------------------------

local TXN_FIELDS = { method = "string", path = "string", query = "string", host = "string",
                     headers = "table", client_ip = "string", client_port = "number",
                     body = "string", http_version = "string" }

local Spec = {}

--- t.txn(fields) -> a request for t.run (a plain table; nothing is built yet).
-- fields (all optional): method ("GET"), path ("/", may hold "?query"),
-- query (appended after "?"), host ("localhost"; false: no Host header),
-- headers ({ Name = value | {values} } sent in name order, or a list of
-- { name, value } sent in that order), client_ip ("127.0.0.1"), client_port
-- (54321), body (a string: sent with Content-Length, and already buffered,
-- so txn:read_body returns it at once), http_version ("1.1" or "1.0").
function M.txn(fields)
  fields = fields or {}
  if type(fields) ~= "table" then error("t.txn: fields must be a table, got " .. type(fields), 2) end
  for k, v in pairs(fields) do
    local want = TXN_FIELDS[k]
    if not want then error("t.txn: unknown field \"" .. tostring(k) .. "\"", 2) end
    if type(v) ~= want and not (k == "host" and v == false) then
      error("t.txn: " .. k .. " must be a " .. want .. ", got " .. type(v), 2)
    end
  end
  if fields.query and fields.path and fields.path:find("?", 1, true) then
    error("t.txn: a query in path and a query field", 2)
  end
  if fields.http_version and fields.http_version ~= "1.1" and fields.http_version ~= "1.0" then
    error("t.txn: http_version must be \"1.1\" or \"1.0\"", 2)
  end
  local s = {}
  for k, v in pairs(fields) do s[k] = v end
  local spec = setmetatable(s, Spec)
  return spec
end

-- The request's headers as a list of { name, value }, Host first.
local function header_list(s)
  local list, host_given = {}, false
  local h = s.headers or {}
  local function add(name, v)
    if type(name) ~= "string" then error("t.txn: header names must be strings", 0) end
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then
      error("t.txn: header " .. name .. ": value must be a string, got " .. type(v), 0)
    end
    if name:lower() == "host" then host_given = true end
    list[#list + 1] = { name, v }
  end
  if #h > 0 then
    for _, kv in ipairs(h) do add(kv[1], kv[2]) end
  else
    local names = {}
    for name in pairs(h) do
      if type(name) ~= "string" then error("t.txn: header names must be strings", 0) end
      names[#names + 1] = name
    end
    sort(names)
    for _, name in ipairs(names) do
      local v = h[name]
      if type(v) == "table" then
        for _, x in ipairs(v) do add(name, x) end
      else
        add(name, v)
      end
    end
  end
  if host_given and s.host ~= nil then error("t.txn: both host and a Host header", 0) end
  if not host_given and s.host ~= false then table.insert(list, 1, { "Host", s.host or "localhost" }) end
  return list
end

-- t.upstream -----------------------------------------------------------------

local Upstream = {}
Upstream.__index = Upstream

--- t.upstream(fn) -> a fake origin for t.run's opts.upstreams (a plain
-- function works too).  fn(req) answers status, body, headers ({ Name =
-- value | {values} }); raising, or returning nil, err, makes the try fail
-- as a refused connection does.  req = { method, uri, path, query,
-- http_version, host, headers, body, pool, peer }: what the origin receives;
-- req.headers:get(name) (case-insensitive), :get_all(name), and the list
-- itself ({ name, value } pairs in order).  The wrapper counts calls
-- (.calls) and keeps every req (.requests).
function M.upstream(fn)
  if type(fn) ~= "function" then error("t.upstream: fn must be a function, got " .. type(fn), 2) end
  local up = setmetatable({ fn = fn, calls = 0, requests = {} }, Upstream)
  return up
end

local OriginHeaders = {}
OriginHeaders.__index = OriginHeaders

function OriginHeaders:get(name)
  name = name:lower()
  for i = 1, #self do
    if self[i][1]:lower() == name then return self[i][2] end
  end
  return nil
end

function OriginHeaders:get_all(name)
  name = name:lower()
  local out = {}
  for i = 1, #self do
    if self[i][1]:lower() == name then out[#out + 1] = self[i][2] end
  end
  return out
end

-- What the origin gets for this try: the head moxy writes, parsed.
local function origin_request(r)
  if C.moxy_ffi_test_origin_request(r, sp, sl, bp, bl) ~= OK then error("t.run: out of memory", 0) end
  local head, body = ffi_string(sp[0], sl[0]), ffi_string(bp[0], bl[0])
  local method, uri, version = head:match("^(%S+) (%S+) HTTP/(%d%.%d)\r\n")
  local headers = setmetatable({}, OriginHeaders)
  for name, value in head:gmatch("\r\n([^:\r\n]+): ([^\r\n]*)") do headers[#headers + 1] = { name, value } end
  local path, query = uri:match("^([^?]*)%?(.*)$")
  return {
    method = method, uri = uri, path = path or uri, query = query, http_version = version,
    host = headers:get("Host"), headers = headers, body = body,
    pool = field(r, F.pool), peer = field(r, F.peer),
  }
end

-- txn.resp and txn.upstream: the same objects for every txn (txn.lua), on
-- which t.run leaves txn.resp.body and txn.upstream.request
local RESP, UPSTREAM
do
  local t = txn_mod.new(0)
  txn_mod.leave()
  RESP, UPSTREAM = t.resp, t.upstream
end

local current -- the moxy_test_t of the last run (its request stays readable)
local running = false -- a t.run runs

-- t.load ---------------------------------------------------------------------

local Loaded = {}

-- The hooks of `scripts`: a script path, a table of hooks, a list of those,
-- or what t.load returned.  Runs init and worker_init for a new set.
local function hook_set(scripts, what)
  if getmetatable(scripts) == Loaded then return scripts.set end
  local list = scripts
  if type(scripts) == "string" or (type(scripts) == "table" and scripts[1] == nil) then list = { scripts } end
  if type(list) ~= "table" then
    error(what .. ": scripts must be a path, a table of hooks or a list of them, got " .. type(scripts), 0)
  end
  for i, item in ipairs(list) do
    if type(item) ~= "string" and type(item) ~= "table" then
      error(what .. ": scripts[" .. i .. "] must be a path or a table of hooks, got " .. type(item), 0)
    end
  end
  local set = runtime.hook_set(list)
  runtime.run_once("init", set)
  runtime.run_once("worker_init", set)
  return set
end

--- t.load(scripts) -> the scripts compiled once, their init and
-- worker_init hooks run, for many t.run calls (t.run(path) compiles the
-- script again on every call).  scripts: a path, a table of hooks, or a
-- list of them (run in that order, as the configuration's `scripts`).
-- Raises "file:line: message" when a script does not load.
function M.load(scripts)
  if running then error("t.load: called while a t.run runs", 2) end
  wrap_log(true)
  local ok, set = pcall(hook_set, scripts, "t.load")
  wrap_log(false)
  if not ok then error(set, 2) end
  local loaded = setmetatable({ set = set }, Loaded)
  return loaded
end

-- t.run ----------------------------------------------------------------------

local OPTS = { upstreams = "table", peers = "table", default_upstream = "string", tries = "number",
               chunk_size = "number", http = "function", shared = "table", geoip = "table", cache = "table",
               mask = "table" }
local MAX_OBJECT = 16 * 1024 * 1024 -- cache.max_object's default

-- The GeoIP databases open in this process ("name=path;..." of the last
-- t.run's opts.geoip): reopened only when a t.run asks for others.
local geoip_open = ""

local function use_geoip(list)
  local names = {}
  for name, path in pairs(list or {}) do
    if type(name) ~= "string" or type(path) ~= "string" then
      error("t.run: opts.geoip: { name = \"path.mmdb\" }", 0)
    end
    names[#names + 1] = name
  end
  table.sort(names)
  local key = {}
  for i, name in ipairs(names) do key[i] = name .. "=" .. list[name] end
  key = table.concat(key, ";")
  if key == geoip_open then return end
  local cnames = ffi.new("const char *[?]", #names + 1)
  local cpaths = ffi.new("const char *[?]", #names + 1)
  for i, name in ipairs(names) do
    cnames[i - 1] = name
    cpaths[i - 1] = list[name]
  end
  local err = ffi.new("char[256]")
  geoip_open = ""
  if C.moxy_ffi_test_geoip(cnames, cpaths, #names, err, 256) ~= 0 then
    error("t.run: opts." .. ffi.string(err), 0)
  end
  geoip_open = key
end

local function free_current()
  txn_mod.leave()
  if current ~= nil then
    C.moxy_ffi_test_free(ffi.gc(current, nil))
    current = nil
  end
end

local function no_http()
  return nil, "moxy.test: no answer for moxy.http (give t.run an opts.http function)"
end

local function log(run, level, msg)
  run.logs[#run.logs + 1] = { level = level, message = msg }
end

local function has(run, ph)
  return #run.set[ph + 1] > 0
end

-- Run the hooks of phase ph, as lua_bridge.c's co_resume does: "ok",
-- "done" (a hook answered) or "error" (logged); and on_body's output.
local function phase(run, ph, chunk, eof)
  if not has(run, ph) then return "ok", chunk end
  local name = NAMES[ph + 1]
  run.phases[#run.phases + 1] = name
  run.hook_phase = ph
  C.moxy_ffi_test_phase(run.r, ph)
  local co = coroutine.create(runtime.run_phase)
  local ok, answered, t, out = coroutine.resume(co, run.set, run.ptr, ph, run.saved, chunk, eof)
  txn_mod.leave()
  if ok and coroutine.status(co) ~= "dead" then
    ok, answered = false, "a hook yielded outside moxy's API (coroutine.yield in a hook?)"
  elseif not ok and type(answered) ~= "string" and type(answered) ~= "number" then
    answered = "(error object is not a string)"
  end
  if not ok then
    local msg = name .. ": " .. tostring(answered)
    log(run, "err", msg)
    run.script_error = run.script_error or msg -- the first: what made the request fail
    return "error"
  end
  run.txn = t
  -- the txn (and its ctx) goes on to the later phases when more than one
  -- phase has hooks (w->lua_phases > 1 in lua_bridge.c)
  if run.nphases > 1 and not run.saved then run.saved = t end
  if answered and C.moxy_ffi_test_answered(run.r) ~= 0 then return "done" end
  return "ok", out
end

-- moxy_resp_local: the answer of a hook, or moxy's error page.
local function answer_local(run)
  C.moxy_ffi_test_local(run.r, sp, sl)
  run.body = ffi_string(sp[0], sl[0])
end

local function error_page(run, status)
  C.moxy_ffi_test_error_page(run.r, status)
  answer_local(run)
end

-- moxy_req_fail: log why, then the on_error hooks answer, or the error page.
local function fail(run, status, why)
  local r = run.r
  C.moxy_ffi_test_fail(r, status, why, #why)
  log(run, status >= 500 and "warn" or "info", format("%s %s from %s: %d: %s", field(r, F.method),
    field(r, F.uri) or "-", field(r, F.client_ip), status, why))
  if not has(run, P.error) or run.hook_phase == P.error then return error_page(run, status) end
  if phase(run, P.error) == "done" then return answer_local(run) end
  local s = C.moxy_ffi_resp_status(r, 0)
  error_page(run, s >= 500 and s or 500)
end

-- The fake origin of this try, or nil.
local function origin_of(run, by_peer, req)
  if by_peer then return run.opts.peers and run.opts.peers[req.peer] end
  return run.opts.upstreams and run.opts.upstreams[req.pool]
end

-- Call the fake origin: status, body, headers; or nil, why (a failed try).
local function call_origin(run, req, by_peer)
  local up = origin_of(run, by_peer, req)
  if up == nil then
    return nil, by_peer and "connect failed: connection refused (no opts.peers entry for " .. req.peer .. ")"
      or "connect failed: connection refused (no fake origin for pool " .. tostring(req.pool) .. ")"
  end
  local fn = up
  if getmetatable(up) == Upstream then
    up.calls = up.calls + 1
    up.requests[#up.requests + 1] = req
    fn = up.fn
  end
  local ok, status, body, headers = pcall(fn, req)
  if not ok then return nil, tostring(status) end
  if status == nil then return nil, body ~= nil and tostring(body) or "the fake origin answered nothing" end
  if type(status) ~= "number" or status < 200 or status > 999 or status % 1 ~= 0 then
    error("t.run: the fake origin's status must be an integer in 200..999, got " .. tostring(status), 0)
  end
  if body ~= nil and type(body) ~= "string" then
    error("t.run: the fake origin's body must be a string or nil, got " .. type(body), 0)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("t.run: the fake origin's headers must be a table, got " .. type(headers), 0)
  end
  return status, body or "", headers or {}
end

local function add_header(r, which, name, value, what)
  if type(value) == "number" then value = tostring(value) end
  if type(name) ~= "string" or type(value) ~= "string" then
    error(what .. ": header names and values must be strings (" .. tostring(name) .. ")", 0)
  end
  local rc = C.moxy_ffi_test_header(r, which, name, #name, value, #value)
  if rc == DECLINED then error(what .. ": more headers than limits.headers (100)", 0) end
  if rc ~= OK then error(what .. ": invalid header " .. name .. ": " .. format("%q", value), 0) end
end

-- The origin answered: on_response, then the body through on_body.
local function proxy_response(run, status, body, headers)
  local r = run.r
  local names, has_length = {}, false
  for name in pairs(headers) do
    if type(name) ~= "string" then error("t.run: the fake origin's header names must be strings", 0) end
    names[#names + 1] = name
    local l = name:lower()
    if l == "content-length" or l == "transfer-encoding" then has_length = true end
  end
  sort(names)
  for _, name in ipairs(names) do
    local v = headers[name]
    if type(v) == "table" then
      for _, x in ipairs(v) do add_header(r, 1, name, x, "t.run: the fake origin's headers") end
    else
      add_header(r, 1, name, v, "t.run: the fake origin's headers")
    end
  end
  local with_body = C.moxy_ffi_test_response(r, status, #body) == 1
  -- a real origin frames its body
  if with_body and not has_length then add_header(r, 1, "Content-Length", #body, "t.run") end
  if not with_body then body = "" end

  if run.opts.cache then C.moxy_ffi_test_cache(r, 3, 1, 0, ttlp, sp) end
  C.moxy_ffi_test_masked(r)
  local rc = phase(run, P.response)
  if rc == "done" then return answer_local(run) end
  if rc == "error" then return fail(run, 500, "script error in on_response") end
  if run.opts.cache then
    local max = run.opts.cache.max_object or MAX_OBJECT
    if C.moxy_ffi_test_cache(r, 4, 1, max, ttlp, sp) == 1 then
      run.stored = { ttl = ttlp[0] }
    else
      run.stored = { why = ffi_string(sp[0]) }
    end
  end

  if C.moxy_ffi_test_resp_start(r, has(run, P.body) and 1 or 0) == 0 then
    C.moxy_ffi_test_body_sent(r, #body, 1)
    run.body = body
    return
  end
  local size = run.opts.chunk_size or #body
  if size < 1 then size = 1 end
  local out, pos, n = {}, 1, #body
  repeat
    local piece = body:sub(pos, pos + size - 1)
    pos = pos + size
    local eof = pos > n
    local prc, o = phase(run, P.body, piece, eof)
    if prc == "error" then
      -- the head is out: the client connection is cut (filter_emit)
      C.moxy_ffi_test_fail(r, 0, "script error in on_body", 23)
      log(run, "warn", "response cut: script error in on_body")
      break
    end
    o = o or ""
    out[#out + 1] = o
    C.moxy_ffi_test_body_sent(r, #o, eof and 1 or 0)
  until eof
  run.body = concat(out)
end

-- Tries of the request (moxy_upstream_try ... try_again).
local function proxy(run)
  local r = run.r
  while true do
    C.moxy_ffi_test_try_start(r)
    local rc = phase(run, P.upstream)
    if rc == "done" then return answer_local(run) end
    if rc == "error" then return fail(run, 500, "script error in on_upstream") end
    local how = C.moxy_ffi_test_try_peer(r)
    if how == DECLINED then return fail(run, 502, "no upstream pool for this request") end
    rc = phase(run, P.upstream_request)
    if rc == "done" then return answer_local(run) end
    if rc == "error" then return fail(run, 500, "script error in on_upstream_request") end

    local req = origin_request(r)
    run.up_requests[#run.up_requests + 1] = req
    local status, body, headers = call_origin(run, req, how == 1)
    if status then return proxy_response(run, status, body, headers) end
    local why = body
    log(run, "err", format("origin %s (pool %s): %s", req.peer, req.pool or "-", why))
    local max = C.moxy_ffi_test_try_failed(r, why, #why, has(run, P.upstream) and 1 or 0)
    if max == 0 then return fail(run, 502, why) end
    log(run, "warn", format("origin %s: %s; trying again (%d of %d)", req.peer, why,
      C.moxy_ffi_req_number(r, 0) + 1, max))
  end
end

-- Build the C request of spec s in a new test worker.
local function build(s, opts)
  local names = {}
  for name, up in pairs(opts.upstreams or {}) do
    if type(name) ~= "string" then error("t.run: opts.upstreams: pool names must be strings", 0) end
    if type(up) ~= "function" and getmetatable(up) ~= Upstream then
      error("t.run: opts.upstreams." .. name .. " must be t.upstream(fn) or a function", 0)
    end
    names[#names + 1] = name
  end
  sort(names)
  for peer, up in pairs(opts.peers or {}) do
    if type(peer) ~= "string" or (type(up) ~= "function" and getmetatable(up) ~= Upstream) then
      error("t.run: opts.peers: { [\"ip:port\"] = t.upstream(fn) or a function }", 0)
    end
  end
  local default = -1
  if opts.default_upstream then
    for i, name in ipairs(names) do
      if name == opts.default_upstream then default = i - 1 end
    end
    if default < 0 then
      error("t.run: opts.default_upstream \"" .. opts.default_upstream .. "\" is not in opts.upstreams", 0)
    end
  elseif #names == 1 then
    default = 0
  end
  local tries = opts.tries or 2
  if tries < 1 or tries % 1 ~= 0 then error("t.run: opts.tries must be an integer >= 1", 0) end
  local pools = ffi.new("const char *[?]", #names + 1)
  local peers = ffi.new("const char *[?]", #names + 1)
  local peer_text = {}
  for i, name in ipairs(names) do
    peer_text[i] = name .. ":80" -- a name, not an address: never mistaken for set_peer's
    pools[i - 1] = name
    peers[i - 1] = peer_text[i]
  end
  local t = C.moxy_ffi_test_new(pools, peers, #names, default, tries)
  if t == nil then error("t.run: out of memory", 0) end
  current = ffi.gc(t, C.moxy_ffi_test_free)
  -- the configuration's mask (opts.mask, checked as the file's would be)
  local mask, merr = config.test_mask(opts.mask)
  if not mask then error(merr, 0) end
  local masked = ffi.new("const char *[?]", #mask.headers + 1)
  for i, n in ipairs(mask.headers) do masked[i - 1] = n end
  if C.moxy_ffi_test_mask(t, masked, #mask.headers, mask.server, mask.via) ~= OK then
    error("t.run: out of memory", 0)
  end

  local uri = (s.path or "/") .. (s.query and "?" .. s.query or "")
  local method = s.method or "GET"
  local ip = s.client_ip or "127.0.0.1"
  local r = C.moxy_ffi_test_req(t, method, #method, uri, #uri, s.http_version == "1.0" and 0 or 1,
    ip, #ip, s.client_port or 54321, errbuf, ERR_LEN)
  if r == nil then error("t.run: " .. ffi_string(errbuf), 0) end
  local list = header_list(s)
  local body = s.body
  if body then
    local framed = false
    for _, kv in ipairs(list) do
      local l = kv[1]:lower()
      if l == "content-length" or l == "transfer-encoding" then framed = true end
    end
    if not framed then list[#list + 1] = { "Content-Length", tostring(#body) } end
  end
  for _, kv in ipairs(list) do add_header(r, 0, kv[1], kv[2], "t.txn") end
  if C.moxy_ffi_test_req_start(r, body or "", body and #body or 0, body and 1 or 0, errbuf, ERR_LEN) ~= OK then
    error("t.txn: " .. ffi_string(errbuf), 0)
  end
  return r
end

local function check_opts(opts)
  if type(opts) ~= "table" then error("t.run: opts must be a table, got " .. type(opts), 0) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if not want then error("t.run: unknown option \"" .. tostring(k) .. "\"", 0) end
    if type(v) ~= want and not (k == "mask" and type(v) == "boolean") then
      error("t.run: opts." .. k .. " must be a " .. want .. ", got " .. type(v), 0)
    end
  end
  if opts.chunk_size and (opts.chunk_size < 1 or opts.chunk_size % 1 ~= 0) then
    error("t.run: opts.chunk_size must be an integer >= 1", 0)
  end
  if opts.cache then
    for k, v in pairs(opts.cache) do
      if k ~= "max_object" then error("t.run: opts.cache: unknown field \"" .. tostring(k) .. "\" (max_object)", 0) end
      if type(v) ~= "number" or v < 0 then error("t.run: opts.cache.max_object must be a number of bytes", 0) end
    end
  end
end

-- After on_request, with opts.cache: the key, on_cache_key, the lookup
-- (http_cache.c's moxy_cache_request; there is no store: a miss).  "ok",
-- or "done" when an on_cache_key hook answered or failed.
local function cache_lookup(run)
  local r = run.r
  if C.moxy_ffi_test_cache(r, 1, 1, 0, ttlp, sp) == 1 then
    local rc = phase(run, P.cache_key)
    if rc == "done" then
      answer_local(run)
      return "done"
    elseif rc == "error" then
      fail(run, 500, "script error in on_cache_key")
      return "done"
    end
  end
  C.moxy_ffi_test_cache(r, 2, 1, 0, ttlp, sp)
  return "ok"
end

local function run_all(run)
  local rc = phase(run, P.request)
  if rc == "done" then
    answer_local(run)
  elseif rc == "error" then
    fail(run, 500, "script error in on_request")
  elseif not run.opts.cache or cache_lookup(run) == "ok" then
    proxy(run)
  end
  phase(run, P.log) -- after the last byte; a failure there is only logged
end

--- t.run(scripts, txn, opts) -> the txn after its on_log hooks.
-- Runs one request through the hooks of `scripts` (a path, a table of
-- hooks, a list of those, or t.load's result) as moxy would: on_request,
-- on_upstream (again for each retry), on_upstream_request, the fake origin
-- of the pool, on_response, on_body, on_log, and on_error for moxy's own
-- error answers.  txn: t.txn{...} (or its fields).  opts (all optional):
--   upstreams         { pool = t.upstream(fn) }: the pools and their fake origins
--   peers             { ["ip:port"] = t.upstream(fn) }: origins for txn.upstream:set_peer
--   default_upstream  the pool when no hook picks one (default: the only pool)
--   tries             upstreams.NAME.tries of every pool (2)
--   chunk_size        bytes of response body per on_body call (the whole body)
--   http              function(opts) -> res or nil, err: answers moxy.http.request
--   shared            { name = size }: moxy.shared dicts to create (kept for the process)
--   geoip             { name = "path.mmdb" }: the GeoIP databases (as the
--                     configuration's geoip; txn.client.geo looks up txn.client.ip)
--   cache             {} or { max_object = bytes }: looked up as with a cache
--                     (no store: a miss), on_cache_key runs, txn.cache's calls
--                     count, and txn.stored tells what would be stored
-- The result is the txn the hooks got (txn.req, txn.resp.status,
-- txn.resp.headers, txn.ctx, txn.upstream.pool, ... read the request as it
-- ended), plus txn.resp.body (what the client got), txn.upstream.request
-- (what the last try's origin got, or nil) and .requests (every try's),
-- txn.logs ({ level, message } of moxy.log calls and of moxy's own lines:
-- script errors, failed tries), txn.phases (names of the phases whose
-- hooks ran, in order) and txn.error (why moxy answered with an error; the
-- "phase: file:line: message" of a script error), and with opts.cache
-- txn.stored ({ ttl = s } or { why = "..." }; nil when no origin answered).  txn.req, txn.resp,
-- txn.client and txn.upstream address the last t.run's request: a later
-- t.run switches them (txn.logs, .phases, .error and .ctx stay).
function M.run(scripts, spec, opts)
  if running then error("t.run: called while a t.run runs (from a hook or a fake origin?)", 2) end
  opts = opts or {}
  if spec == nil then spec = M.txn() end
  if type(spec) ~= "table" then error("t.run: txn must be t.txn{...}, got " .. type(spec), 2) end
  if getmetatable(spec) ~= Spec then spec = M.txn(spec) end
  local ok, err = pcall(check_opts, opts)
  if not ok then error(err, 2) end
  free_current()
  running = true
  local logs, set = {}, nil
  capture = logs
  wrap_log(true)
  local saved_test = runtime.test
  local result
  ok, err = pcall(function()
    for name, size in pairs(opts.shared or {}) do require("moxy.shared").create(name, size) end
    use_geoip(opts.geoip)
    set = hook_set(scripts, "t.run")
    local r = build(spec, opts)
    local run = {
      set = set, r = r, ptr = tonumber(ffi.cast("uintptr_t", r)), opts = opts, logs = logs,
      phases = {}, up_requests = {}, nphases = 0, body = "",
    }
    for i = 1, #NAMES do
      if #set[i] > 0 then run.nphases = run.nphases + 1 end
    end
    local resp, upstream = RESP, UPSTREAM
    rawset(resp, "body", nil)
    rawset(upstream, "request", nil)
    rawset(upstream, "requests", nil)
    runtime.test = { http = opts.http or no_http }
    C.moxy_ffi_test_cache(r, 0, opts.cache and 1 or 0, 0, ttlp, sp)
    run_all(run)
    runtime.test = saved_test
    local t = run.txn or txn_mod.new(run.ptr, P.log)
    txn_mod.enter(run.ptr, P.log)
    rawset(resp, "body", run.body)
    rawset(upstream, "request", run.up_requests[#run.up_requests])
    rawset(upstream, "requests", run.up_requests)
    rawset(t, "logs", logs)
    rawset(t, "phases", run.phases)
    if run.script_error then rawset(t, "error", run.script_error) end
    rawset(t, "stored", run.stored)
    result = t
  end)
  runtime.test = saved_test
  C.moxy_ffi_test_cache(nil, 0, 0, 0, ttlp, sp) -- test mode off: another t.run may have no cache
  wrap_log(false)
  capture = nil
  running = false
  if not ok then
    free_current()
    error(err, 2)
  end
  return result
end

-- t.tls_hello -----------------------------------------------------------------

local HELLO_FIELDS = { sni = "string", alpn = "table", ja4 = "string", client_ip = "string",
                       client_port = "number", listener = "string" }
local HELLO_OPTS = { certificates = "table", supplied = "table", http = "function", shared = "table" }

-- The name (lower case) that a certificate for `pattern` serves, as SNI
-- chooses: the same name, or a wildcard one label deep.
local function serves(pattern, name)
  if pattern == name then return true end
  local rest = name:match("^[^%.]+(%..+)$")
  return pattern:sub(1, 2) == "*." and rest ~= nil and pattern:sub(2) == rest
end

--- t.tls_hello(scripts, hello, opts) -> what the on_tls_hello hooks decided.
-- hello (all optional): sni, alpn ({ "h2", "http/1.1" }), ja4, client_ip
-- ("127.0.0.1"), client_port (54321), listener ("test").  opts:
-- certificates (the names the listener's certificates serve, for
-- hello:use), supplied (names a hook supplied a certificate for on earlier
-- handshakes), http and shared as for t.run.  Returns { used = name,
-- supplied = { cert, key, name }, refused = true, error = "file:line: msg",
-- logs = { {level, message} } }: used / supplied is the last choice (nil
-- without one); error is set (and refused) when a hook failed.
function M.tls_hello(scripts, hello, opts)
  if running then error("t.tls_hello: called while a t.run runs", 2) end
  hello, opts = hello or {}, opts or {}
  for k, v in pairs(hello) do
    if not HELLO_FIELDS[k] then error("t.tls_hello: unknown hello field " .. tostring(k), 2) end
    if type(v) ~= HELLO_FIELDS[k] then error("t.tls_hello: hello." .. k .. " must be a " .. HELLO_FIELDS[k], 2) end
  end
  for k, v in pairs(opts) do
    if not HELLO_OPTS[k] then error("t.tls_hello: unknown option " .. tostring(k), 2) end
    if type(v) ~= HELLO_OPTS[k] then error("t.tls_hello: opts." .. k .. " must be a " .. HELLO_OPTS[k], 2) end
  end
  free_current()
  running = true
  local logs, result = {}, { logs = {} }
  capture = logs
  wrap_log(true)
  local saved_test = runtime.test
  local kept = {}
  for _, n in ipairs(opts.supplied or {}) do kept[n:lower()] = true end
  local fake = {
    use = function(name)
      name = name:lower():gsub("%.$", "")
      for _, pattern in ipairs(opts.certificates or {}) do
        if serves(pattern:lower(), name) then
          result.used, result.supplied = name, nil
          return true
        end
      end
      if kept[name] then
        result.used, result.supplied = name, nil
        return true
      end
      return false
    end,
    supply = function(cert, key, name)
      if not cert:find("-----BEGIN CERTIFICATE-----", 1, true) then
        return nil, "the certificate is not a PEM certificate"
      end
      if not key:find("-----BEGIN [%w ]*PRIVATE KEY-----") then
        return nil, "the key is not a PEM private key (or it is encrypted)"
      end
      if name ~= "" then kept[name:lower()] = true end
      result.used, result.supplied = nil, { cert = cert, key = key, name = name ~= "" and name or nil }
      return true
    end,
    refuse = function() result.refused = true end,
  }
  local ok, err = pcall(function()
    for name, size in pairs(opts.shared or {}) do require("moxy.shared").create(name, size) end
    local set = hook_set(scripts, "t.tls_hello")
    runtime.test = { http = opts.http or no_http }
    local alpn = hello.alpn and { unpack(hello.alpn) } or { "h2", "http/1.1" }
    local ran, herr = pcall(require("moxy.tls_hello").run_fake, set[P.tls_hello + 1], {
      sni = hello.sni and hello.sni:lower(), alpn = alpn, ja4 = hello.ja4,
      client = { ip = hello.client_ip or "127.0.0.1", port = hello.client_port or 54321 },
      listener = hello.listener or "test",
    }, fake)
    if not ran then
      result.error = "on_tls_hello: " .. tostring(herr)
      result.refused = true
    end
  end)
  runtime.test = saved_test
  wrap_log(false)
  capture = nil
  running = false
  if not ok then error(err, 2) end
  result.logs = logs
  return result
end

return M
