-- spec/helpers.lua -- the one front door for moxy's integration specs.
--
--   local helpers = require "spec.helpers"
--
-- Every wait is bounded; under MOXY_SANITIZED=1 (make check, ASan build) all
-- waits are multiplied by helpers.scale (3).  Every process started here is
-- tracked: helpers.stop_all() (call it from lazy_teardown) stops them, checks
-- moxy's stderr for sanitizer reports, and removes the temp dirs (kept when
-- MOXY_SPEC_KEEP=1; base dir /tmp or MOXY_SPEC_TMP).  Children also get
-- PDEATHSIG=KILL (via setpriv) and are killed when the helpers module is
-- collected, so nothing outlives the busted run.
--
-- Processes
--   helpers.moxy_bin()                    MOXY_BIN or <repo>/moxy
--   helpers.free_port()                   a currently free 127.0.0.1 port
--   helpers.start_raw_origin(mode, reply) -> an origin answering exact bytes (raw_origin.py)
--   helpers.start_origin()                -> origin (spec/support/origin.py)
--       origin.port, origin.addr ("127.0.0.1:PORT"), origin.pid
--       origin:stats()  -> {accepted, connections, requests, log = {...}}
--       origin:reset_stats(), origin:saw(pattern) -> log entries whose target
--       matches the Lua pattern, origin:stop()
--   helpers.origin_path(base, {"Name:Value"}) -> base?rh=..: origin.py's response headers
--   helpers.query_escape(s)               s percent-encoded for a query string
--   helpers.start_moxy(config, opts)      -> m
--       config: Lua source string, or a table serialised to Lua.  A table gets
--       defaults: workers = 1, listen = {"127.0.0.1:<free port>"},
--       default_upstream (when there is one pool), log.access = "access.log",
--       log.error = "stderr".  A string needs opts.port / opts.ports unless its
--       listen block names 127.0.0.1:PORT addresses.
--       opts.files = { ["site.lua"] = source, ... } written next to the config.
--       opts.wait = false: do not wait for the listen ports.
--       A table's `admin = {...}` without `listen` gets a free port: m.admin_port.
--       m.port, m.ports, m.pid, m.dir, m.conf_path, m.access_log, m.error_log
--       m:stop([signal = "TERM"[, timeout]]) -> code, how ("exited"/"killed")
--       m:signal(name), m:wait_exit(timeout) -> code, how  (nil on timeout)
--       m:alive(), m:stderr(), m:access_lines(), m:wait_log(pattern[, timeout
--       [, file]]) -> line, m:rss() -> rss_kib, hwm_kib (whole process tree)
--   helpers.run_moxy(args, timeout)       -> code, output (stdout..stderr)
--   helpers.run_moxy_check(source[, opts]) -> code, output, conf_path
--   helpers.stop_all()
--
-- Clients
--   helpers.connection(port[, opts])      -> conn or nil, err  (opts.bind: a source address)
--       conn:send(bytes) -> true or nil, err
--       conn:request(req[, opts]) -> res or nil, err    (send + read_response)
--       conn:read_response([opts]) -> res or nil, err  (opts.method for HEAD,
--           opts.sink(chunk) streams the body instead of keeping it,
--           opts.timeout is the inactivity timeout, opts.deadline bounds
--           the whole response, 120 s)
--       conn:receive_some(timeout) -> bytes or nil, "timeout"/"closed"
--       conn:wait_closed(timeout) -> true (peer closed / reset) or false, data
--       conn:read_ws_frame(timeout) -> {fin, opcode, payload} or nil, err
--       conn:close()
--   helpers.request(port, req)            -> res or nil, err (one connection)
--       req = { method = "GET", path = "/", version = "HTTP/1.1",
--               headers = { {name, value}, ... } or { name = value|{values} },
--               host = "localhost" (false: no Host header), body = "...",
--               chunks = {...} (chunked body), trailers = {{n, v}, ...} }
--       res = { status, reason, version, headers = { lname = {values} },
--               header_list = {{name, value}}, body, trailers, interim = {res},
--               chunked, close_delimited, raw_head } and res:header(name) ->
--               values joined with ", " (nil when absent)
--   helpers.raw(port, bytes|{pieces}, opts) -> text, closed
--       sends exact bytes, reads until the peer closes or opts.timeout (2 s)
--   helpers.parse_responses(text[, methods]) -> {res, ...}, rest
--   helpers.build_request(req)            -> bytes
--   helpers.ws_frame(opcode, payload[, {mask = true, fin = true}]) -> bytes
--
-- Misc
--   helpers.scale, helpers.sanitized, helpers.sleep(s), helpers.now()
--   helpers.wait_until(fn[, timeout[, interval]]) -> fn's truthy result or nil
--   helpers.rss(pid) -> VmRSS KiB, VmHWM KiB;  helpers.tree_rss(pid) (sums)
--   helpers.pattern(offset, n) -> n bytes of the origin's body pattern
--       (byte i = i % 251); helpers.pattern_ok(offset, chunk) -> bool
--   helpers.blackhole() -> {port, close()} or nil: a listening socket whose
--       accept queue is full, so connect() to it hangs (connect timeouts)
--   helpers.json(text) -> decoded (cjson, errors carry the text)
--   helpers.echo(res) -> the origin's /echo document, checked: status 200 JSON
--   helpers.echo_values(doc, name) -> values of request header `name` as the
--       origin received it (case-insensitive, in order); echo_value(doc, name)
--       -> them joined with ", " or nil
--   helpers.read_file(path), helpers.write_file(path, text), helpers.tmpdir()
--   helpers.sh(cmd) -> output (stdout and stderr), exit status; helpers.shell_quote(s)
--   helpers.line_of(src, marker) -> the number of the first line of src
--       containing marker (to assert on the file:line moxy logs)
--   helpers.script_with_config(path, config) -> the source of the script at
--       path (scripts/*.lua) with its "-- CONFIG BEGIN" .. "-- CONFIG END"
--       block replaced by `local CONFIG = <config>` (Lua source of a table)

local socket = require "socket"
local cjson = require "cjson.safe"
local unistd = require "posix.unistd"
local fcntl = require "posix.fcntl"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local stdlib = require "posix.stdlib"
local dirent = require "posix.dirent"
local bit = require "bit"

local helpers = {}

helpers.sanitized = (os.getenv("MOXY_SANITIZED") or "") ~= "" and os.getenv("MOXY_SANITIZED") ~= "0"
helpers.scale = helpers.sanitized and 3 or 1
local SCALE = helpers.scale

local function script_dir()
  local src = debug.getinfo(1, "S").source
  src = src:sub(1, 1) == "@" and src:sub(2) or src
  local dir = src:match("^(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    dir = (unistd.getcwd() or ".") .. "/" .. dir
  end
  return dir
end

helpers.spec_dir = script_dir()
helpers.root = helpers.spec_dir:gsub("/spec$", "")
helpers.support = helpers.spec_dir .. "/support"

helpers.now = socket.gettime
helpers.sleep = socket.sleep
local now, sleep = helpers.now, helpers.sleep

function helpers.wait_until(fn, timeout, interval)
  local deadline = now() + (timeout or 5 * SCALE)
  interval = interval or 0.02
  while true do
    local v = fn()
    if v then return v end
    if now() >= deadline then return nil end
    sleep(interval)
  end
end

-- s quoted for /bin/sh (single quotes).
function helpers.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- helpers.sh(cmd) -> its combined stdout and stderr, its exit status.
function helpers.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__exit=$?\""))
  local out = p:read("*a")
  p:close()
  local body, code = out:match("^(.*)__exit=(%d+)%s*$")
  return body, tonumber(code)
end

function helpers.read_file(path)
  if not path then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function helpers.write_file(path, text)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then os.execute("mkdir -p '" .. dir .. "'") end
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function helpers.json(text)
  local v, err = cjson.decode(text or "")
  if v == nil then
    error("invalid JSON (" .. tostring(err) .. "): " .. tostring(text):sub(1, 500), 2)
  end
  return v
end

function helpers.echo(res, err)
  assert(res, "no response: " .. tostring(err))
  assert(res.status == 200, "expected 200 from /echo, got " .. tostring(res.status) .. ": " .. tostring(res.body):sub(1, 300))
  return helpers.json(res.body)
end

function helpers.echo_values(doc, name)
  local out = {}
  name = name:lower()
  for _, kv in ipairs(doc.headers or {}) do
    if kv[1]:lower() == name then out[#out + 1] = kv[2] end
  end
  return out
end

function helpers.echo_value(doc, name)
  local v = helpers.echo_values(doc, name)
  if #v == 0 then return nil end
  return table.concat(v, ", ")
end

local tmpdirs = {}

function helpers.tmpdir(prefix)
  local base = os.getenv("MOXY_SPEC_TMP") or "/tmp"
  local dir = assert(stdlib.mkdtemp(base .. "/" .. (prefix or "moxy-spec") .. "-XXXXXX"))
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end

-- A self-signed certificate dir/name.pem and its key dir/name.key (kind
-- "ec": P-256, "rsa": 2048 bits) with common name cn and the names sans
-- (DNS names, or "IP:127.0.0.1"), valid for days (default 30).
function helpers.make_cert(dir, name, kind, cn, sans, days)
  local newkey = kind == "ec" and "-newkey ec -pkeyopt ec_paramgen_curve:P-256" or "-newkey rsa:2048"
  local san = {}
  for i, s in ipairs(sans) do san[i] = s:match("^IP:") and s or "DNS:" .. s end
  local out, code = helpers.sh(string.format(
    "openssl req -x509 %s -nodes -keyout %s/%s.key -out %s/%s.pem -days %d -subj /CN=%s -addext subjectAltName=%s",
    newkey, dir, name, dir, name, days or 30, cn, table.concat(san, ",")))
  assert(code == 0, out)
end

function helpers.moxy_bin()
  local bin = os.getenv("MOXY_BIN")
  if not bin or bin == "" then bin = helpers.root .. "/moxy" end
  return bin
end

local given_ports = {}

function helpers.free_port()
  for _ = 1, 50 do
    local s = socket.tcp()
    s:setoption("reuseaddr", true)
    assert(s:bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not given_ports[port] then
      given_ports[port] = true
      return port
    end
  end
  error("free_port: no new free port")
end

---------------------------------------------------------------------------
-- processes

local procs = {}       -- pid -> proc, only while not reaped
local all_procs = {}   -- every proc started by this module instance

local has_setpriv
local function setpriv_available()
  if has_setpriv == nil then
    local p = io.popen("command -v setpriv 2>/dev/null")
    local out = p:read("*a")
    p:close()
    has_setpriv = out:match("%S") ~= nil
  end
  return has_setpriv
end

local Proc = {}
Proc.__index = Proc

local function reap(p, status, code)
  p.exited = true
  p.how = status
  p.code = code
  procs[p.pid] = nil
end

function Proc:poll()
  if self.exited then return true end
  local pid, status, code = wait.wait(self.pid, wait.WNOHANG)
  if pid == self.pid then
    reap(self, status, code)
    return true
  elseif pid == nil then -- ECHILD: somebody else reaped it
    reap(self, "unknown", nil)
    return true
  end
  return false
end

function Proc:alive()
  return not self:poll()
end

-- -> code, how  ("exited" + exit code, or "killed" + signal number); nil on timeout
function Proc:wait_exit(timeout)
  local deadline = now() + (timeout or 5 * SCALE)
  while not self:poll() do
    if now() >= deadline then return nil, "timeout" end
    sleep(0.01)
  end
  return self.code, self.how
end

local signums = {
  TERM = psignal.SIGTERM, KILL = psignal.SIGKILL, QUIT = psignal.SIGQUIT,
  INT = psignal.SIGINT, HUP = psignal.SIGHUP, USR1 = psignal.SIGUSR1,
  USR2 = psignal.SIGUSR2, STOP = psignal.SIGSTOP, CONT = psignal.SIGCONT,
}
helpers.signums = signums

function Proc:signal(sig)
  if self:poll() then return false end
  local n = type(sig) == "number" and sig or signums[(tostring(sig):gsub("^SIG", ""))]
  assert(n, "unknown signal " .. tostring(sig))
  psignal.kill(self.pid, n)
  return true
end

-- kill whatever is left in the child's process group (workers)
function Proc:kill_group()
  pcall(psignal.killpg, self.pid, psignal.SIGKILL)
end

function Proc:stop(sig, timeout)
  if not self:poll() then
    self:signal(sig or "TERM")
    if not self:wait_exit(timeout or 3 * SCALE) then
      self:kill_group()
      psignal.kill(self.pid, psignal.SIGKILL)
      self:wait_exit(5)
    end
  end
  self:kill_group()
  return self.code, self.how
end

function Proc:stdout() return helpers.read_file(self.stdout_path) or "" end
function Proc:stderr() return helpers.read_file(self.stderr_path) or "" end

-- spawn(argv, {stdout = path, stderr = path, cwd = dir, env = {K = V}})
function helpers.spawn(argv, o)
  o = o or {}
  local dir = o.dir or helpers.tmpdir("proc")
  local out_path = o.stdout or (dir .. "/stdout.log")
  local err_path = o.stderr or (dir .. "/stderr.log")
  local full = {}
  if setpriv_available() and not o.no_setpriv then
    full = { "setpriv", "--pdeathsig", "KILL", "--" }
  end
  for _, a in ipairs(argv) do full[#full + 1] = a end

  io.stdout:flush()
  io.stderr:flush()
  local pid, err = unistd.fork()
  assert(pid, err)
  if pid == 0 then
    pcall(function()
      unistd.setpid("p", 0, 0) -- own process group: stop() can kill workers too
      for _, s in ipairs({ "SIGPIPE", "SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2" }) do
        psignal.signal(psignal[s], psignal.SIG_DFL)
      end
      local null = fcntl.open("/dev/null", fcntl.O_RDONLY)
      unistd.dup2(null, 0)
      local flags = bit.bor(fcntl.O_WRONLY, fcntl.O_CREAT, fcntl.O_TRUNC)
      local fo = fcntl.open(out_path, flags, 420)
      local fe = fcntl.open(err_path, flags, 420)
      unistd.dup2(fo, 1)
      unistd.dup2(fe, 2)
      -- LuaSocket does not set CLOEXEC: do not leak the test's sockets
      local fds = {}
      for _, name in ipairs(dirent.dir("/proc/self/fd") or {}) do
        local fd = tonumber(name)
        if fd and fd > 2 then fds[#fds + 1] = fd end
      end
      for _, fd in ipairs(fds) do unistd.close(fd) end
      if o.cwd then unistd.chdir(o.cwd) end
      for k, v in pairs(o.env or {}) do stdlib.setenv(k, v) end
      local args = {}
      for i = 2, #full do args[#args + 1] = full[i] end
      args[0] = full[1]
      unistd.execp(full[1], args)
      io.stderr:write("spawn: cannot exec " .. full[1] .. "\n")
    end)
    unistd._exit(127)
  end
  local p = setmetatable({
    pid = pid, argv = argv, dir = dir, stdout_path = out_path, stderr_path = err_path,
    started = now(), kind = o.kind or "proc",
  }, Proc)
  procs[pid] = p
  all_procs[#all_procs + 1] = p
  return p
end

local sanitizer_marks = {
  "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
  "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
}

local function sanitizer_report(text)
  for _, mark in ipairs(sanitizer_marks) do
    local i = text:find(mark, 1, true)
    if i then return text:sub(math.max(1, i - 200), i + 3000) end
  end
end
helpers.sanitizer_report = sanitizer_report

-- stop every process started through helpers; raise if a moxy wrote a
-- sanitizer report.  quiet: never raise (used at exit).
function helpers.stop_all(quiet)
  local reports = {}
  for i = #all_procs, 1, -1 do
    local p = all_procs[i]
    pcall(Proc.stop, p, "TERM", 3 * SCALE)
    if p.kind == "moxy" and not p.report_checked then
      p.report_checked = true
      local rep = sanitizer_report(p:stderr())
      if rep then reports[#reports + 1] = p.stderr_path .. ":\n" .. rep end
    end
    all_procs[i] = nil
  end
  local keep = (os.getenv("MOXY_SPEC_KEEP") or "") ~= "" or #reports > 0
  if not keep then
    for i = #tmpdirs, 1, -1 do
      local d = tmpdirs[i]
      if d:match("/[%w%-]+%-%w%w%w%w%w%w$") then os.execute("rm -rf '" .. d .. "'") end
      tmpdirs[i] = nil
    end
  end
  if #reports > 0 and not quiet then
    error("sanitizer report(s) in moxy stderr:\n" .. table.concat(reports, "\n----\n"), 2)
  end
end

-- last resort: kill everything when this module instance is collected or
-- the Lua state closes (busted exits with os.exit(code, true))
local sentinel = newproxy(true)
getmetatable(sentinel).__gc = function()
  for _, p in pairs(procs) do
    pcall(psignal.killpg, p.pid, psignal.SIGKILL)
    pcall(psignal.kill, p.pid, psignal.SIGKILL)
    pcall(wait.wait, p.pid)
  end
end
helpers._sentinel = sentinel

---------------------------------------------------------------------------
-- /proc

local function proc_status(pid)
  local text = helpers.read_file("/proc/" .. pid .. "/status")
  if not text then return nil end
  local rss = tonumber(text:match("VmRSS:%s*(%d+)"))
  local hwm = tonumber(text:match("VmHWM:%s*(%d+)"))
  return rss, hwm
end

-- VmRSS and VmHWM of one process, KiB
function helpers.rss(pid)
  return proc_status(pid)
end

function helpers.descendants(pid)
  local children = {}
  for _, name in ipairs(dirent.dir("/proc") or {}) do
    if name:match("^%d+$") then
      local stat = helpers.read_file("/proc/" .. name .. "/stat")
      local ppid = stat and tonumber(stat:match("%) %S+ (%d+)"))
      if ppid then
        children[ppid] = children[ppid] or {}
        table.insert(children[ppid], tonumber(name))
      end
    end
  end
  local out, queue = {}, { pid }
  while #queue > 0 do
    local p = table.remove(queue)
    for _, c in ipairs(children[p] or {}) do
      out[#out + 1] = c
      queue[#queue + 1] = c
    end
  end
  return out
end

-- summed VmRSS / VmHWM of pid and its descendants (KiB)
function helpers.tree_rss(pid)
  local rss, hwm = proc_status(pid)
  if not rss then return nil end
  for _, c in ipairs(helpers.descendants(pid)) do
    local r, h = proc_status(c)
    if r then
      rss = rss + r
      hwm = hwm + (h or r)
    end
  end
  return rss, hwm
end

---------------------------------------------------------------------------
-- origin

local function python()
  local p = os.getenv("PYTHON")
  if p and p ~= "" then return p end
  if unistd.access("/usr/bin/python3", "x") then return "/usr/bin/python3" end
  return "python3"
end

local Origin = {}
Origin.__index = Origin

-- Start a Python server of spec/support (argv after the script) in dir; it
-- prints "ready PORT" once it listens.  -> the process, its port; raises
-- (at the caller's caller) when it does not start.
local function start_py_server(script, args, dir)
  local argv = { python(), "-u", helpers.support .. "/" .. script }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = helpers.spawn(argv, { dir = dir, kind = "origin" })
  local port = helpers.wait_until(function()
    local port = p:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not p:alive() then return -1 end
  end, 10 * SCALE)
  if not port or port < 0 then
    p:stop("KILL")
    error(script .. " did not start: " .. p:stdout() .. p:stderr(), 3)
  end
  return p, port
end

function helpers.start_origin(opts)
  opts = opts or {}
  local p, port = start_py_server("origin.py", { tostring(opts.port or 0) }, helpers.tmpdir("origin"))
  return setmetatable({ port = port, addr = "127.0.0.1:" .. port, pid = p.pid, proc = p }, Origin)
end

-- An HTTP/2 origin (spec/support/h2origin.py): prior knowledge, or TLS
-- with ALPN h2 (opts.tls = { cert, key }); opts.max_streams, opts.window,
-- opts.goaway_after.  o.port, o.addr; o:stats(), o:reset_stats() (its
-- /stats: connections, streams, max_concurrent, per_conn, refused, log).
local H2Origin = {}
H2Origin.__index = H2Origin

function helpers.start_h2_origin(opts)
  opts = opts or {}
  local args = { "0" }
  if opts.tls then
    args[#args + 1] = "--tls"; args[#args + 1] = opts.tls[1]; args[#args + 1] = opts.tls[2]
  end
  for k, flag in pairs({ max_streams = "--max-streams", window = "--window", goaway_after = "--goaway-after" }) do
    if opts[k] then args[#args + 1] = flag; args[#args + 1] = tostring(opts[k]) end
  end
  local p, port = start_py_server("h2origin.py", args, helpers.tmpdir("h2origin"))
  return setmetatable({ port = port, addr = "127.0.0.1:" .. port, proc = p, tls = opts.tls ~= nil }, H2Origin)
end

function H2Origin:get(path)
  local url = (self.tls and "https" or "http") .. "://127.0.0.1:" .. self.port .. path
  local out = helpers.sh(string.format("timeout %d curl -sS -k %s '%s'", math.ceil(10 * SCALE),
    self.tls and "--http2" or "--http2-prior-knowledge", url))
  return out
end

function H2Origin:stats()
  local out = self:get("/stats")
  local doc = helpers.json(out)
  assert(doc, "h2origin /stats: " .. out)
  return doc
end

function H2Origin:reset_stats()
  self:get("/reset-stats")
end

function H2Origin:stop()
  return self.proc:stop("KILL")
end

-- The gRPC origin of spec/support/grpc_peer.py (service moxy.test.Echo):
-- g.port, g.addr.
function helpers.start_grpc_origin()
  local p, port = start_py_server("grpc_peer.py", { "server", "0" }, helpers.tmpdir("grpc"))
  return { port = port, addr = "127.0.0.1:" .. port, proc = p, stop = function(self) return self.proc:stop("KILL") end }
end

-- grpc_peer.py's client against target ("127.0.0.1:PORT"): its JSON report.
function helpers.grpc_call(target, ...)
  local args = {}
  for _, a in ipairs({ ... }) do args[#args + 1] = "'" .. tostring(a) .. "'" end
  local out = helpers.sh(string.format("timeout %d %s %s/grpc_peer.py client %s %s", math.ceil(30 * SCALE), python(),
    helpers.support, target, table.concat(args, " ")))
  local doc = helpers.json(out)
  assert(doc, "grpc_peer gave no JSON: " .. out)
  return doc
end

-- An origin that answers exactly the given bytes and records exactly what it
-- receives (spec/support/raw_origin.py; modes: "reply", "reply-close",
-- "close-head", "close-body").  raw.port, raw.addr; raw:received(n) -> the
-- bytes connection n (from 1) received so far, or ""; raw:connections() ->
-- how many connections it saw.
-- The value of the metric name{labels...} in the /metrics of the admin
-- listener on port (labels: the ones that must be there), or nil.
function helpers.metric(port, name, labels)
  local res = helpers.request(port, { path = "/metrics" })
  local text = res and res.body or ""
  for line in text:gmatch("[^\n]+") do
    local n, lab, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
    if not n then
      n, v = line:match("^([%w_:]+) (%S+)$")
      lab = ""
    end
    if n == name then
      local ok = true
      for k, want in pairs(labels or {}) do
        if not lab:find(k .. '="' .. want .. '"', 1, true) then ok = false end
      end
      if ok then return tonumber(v) end
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- Redis (Debian redis-server): a server of the spec's own on loopback

local Redis = {}
Redis.__index = Redis

-- One command over a fresh connection (RESP); -> the reply line(s) as text.
function Redis:cmd(...)
  local c = socket.tcp()
  c:settimeout(5 * SCALE)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then return nil, err end
  local out = {}
  if self.password then
    c:send(("*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n"):format(#self.password, self.password))
    c:receive("*l")
  end
  local args = { ... }
  out[1] = "*" .. #args .. "\r\n"
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  c:send(table.concat(out))
  local line, rerr = c:receive("*l")
  if not line then
    c:close()
    return nil, rerr
  end
  local kind = line:sub(1, 1)
  local res = line:sub(2)
  if kind == "$" then
    local n = tonumber(res)
    res = n >= 0 and c:receive(n + 2):sub(1, n) or nil
  elseif kind == "*" then
    local n, items = tonumber(res), {}
    for i = 1, n do
      local h = c:receive("*l")
      local len = tonumber(h:sub(2))
      items[i] = h:sub(1, 1) == "$" and len >= 0 and c:receive(len + 2):sub(1, len) or h:sub(2)
    end
    res = items
  elseif kind == "-" then
    c:close()
    return nil, res
  end
  c:close()
  return res
end

function Redis:start()
  local argv = { "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", self.dir }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
  end
  for _, a in ipairs(self.args or {}) do argv[#argv + 1] = a end
  self.proc = helpers.spawn(argv, { dir = self.dir, kind = "redis" })
  local up = helpers.wait_until(function()
    if not self.proc:alive() then return false end
    return self:cmd("PING") == "PONG"
  end, 10 * SCALE, 0.05)
  if not up then
    local text = self.proc:stdout() .. self.proc:stderr()
    self.proc:stop("KILL")
    error("redis-server did not start: " .. text, 2)
  end
  return self
end

-- Stop it (KILL: as a crash would); start() brings it back on the same port, empty.
function Redis:stop(sig)
  if self.proc then self.proc:stop(sig or "TERM") end
  self.proc = nil
end

-- opts.password, opts.args (more redis-server arguments).  r.port, r.addr,
-- r:cmd(...), r:stop(), r:start().  Stopped by helpers.stop_all.
function helpers.start_redis(opts)
  opts = opts or {}
  local r = setmetatable({ port = opts.port or helpers.free_port(), password = opts.password,
                           args = opts.args, dir = helpers.tmpdir("redis") }, Redis)
  r.addr = "127.0.0.1:" .. r.port
  return r:start()
end

local RawOrigin = {}
RawOrigin.__index = RawOrigin

function helpers.start_raw_origin(mode, reply)
  local dir = helpers.tmpdir("raw-origin")
  local args = { dir .. "/conn", mode }
  if reply then args[3] = helpers.write_file(dir .. "/reply", reply) end
  local p, port = start_py_server("raw_origin.py", args, dir)
  return setmetatable({ port = port, addr = "127.0.0.1:" .. port, dir = dir, proc = p }, RawOrigin)
end

function RawOrigin:received(n)
  return helpers.read_file(self.dir .. "/conn." .. n) or ""
end

function RawOrigin:connections()
  local n = 0
  while helpers.read_file(self.dir .. "/conn." .. (n + 1)) do n = n + 1 end
  return n
end

-- s percent-encoded for a query string (all but unreserved, ':', '/', '=').
function helpers.query_escape(s)
  return (s:gsub("[^%w%-%._~:/=]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- "/bytes/N?rh=..&rh=..": an origin.py path answering with these response
-- headers ("Name:Value" strings).
function helpers.origin_path(base, headers)
  local parts = {}
  for _, h in ipairs(headers or {}) do parts[#parts + 1] = "rh=" .. helpers.query_escape(h) end
  return base .. (#parts > 0 and ("?" .. table.concat(parts, "&")) or "")
end

function Origin:stats()
  local res, err = helpers.request(self.port, { path = "/stats" })
  assert(res, "origin /stats: " .. tostring(err))
  return helpers.json(res.body)
end

function Origin:reset_stats()
  local res, err = helpers.request(self.port, { path = "/reset-stats" })
  assert(res and res.status == 200, "origin /reset-stats: " .. tostring(err))
end

-- log entries whose request target matches the Lua pattern (or whose
-- unparsable line does)
function Origin:saw(pattern)
  local out = {}
  for _, e in ipairs(self:stats().log) do
    if (e.target and e.target:find(pattern)) or (e.line and e.line:find(pattern)) then
      out[#out + 1] = e
    end
  end
  return out
end

function Origin:stop()
  return self.proc:stop("KILL")
end

---------------------------------------------------------------------------
-- moxy config serialisation

local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function serialize(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then
    return string.format("%q", v)
  elseif t == "number" or t == "boolean" or t == "nil" then
    return tostring(v)
  elseif t == "table" then
    local parts = {}
    local n = #v
    local inner = indent .. "  "
    for i = 1, n do parts[#parts + 1] = inner .. serialize(v[i], inner) end
    local keys = {}
    for k in pairs(v) do
      if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      local ks = is_ident(k) and k or ("[" .. serialize(k) .. "]")
      parts[#parts + 1] = inner .. ks .. " = " .. serialize(v[k], inner)
    end
    if #parts == 0 then return "{}" end
    return "{\n" .. table.concat(parts, ",\n") .. ",\n" .. indent .. "}"
  end
  error("cannot serialise a " .. t)
end
helpers.serialize = serialize

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

-- fill the defaults of a table config (see the top of this file)
function helpers.config_defaults(cfg)
  cfg = copy(cfg)
  if cfg.workers == nil then cfg.workers = 1 end
  if cfg.listen == nil then cfg.listen = { "127.0.0.1:" .. helpers.free_port() } end
  if type(cfg.listen) == "string" then cfg.listen = { cfg.listen } end
  if cfg.default_upstream == nil and type(cfg.upstreams) == "table" then
    local only, count = nil, 0
    for name in pairs(cfg.upstreams) do only, count = name, count + 1 end
    if count == 1 then cfg.default_upstream = only end
  end
  if type(cfg.admin) == "table" and cfg.admin.listen == nil then
    cfg.admin = copy(cfg.admin)
    cfg.admin.listen = "127.0.0.1:" .. helpers.free_port()
  end
  if cfg.log == nil then cfg.log = {} end
  if cfg.log.access == nil then cfg.log.access = "access.log" end
  if cfg.log.error == nil then cfg.log.error = "stderr" end
  return cfg
end

local function listen_ports(listen)
  local ports = {}
  for _, l in ipairs(listen or {}) do
    local addr = type(l) == "table" and l.addr or l
    local port = tostring(addr):match(":(%d+)$")
    if port then ports[#ports + 1] = tonumber(port) end
  end
  return ports
end

local function ports_from_source(src)
  local block = src:match("listen%s*=%s*(%b{})")
  local ports = {}
  if block then
    for port in block:gmatch("127%.0%.0%.1:(%d+)") do ports[#ports + 1] = tonumber(port) end
  end
  return ports
end

local function write_files(dir, files)
  for name, text in pairs(files or {}) do
    helpers.write_file(dir .. "/" .. name, text)
  end
end

local function can_connect(port)
  local s = socket.tcp()
  s:settimeout(0.2)
  local ok = s:connect("127.0.0.1", port)
  -- A port from the ephemeral range that nobody listens on yet can still
  -- "accept": the kernel may pick that same port as the source and connect
  -- the socket to itself (TCP simultaneous open).  That is not a listener.
  if ok then
    local _, lport = s:getsockname()
    if tonumber(lport) == port then ok = nil end
  end
  s:close()
  return ok ~= nil
end

---------------------------------------------------------------------------
-- moxy

local Moxy = {}
Moxy.__index = Moxy

function helpers.start_moxy(config, opts)
  opts = opts or {}
  local dir = helpers.tmpdir("moxy")
  local src, ports, cfg, admin_port
  if type(config) == "table" then
    cfg = helpers.config_defaults(config)
    src = "-- written by spec/helpers.lua\nreturn " .. serialize(cfg) .. "\n"
    ports = listen_ports(cfg.listen)
    if type(cfg.admin) == "table" then admin_port = tonumber(tostring(cfg.admin.listen):match(":(%d+)$")) end
    if admin_port then ports[#ports + 1] = admin_port end
  else
    src = config
    ports = opts.ports or (opts.port and { opts.port }) or ports_from_source(src)
  end
  local conf_path = dir .. "/moxy.lua"
  helpers.write_file(conf_path, src)
  write_files(dir, opts.files)
  os.execute("mkdir -p '" .. dir .. "/cwd'")

  local bin = helpers.moxy_bin()
  if not unistd.access(bin, "x") then
    error("moxy binary not found or not executable: " .. bin .. " (set MOXY_BIN or run make)", 2)
  end
  local args = { bin, "-c", conf_path }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local p = helpers.spawn(args, { dir = dir, cwd = dir .. "/cwd", kind = "moxy", env = opts.env })

  local access = opts.access_log or "access.log"
  if cfg and cfg.log then access = cfg.log.access end
  if type(access) == "string" and access:sub(1, 1) ~= "/" then access = dir .. "/" .. access end
  local errlog = cfg and cfg.log and cfg.log.error or opts.error_log or "stderr"
  if errlog == "stderr" then
    errlog = p.stderr_path
  elseif type(errlog) == "string" and errlog:sub(1, 1) ~= "/" then
    errlog = dir .. "/" .. errlog
  end

  local m = setmetatable({
    proc = p, pid = p.pid, dir = dir, conf_path = conf_path, source = src, config = cfg,
    ports = ports, port = ports[1], admin_port = admin_port, access_log = access or nil, error_log = errlog or nil,
    stderr_path = p.stderr_path,
  }, Moxy)

  if opts.wait ~= false then
    if #ports == 0 then
      p:stop("KILL")
      error("start_moxy: no listen port known (pass opts.port)", 2)
    end
    local ok = helpers.wait_until(function()
      if not p:alive() then return "exited" end
      for _, port in ipairs(ports) do
        if not can_connect(port) then return nil end
      end
      return "up"
    end, 10 * SCALE, 0.02)
    if ok ~= "up" then
      local code, how = p.code, p.how
      if ok == nil then p:stop("KILL") end
      error(string.format(
        "moxy %s (%s %s) before listening on %s\n--- %s ---\n%s\n--- stderr ---\n%s",
        ok == "exited" and "exited" or "did not start listening in time",
        tostring(how), tostring(code), table.concat(ports, ","), conf_path, src, p:stderr()), 2)
    end
  end
  return m
end

function Moxy:alive() return self.proc:alive() end
function Moxy:signal(sig) return self.proc:signal(sig) end
function Moxy:wait_exit(timeout) return self.proc:wait_exit(timeout) end
function Moxy:stop(sig, timeout) return self.proc:stop(sig, timeout) end
function Moxy:stderr() return self.proc:stderr() end
function Moxy:rss() return helpers.tree_rss(self.pid) end
function Moxy:error_text() return helpers.read_file(self.error_log) or "" end

function Moxy:access_lines(path)
  local text = helpers.read_file(path or self.access_log) or ""
  local lines = {}
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

-- first line of the file (default: access log) containing `needle` (plain
-- text), polled for up to timeout (2.5 s scaled): logs are buffered ~1 s
function Moxy:wait_log(needle, timeout, path)
  return helpers.wait_until(function()
    for _, line in ipairs(self:access_lines(path)) do
      if line:find(needle, 1, true) then return line end
    end
  end, timeout or 2.5 * SCALE, 0.05)
end

-- same, in the error log (stderr unless log.error names a file)
function Moxy:wait_error_log(needle, timeout)
  return self:wait_log(needle, timeout, self.error_log)
end

-- run moxy with args, wait (bounded) -> exit code (nil if killed), output
function helpers.run_moxy(args, timeout, o)
  local dir = helpers.tmpdir("run")
  local argv = { helpers.moxy_bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = helpers.spawn(argv, { dir = dir, kind = "moxy", cwd = o and o.cwd })
  local code, how = p:wait_exit(timeout or 10 * SCALE)
  if not code and how == "timeout" then
    p:stop("KILL")
    return nil, "timeout: moxy " .. table.concat(args, " ") .. " did not exit\n" .. p:stdout() .. p:stderr()
  end
  if how == "killed" then return nil, "killed by signal " .. tostring(code) .. "\n" .. p:stdout() .. p:stderr() end
  return code, p:stdout() .. p:stderr(), p
end

-- moxy -t -c FILE (source written to a temp dir, opts.files beside it)
function helpers.run_moxy_check(source, opts)
  opts = opts or {}
  local dir = helpers.tmpdir("check")
  local path = dir .. "/" .. (opts.name or "moxy.lua")
  helpers.write_file(path, source)
  write_files(dir, opts.files)
  local code, out = helpers.run_moxy({ "-t", "-c", path }, opts.timeout, { cwd = opts.cwd or "/" })
  return code, out, path
end

---------------------------------------------------------------------------
-- HTTP client

local function header_list(h)
  local out = {}
  if not h then return out end
  if #h > 0 or next(h) == nil then
    for _, kv in ipairs(h) do out[#out + 1] = { kv[1], kv[2] } end
    return out
  end
  local names = {}
  for k in pairs(h) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = h[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = { k, x } end
    else
      out[#out + 1] = { k, v }
    end
  end
  return out
end

local function has_header(list, name)
  name = name:lower()
  for _, kv in ipairs(list) do
    if kv[1]:lower() == name then return true end
  end
  return false
end

function helpers.build_request(req)
  local method = req.method or "GET"
  local list = header_list(req.headers)
  if req.host ~= false and not has_header(list, "host") then
    table.insert(list, 1, { "Host", req.host or "localhost" })
  end
  local body = req.body
  if req.chunks then
    if not has_header(list, "transfer-encoding") then list[#list + 1] = { "Transfer-Encoding", "chunked" } end
    local parts = {}
    for _, c in ipairs(req.chunks) do
      if #c > 0 then parts[#parts + 1] = string.format("%x\r\n%s\r\n", #c, c) end
    end
    parts[#parts + 1] = "0\r\n"
    for _, kv in ipairs(req.trailers or {}) do parts[#parts + 1] = kv[1] .. ": " .. kv[2] .. "\r\n" end
    parts[#parts + 1] = "\r\n"
    body = table.concat(parts)
  elseif body and not has_header(list, "content-length") and not has_header(list, "transfer-encoding") then
    list[#list + 1] = { "Content-Length", tostring(#body) }
  end
  local lines = { string.format("%s %s %s", method, req.path or "/", req.version or "HTTP/1.1") }
  for _, kv in ipairs(list) do lines[#lines + 1] = kv[1] .. ": " .. kv[2] end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

local Response = {}
Response.__index = Response

function Response:header(name)
  local v = self.headers[name:lower()]
  if not v then return nil end
  return table.concat(v, ", ")
end

local Conn = {}
Conn.__index = Conn
helpers.Conn = Conn

function helpers.connection(port, opts)
  opts = opts or {}
  local sock = socket.tcp()
  sock:settimeout(opts.connect_timeout or 3 * SCALE)
  if opts.bind then -- a source address of the client's (loopback: any of 127.0.0.0/8)
    local bok, berr = sock:bind(opts.bind, 0)
    if not bok then
      sock:close()
      return nil, berr
    end
  end
  local ok, err = sock:connect(opts.host or "127.0.0.1", port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({
    sock = sock, buf = "", eof = false, port = port, timeout = opts.timeout or 5 * SCALE,
  }, Conn)
end

function Conn:close()
  if self.sock then
    self.sock:close()
    self.sock = nil
  end
  self.eof = true
end

function Conn:send(data)
  if not self.sock then return nil, "closed" end
  self.sock:settimeout(self.timeout)
  local ok, err, last = self.sock:send(data)
  if not ok then return nil, err, last end
  return true
end

-- read more bytes into self.buf; true, or nil + "timeout" / "closed"
function Conn:fill(timeout)
  if self.eof or not self.sock then
    self.eof = true
    return nil, "closed"
  end
  local deadline = now() + (timeout or self.timeout)
  if self.deadline and self.deadline < deadline then deadline = self.deadline end
  while true do
    local rem = deadline - now()
    if rem <= 0 then return nil, "timeout" end
    local r = socket.select({ self.sock }, nil, rem)
    if r and r[1] then
      self.sock:settimeout(0)
      local data, err, partial = self.sock:receive(65536)
      local got = data or partial
      if got and #got > 0 then self.buf = self.buf .. got end
      if err and err ~= "timeout" then
        self.eof = true
        self.eof_err = err
      end
      if got and #got > 0 then return true end
      if self.eof then return nil, "closed" end
    end
  end
end

-- whatever arrives within timeout (buffered bytes first)
function Conn:receive_some(timeout)
  if #self.buf == 0 then
    local ok, err = self:fill(timeout)
    if not ok then return nil, err end
  end
  local b = self.buf
  self.buf = ""
  return b
end

-- true if the peer closes (or resets) within timeout; false otherwise.
-- Second result: the bytes received meanwhile.
function Conn:wait_closed(timeout)
  local deadline = now() + (timeout or 2 * SCALE)
  local got = {}
  if #self.buf > 0 then
    got[1] = self.buf
    self.buf = ""
  end
  while true do
    local rem = deadline - now()
    if rem <= 0 then return false, table.concat(got) end
    local ok, err = self:fill(rem)
    if #self.buf > 0 then
      got[#got + 1] = self.buf
      self.buf = ""
    end
    if not ok and err == "closed" then return true, table.concat(got) end
  end
end

local function perr(msg) return nil, "protocol: " .. msg end

-- a CRLF-terminated line (strict: a bare LF is a protocol error)
function Conn:read_line(timeout, limit)
  limit = limit or 1024 * 1024
  local from = 1
  while true do
    local i = self.buf:find("\n", from, true)
    if i then
      if i == 1 or self.buf:sub(i - 1, i - 1) ~= "\r" then
        return perr("bare LF in " .. string.format("%q", self.buf:sub(1, math.min(i, 200))))
      end
      local line = self.buf:sub(1, i - 2)
      self.buf = self.buf:sub(i + 1)
      return line
    end
    if #self.buf > limit then return perr("line too long") end
    from = math.max(1, #self.buf)
    local ok, err = self:fill(timeout)
    if not ok then
      if err == "closed" and #self.buf > 0 then return nil, "closed mid-line: " .. self.buf:sub(1, 200) end
      return nil, err
    end
  end
end

-- exactly n bytes to sink (or returned)
function Conn:read_n(n, sink, timeout)
  local keep = not sink and {}
  while n > 0 do
    if #self.buf == 0 then
      local ok, err = self:fill(timeout)
      if not ok then return nil, err == "closed" and ("closed with " .. n .. " bytes missing") or err end
    end
    local take = math.min(n, #self.buf)
    local piece
    if take == #self.buf then
      piece = self.buf
      self.buf = ""
    else
      piece = self.buf:sub(1, take)
      self.buf = self.buf:sub(take + 1)
    end
    n = n - take
    if keep then keep[#keep + 1] = piece else sink(piece) end
  end
  return keep and table.concat(keep) or true
end

local function parse_head_fields(self, res, timeout, into_list, into_map)
  local count = 0
  while true do
    local line, err = self:read_line(timeout)
    if not line then return nil, err end
    if line == "" then return true end
    count = count + 1
    if count > 1000 then return perr("too many header lines") end
    local name, value = line:match("^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*(.-)[ \t]*$")
    if not name then return perr("bad header line " .. string.format("%q", line)) end
    into_list[#into_list + 1] = { name, value }
    local l = name:lower()
    into_map[l] = into_map[l] or {}
    table.insert(into_map[l], value)
  end
end

local function tokens(values)
  local out = {}
  for _, v in ipairs(values or {}) do
    for t in v:gmatch("[^,]+") do
      t = t:match("^%s*(.-)%s*$"):lower()
      if t ~= "" then out[#out + 1] = t end
    end
  end
  return out
end
helpers.tokens = tokens

local function has_token(values, tok)
  for _, t in ipairs(tokens(values)) do
    if t == tok then return true end
  end
  return false
end
helpers.has_token = has_token

-- read one response (1xx interim responses are collected in res.interim).
-- opts.deadline bounds the whole read (seconds, default 120 scaled)
function Conn:read_response(opts)
  opts = opts or {}
  self.deadline = now() + (opts.deadline or 120 * SCALE)
  local res, err = self:read_response_(opts)
  self.deadline = nil
  return res, err
end

function Conn:read_response_(opts)
  local timeout = opts.timeout or self.timeout
  local method = (opts.method or "GET"):upper()
  local interim = {}
  local res
  while true do
    local line, err = self:read_line(timeout)
    if not line then return nil, err end
    local version, status, reason = line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
    if not version then return perr("bad status line " .. string.format("%q", line:sub(1, 200))) end
    res = setmetatable({
      version = version, status = tonumber(status), reason = reason, headers = {},
      header_list = {}, trailers = {}, trailer_list = {}, interim = interim, status_line = line,
    }, Response)
    local ok, herr = parse_head_fields(self, res, timeout, res.header_list, res.headers)
    if not ok then return nil, herr end
    if res.status >= 200 or res.status == 101 then break end
    interim[#interim + 1] = res
  end

  local body = {}
  local sink = opts.sink or function(c) body[#body + 1] = c end
  local h = res.headers
  local no_body = method == "HEAD" or res.status < 200 or res.status == 204 or res.status == 304
  if no_body then
    res.body = ""
  elseif h["transfer-encoding"] then
    local te = tokens(h["transfer-encoding"])
    if te[#te] == "chunked" then
      res.chunked = true
      while true do
        local line, err = self:read_line(timeout)
        if not line then return nil, err end
        local hex = line:match("^(%x+)[ \t]*;?.*$")
        if not hex or #hex > 15 then return perr("bad chunk size line " .. string.format("%q", line)) end
        local n = tonumber(hex, 16)
        if n == 0 then break end
        local ok, rerr = self:read_n(n, sink, timeout)
        if not ok then return nil, rerr end
        local crlf, cerr = self:read_n(2, nil, timeout)
        if not crlf then return nil, cerr end
        if crlf ~= "\r\n" then return perr("chunk not followed by CRLF") end
      end
      local ok, terr = parse_head_fields(self, res, timeout, res.trailer_list, res.trailers)
      if not ok then return nil, terr end
    else
      res.close_delimited = true
    end
  elseif h["content-length"] then
    local cl = h["content-length"]
    for _, v in ipairs(cl) do
      if v ~= cl[1] then return perr("conflicting Content-Length") end
    end
    if not cl[1]:match("^%d+$") then return perr("bad Content-Length " .. cl[1]) end
    local n = tonumber(cl[1])
    res.content_length = n
    local ok, err = self:read_n(n, sink, timeout)
    if not ok then return nil, err end
  else
    res.close_delimited = true
  end
  if res.close_delimited then
    while true do
      if #self.buf > 0 then
        sink(self.buf)
        self.buf = ""
      end
      local ok, err = self:fill(timeout)
      if not ok then
        if err == "closed" then break end
        return nil, "timeout in close-delimited body"
      end
    end
  end
  res.body = opts.sink and "" or table.concat(body)
  res.will_close = res.close_delimited or has_token(h.connection, "close")
    or (res.version == "HTTP/1.0" and not has_token(h.connection, "keep-alive"))
  return res
end

function Conn:request(req, opts)
  local ok, err = self:send(helpers.build_request(req))
  if not ok then return nil, "send: " .. tostring(err) end
  opts = opts or {}
  opts.method = opts.method or req.method
  opts.sink = opts.sink or req.sink
  opts.timeout = opts.timeout or req.timeout
  opts.deadline = opts.deadline or req.deadline
  return self:read_response(opts)
end

function helpers.request(port, req)
  req = req or {}
  local c, err = helpers.connection(port, { timeout = req.timeout })
  if not c then return nil, "connect: " .. tostring(err) end
  local res, rerr = c:request(req)
  c:close()
  return res, rerr
end

-- send exact bytes (a string, or a list of pieces sent opts.delay apart),
-- then read until the peer closes or opts.timeout -> text, closed
function helpers.raw(port, bytes, opts)
  opts = opts or {}
  local c, err = helpers.connection(port)
  if not c then error("raw: connect to " .. port .. ": " .. tostring(err), 2) end
  local pieces = type(bytes) == "table" and bytes or { bytes }
  for i, p in ipairs(pieces) do
    if i > 1 and opts.delay then sleep(opts.delay) end
    local ok = c:send(p)
    if not ok then break end -- the server may close early; read what it said
  end
  local closed, text = c:wait_closed(opts.timeout or 2 * SCALE)
  c:close()
  return text, closed
end

-- parse a byte string holding whole responses -> list, unparsed rest
function helpers.parse_responses(text, methods)
  local c = setmetatable({ buf = text, eof = true, timeout = 0 }, Conn)
  local out = {}
  while #c.buf > 0 do
    local res = c:read_response({ method = methods and methods[#out + 1] or "GET", timeout = 0 })
    if not res then break end
    out[#out + 1] = res
  end
  return out, c.buf
end

---------------------------------------------------------------------------
-- WebSocket

function helpers.ws_frame(opcode, payload, o)
  o = o or {}
  payload = payload or ""
  local mask = o.mask ~= false
  local n = #payload
  local b0 = bit.bor(o.fin == false and 0 or 0x80, opcode)
  local mbit = mask and 0x80 or 0
  local hdr
  if n < 126 then
    hdr = string.char(b0, bit.bor(mbit, n))
  elseif n < 65536 then
    hdr = string.char(b0, bit.bor(mbit, 126), bit.rshift(n, 8), bit.band(n, 255))
  else
    local bytes = {}
    local x = n
    for i = 8, 1, -1 do
      bytes[i] = x % 256
      x = math.floor(x / 256)
    end
    hdr = string.char(b0, bit.bor(mbit, 127), unpack(bytes))
  end
  if not mask then return hdr .. payload end
  local key = { math.random(0, 255), math.random(0, 255), math.random(0, 255), math.random(0, 255) }
  local out = {}
  for i = 1, n do
    out[i] = string.char(bit.bxor(payload:byte(i), key[(i - 1) % 4 + 1]))
  end
  return hdr .. string.char(unpack(key)) .. table.concat(out)
end

function Conn:read_ws_frame(timeout)
  local h, err = self:read_n(2, nil, timeout)
  if not h then return nil, err end
  local b0, b1 = h:byte(1, 2)
  local n = bit.band(b1, 0x7f)
  if n == 126 then
    local e = self:read_n(2, nil, timeout)
    if not e then return nil, "closed" end
    n = e:byte(1) * 256 + e:byte(2)
  elseif n == 127 then
    local e = self:read_n(8, nil, timeout)
    if not e then return nil, "closed" end
    n = 0
    for i = 1, 8 do n = n * 256 + e:byte(i) end
  end
  local key
  if bit.band(b1, 0x80) ~= 0 then key = self:read_n(4, nil, timeout) end
  local payload = ""
  if n > 0 then
    payload, err = self:read_n(n, nil, timeout)
    if not payload then return nil, err end
  end
  return {
    fin = bit.band(b0, 0x80) ~= 0, opcode = bit.band(b0, 0x0f), payload = payload, masked = key ~= nil,
  }
end

---------------------------------------------------------------------------
-- body pattern (origin.py: byte i of a generated body is i % 251)

local PAT_MOD = 251
local PAT
do
  local t = {}
  for i = 0, PAT_MOD * 263 - 1 do t[#t + 1] = string.char(i % PAT_MOD) end
  PAT = table.concat(t) -- 66013 bytes: any offset 0..250 + 65536 bytes fits
end
helpers.PAT_BLOCK = PAT:sub(1, PAT_MOD * 261) -- 65511 bytes, starts at offset 0

function helpers.pattern(offset, n)
  local out = {}
  while n > 0 do
    local o = offset % PAT_MOD
    local k = math.min(n, 65536)
    out[#out + 1] = PAT:sub(o + 1, o + k)
    offset, n = offset + k, n - k
  end
  return table.concat(out)
end

-- does chunk equal the pattern bytes at stream offset `offset`?
function helpers.pattern_ok(offset, chunk)
  local pos = 1
  local len = #chunk
  while pos <= len do
    local o = (offset + pos - 1) % PAT_MOD
    local k = math.min(len - pos + 1, 65536)
    if chunk:sub(pos, pos + k - 1) ~= PAT:sub(o + 1, o + k) then return false end
    pos = pos + k
  end
  return true
end

---------------------------------------------------------------------------
-- bulk transfers (nothing is kept in memory)

-- GET path, stream the body, check it against the pattern.
-- opts: method, headers, timeout (inactivity), deadline (overall seconds),
-- every (bytes between progress calls, 64 MiB), progress(bytes_so_far),
-- pause = {at = bytes, seconds = s, during = fn()} stop reading for a while.
-- -> {status, bytes, pattern_ok, res} or nil, err
function helpers.download(port, path, opts)
  opts = opts or {}
  local c, err = helpers.connection(port, { timeout = opts.timeout or 10 * SCALE })
  if not c then return nil, "connect: " .. tostring(err) end
  local total, ok_pat = 0, true
  local every = opts.every or 64 * 1024 * 1024
  local next_mark = every
  local deadline = now() + (opts.deadline or 600)
  local pause = opts.pause
  local res, rerr = c:request({ method = opts.method or "GET", path = path, headers = opts.headers }, {
    deadline = opts.deadline or 600,
    sink = function(chunk)
      if ok_pat and not helpers.pattern_ok(total, chunk) then ok_pat = false end
      total = total + #chunk
      if total >= next_mark then
        next_mark = next_mark + every
        if opts.progress then opts.progress(total) end
        if now() > deadline then error("download deadline exceeded at " .. total .. " bytes") end
      end
      if pause and total >= pause.at then
        local p = pause
        pause = nil
        local until_t = now() + p.seconds
        if p.during then p.during() end
        local rem = until_t - now()
        if rem > 0 then sleep(rem) end
      end
    end,
  })
  c:close()
  if not res then return nil, rerr .. " after " .. total .. " bytes" end
  return { status = res.status, bytes = total, pattern_ok = ok_pat, res = res }
end

-- send n pattern bytes as a request body (Content-Length, or chunked with
-- opts.chunked), then read the response.  opts: method ("POST"), headers,
-- every/progress as in download, stall = {seconds = s, during = fn()} is
-- called once when a send blocks for longer than 1 s (the peer stopped
-- reading).  -> {status, sent, res, stalled} or nil, err
function helpers.upload(port, path, n, opts)
  opts = opts or {}
  local c, err = helpers.connection(port, { timeout = opts.timeout or 10 * SCALE })
  if not c then return nil, "connect: " .. tostring(err) end
  local headers = header_list(opts.headers)
  if opts.chunked then
    headers[#headers + 1] = { "Transfer-Encoding", "chunked" }
  else
    headers[#headers + 1] = { "Content-Length", string.format("%d", n) }
  end
  local head = helpers.build_request({ method = opts.method or "POST", path = path, headers = headers })
  assert(c:send(head))
  local block = helpers.PAT_BLOCK
  local sent = 0
  local every = opts.every or 64 * 1024 * 1024
  local next_mark = every
  local deadline = now() + (opts.deadline or 600)
  local stall = opts.stall
  local stalled = false
  local sock = c.sock
  local send_err

  -- send data fully; a send blocked > 1 s triggers the stall callback once
  local function push(data)
    local i = 1
    local idle_since = now()
    while i <= #data do
      sock:settimeout(0.25)
      local last, e, partial = sock:send(data, i)
      local upto = last or partial or (i - 1)
      if upto >= i then
        i = upto + 1
        idle_since = now()
      end
      if e and e ~= "timeout" then return nil, e end
      if e == "timeout" then
        local idle = now() - idle_since
        if stall and not stalled and idle > 1 then
          stalled = true
          if stall.during then stall.during() end
          local rem = (stall.seconds or 0) - (now() - idle_since)
          if rem > 0 then sleep(rem) end
          idle_since = now()
        elseif idle > (opts.timeout or 10 * SCALE) then
          return nil, "send timeout"
        end
      end
      if now() > deadline then return nil, "upload deadline exceeded" end
    end
    return true
  end

  while sent < n do
    local k = math.min(#block, n - sent)
    local data = k == #block and block or block:sub(1, k)
    local ok, e
    if opts.chunked then
      ok, e = push(string.format("%x\r\n", k))
      if ok then ok, e = push(data) end
      if ok then ok, e = push("\r\n") end
    else
      ok, e = push(data)
    end
    if not ok then
      send_err = e
      break
    end
    sent = sent + k
    if sent >= next_mark then
      next_mark = next_mark + every
      if opts.progress then opts.progress(sent) end
    end
  end
  if not send_err and opts.chunked then
    local ok, e = push("0\r\n\r\n")
    if not ok then send_err = e end
  end
  local res, rerr = c:read_response({ method = opts.method or "POST" })
  c:close()
  if not res then
    return nil, "response: " .. tostring(rerr) .. " (sent " .. sent .. " bytes"
      .. (send_err and (", send error " .. send_err) or "") .. ")"
  end
  return { status = res.status, sent = sent, res = res, send_error = send_err, stalled = stalled }
end

---------------------------------------------------------------------------
-- blackhole: a listener whose accept queue is full, so connect() hangs

function helpers.blackhole()
  local srv = socket.tcp()
  srv:setoption("reuseaddr", true)
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(0))
  local _, port = srv:getsockname()
  local held = { srv }
  local holed = false
  for _ = 1, 8 do
    local c = socket.tcp()
    c:settimeout(0.3)
    local ok = c:connect("127.0.0.1", port)
    if ok then
      held[#held + 1] = c
    else
      c:close()
      holed = true
      break
    end
  end
  local bh = { port = tonumber(port), addr = "127.0.0.1:" .. port }
  function bh.close()
    for _, s in ipairs(held) do s:close() end
  end
  if not holed then
    bh.close()
    return nil, "connect() to a full listen queue does not hang here"
  end
  return bh
end

function helpers.script_with_config(path, config)
  local src = assert(helpers.read_file(path))
  local out, n = src:gsub("\n%-%- CONFIG BEGIN\n.-\n%-%- CONFIG END\n", function()
    return "\n-- CONFIG BEGIN\nlocal CONFIG = " .. config .. "\n-- CONFIG END\n"
  end)
  assert(n == 1, "no CONFIG BEGIN/END block in " .. path)
  return out
end

function helpers.line_of(src, marker)
  local n = 0
  for line in src:gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(marker, 1, true) then return n end
  end
  error("no line with " .. marker)
end

return helpers
