-- moxy.http: a non-blocking HTTP/1.1 client for hooks (every phase) and
-- moxy.timer callbacks.  The calling hook waits (yields) while the call runs
-- on its worker's event loop; the worker serves other requests meanwhile.
-- Over the C export of core/proxy/http_fetch.c; the cdef below must match
-- core/api/ffi.h (checked by tools/check-ffi.lua).  Reference: docs/http.md.
--
--   local res, err = moxy.http.request{ url = "http://127.0.0.1:9000/auth",
--                                       method = "POST", body = "...",
--                                       headers = { ["Content-Type"] = "text/plain" },
--                                       timeout = 2 }
--   if not res then moxy.log.warn("auth: ", err) end
--   -- res.status (number), res.headers (plain table: lower-case name ->
--   -- value; repeated headers joined with ", ", set-cookie a list), res.body
local ffi = require "ffi"
local runtime = require "moxy.runtime" -- loads moxy.txn, which checks the FFI ABI
local url = require "moxy.url"

ffi.cdef [[
int moxy_ffi_http_start(const char *host, size_t hlen, int port, const char *req, size_t rlen,
                        int head, int keepalive, double timeout, double connect_timeout,
                        size_t max_body, int tls, char *err, size_t errlen);
]]

local C = ffi.C
local OK, DECLINED = 0, -3
local ERR_LEN = 256
local errbuf = ffi.new("char[?]", ERR_LEN)

local type, tostring, tonumber, pairs, error = type, tostring, tonumber, pairs, error
local find, lower, format, concat = string.find, string.lower, string.format, table.concat
local floor = math.floor

local M = {}

M.DEFAULT_TIMEOUT = 10                    -- seconds, the whole call
M.DEFAULT_MAX_BODY = 16 * 1024 * 1024     -- bytes
M.USER_AGENT = "moxy/" .. (require "moxy").version

local SIZE_UNITS = { [""] = 1, b = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 }

-- A size: a whole number of bytes, or "64k"-style text.  nil when bad.
local function size(v)
  if type(v) == "number" then
    if v >= 0 and v == floor(v) then return v end
    return nil
  end
  if type(v) ~= "string" then return nil end
  local n, u = lower(v):match("^%s*(%d+)%s*([kmgb]?)%s*$")
  if not n then return nil end
  return tonumber(n) * SIZE_UNITS[u]
end

local function is_token(s)
  return s ~= "" and find(s, "^[!#$%%&'*+%-.^_`|~%w]+$") ~= nil
end

-- Control characters but HTAB (CR and LF among them): never in a value.
local function bad_value(s)
  return find(s, "[%z\1-\8\10-\31\127]") ~= nil
end

-- Framing is moxy.http's: these request headers are dropped (Content-Length
-- comes from body).
local DROP = { ["content-length"] = true, ["transfer-encoding"] = true }

local function has_close(v)
  for tok in lower(v):gmatch("[^,%s]+") do
    if tok == "close" then return true end
  end
  return false
end

-- Append the header lines of `headers` to out (n entries so far); returns
-- n, seen (lower-case names given), close (a Connection: close given), or
-- nil, message on a misuse.
local function add_headers(out, n, headers)
  local seen, close = {}, false
  for name, v in pairs(headers) do
    if type(name) ~= "string" or not is_token(name) then
      return nil, "header names must be tokens, got " .. (type(name) == "string"
        and format("%q", name) or type(name))
    end
    local lname = lower(name)
    local values = type(v) == "table" and v or { v }
    for i = 1, #values do
      local value = values[i]
      local tv = type(value)
      if tv == "number" then
        value = tostring(value)
      elseif tv ~= "string" then
        return nil, "header " .. name .. ": value must be a string, a number or a list of them, got " .. tv
      end
      if bad_value(value) then
        return nil, "header " .. name .. ": control character (CR, LF, NUL...) in value"
      end
      if not DROP[lname] then
        out[n + 1], out[n + 2], out[n + 3], out[n + 4] = name, ": ", value, "\r\n"
        n = n + 4
        seen[lname] = true
        if lname == "connection" and has_close(value) then close = true end
      end
    end
    if type(v) == "table" and #v == 0 then
      return nil, "header " .. name .. ": empty list of values"
    end
  end
  return n, seen, close
end

local BODY_METHODS = { POST = true, PUT = true, PATCH = true }

-- The work of request/get; `level` is error()'s level naming the user's call.
local function request(opts, level)
  if type(opts) ~= "table" then
    error("moxy.http.request: argument must be a table of options, got " .. type(opts), level)
  end
  local function bad(msg) error("moxy.http.request: " .. msg, level + 1) end
  local u = opts.url
  if type(u) ~= "string" then bad("url must be a string, got " .. type(u)) end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not is_token(method) then
    bad("method must be a token string, got " .. (type(method) == "string" and format("%q", method) or type(method)))
  end
  local headers = opts.headers
  if headers ~= nil and type(headers) ~= "table" then bad("headers must be a table, got " .. type(headers)) end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then bad("body must be a string or nil, got " .. type(body)) end
  local timeout = opts.timeout or M.DEFAULT_TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0) then
    bad("timeout must be a number of seconds > 0, got " .. tostring(timeout))
  end
  local ctimeout = opts.connect_timeout
  if ctimeout ~= nil and (type(ctimeout) ~= "number" or not (ctimeout > 0)) then
    bad("connect_timeout must be a number of seconds > 0, got " .. tostring(ctimeout))
  end
  local max_body = M.DEFAULT_MAX_BODY
  if opts.max_body ~= nil then
    max_body = size(opts.max_body)
    if not max_body then
      bad("max_body must be a size (bytes, or \"64k\", \"16m\"), got " .. tostring(opts.max_body))
    end
  end
  local keepalive = opts.keepalive
  if keepalive == nil then keepalive = true end
  if type(keepalive) ~= "boolean" then bad("keepalive must be a boolean, got " .. type(keepalive)) end
  local verify = opts.verify
  if verify == nil then verify = true end
  if type(verify) ~= "boolean" then bad("verify must be a boolean, got " .. type(verify)) end
  if not runtime.can_wait() then
    error("moxy.http.request: only hooks and timer callbacks may make HTTP calls "
      .. "(not a script's main chunk, init or worker_init)", level)
  end

  -- the URL: runtime failures from here on are nil, err
  local p, perr = url.parse(u)
  if not p then return nil, "invalid URL: " .. perr:gsub("^url%.parse: ", "") end
  if p.scheme ~= "http" and p.scheme ~= "https" then return nil, "unsupported URL scheme" end
  local https = p.scheme == "https"
  local host = p.host
  if not host or host == "" then return nil, "invalid URL: no host in " .. u end
  if p.userinfo then return nil, "invalid URL: credentials in URLs are not supported" end
  local v6 = find(host, ":", 1, true) ~= nil
  if not v6 and not find(host, "^[%w%-%._]+$") then return nil, "invalid URL: bad host in " .. u end
  local default_port = https and 443 or 80
  local port = p.port or default_port
  if port == 0 then return nil, "invalid URL: port 0 in " .. u end
  local target = p.path ~= "" and p.path or "/"
  if target:byte(1) ~= 47 then return nil, "invalid URL: bad path in " .. u end
  if p.query then target = target .. "?" .. p.query end

  -- under moxy test there is no event loop: the test's double answers
  local test = runtime.test
  if test then
    if type(test.http) ~= "function" then
      error("moxy.http.request: no HTTP double under moxy test (runtime.test.http)", level)
    end
    if headers then
      local n2, msg = add_headers({}, 0, headers)
      if not n2 then bad(msg) end
    end
    return test.http({ url = u, method = method, headers = headers or {}, body = body,
                       timeout = timeout, connect_timeout = ctimeout, max_body = max_body,
                       keepalive = keepalive, verify = verify })
  end

  local out = { method, " ", target, " HTTP/1.1\r\n" }
  local n, seen, close = 4, {}, false
  if headers then
    n, seen, close = add_headers(out, n, headers)
    if not n then bad(seen) end
    if close then keepalive = false end
  end
  if not seen.host then
    local h = v6 and "[" .. host .. "]" or host
    if p.port and p.port ~= default_port then h = h .. ":" .. p.port end
    out[n + 1], out[n + 2] = "Host: ", h .. "\r\n"
    n = n + 2
  end
  if not seen["user-agent"] then
    out[n + 1] = "User-Agent: " .. M.USER_AGENT .. "\r\n"
    n = n + 1
  end
  if body or BODY_METHODS[method] then
    out[n + 1] = "Content-Length: " .. (body and #body or 0) .. "\r\n"
    n = n + 1
  end
  if not keepalive and not seen.connection then
    out[n + 1] = "Connection: close\r\n"
    n = n + 1
  end
  out[n + 1] = "\r\n"
  if body then out[n + 2] = body end
  local req = concat(out)

  local rc = C.moxy_ffi_http_start(host, #host, port, req, #req, method == "HEAD" and 1 or 0,
    keepalive and 1 or 0, timeout, ctimeout or -1, max_body, https and (verify and 1 or 2) or 0, errbuf, ERR_LEN)
  if rc == DECLINED then
    error("moxy.http.request: only hooks and timer callbacks may make HTTP calls", level)
  end
  if rc ~= OK then return nil, ffi.string(errbuf) end
  return runtime.wait()
end

--- moxy.http.request(opts) -> res or nil, err.  Phases: every hook, and
-- moxy.timer callbacks (not a script's main chunk, init or worker_init:
-- raises there).  opts: url (required, "http://host[:port]/path?query"),
-- method ("GET"), headers ({ name = value | {values} }), body (string),
-- timeout (seconds for the whole call, 10), connect_timeout (seconds,
-- default the configuration's timeouts.connect), max_body (bytes or "64k",
-- 16 MiB), keepalive (true).  res = { status = 200, headers = { ["content-type"]
-- = "text/plain", ["set-cookie"] = { "a=1", ... } }, body = "..." }.
-- Raises on arguments of the wrong type; returns nil, err when the call
-- fails ("connect: connection refused", "timeout", "body too large",
-- "invalid response: ...", "closed", "TLS handshake failed: ...", ...).
function M.request(opts)
  local res, err = request(opts, 3)
  return res, err
end

--- moxy.http.get(url[, opts]) -> res or nil, err: request{ url = url,
-- method = "GET", ... } with the other options of opts.
function M.get(u, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("moxy.http.get: opts must be a table, got " .. type(opts), 2)
  end
  local t = { url = u, method = "GET" }
  if opts then
    for k, v in pairs(opts) do
      if k ~= "url" and k ~= "method" then t[k] = v end
    end
  end
  local res, err = request(t, 3)
  return res, err
end

return M
