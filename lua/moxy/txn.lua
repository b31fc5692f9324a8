-- moxy.txn: the transaction object a hook receives (`txn`), over the C
-- exports of core/api/ffi.h.  The cdef below must match that header (checked by
-- tools/check-ffi.lua).
local ffi = require "ffi"

ffi.cdef [[
typedef struct moxy_req_s moxy_req_t;
int moxy_ffi_abi_version(void);
int moxy_ffi_req_field(moxy_req_t *r, int field, const char **out, size_t *len);
typedef struct {
    const char *sni, *version, *cipher, *alpn;
    int resumed;
    int has_cert, verified; /* mutual TLS: a client certificate came; it verified */
    const char *subject, *issuer, *serial, *fingerprint;
    double not_after;
    const char *ja4; /* the client hello's JA4 fingerprint */
} moxy_ffi_tls_t;
int moxy_ffi_req_tls(moxy_req_t *r, moxy_ffi_tls_t *out);
int moxy_ffi_header_get(moxy_req_t *r, int which, const char *name, size_t nlen, int index,
                        const char **val, size_t *vlen);
int moxy_ffi_header_set(moxy_req_t *r, int which, const char *name, size_t nlen, const char *val,
                        size_t vlen, int add);
int moxy_ffi_req_defer_incr(moxy_req_t *r, void *d, const char *key, size_t klen, double by);
int moxy_ffi_log_field(moxy_req_t *r, const char *name, size_t nlen, const char *val, size_t vlen, int quoted);
int moxy_ffi_header_remove(moxy_req_t *r, int which, const char *name, size_t nlen);
int moxy_ffi_header_at(moxy_req_t *r, int which, int index, const char **name, size_t *nlen,
                       const char **val, size_t *vlen);
int moxy_ffi_req_set_target(moxy_req_t *r, const char *path, size_t plen, const char *query,
                            size_t qlen, int has_query);
int moxy_ffi_upstream_pick(moxy_req_t *r, const char *name, size_t len, const char *key, size_t klen,
                           int has_key, const char *peer, size_t plen);
int moxy_ffi_resp_status(moxy_req_t *r, int status);
int moxy_ffi_respond(moxy_req_t *r, int status, const char *body, size_t len);
double moxy_ffi_req_number(moxy_req_t *r, int which);
int moxy_ffi_client_port(moxy_req_t *r, int socket);
int moxy_ffi_log(moxy_req_t *r, int level, const char *msg, size_t len);
int moxy_ffi_upstream_set_peer(moxy_req_t *r, const char *host, size_t len, int port);
int moxy_ffi_req_flag(moxy_req_t *r, int flag, int value);
int moxy_ffi_resp_compress(moxy_req_t *r, int want, int encoding, int level);
int moxy_ffi_req_body_decode(moxy_req_t *r, double max);
int moxy_ffi_req_read_body(moxy_req_t *r, double max);
int moxy_ffi_req_body(moxy_req_t *r, const char **out, size_t *len);
int moxy_ffi_cache_op(moxy_req_t *r, int op, double ttl, double stale);
int moxy_ffi_cache_info(moxy_req_t *r, const char **key, size_t *klen, double *age);
int moxy_ffi_cache_set_key(moxy_req_t *r, const char *key, size_t len);
]]

local C = ffi.C
local ABI = 26
if C.moxy_ffi_abi_version() ~= ABI then
  error("moxy.txn: Lua modules (ABI " .. ABI .. ") do not match the moxy binary (ABI "
    .. C.moxy_ffi_abi_version() .. "); install them together", 0)
end

local OK, AGAIN, DECLINED = 0, -2, -3
local F = { method = 0, uri = 1, path = 2, query = 3, host = 4, client_ip = 5, id = 6,
            listener = 7, version = 8, pool = 9, error = 10, peer = 11, body_error = 12,
            socket_ip = 13, scheme = 14 }
local N = { tries = 0, started = 1, up_status = 2, connect_time = 3, header_time = 4,
            response_time = 5, duration = 6, bytes_sent = 7, status = 8 }
local FLAG = { retryable = 0, no_filter = 1 }

local sp = ffi.new("const char *[1]")
local sl = ffi.new("size_t[1]")
local np = ffi.new("const char *[1]")
local nl = ffi.new("size_t[1]")
local ffi_string, type, tostring, error = ffi.string, type, tostring, error

-- (No `return ffi_string(...)`: `make lint` checks it, tools/check-tailcalls.lua says why.)
local function field(r, f)
  if C.moxy_ffi_req_field(r, f, sp, sl) ~= OK then return nil end
  local s = ffi_string(sp[0], sl[0])
  return s
end

-- The address of the running hook's request, as a number (0: none).  A
-- plain number, not a cdata, so that entering and leaving a hook -- which
-- the interpreter runs, between the C resume and the user's function -- is
-- an assignment; the cast happens in the API functions, which the JIT
-- compiles.
local cur = 0
local cast = ffi.cast
local REQ_T = ffi.typeof("moxy_req_t *")

-- The running hook's request; raises when no hook runs (a txn kept past its
-- hook, or used from code that runs outside hooks).
local function req_ptr()
  if cur == 0 then error("txn: used outside of a hook of its request", 3) end
  local r = cast(REQ_T, cur)
  return r
end

-- Headers ------------------------------------------------------------------

local Headers = {}
Headers.__index = Headers

local function check_name(name, what)
  if type(name) ~= "string" then
    error("headers:" .. what .. ": header name must be a string, got " .. type(name), 3)
  end
end

--- headers:get(name) -> the first value of header `name` (case-insensitive), or nil.
function Headers:get(name)
  check_name(name, "get")
  if C.moxy_ffi_header_get(req_ptr(), self._which, name, #name, 0, sp, sl) ~= OK then return nil end
  local v = ffi_string(sp[0], sl[0])
  return v
end

--- headers:get_all(name) -> a list of every value of header `name` (maybe empty).
function Headers:get_all(name)
  check_name(name, "get_all")
  local out, i = {}, 0
  while C.moxy_ffi_header_get(req_ptr(), self._which, name, #name, i, sp, sl) == OK do
    i = i + 1
    out[i] = ffi_string(sp[0], sl[0])
  end
  return out
end

local function put(self, name, value, add, what)
  check_name(name, what)
  if type(value) ~= "string" then
    if type(value) == "number" then
      value = tostring(value)
    else
      error("headers:" .. what .. ": value must be a string, got " .. type(value), 3)
    end
  end
  if C.moxy_ffi_header_set(req_ptr(), self._which, name, #name, value, #value, add) ~= OK then
    error("headers:" .. what .. ": invalid header " .. name .. ": " .. string.format("%q", value), 3)
  end
end

--- headers:set(name, value): replace every `name` header by one with `value`.
function Headers:set(name, value)
  put(self, name, value, 0, "set")
end

--- headers:add(name, value): add a `name` header, keeping the others.
function Headers:add(name, value)
  put(self, name, value, 1, "add")
end

--- headers:remove(name): remove every `name` header.
function Headers:remove(name)
  check_name(name, "remove")
  C.moxy_ffi_header_remove(req_ptr(), self._which, name, #name)
end

--- headers:each() -> iterator over name, value in order (repeats included).
function Headers:each()
  local i, r, which = -1, req_ptr(), self._which
  return function()
    i = i + 1
    if C.moxy_ffi_header_at(r, which, i, np, nl, sp, sl) ~= OK then return nil end
    return ffi_string(np[0], nl[0]), ffi_string(sp[0], sl[0])
  end
end

-- The objects below the txn ----------------------------------------------
--
-- txn.req, txn.req.headers, txn.resp, txn.client and txn.upstream are made
-- once per VM and address "the request whose hook is running" (cur),
-- which the runner sets before each hook call, as ngx.req does in OpenResty.
-- So a hook allocates nothing but its txn table, and the JIT keeps the whole
-- hook in one trace.  Keep a txn, not these objects, if you need a request
-- later.


local REQ_FIELDS = {
  method = F.method, uri = F.uri, path = F.path, query = F.query, host = F.host,
  http_version = F.version, scheme = F.scheme,
}

local function set_target(path, query)
  local r = req_ptr()
  local has_query = query ~= nil and 1 or 0
  query = query or ""
  if C.moxy_ffi_req_set_target(r, path, #path, query, #query, has_query) ~= OK then
    error(string.format("txn.req: invalid request target %q", path .. (has_query == 1 and "?" .. query or "")), 3)
  end
end

-- txn.req.headers and txn.resp.headers: the methods are the objects' own
-- fields (headers:set is one table read, not a metatable's).
local function headers_object(which)
  local h = { _which = which }
  for k, v in pairs(Headers) do
    if k ~= "__index" then h[k] = v end
  end
  setmetatable(h, Headers)
  return h
end

local req = setmetatable({ headers = headers_object(0) }, {
  __index = function(_, k)
    local f = REQ_FIELDS[k]
    if f then return field(req_ptr(), f) end
    if k == "args" then return require("moxy.query").parse(field(req_ptr(), F.query) or "") end
    return nil
  end,
  -- txn.req.path = "/new" and txn.req.query = "a=1" (nil: no query) change
  -- what is sent to the origin
  __newindex = function(_, k, v)
    if k == "path" then
      if type(v) ~= "string" then error("txn.req.path must be a string, got " .. type(v), 2) end
      set_target(v, field(req_ptr(), F.query))
    elseif k == "query" then
      if v ~= nil and type(v) ~= "string" then
        error("txn.req.query must be a string or nil, got " .. type(v), 2)
      end
      set_target(field(req_ptr(), F.path), v)
    elseif k == "args" then
      -- txn.req.args = { page = 2, tag = { "a", "b" } }: the query, encoded (nil: none)
      if v ~= nil and type(v) ~= "table" then
        error("txn.req.args must be a table or nil, got " .. type(v), 2)
      end
      local q = v and require("moxy.query").encode(v)
      set_target(field(req_ptr(), F.path), q ~= "" and q or nil)
    else
      error("txn.req." .. tostring(k) .. " cannot be set (settable: path, query, args)", 2)
    end
  end,
})

-- Phases, as in C (MOXY_PHASE_*, core/http/http-t.h; tools/check-ffi.lua checks them).
local PHASE = { request = 0, upstream = 1, upstream_request = 2, response = 3, body = 4, log = 5,
                error = 6, cache_key = 7, tls_hello = 8 }
local phase = 0 -- of the running hook

-- txn.resp:compress(false | true | { encoding = "gzip", level = 4 }), until
-- on_response: this response is left as the origin sent it (false: not
-- compressed, not decoded), or compressed whatever its type and length
-- (true, or a table: a coding, if the client accepts it, and a level).
local CODING = { gzip = 1, br = 2, zstd = 3 }
local LEVEL_MAX = { gzip = 9, br = 11, zstd = 19 }
local function resp_compress(_, how)
  if phase > PHASE.response then error("txn.resp:compress: until on_response", 2) end
  local want, enc, level = 1, 0, 0
  if how == false then
    want = -1
  elseif type(how) == "table" then
    if how.encoding ~= nil then
      enc = CODING[how.encoding]
      if not enc then error("txn.resp:compress: encoding must be \"gzip\", \"br\" or \"zstd\"", 2) end
    end
    if how.level ~= nil then
      local max = LEVEL_MAX[how.encoding] or 19
      if type(how.level) ~= "number" or how.level ~= math.floor(how.level) or how.level < 1 or how.level > max then
        error("txn.resp:compress: level must be a whole number in 1.." .. max, 2)
      end
      level = how.level
    end
  elseif how ~= true and how ~= nil then
    error("txn.resp:compress: expected false, true or { encoding = ..., level = ... }", 2)
  end
  if C.moxy_ffi_resp_compress(req_ptr(), want, enc, level) ~= OK then
    error("txn.resp:compress: the response's head is already decided", 2)
  end
end

local resp = setmetatable({ headers = headers_object(1), compress = resp_compress }, {
  __index = function(_, k)
    if k == "status" then
      local s = C.moxy_ffi_resp_status(req_ptr(), 0)
      return s > 0 and s or nil
    end
    return nil
  end,
  -- txn.resp.status = 404 in on_response
  __newindex = function(_, k, v)
    if k == "filter" then
      -- txn.resp.filter = false: this response's body skips the on_body hooks
      if phase > PHASE.response then error("txn.resp.filter: settable until on_response", 2) end
      C.moxy_ffi_req_flag(req_ptr(), FLAG.no_filter, v == false and 1 or 0)
      return
    end
    if k ~= "status" then error("txn.resp." .. tostring(k) .. " cannot be set (settable: status, filter)", 2) end
    if phase ~= PHASE.response then error("txn.resp.status: settable in on_response only", 2) end
    if type(v) ~= "number" or C.moxy_ffi_resp_status(req_ptr(), v) ~= v then
      error("txn.resp.status: cannot change this response's status to " .. tostring(v), 2)
    end
  end,
})

-- txn.client.geo: the client's GeoIP fields (moxy.geo), each looked up on
-- first use in the request (one static proxy: no table per request).
local geo_proxy
local function geo()
  if not geo_proxy then
    local client_field = require("moxy.geo").client_field
    geo_proxy = setmetatable({}, {
      __index = function(_, k) return client_field(req_ptr(), k) end,
      __newindex = function() error("txn.client.geo is read-only", 2) end,
    })
  end
  return geo_proxy
end

local tls_out = ffi.new("moxy_ffi_tls_t[1]")

local function cstr(p)
  if p == nil then return nil end
  local s = ffi.string(p)
  return s
end

-- txn.client.tls: what the client's TLS connection negotiated, nil over plain HTTP
local function client_tls()
  if C.moxy_ffi_req_tls(req_ptr(), tls_out) ~= OK then return nil end
  local t = tls_out[0]
  local out = { sni = cstr(t.sni), version = cstr(t.version), cipher = cstr(t.cipher), alpn = cstr(t.alpn),
                resumed = t.resumed ~= 0, ja4 = cstr(t.ja4) }
  if t.has_cert ~= 0 then
    out.verified = t.verified ~= 0
    out.subject, out.issuer = cstr(t.subject), cstr(t.issuer)
    out.serial, out.fingerprint = cstr(t.serial), cstr(t.fingerprint)
    out.not_after = t.not_after
  end
  return out
end

local client = setmetatable({}, {
  __index = function(_, k)
    if k == "ip" then return field(req_ptr(), F.client_ip) end
    if k == "tls" then return client_tls() end
    if k == "geo" then return geo() end
    if k == "port" then
      local port = C.moxy_ffi_client_port(req_ptr(), 0)
      return port >= 0 and port or nil
    end
    if k == "socket_ip" then return field(req_ptr(), F.socket_ip) end
    if k == "socket_port" then return C.moxy_ffi_client_port(req_ptr(), 1) end
    return nil
  end,
})

local UP_NUMBERS = { tries = N.tries, status = N.up_status, connect_time = N.connect_time,
                     header_time = N.header_time, response_time = N.response_time }

local upstream = setmetatable({}, {
  __index = function(_, k)
    if k == "pool" then return field(req_ptr(), F.pool) end
    if k == "peer" then return field(req_ptr(), F.peer) end
    local n = UP_NUMBERS[k]
    if n then
      local v = C.moxy_ffi_req_number(req_ptr(), n)
      if v < 0 then return nil end
      return v
    end
    return nil
  end,
})

--- txn.upstream:pick(pool [, {hash = key, peer = addr}]): send this request
-- to the named pool.  In on_request and on_upstream (also by returning the
-- name).  hash: the key (string or number) a pool with balance = "hash"
-- maps to a peer (without one, the client's address).  peer: one of the
-- pool's server addresses, as configured, chosen while it is usable (up,
-- not drained, under max_conns, not tried yet); else the pool's algorithm
-- chooses -- sticky sessions without losing failover.  Returns true, or
-- nil, "no peer ... in pool ..." when the pool has no such peer (the pool
-- is picked all the same: a stale cookie only loses its stickiness).
function upstream.pick(_, pool, opts)
  if type(pool) ~= "string" then error("upstream:pick: pool name must be a string", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("upstream:pick: opts must be a table", 2) end
  local key, peer = opts and opts.hash, opts and opts.peer
  if key ~= nil then
    if type(key) == "number" then key = tostring(key) end
    if type(key) ~= "string" then error("upstream:pick: opts.hash must be a string or a number", 2) end
  end
  if peer ~= nil and type(peer) ~= "string" then error("upstream:pick: opts.peer must be a string", 2) end
  local rc = C.moxy_ffi_upstream_pick(req_ptr(), pool, #pool, key, key and #key or 0, key and 1 or 0,
                                      peer, peer and #peer or 0)
  if rc == DECLINED then error("upstream:pick: no pool named \"" .. pool .. "\"", 2) end
  if rc ~= OK then return nil, "no peer " .. peer .. " in pool " .. pool end
  return true
end

--- txn.upstream:set_peer(host, port): send this try to host:port (an IP
-- address) instead of a pool's server.
function upstream.set_peer(_, host, port)
  if type(host) ~= "string" then error("upstream:set_peer: host must be an IP address string", 2) end
  if type(port) ~= "number" or port < 1 or port > 65535 or port % 1 ~= 0 then
    error("upstream:set_peer: port must be an integer in 1..65535", 2)
  end
  local rc = C.moxy_ffi_upstream_set_peer(req_ptr(), host, #host, port)
  if rc ~= OK then
    error("upstream:set_peer: \"" .. host .. "\" is not an IP address (names are not resolved here)", 2)
  end
end

--- txn.upstream:retryable(yes): whether this request may be sent to
-- another peer after a failure (default: for idempotent methods).
function upstream.retryable(_, yes)
  C.moxy_ffi_req_flag(req_ptr(), FLAG.retryable, yes == false and 0 or 1)
end

-- txn.cache ------------------------------------------------------------------

local CACHE_STATUS = { [0] = nil, "bypass", "miss", "stale", "hit", "background" }
local agep = ffi.new("double[1]")

local cache = {}
local CacheMT = {
  __index = function(_, k)
    if k == "key" or k == "status" or k == "age" then
      local st = C.moxy_ffi_cache_info(req_ptr(), sp, sl, agep)
      if k == "status" then return CACHE_STATUS[st] end
      if k == "age" then return agep[0] >= 0 and agep[0] or nil end
      return sp[0] ~= nil and ffi_string(sp[0], sl[0]) or nil
    end
    return nil
  end,
  -- txn.cache.key = "..." in on_request or on_cache_key
  __newindex = function(_, k, v)
    if k ~= "key" then error("txn.cache." .. tostring(k) .. " cannot be set (settable: key)", 2) end
    if type(v) ~= "string" or v == "" then error("txn.cache.key: a non-empty string", 2) end
    local rc = C.moxy_ffi_cache_set_key(req_ptr(), v, #v)
    if rc == DECLINED then error("txn.cache.key: settable in on_request and on_cache_key", 2) end
    if rc ~= OK then error("txn.cache.key: out of memory", 2) end
  end,
}

--- txn.cache:bypass(): no lookup and no store for this request (on_request,
-- on_cache_key).  Without a cache, txn.cache's calls do nothing.
function cache.bypass(_)
  if C.moxy_ffi_cache_op(req_ptr(), 1, 0, 0) ~= OK then
    error("cache:bypass: in on_request or on_cache_key", 2)
  end
end

--- txn.cache:no_store(): this response is not stored (any phase up to
-- on_response).
function cache.no_store(_)
  C.moxy_ffi_cache_op(req_ptr(), 2, 0, 0)
end

--- txn.cache:store{ttl = seconds [, stale = seconds]}: store this response
-- for ttl seconds whatever its Cache-Control says (on_response; not for a
-- response the cache must never hold: partial, Vary: *, or a no-store
-- request).  stale: how long it may then be served stale if the origin fails.
function cache.store(_, opts)
  if type(opts) ~= "table" or type(opts.ttl) ~= "number" or opts.ttl < 0 then
    error("cache:store: {ttl = seconds >= 0 [, stale = seconds]}", 2)
  end
  if opts.stale ~= nil and (type(opts.stale) ~= "number" or opts.stale < 0) then
    error("cache:store: stale must be a number of seconds >= 0", 2)
  end
  if C.moxy_ffi_cache_op(req_ptr(), 3, opts.ttl, opts.stale or -1) ~= OK then
    error("cache:store: in on_response", 2)
  end
end
setmetatable(cache, CacheMT)

-- txn ----------------------------------------------------------------------

local methods = {}
local STATIC = { req = req, resp = resp, client = client, upstream = upstream, cache = cache }
-- A txn is an empty table whose metatable finds these (Txn.__index).  As
-- plain fields of every txn they would save ~250 instructions a read in an
-- interpreted hook but cost ~700 per request (a table with a hash part, and
-- its collection): more than a hook's few reads gain (bench/callgrind.sh).

local Txn = {
  __index = function(self, k)
    local v = STATIC[k] or methods[k]
    if v then return v end
    if k == "id" then return field(req_ptr(), F.id) end
    if k == "listener" then return field(req_ptr(), F.listener) end
    if k == "error" then return field(req_ptr(), F.error) end
    if k == "started" then return C.moxy_ffi_req_number(req_ptr(), N.started) end
    if k == "duration" then return C.moxy_ffi_req_number(req_ptr(), N.duration) end
    if k == "bytes_sent" then return C.moxy_ffi_req_number(req_ptr(), N.bytes_sent) end
    if k == "ctx" then
      v = {}
      rawset(self, "ctx", v)
      return v
    end
    return nil
  end,
}

--- txn:respond(status, body, headers): answer the request directly.
-- body: string (or nil); headers: table name -> value (or list of values).
function methods.respond(self, status, body, headers)
  if type(status) ~= "number" then error("txn:respond: status must be a number", 2) end
  body = body == nil and "" or body
  if type(body) ~= "string" then error("txn:respond: body must be a string", 2) end
  if phase == PHASE.body or phase == PHASE.log then
    error("txn:respond: the response has started (" .. (phase == PHASE.body and "on_body" or "on_log") .. ")", 2)
  end
  if phase == PHASE.response then
    -- in on_response the origin's headers are there: the answer replaces them
    local h, names = resp.headers, {}
    for name in h:each() do names[#names + 1] = name end
    for i = 1, #names do h:remove(names[i]) end
  end
  if headers ~= nil then
    if type(headers) ~= "table" then error("txn:respond: headers must be a table", 2) end
    local h = resp.headers
    for name, value in pairs(headers) do
      if type(value) == "table" then
        for _, v in ipairs(value) do h:add(name, v) end
      else
        h:set(name, value)
      end
    end
  end
  if C.moxy_ffi_respond(req_ptr(), status, body, #body) ~= OK then
    error("txn:respond: bad status " .. tostring(status), 2)
  end
  rawset(self, "_done", true)
end

--- txn:read_body(max) -> the request body as a string (possibly empty), or
-- nil, err.  The hook waits until the whole body is in (other requests go
-- on); the body then goes to the origin with a Content-Length, and a
-- failed try may be retried with it.  max: bytes (default and ceiling:
-- limits.body_bytes).  A body over max gives nil, "request body too large"
-- and the request is answered 413 unless a hook answers; a malformed one
-- nil, err and 400.  In on_request, on_upstream and on_upstream_request
-- (before the body streams to the origin); later phases get the body a
-- hook read before.
-- txn:read_body{ max = bytes, decode = true }: the same, and a body with
-- Content-Encoding gzip, br or zstd is decoded (with compression.decompress's
-- max_size, or max when smaller, and max_ratio): the hook and the origin
-- get the decoded body, without Content-Encoding.  nil, err and 415 for
-- another coding, 400 for a body that does not decode, 413 past the limits.
function methods.read_body(_, max)
  local decode = false
  if type(max) == "table" then
    decode = max.decode == true
    max = max.max
  end
  if max ~= nil and (type(max) ~= "number" or max < 0) then
    error("txn:read_body: max must be a number of bytes >= 0", 2)
  end
  local r = req_ptr()
  local rc = C.moxy_ffi_req_read_body(r, max or 0)
  if rc == AGAIN then
    require("moxy.runtime").wait()
    r = req_ptr()
  elseif rc ~= OK then
    return nil, field(r, F.body_error) or "cannot read the body"
  end
  if decode and C.moxy_ffi_req_body_decode(r, max or 0) ~= OK then
    return nil, field(r, F.body_error) or "cannot decode the body"
  end
  if C.moxy_ffi_req_body(r, sp, sl) ~= OK then
    return nil, field(r, F.body_error) or "cannot read the body"
  end
  local body = ffi_string(sp[0], sl[0])
  return body
end

--- txn:log_field(name, value): add name=value to this request's access-log
-- line (JSON: a key of the object; combined: ` name=value` at the end).
-- name: 1..64 of A-Z a-z 0-9 _; value: a string, number or boolean (nil
-- removes nothing: it is an error).  Any phase, on_log included; a name
-- given again replaces its value.
function methods.log_field(_, name, value)
  if type(name) ~= "string" then error("txn:log_field: name must be a string", 2) end
  local t, quoted = type(value), 0
  if t == "string" then
    quoted = 1
  elseif t == "number" then
    if value ~= value or value == math.huge or value == -math.huge then
      error("txn:log_field: value must be a finite number", 2)
    end
    value = value % 1 == 0 and string.format("%d", value) or string.format("%.17g", value)
  elseif t == "boolean" then
    value = value and "true" or "false"
  else
    error("txn:log_field: value must be a string, number or boolean, got " .. t, 2)
  end
  if C.moxy_ffi_log_field(req_ptr(), name, #name, value, #value, quoted) ~= OK then
    error("txn:log_field: bad name \"" .. name .. "\" (1..64 letters, digits or _)", 2)
  end
end

local REDIRECTS = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

--- txn:redirect(url, status): answer with a redirect to url (status 301,
-- 302 (default), 303, 307 or 308).
function methods.redirect(self, url, status)
  status = status or 302
  if type(url) ~= "string" or url == "" then error("txn:redirect: url must be a string", 2) end
  if not REDIRECTS[status] then error("txn:redirect: status must be 301, 302, 303, 307 or 308", 2) end
  resp.headers:set("Location", url)
  methods.respond(self, status, "")
end

local M = {}

-- A txn for the request at address `ptr` (a number: see lua_bridge.c); it
-- becomes the request the objects above address.
function M.new(ptr, ph)
  cur = ptr
  phase = ph or 0
  local t = setmetatable({}, Txn)
  return t
end

-- The running hook's request is `ptr` again (after a yield, or in a later
-- phase), in phase `ph`; ptr 0: none (a timer's callback).
function M.enter(ptr, ph)
  cur = ptr
  phase = ph or 0
end

-- The phase of the running hook.
function M.phase()
  return phase
end

-- No hook runs (a hook yielded or finished).
function M.leave()
  cur = 0
end

-- The request of the running hook, or nil outside hooks.
function M.current()
  if cur == 0 then return nil end
  local r = cast(REQ_T, cur)
  return r
end

M.C = C
M.PHASE = PHASE

return M
