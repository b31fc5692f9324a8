-- moxy.socket: non-blocking TCP (and TLS) client sockets for hooks and
-- moxy.timer callbacks, in the shape of OpenResty's cosockets.  A call
-- that cannot finish at once parks the calling hook while the worker's
-- event loop runs it; the worker serves other requests meanwhile.  Over
-- core/api/socket.h (the cdef below must match it; tools/check-ffi.lua).
-- Reference: docs/socket.md.
--
--   local sock = moxy.socket.tcp()
--   sock:settimeouts(1000, 1000, 2000)             -- ms: connect, send, read
--   local ok, err = sock:connect("127.0.0.1", 6379)
--   sock:send("PING\r\n")
--   local line, err, partial = sock:receive()     -- "*l" (default), "*a", or a byte count
--   sock:setkeepalive(60000, 16)                  -- back to the worker's idle pool
local ffi = require "ffi"
local runtime = require "moxy.runtime" -- loads moxy.txn, which checks the FFI ABI

ffi.cdef [[
typedef struct moxy_sock_s moxy_sock_t;
moxy_sock_t *moxy_ffi_sock_new(void);
void moxy_ffi_sock_free(moxy_sock_t *s);
int moxy_ffi_sock_connect(moxy_sock_t *s, const char *host, size_t hlen, int port, const char *pool,
                          size_t plen, double timeout, char *err, size_t errlen);
int moxy_ffi_sock_tls(moxy_sock_t *s, const char *name, size_t nlen, int verify, double timeout,
                      char *err, size_t errlen);
int moxy_ffi_sock_send(moxy_sock_t *s, const char *data, size_t len, double timeout, char *err,
                       size_t errlen);
enum {
    MOXY_SOCK_BYTES = 0,
    MOXY_SOCK_LINE = 1,
    MOXY_SOCK_ALL = 2,
    MOXY_SOCK_ANY = 3,
    MOXY_SOCK_UNTIL = 4
};
int moxy_ffi_sock_receive(moxy_sock_t *s, int mode, size_t n, const char *pat, size_t plen,
                          double timeout, const char **data, size_t *len, size_t *consume, char *err,
                          size_t errlen);
void moxy_ffi_sock_consume(moxy_sock_t *s, size_t n);
int moxy_ffi_sock_keepalive(moxy_sock_t *s, double idle, int size, char *err, size_t errlen);
int moxy_ffi_sock_close(moxy_sock_t *s);
int moxy_ffi_sock_reused(const moxy_sock_t *s);
int moxy_ffi_sock_setoption(moxy_sock_t *s, const char *name, double value, char *err, size_t errlen);
]]

local C = ffi.C
local OK, AGAIN, DECLINED, DONE = 0, -2, -3, -4
local ERR_LEN = 320
local errbuf = ffi.new("char[?]", ERR_LEN)
local data_p = ffi.new("const char *[1]")
local len_p = ffi.new("size_t[1]")
local consume_p = ffi.new("size_t[1]")

local type, tostring, tonumber, error, setmetatable = type, tostring, tonumber, error, setmetatable
local concat, floor = table.concat, math.floor
local ffi_string = ffi.string

local M = {}

M.DEFAULT_TIMEOUT = 60000   -- ms, each of connect, send and read (as OpenResty's)
M.DEFAULT_POOL_SIZE = 30    -- idle connections kept per pool by setkeepalive

local Sock = {}
Sock.__index = Sock

local function err_text()
  local e = ffi_string(errbuf)
  return e
end

local function declined(what)
  error("moxy.socket: " .. what .. ": only hooks and timer callbacks may use sockets", 4)
end

-- Raise (at the caller of the method that calls this) outside hooks and
-- timer callbacks, where nothing could wake a waiting call.
local function may_wait(what)
  if not runtime.can_wait() then
    error("moxy.socket: " .. what .. ": only hooks and timer callbacks may use sockets", 3)
  end
end

-- A call came back: OK (done), AGAIN (wait for it), or an error.
local function finish(rc, what)
  if rc == OK then return true end
  if rc == AGAIN then return runtime.wait() end
  if rc == DECLINED then declined(what) end
  return nil, err_text()
end

--- moxy.socket.tcp() -> a new, unconnected socket.
function M.tcp()
  local s = C.moxy_ffi_sock_new()
  if s == nil then return nil, "out of memory" end
  return setmetatable({
    s = ffi.gc(s, C.moxy_ffi_sock_free),
    ct = M.DEFAULT_TIMEOUT / 1000, st = M.DEFAULT_TIMEOUT / 1000, rt = M.DEFAULT_TIMEOUT / 1000,
  }, Sock)
end

local function ms(v, name)
  if v == nil then return nil end
  if type(v) ~= "number" or v < 0 or v ~= v then
    error("moxy.socket: " .. name .. " must be a number of milliseconds >= 0", 3)
  end
  return v / 1000
end

--- sock:settimeout(ms): the connect, send and read timeouts at once (0: none).
function Sock:settimeout(t)
  local v = ms(t, "settimeout")
  self.ct, self.st, self.rt = v, v, v
end

--- sock:settimeouts(connect_ms, send_ms, read_ms); nil keeps one as it is.
function Sock:settimeouts(c, s, r)
  self.ct = ms(c, "settimeouts") or self.ct
  self.st = ms(s, "settimeouts") or self.st
  self.rt = ms(r, "settimeouts") or self.rt
end

--- sock:connect(host, port [, opts]) -> true or nil, err.  host: an IP
-- address or a name (resolved on the worker's loop: /etc/hosts, then DNS).
-- An idle connection kept under the pool (opts.pool, default "host:port")
-- is taken first.
function Sock:connect(host, port, opts)
  if type(host) ~= "string" then error("moxy.socket: connect: host must be a string", 2) end
  if host:sub(1, 5) == "unix:" then return nil, "unix sockets are not supported" end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port ~= floor(port) then
    error("moxy.socket: connect: port must be 1 to 65535", 2)
  end
  may_wait("connect")
  local h = host:lower()
  if h:sub(1, 1) == "[" and h:sub(-1) == "]" then h = h:sub(2, -2) end
  local pool = h .. ":" .. port
  if type(opts) == "table" and opts.pool ~= nil then
    if type(opts.pool) ~= "string" or opts.pool == "" then
      error("moxy.socket: connect: opts.pool must be a non-empty string", 2)
    end
    pool = opts.pool
  end
  self.host = h
  local rc = C.moxy_ffi_sock_connect(self.s, h, #h, port, pool, #pool, self.ct, errbuf, ERR_LEN)
  return finish(rc, "connect")
end

--- sock:sslhandshake(reused_session, server_name, verify) -> true or nil, err.
-- server_name (default: the host connected to) is sent as SNI and the
-- certificate is checked against it; verify (default true) checks the
-- chain against the system's CAs.  reused_session is ignored (TLS sessions
-- are resumed by moxy itself).  A connection from the idle pool that is TLS
-- already returns true at once.
function Sock:sslhandshake(_, server_name, verify)
  local name = server_name
  if name == nil then name = self.host or "" end
  if type(name) ~= "string" then error("moxy.socket: sslhandshake: server_name must be a string", 2) end
  may_wait("sslhandshake")
  local rc = C.moxy_ffi_sock_tls(self.s, name, #name, verify == false and 0 or 1, self.ct, errbuf, ERR_LEN)
  return finish(rc, "sslhandshake")
end

-- The strings of data (an array, nested arrays too) in out; nil when it
-- holds something else.
local function flatten(data, out)
  for i = 1, #data do
    local v = data[i]
    local t = type(v)
    if t == "table" then
      if not flatten(v, out) then return nil end
    elseif t == "string" or t == "number" then out[#out + 1] = tostring(v)
    else return nil end
  end
  return out
end

--- sock:send(data) -> bytes sent or nil, err.  data: a string, a number,
-- or an array of them (nested arrays too).
function Sock:send(data)
  local t = type(data)
  if t == "table" then
    local parts = flatten(data, {})
    if not parts then error("moxy.socket: send: a table may hold strings, numbers and tables only", 2) end
    data = concat(parts)
  elseif t == "number" then data = tostring(data)
  elseif t ~= "string" then error("moxy.socket: send: data must be a string or a table", 2) end
  may_wait("send")
  local rc = C.moxy_ffi_sock_send(self.s, data, #data, self.st, errbuf, ERR_LEN)
  local ok, err = finish(rc, "send")
  if ok then return #data end
  return nil, err
end

-- One receive, waiting as needed: data, or nil, err, partial.  A part
-- (MOXY_DONE) comes back as data, "part".
local function receive(self, mode, n, pat)
  local plen = pat and #pat or 0
  while true do
    local rc = C.moxy_ffi_sock_receive(self.s, mode, n, pat, plen, self.rt, data_p, len_p, consume_p,
                                       errbuf, ERR_LEN)
    if rc == OK or rc == DONE then
      local data = ffi_string(data_p[0], len_p[0])
      C.moxy_ffi_sock_consume(self.s, consume_p[0])
      return data, rc == DONE and "part" or nil
    end
    if rc == AGAIN then
      local ok, err = runtime.wait()
      if not ok then return nil, err, "" end
    elseif rc == DECLINED then
      declined("receive")
    else
      local partial = ffi_string(data_p[0], len_p[0])
      if consume_p[0] > 0 then C.moxy_ffi_sock_consume(self.s, consume_p[0]) end
      return nil, err_text(), partial
    end
  end
end

--- sock:receive(pattern) -> data or nil, err, partial.  pattern: "*l" (a
-- line without its LF or CRLF; the default), "*a" (everything until the
-- peer closes: not an error), or a number of bytes.
function Sock:receive(pattern)
  may_wait("receive")
  if pattern == nil or pattern == "*l" or pattern == "l" then
    return receive(self, C.MOXY_SOCK_LINE, 0, nil)
  elseif pattern == "*a" or pattern == "a" then
    local data, err, partial = receive(self, C.MOXY_SOCK_ALL, 0, nil)
    if data then return data end
    if err == "closed" then return partial end
    return nil, err, partial
  end
  local n = tonumber(pattern)
  if not n or n < 0 or n ~= floor(n) then
    error("moxy.socket: receive: pattern must be \"*l\", \"*a\" or a number of bytes", 2)
  end
  if n == 0 then return "" end
  return receive(self, C.MOXY_SOCK_BYTES, n, nil)
end

--- sock:receiveany(max) -> data (1 to max bytes, as soon as any came) or nil, err.
function Sock:receiveany(max)
  local n = tonumber(max)
  if not n or n < 1 or n ~= floor(n) then error("moxy.socket: receiveany: max must be a number >= 1", 2) end
  may_wait("receiveany")
  return receive(self, C.MOXY_SOCK_ANY, n, nil)
end

--- sock:receiveuntil(pattern [, { inclusive = bool }]) -> reader.
-- reader() -> the bytes before the next pattern (with it when inclusive),
-- or nil, err, partial.  reader(size) -> those bytes at most size at a
-- time, then nil once the pattern is reached (the next call reads on).
function Sock:receiveuntil(pattern, opts)
  if type(pattern) ~= "string" or pattern == "" then
    error("moxy.socket: receiveuntil: pattern must be a non-empty string", 2)
  end
  local inclusive = type(opts) == "table" and opts.inclusive and 1 or 0
  local ended = false
  return function(size)
    may_wait("receiveuntil")
    if size ~= nil then
      size = tonumber(size)
      if not size or size < 1 or size ~= floor(size) then
        error("moxy.socket: receiveuntil reader: size must be a number >= 1", 2)
      end
      if ended then
        ended = false
        return nil
      end
      local data, part, partial = receive(self, C.MOXY_SOCK_UNTIL, size * 2 + inclusive, pattern)
      if not data then return nil, part, partial end
      if part then return data end
      if data == "" then return nil end
      ended = true
      return data
    end
    ended = false
    local data, err, partial = receive(self, C.MOXY_SOCK_UNTIL, inclusive, pattern)
    if not data then return nil, err, partial end
    return data
  end
end

--- sock:setkeepalive([idle_ms [, size]]) -> true or nil, err.  The
-- connection waits in the worker's idle pool under its pool name (at most
-- size there, default 30; closed after idle_ms, default 60 s, or when the
-- peer closes it), and the socket is closed.
function Sock:setkeepalive(idle, size)
  local secs = ms(idle, "setkeepalive") or 0
  size = size == nil and M.DEFAULT_POOL_SIZE or tonumber(size)
  if not size or size < 1 or size ~= floor(size) then
    error("moxy.socket: setkeepalive: size must be a number >= 1", 2)
  end
  local rc = C.moxy_ffi_sock_keepalive(self.s, secs, size, errbuf, ERR_LEN)
  if rc == OK then return true end
  return nil, err_text() -- DECLINED: closed, not kept; ERROR: left as it was
end

--- sock:close() -> true or nil, err.
function Sock:close()
  local rc = C.moxy_ffi_sock_close(self.s)
  if rc == OK then return true end
  if rc == DECLINED then return nil, "socket busy: another call waits on it" end
  return nil, "closed"
end

--- sock:getreusedtimes() -> how many times the connection was taken from
-- the idle pool (0: a new one).
function Sock:getreusedtimes()
  return C.moxy_ffi_sock_reused(self.s)
end

--- sock:setoption(name, value) -> true or nil, err.  "tcp-nodelay",
-- "keepalive", "sndbuf", "rcvbuf" (on the connection), "max_buffer" (the
-- bytes a receive may gather, 16 MiB by default).
function Sock:setoption(name, value)
  if type(name) ~= "string" then error("moxy.socket: setoption: name must be a string", 2) end
  if type(value) == "boolean" then value = value and 1 or 0 end
  value = tonumber(value)
  if not value then error("moxy.socket: setoption: value must be a number or a boolean", 2) end
  if C.moxy_ffi_sock_setoption(self.s, name, value, errbuf, ERR_LEN) == OK then return true end
  return nil, err_text()
end

M.Sock = Sock
return M
