-- moxy.socket.tcp(): non-blocking TCP and TLS client sockets for hooks and
-- timer callbacks, in the shape of OpenResty's cosockets.  Line, byte,
-- until-close, any and until-pattern reads; sends of strings, tables and
-- large payloads; timeouts; names; the idle pool; TLS; limits; misuse as
-- clear errors; sockets from on_log and timers; clients that leave while a
-- hook waits; many at once.
--
-- The peer is spec/support/socket_peer.py: a line-command server (ID, ECHO,
-- SEND, DRIP, LATER, HOLD, SLOWREAD, ...) on a plain port, a port that
-- closes at once, two TLS ports (one certificate moxy trusts through
-- SSL_CERT_FILE, one it does not) and ::1.  It logs accepts, TAGs and EOFs
-- on stdout, which the spec reads to see what the peer saw.
--
-- The hook answers each request by running the scenario named in X-Mode
-- and replying with what the script got, as JSON (nil as null).
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale
local PYTHON = (os.getenv("PYTHON") or "") ~= "" and os.getenv("PYTHON") or "python3"

local SITE = [==[
local ffi = require "ffi"
local json = moxy.json
local null = json.null

local PORT, CLOSER, TLSU, TLST, PORT6 = PLAINPORT, CLOSERPORT, TLSUPORT, TLSTPORT, V6PORT

pcall(ffi.cdef, "typedef struct { long sec; long usec; } spec_tv_t; int gettimeofday(spec_tv_t *tv, void *tz);")
local tv = ffi.new("spec_tv_t")
local function now()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.sec) + tonumber(tv.usec) / 1e6
end

-- results as a JSON array, nil as null (trailing nils dropped)
local function R(...)
  local t, n = {}, select("#", ...)
  while n > 0 and select(n, ...) == nil do n = n - 1 end
  for i = 1, n do
    local v = select(i, ...)
    if v == nil then v = null end
    t[i] = v
  end
  return t
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local ABC = "abcdefghijklmnopqrstuvwxyz"
local function pat(n)
  return string.rep(ABC, math.floor(n / 26) + 1):sub(1, n)
end

-- payloads made once, as the script loads (outside any hook's CPU budget)
local P8 = pat(8 * 1024 * 1024)

local function open(port, host, opts)
  local s = moxy.socket.tcp()
  s:settimeout(3000)
  local ok, err = s:connect(host or "127.0.0.1", port or PORT, opts)
  if not ok then error("connect: " .. tostring(err)) end
  return s
end

local function cmd(s, line)
  local n, err = s:send(line .. "\n")
  if not n then error("send: " .. tostring(err)) end
end

local function id(s)
  cmd(s, "ID")
  local line, err = s:receive()
  return line or ("error " .. tostring(err))
end

local T = {}

T.lines = function()
  local s = open()
  local out = {}
  out.sent = s:send("ECHO hello\n")
  out.lf = R(s:receive())
  cmd(s, "ECHOCRLF crlf line")
  out.crlf = R(s:receive("*l"))
  cmd(s, "LINES a b c d")
  out.three = R(s:receive(), s:receive("l"), s:receive(), s:receive("*l"))
  cmd(s, "ECHO ")
  out.empty = R(s:receive())
  cmd(s, "ECHO with\rcr inside")
  out.cr = R(s:receive())
  cmd(s, "WRITE 150 " .. hex("split\r") .. " " .. hex("\nnext\n"))
  out.split = R(s:receive(), s:receive())
  s:close()
  return out
end

T.bytes = function()
  local s = open()
  cmd(s, "DRIP 300 1")
  local a = s:receive(10)
  local b = s:receive(290)
  cmd(s, "DRIP 40 1")
  local c = s:receive("40")
  local z = s:receive(0)
  cmd(s, "ID")
  local after = s:receive()
  s:close()
  return { a = a, b = b, c = c, z = z, after = after }
end

T.all = function()
  local s = open()
  cmd(s, "SENDCLOSE 100000")
  local data, err = s:receive("*a")
  local out = { len = data and #data or null, same = data == pat(100000), err = err or null }
  out.after = R(s:receive())
  local s2 = open()
  cmd(s2, "WRITE 0 " .. hex("abc"))
  cmd(s2, "CLOSE")
  out.partial_line = R(s2:receive())
  return out
end

T.any = function()
  local s = open()
  cmd(s, "ECHO abcdef")
  local out = {}
  out.a = s:receiveany(2)
  out.b = s:receiveany(100)
  cmd(s, "LATER 300 late")
  local t0 = now()
  out.c = s:receiveany(1000)
  out.took = now() - t0
  cmd(s, "DRIP 50 20")
  local d = s:receiveany(1000)
  out.dlen = #d
  s:close()
  return out
end

-- read with reader(size) until it says done: the chunks, then "done" or "error ..."
local function chunks(reader, size)
  local out = {}
  for _ = 1, 100 do
    local data, err, partial = reader(size)
    if not data then
      out[#out + 1] = err and ("error " .. err .. " [" .. tostring(partial) .. "]") or "done"
      break
    end
    out[#out + 1] = data
  end
  return out
end

T["until"] = function()
  local out = {}
  -- OpenResty's documented example, then the stream goes on
  local s = open()
  cmd(s, "WRITE 0 " .. hex("hello, world! -agentzh\r\n--abcedhb blah blah\r\n--abcedhbTAIL\n"))
  local reader = s:receiveuntil("\r\n--abcedhb")
  out.sized = chunks(reader, 4)
  out.sized_next = chunks(reader, 4)
  out.tail = R(s:receive())
  -- whole parts
  cmd(s, "WRITE 0 " .. hex("part1--XYpart2--XY--XYend\n"))
  local r2 = s:receiveuntil("--XY")
  out.whole = R(r2(), r2(), r2(), s:receive())
  -- inclusive
  cmd(s, "WRITE 0 " .. hex("p1--XYp2--XY\n"))
  local r3 = s:receiveuntil("--XY", { inclusive = true })
  out.inclusive = R(r3(), r3(), s:receive())
  -- the pattern split across two TCP segments, whole and sized
  cmd(s, "WRITE 150 " .. hex("abc--bo") .. " " .. hex("undary rest--boundary\n"))
  local r4 = s:receiveuntil("--boundary")
  out.split = R(r4(), r4(), s:receive())
  cmd(s, "WRITE 150 " .. hex("0123456789--bou") .. " " .. hex("ndaryZ"))
  local r5 = s:receiveuntil("--boundary")
  out.split_sized = chunks(r5, 4)
  out.split_sized_after = s:receive(1)
  -- a false start of the pattern across segments
  cmd(s, "WRITE 150 " .. hex("x--bo") .. " " .. hex("x--boundary\n"))
  local r6 = s:receiveuntil("--boundary")
  out.false_start = R(r6(), s:receive())
  -- the peer closes before the pattern
  cmd(s, "WRITE 0 " .. hex("no pattern here"))
  cmd(s, "CLOSE")
  local r7 = s:receiveuntil("--nope")
  out.closed = R(r7())
  return out
end

T.sendtable = function()
  local s = open()
  local out = {}
  out.n = s:send({ "ECHO ", { "a", 1, "b" }, { { "-", 2.5 } }, "\n" })
  out.line = s:receive()
  out.n_number = s:send(42)
  out.n_nl = s:send("\n")
  out.line2 = s:receive()
  out.n_empty = s:send("")
  out.n_table = s:send({})
  out.id = id(s)
  s:close()
  return out
end

T.bigsend = function()
  local N = 8 * 1024 * 1024
  local s = open()
  s:settimeouts(3000, 1000, 10000)
  cmd(s, "SLOWREAD " .. N .. " 65536 10")
  local out = { opt = R(s:setoption("sndbuf", 65536)) }
  local t0 = now()
  out.sent = R(s:send(P8))
  out.took = now() - t0
  out.reply = R(s:receive())
  s:close()
  return out
end

T.sendtimeout = function()
  local s = open()
  cmd(s, "NOREAD 3000")
  assert(s:receive() == "ok")
  s:setoption("sndbuf", 65536)
  s:settimeouts(nil, 300, nil)
  local t0 = now()
  local out = { sent = R(s:send(P8)) }
  out.took = now() - t0
  s:close()
  return out
end

T.connect = function(h)
  local s = moxy.socket.tcp()
  s:settimeouts(tonumber(h:get("X-Connect-Timeout") or "3000"), 3000, 3000)
  local t0 = now()
  local ok, err = s:connect(h:get("X-Host") or "127.0.0.1", tonumber(h:get("X-Port")))
  local out = { connect = R(ok, err), took = now() - t0 }
  if ok then
    out.id = id(s)
    s:close()
  end
  return out
end

T.readtimeout = function()
  local s = open()
  s:settimeouts(nil, nil, 200)
  cmd(s, "LATER 700 late line")
  local out = {}
  local t0 = now()
  out.first = R(s:receive())
  out.took = now() - t0
  out.second = R(s:receive(4))
  s:settimeout(3000)
  out.later = R(s:receive())
  -- half a line, a timeout, then the rest: no byte is lost
  cmd(s, "WRITE 0 " .. hex("abc"))
  s:settimeout(300)
  out.half = R(s:receive())
  cmd(s, "ECHO def")
  s:settimeout(3000)
  out.rest = R(s:receive())
  out.id = id(s)
  s:close()
  return out
end

T.keepalive = function()
  local out = {}
  local s = open()
  out.r0 = s:getreusedtimes()
  out.id0 = id(s)
  out.ka = R(s:setkeepalive())
  out.after_ka = R(s:send("x"))
  local s2 = moxy.socket.tcp()
  s2:settimeout(3000)
  out.c2 = R(s2:connect("127.0.0.1", PORT))
  out.r1 = s2:getreusedtimes()
  out.id1 = id(s2)
  out.ka2 = R(s2:setkeepalive(10000, 5))
  -- the same object connects again
  out.c3 = R(s:connect("127.0.0.1", PORT))
  out.r2 = s:getreusedtimes()
  out.id2 = id(s)
  s:close()
  local s3 = open()
  out.r3 = s3:getreusedtimes()
  out.id3 = id(s3)
  s3:close()
  return out
end

T.pools = function(h)
  local run = h:get("X-Run")
  local out = {}
  local a = open(nil, nil, { pool = "p1-" .. run })
  out.ida = id(a)
  out.ka_a = R(a:setkeepalive())
  local b = open(nil, nil, { pool = "p2-" .. run })
  out.rb = b:getreusedtimes()
  out.idb = id(b)
  b:setkeepalive()
  local c = open(nil, nil, { pool = "p1-" .. run })
  out.rc = c:getreusedtimes()
  out.idc = id(c)
  c:close()
  -- a pool of one: the second connection kept is closed
  local d1 = open(nil, nil, { pool = "one-" .. run })
  local d2 = open(nil, nil, { pool = "one-" .. run })
  out.idd = { id(d1), id(d2) }
  out.ka_d = R(d1:setkeepalive(10000, 1), d2:setkeepalive(10000, 1))
  local e1 = open(nil, nil, { pool = "one-" .. run })
  local e2 = open(nil, nil, { pool = "one-" .. run })
  out.re = { e1:getreusedtimes(), e2:getreusedtimes() }
  out.ide = { id(e1), id(e2) }
  e1:close()
  e2:close()
  b = open(nil, nil, { pool = "p2-" .. run })
  b:close()
  return out
end

T.unread = function()
  local s = open()
  cmd(s, "LINES one two")
  local out = { one = s:receive() }
  out.ka = R(s:setkeepalive())
  out.two = R(s:receive())
  out.ka2 = R(s:setkeepalive())
  return out
end

-- bytes the script never asked for wait in the kernel when it keeps the
-- connection; connecting again at once must not hand them to the next user
T.stale = function(h)
  local pool = "stale-" .. h:get("X-Run")
  local s = open(nil, nil, { pool = pool })
  local out = { id0 = id(s) }
  cmd(s, "WRITE 100 " .. hex("one\n") .. " " .. hex("two\n"))
  out.one = s:receive()
  moxy.sleep(0.4) -- "two\n" arrives meanwhile
  out.ka = R(s:setkeepalive())
  local s2 = open(nil, nil, { pool = pool })
  out.reused = s2:getreusedtimes()
  cmd(s2, "ECHO fresh")
  out.next = R(s2:receive())
  s2:close()
  return out
end

-- the peer closes a connection the script holds; kept and taken at once, it
-- must not come back dead
T.stale_closed = function(h)
  local pool = "stalec-" .. h:get("X-Run")
  local s = open(nil, nil, { pool = pool })
  local out = { id0 = id(s) }
  cmd(s, "IDLECLOSE 0")
  out.ok = s:receive()
  moxy.sleep(0.3) -- the peer's FIN arrives meanwhile
  out.ka = R(s:setkeepalive())
  local s2 = moxy.socket.tcp()
  s2:settimeout(3000)
  out.connect = R(s2:connect("127.0.0.1", PORT, { pool = pool }))
  out.reused = s2:getreusedtimes()
  out.id1 = id(s2)
  s2:close()
  return out
end

T.idleclose = function(h)
  local pool = "idle-" .. h:get("X-Run")
  local s = open(nil, nil, { pool = pool })
  local out = { id0 = id(s) }
  cmd(s, "IDLECLOSE 100")
  out.ok = s:receive()
  out.ka = R(s:setkeepalive())
  moxy.sleep(0.5) -- the peer closes the idle connection meanwhile
  local s2 = open(nil, nil, { pool = pool })
  out.reused = s2:getreusedtimes()
  out.id1 = id(s2)
  s2:close()
  return out
end

T.tls = function(h)
  local port = h:get("X-Tls") == "trusted" and TLST or TLSU
  local s = moxy.socket.tcp()
  s:settimeout(3000)
  local ok, err = s:connect(h:get("X-Host") or "127.0.0.1", port, { pool = h:get("X-Pool") })
  if not ok then return { connect = err } end
  local out = { reused = s:getreusedtimes() }
  local verify = true
  if h:get("X-Verify") == "no" then verify = false end
  out.hs = R(s:sslhandshake(nil, h:get("X-Name"), verify))
  if out.hs[1] == true then
    out.id = id(s)
    cmd(s, "ECHO over tls")
    out.echo = s:receive()
    if h:get("X-Keep") then out.ka = R(s:setkeepalive()) else s:close() end
  else
    out.after = R(s:receive())
  end
  return out
end

T.tls_hang = function()
  local s = open()
  cmd(s, "HOLD")
  s:settimeout(300)
  local t0 = now()
  local out = { hs = R(s:sslhandshake(nil, "peer.test", false)) }
  out.took = now() - t0
  out.after = R(s:receive())
  return out
end

T.tls_closer = function()
  local s = open(CLOSER)
  return { hs = R(s:sslhandshake(nil, "peer.test", false)) }
end

T.maxbuf = function()
  local s = open()
  local out = {}
  out.opt = R(s:setoption("max_buffer", 1024))
  cmd(s, "BIGLINE 5000")
  local line, err, partial = s:receive()
  out.line = R(line, err, partial and #partial)
  out.bytes = R(s:receive(5000))
  out.opt2 = R(s:setoption("max_buffer", 65536))
  local rest = s:receive()
  out.rest = rest and #rest
  out.id = id(s)
  out.bad = R(s:setoption("max_buffer", 0))
  out.unknown = R(s:setoption("nope", 1))
  local a = open()
  a:setoption("max_buffer", 1000)
  cmd(a, "SENDCLOSE 5000")
  local all, aerr, apartial = a:receive("*a")
  out.all = R(all, aerr, apartial and #apartial)
  a:close()
  out.nodelay = R(s:setoption("tcp-nodelay", true))
  out.keepalive = R(s:setoption("keepalive", true))
  out.rcvbuf = R(s:setoption("rcvbuf", 131072))
  s:close()
  out.closed_opt = R(s:setoption("tcp-nodelay", true))
  return out
end

T.closed = function()
  local out = {}
  local s = moxy.socket.tcp()
  out.new_receive = R(s:receive())
  out.new_send = R(s:send("x"))
  out.new_close = R(s:close())
  out.new_keepalive = R(s:setkeepalive())
  out.new_tls = R(s:sslhandshake())
  out.new_reused = s:getreusedtimes()
  s = open()
  out.id = id(s)
  out.close1 = R(s:close())
  out.close2 = R(s:close())
  out.receive = R(s:receive())
  out.receive_n = R(s:receive(3))
  out.receiveany = R(s:receiveany(3))
  out.send = R(s:send("x"))
  local c = moxy.socket.tcp()
  c:settimeout(2000)
  out.closer_connect = R(c:connect("127.0.0.1", CLOSER))
  out.closer_receive = R(c:receive())
  out.closer_again = R(c:receive())
  -- sending to a peer that closed: an error, not a signal
  local p = moxy.socket.tcp()
  p:settimeout(2000)
  assert(p:connect("127.0.0.1", CLOSER))
  moxy.sleep(0.1)
  local sends = {}
  for i = 1, 5 do
    local n, err = p:send("data\n")
    sends[#sends + 1] = n and "sent" or err
    if not n then break end
    moxy.sleep(0.05)
  end
  out.send_to_closed = sends[#sends]
  return out
end

T.misuse = function(h)
  local out = {}
  local s = moxy.socket.tcp()
  local function try(f)
    local ok, err = pcall(f)
    return ok and "no error" or tostring(err)
  end
  out.port0 = try(function() s:connect("127.0.0.1", 0) end) -- M:port0
  out.port_big = try(function() s:connect("127.0.0.1", 65536) end)
  out.port_name = try(function() s:connect("127.0.0.1", "http") end)
  out.port_frac = try(function() s:connect("127.0.0.1", 80.5) end)
  out.host = try(function() s:connect(nil, 80) end)
  out.pool = try(function() s:connect("127.0.0.1", PORT, { pool = "" }) end)
  out.pattern = try(function() s:receive("*x") end) -- M:pattern
  out.negative = try(function() s:receive(-1) end)
  out.until_empty = try(function() s:receiveuntil("") end)
  out.any0 = try(function() s:receiveany(0) end)
  out.timeout = try(function() s:settimeout(-1) end) -- M:timeout
  out.timeouts = try(function() s:settimeouts(nil, "x") end)
  out.send_bool = try(function() s:send(true) end)
  out.send_table = try(function() s:send({ "a", true }) end) -- M:send_table
  out.send_nested = try(function() s:send({ { true } }) end) -- M:send_nested
  out.ka_size = try(function() s:setkeepalive(1000, 0) end)
  out.opt_name = try(function() s:setoption(1, 1) end)
  out.opt_value = try(function() s:setoption("tcp-nodelay", "yes") end)
  out.sni = try(function() s:sslhandshake(nil, 42) end)
  out.reader_size = try(function() local r = s:receiveuntil("x"); r(0) end)
  -- failures that are not mistakes in the call: nil, err
  out.unix = R(s:connect("unix:/tmp/nope.sock"))
  out.long_host = R(s:connect(string.rep("a", 300), 80))
  out.nul_host = R(s:connect("a\0b", 80))
  local c = open()
  local r = c:receiveuntil(string.rep("z", 5000))
  out.long_pattern = R(r())
  out.id = id(c)
  c:close()
  return out
end

T.busy = function()
  local s = open()
  local got = {}
  moxy.timer.at(0.05, function()
    got.receive = R(s:receive())
    got.send = R(s:send("x"))
    got.close = R(s:close())
    got.keepalive = R(s:setkeepalive())
  end)
  cmd(s, "LATER 300 late")
  local out = { line = R(s:receive()) }
  out.timer = got
  out.id = id(s)
  s:close()
  return out
end

T.hold = function(h)
  local s = moxy.socket.tcp()
  s:settimeout(10000)
  assert(s:connect("127.0.0.1", PORT))
  local what = h:get("X-Wait") or "read"
  cmd(s, "TAG " .. h:get("X-Tag"))
  if what == "tls" then
    cmd(s, "HOLD")
    return { hs = R(s:sslhandshake(nil, "peer.test", false)) }
  elseif what == "connect" then
    local c = moxy.socket.tcp()
    c:settimeout(10000)
    return { connect = R(c:connect("127.0.0.1", tonumber(h:get("X-Port")))) }
  end
  if what == "send" then
    cmd(s, "NOREAD 1000")
    assert(s:receive() == "ok")
    local n, err = s:send(P8)
    return { sent = R(n, err) }
  end
  cmd(s, "HOLD")
  return { line = R(s:receive()) }
end

T.gc = function(h)
  do
    local s = open()
    cmd(s, "TAG " .. h:get("X-Tag"))
    cmd(s, "HOLD")
  end
  collectgarbage()
  collectgarbage()
  return { ok = true }
end

-- a socket the script neither closes nor keeps, held by a global (so the
-- collector cannot close it): it closes when its request ends
local forgotten = {}
T.forgotten = function(h)
  local s = open()
  cmd(s, "TAG " .. h:get("X-Tag"))
  cmd(s, "HOLD")
  forgotten[#forgotten + 1] = s
  return { ok = true }
end

T.round = function(h)
  local s = open()
  cmd(s, "LATER 200 r" .. h:get("X-I"))
  local line, err = s:receive()
  s:setkeepalive()
  return { line = line or ("error " .. tostring(err)) }
end

local timer_runs, timer_last, timer_on = 0, "none", false

T.timer_start = function()
  timer_on = true
  return { ok = true }
end

T.timer = function()
  return { runs = timer_runs, last = timer_last }
end

return {
  worker_init = function()
    moxy.timer.every(0.1, function()
      if not timer_on or timer_runs >= 5 then return end
      local s = moxy.socket.tcp()
      s:settimeout(2000)
      local ok, err = s:connect("127.0.0.1", PORT, { pool = "timer" })
      if ok then
        ok, err = s:send("ECHO from timer " .. (timer_runs + 1) .. "\n")
        if ok then ok, err = s:receive() end
        if ok then s:setkeepalive() end
      end
      timer_runs = timer_runs + 1
      timer_last = tostring(ok) .. " " .. tostring(err)
    end)
  end,

  on_request = function(txn)
    local h = txn.req.headers
    local mode = h:get("X-Mode")
    if mode == "log" then
      txn.ctx.sock_log = h:get("X-Tag")
      return txn:respond(200, "logged later\n")
    end
    local f = T[mode or ""]
    if not f then return txn:respond(404, "no mode " .. tostring(mode) .. "\n") end
    return txn:respond(200, json.encode(f(h)))
  end,

  on_log = function(txn)
    local tag = txn.ctx.sock_log
    if not tag then return end
    local s = moxy.socket.tcp()
    s:settimeout(2000)
    local ok, err = s:connect("127.0.0.1", PORT)
    local line
    if ok then
      s:send("ECHO " .. tag .. "\n")
      line, err = s:receive()
      s:close()
    end
    moxy.log.warn("on_log socket: " .. tostring(line) .. " " .. tostring(err))
  end,
}
]==]

-- the peer: spec/support/socket_peer.py with two self-signed certificates
local Peer = {}
Peer.__index = Peer

local function start_peer(dir)
  local argv = { PYTHON, "-u", helpers.support .. "/socket_peer.py",
                 dir .. "/u.pem", dir .. "/u.key", dir .. "/t.pem", dir .. "/t.key" }
  local p = helpers.spawn(argv, { dir = helpers.tmpdir("sockpeer"), kind = "origin" })
  local ports = helpers.wait_until(function()
    local a, b, c, d, e = p:stdout():match("ready (%d+) (%d+) (%d+) (%d+) (%d+)")
    if a then return { tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e) } end
    if not p:alive() then return { -1 } end
  end, 10 * S)
  assert(ports and ports[1] > 0, "socket_peer.py did not start: " .. p:stdout() .. p:stderr())
  return setmetatable({ proc = p, plain = ports[1], closer = ports[2], tls_untrusted = ports[3],
                        tls_trusted = ports[4], plain6 = ports[5] }, Peer)
end

function Peer:log()
  return self.proc:stdout()
end

-- accepts the peer logged (of one kind, or all)
function Peer:accepts(kind)
  local n = 0
  for k in self:log():gmatch("accept %d+ (%S+)") do
    if not kind or k == kind then n = n + 1 end
  end
  return n
end

-- the connection that said TAG tag, and whether its EOF came
function Peer:tagged(tag)
  local log = self:log()
  local conn = log:match("tag (%d+) " .. tag:gsub("%-", "%%-") .. "\n")
  if not conn then return nil end
  return conn, log:find("eof " .. conn .. "\n", 1, true) ~= nil
end

describe("moxy.socket", function()
  local peer, m, dir, run = nil, nil, nil, tostring(os.time())

  local function call(headers, opts)
    local list = {}
    for k, v in pairs(headers) do list[#list + 1] = { k, tostring(v) } end
    local res = assert(helpers.request(m.port, { path = "/", headers = list, timeout = opts and opts.timeout }))
    return res
  end

  -- run mode, expect 200 and JSON
  local function scenario(mode, headers)
    headers = headers or {}
    headers["X-Mode"] = mode
    headers["X-Run"] = headers["X-Run"] or run
    local res = call(headers)
    assert.equal(200, res.status, res.body)
    local ok, doc = pcall(cjson.decode, res.body)
    assert(ok, "not JSON: " .. res.body)
    return doc
  end

  local function pat(n)
    return string.rep("abcdefghijklmnopqrstuvwxyz", math.floor(n / 26) + 1):sub(1, n)
  end

  local null = cjson.null

  lazy_setup(function()
    dir = helpers.tmpdir("sock")
    helpers.make_cert(dir, "u", "ec", "peer.test", { "peer.test", "IP:127.0.0.1" })
    helpers.make_cert(dir, "t", "ec", "peer.test", { "peer.test", "IP:127.0.0.1" })
    peer = start_peer(dir)
    local site = SITE:gsub("PLAINPORT", tostring(peer.plain)):gsub("CLOSERPORT", tostring(peer.closer))
      :gsub("TLSUPORT", tostring(peer.tls_untrusted)):gsub("TLSTPORT", tostring(peer.tls_trusted))
      :gsub("V6PORT", tostring(peer.plain6))
    m = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:" .. peer.plain } } },
      scripts = { "site.lua" },
      -- a send copies its payload into moxy's buffer within the hook's run:
      -- 8 MiB costs tens of ms where page faults are dear (sandboxes, ASan)
      lua = { cpu_budget = "500ms" },
    }, { files = { ["site.lua"] = site }, env = { SSL_CERT_FILE = dir .. "/t.pem" } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("speaks a line protocol: LF and CRLF lines, several lines in one segment", function()
    local r = scenario("lines")
    assert.equal(11, r.sent)
    assert.same({ "hello" }, r.lf)
    assert.same({ "crlf line" }, r.crlf)
    assert.same({ "a", "b", "c", "d" }, r.three)
    assert.same({ "" }, r.empty)
    assert.same({ "with\rcr inside" }, r.cr)
    assert.same({ "split", "next" }, r.split) -- CR and LF in two segments
  end)

  it("receives exactly n bytes across many small writes", function()
    local r = scenario("bytes")
    assert.equal(pat(10), r.a)
    assert.equal(pat(300):sub(11), r.b)
    assert.equal(pat(40), r.c)
    assert.equal("", r.z)
    assert.matches("^conn %d+$", r.after)
  end)

  it("receives everything until the peer closes with *a, then says closed", function()
    local r = scenario("all")
    assert.equal(100000, r.len)
    assert.is_true(r.same)
    assert.equal(null, r.err)
    assert.same({ null, "closed", "" }, r.after)
    assert.same({ null, "closed", "abc" }, r.partial_line)
  end)

  it("receiveany returns what came, at most max, as soon as any came", function()
    local r = scenario("any")
    assert.equal("ab", r.a)
    assert.equal("cdef\n", r.b)
    assert.equal("late\n", r.c)
    assert.is_true(r.took >= 0.25 and r.took < 2 * S, "took " .. r.took)
    assert.is_true(r.dlen >= 1 and r.dlen < 50, "receiveany waited for " .. r.dlen .. " bytes")
  end)

  it("receiveuntil: whole parts, sized chunks then nil at the boundary, inclusive, patterns split across segments", function()
    local r = scenario("until")
    -- OpenResty's documented output for this stream
    assert.same({ "hell", "o, w", "orld", "! -a", "gent", "zh", "done" }, r.sized)
    assert.same({ " bla", "h bl", "ah", "done" }, r.sized_next)
    assert.same({ "TAIL" }, r.tail)
    assert.same({ "part1", "part2", "", "end" }, r.whole)
    assert.same({ "p1--XY", "p2--XY", "" }, r.inclusive)
    assert.same({ "abc", " rest", "" }, r.split)
    assert.same({ "0123", "4567", "89", "done" }, r.split_sized)
    assert.equal("Z", r.split_sized_after)
    assert.same({ "x--box", "" }, r.false_start)
    assert.same({ null, "closed", "no pattern here" }, r.closed)
  end)

  it("sends a table of strings and numbers (nested), numbers, and nothing", function()
    local r = scenario("sendtable")
    assert.equal(13, r.n)
    assert.equal("a1b-2.5", r.line)
    assert.equal(2, r.n_number)
    assert.equal(1, r.n_nl)
    assert.equal("unknown command", r.line2)
    assert.equal(0, r.n_empty)
    assert.equal(0, r.n_table)
    assert.matches("^conn %d+$", r.id)
  end)

  it("sends 8 MiB to a peer that reads slowly: send waits and completes, the worker serves meanwhile", function()
    local c = assert(helpers.connection(m.port, { timeout = 30 * S }))
    local t0 = helpers.now()
    assert(c:send(helpers.build_request({ path = "/", headers = { { "X-Mode", "bigsend" } } })))
    helpers.sleep(0.3)
    -- another request is served while the big send waits
    local t1 = helpers.now()
    local other = scenario("lines")
    assert.same({ "hello" }, other.lf)
    assert.is_true(helpers.now() - t1 < 1 * S, "the worker was blocked")
    local res = assert(c:read_response())
    c:close()
    assert.equal(200, res.status, res.body)
    local r = cjson.decode(res.body)
    assert.same({ true }, r.opt)
    assert.same({ 8 * 1024 * 1024 }, r.sent)
    assert.same({ "got 8388608 ok" }, r.reply)
    -- the peer reads 64 KiB every 10 ms: at least 1.28 s for it all
    assert.is_true(r.took > 0.5, "send did not wait: " .. r.took .. " s")
    assert.is_true(helpers.now() - t0 < 20 * S)
  end)

  it("times out a send the peer does not read", function()
    local t0 = helpers.now()
    local r = scenario("sendtimeout")
    assert.same({ null, "timeout" }, r.sent)
    assert.is_true(r.took >= 0.25 and r.took < 3 * S, "took " .. r.took)
    assert.is_true(helpers.now() - t0 < 5 * S)
  end)

  it("times out a connect that hangs", function()
    local bh = helpers.blackhole()
    if not bh then
      pending("connect() to a full listen queue does not hang here")
      return
    end
    local r = scenario("connect", { ["X-Port"] = bh.port, ["X-Connect-Timeout"] = 300 })
    bh.close()
    assert.same({ null, "timeout" }, r.connect)
    assert.is_true(r.took >= 0.25 and r.took < 2 * S, "took " .. r.took)
  end)

  it("times out a read, and the socket still works: the bytes that come later are read", function()
    local r = scenario("readtimeout")
    assert.same({ null, "timeout", "" }, r.first)
    assert.is_true(r.took >= 0.15 and r.took < 1 * S, "took " .. r.took)
    assert.equal(null, r.second[1])
    assert.equal("timeout", r.second[2])
    assert.same({ "late line" }, r.later)
    assert.equal(null, r.half[1])
    assert.equal("timeout", r.half[2])
    -- OpenResty hands the partial line with the timeout; either way no byte is lost
    assert.equal("abcdef", r.half[3] .. r.rest[1])
    assert.matches("^conn %d+$", r.id)
  end)

  it("returns nil, \"connect: connection refused\"", function()
    local r = scenario("connect", { ["X-Port"] = helpers.free_port() })
    assert.same({ null, "connect: connection refused" }, r.connect)
  end)

  it("resolves localhost, fails cleanly on a name that does not exist, and connects to ::1", function()
    local r = scenario("connect", { ["X-Host"] = "localhost", ["X-Port"] = peer.plain })
    assert.same({ true }, r.connect)
    assert.matches("^conn %d+$", r.id)
    local t0 = helpers.now()
    r = scenario("connect", { ["X-Host"] = "no-such-host.invalid", ["X-Port"] = peer.plain })
    assert.equal(null, r.connect[1])
    assert.matches("^resolve no%-such%-host%.invalid: ", r.connect[2])
    assert.is_true(helpers.now() - t0 < 5 * S)
    if peer.plain6 > 0 then
      r = scenario("connect", { ["X-Host"] = "::1", ["X-Port"] = peer.plain6 })
      assert.same({ true }, r.connect)
      assert.matches("^conn %d+$", r.id)
      r = scenario("connect", { ["X-Host"] = "[::1]", ["X-Port"] = peer.plain6 })
      assert.same({ true }, r.connect)
    end
  end)

  it("setkeepalive, then connect to the same host:port reuses the connection", function()
    local before = peer:accepts("plain")
    local r = scenario("keepalive")
    assert.equal(0, r.r0)
    assert.matches("^conn %d+$", r.id0)
    assert.same({ true }, r.ka)
    assert.same({ null, "closed" }, r.after_ka)
    assert.same({ true }, r.c2)
    assert.equal(1, r.r1)
    assert.equal(r.id0, r.id1)
    assert.same({ true }, r.ka2)
    assert.same({ true }, r.c3)
    assert.equal(2, r.r2)
    assert.equal(r.id0, r.id2)
    -- closed, not kept: a new connection
    assert.equal(0, r.r3)
    assert.are_not.equal(r.id0, r.id3)
    -- the peer saw two connections: the kept one and the last
    assert.equal(2, peer:accepts("plain") - before)
  end)

  it("keeps connections under opts.pool names, at most size per pool", function()
    local r = scenario("pools")
    assert.same({ true }, r.ka_a)
    assert.equal(0, r.rb)
    assert.are_not.equal(r.ida, r.idb)
    assert.equal(1, r.rc)
    assert.equal(r.ida, r.idc)
    assert.are_not.equal(r.idd[1], r.idd[2])
    assert.same({ true, true }, r.ka_d)
    -- one of the two was kept
    table.sort(r.re)
    assert.same({ 0, 1 }, r.re)
    local kept = 0
    for _, i in ipairs(r.ide) do if i == r.idd[1] or i == r.idd[2] then kept = kept + 1 end end
    assert.equal(1, kept)
  end)

  it("refuses to keep a connection with unread data in the buffer", function()
    local r = scenario("unread")
    assert.equal("one", r.one)
    assert.same({ null, "unread data in buffer" }, r.ka)
    assert.same({ "two" }, r.two)
    assert.same({ true }, r.ka2)
  end)

  it("gives a fresh connection when the peer closed the kept one", function()
    local r = scenario("idleclose")
    assert.equal("ok", r.ok)
    assert.same({ true }, r.ka)
    assert.equal(0, r.reused)
    assert.matches("^conn %d+$", r.id1)
    assert.are_not.equal(r.id0, r.id1)
  end)

  it("does not hand out a kept connection with bytes the last user left in the kernel", function()
    local r = scenario("stale")
    assert.equal("one", r.one)
    -- setkeepalive refuses it (as OpenResty: nil, "connection in dubious state");
    -- the next connect must not get those bytes
    assert.equal(cjson.null, r.ka[1])
    assert.matches("dubious", r.ka[2])
    assert.same({ "fresh" }, r.next, "the next user read the last user's bytes")
    assert.equal(0, r.reused)
  end)

  it("does not hand out a kept connection the peer closed before it was kept", function()
    local r = scenario("stale_closed")
    assert.equal("ok", r.ok)
    assert.same({ true }, r.connect)
    assert.matches("^conn %d+$", r.id1, "the reused connection was dead")
    assert.are_not.equal(r.id0, r.id1)
    assert.equal(0, r.reused)
  end)

  it("sslhandshake: verify = false with a self-signed certificate, verify fails on it", function()
    local r = scenario("tls", { ["X-Verify"] = "no" })
    assert.same({ true }, r.hs)
    assert.matches("^conn %d+$", r.id)
    assert.equal("over tls", r.echo)
    r = scenario("tls", {})
    assert.same({ null, "TLS handshake failed: self-signed certificate" }, r.hs)
    -- the socket is closed after a failed handshake
    assert.same({ null, "closed", "" }, r.after)
  end)

  it("sslhandshake verifies the name: a trusted certificate by name and by IP, and a mismatch fails", function()
    local r = scenario("tls", { ["X-Tls"] = "trusted", ["X-Name"] = "peer.test" })
    assert.same({ true }, r.hs)
    assert.equal("over tls", r.echo)
    r = scenario("tls", { ["X-Tls"] = "trusted" }) -- the IP address connected to
    assert.same({ true }, r.hs)
    r = scenario("tls", { ["X-Tls"] = "trusted", ["X-Name"] = "other.test" })
    assert.same({ null, "TLS handshake failed: hostname mismatch" }, r.hs)
    r = scenario("tls", { ["X-Tls"] = "trusted", ["X-Host"] = "localhost" }) -- by default the host's name
    assert.same({ null, "TLS handshake failed: hostname mismatch" }, r.hs)
    local t0 = helpers.now()
    r = scenario("tls_hang")
    assert.same({ null, "timeout" }, r.hs)
    assert.is_true(r.took >= 0.25 and r.took < 2 * S, "took " .. r.took)
    assert.same({ null, "closed", "" }, r.after)
    r = scenario("tls_closer")
    assert.equal(null, r.hs[1])
    assert.matches("^TLS handshake failed", r.hs[2])
  end)

  it("keeps a TLS connection: the next connect takes it, sslhandshake returns at once", function()
    local pool = "tls-" .. run
    local before = peer:accepts("tls-trusted")
    local r1 = scenario("tls", { ["X-Tls"] = "trusted", ["X-Name"] = "peer.test", ["X-Pool"] = pool, ["X-Keep"] = "1" })
    assert.same({ true }, r1.ka)
    local r2 = scenario("tls", { ["X-Tls"] = "trusted", ["X-Name"] = "peer.test", ["X-Pool"] = pool, ["X-Keep"] = "1" })
    assert.equal(1, r2.reused)
    assert.same({ true }, r2.hs)
    assert.equal(r1.id, r2.id)
    assert.equal("over tls", r2.echo)
    assert.equal(1, peer:accepts("tls-trusted") - before)
  end)

  it("max_buffer bounds what a receive gathers: nil, \"buffer full\"", function()
    local r = scenario("maxbuf")
    assert.same({ true }, r.opt)
    assert.same({ null, "buffer full", 1024 }, r.line)
    assert.equal(null, r.bytes[1])
    assert.equal("buffer full", r.bytes[2])
    assert.same({ true }, r.opt2)
    assert.equal(5000 - 1024, r.rest)
    assert.matches("^conn %d+$", r.id)
    assert.same({ null, "max_buffer must be 1 byte to 1 GiB" }, r.bad)
    assert.same({ null, "unknown option" }, r.unknown)
    -- "*a" too (OpenResty's has no bound)
    assert.same({ null, "buffer full", 1000 }, r.all)
    assert.same({ true }, r.nodelay)
    assert.same({ true }, r.keepalive)
    assert.same({ true }, r.rcvbuf)
    assert.same({ null, "closed" }, r.closed_opt)
  end)

  it("says closed: before connect, after close, after the peer closed", function()
    local r = scenario("closed")
    assert.same({ null, "closed", "" }, r.new_receive)
    assert.same({ null, "closed" }, r.new_send)
    assert.same({ null, "closed" }, r.new_close)
    assert.same({ null, "closed" }, r.new_keepalive)
    assert.same({ null, "closed" }, r.new_tls)
    assert.equal(0, r.new_reused)
    assert.same({ true }, r.close1)
    assert.same({ null, "closed" }, r.close2)
    assert.same({ null, "closed", "" }, r.receive)
    assert.same({ null, "closed", "" }, r.receive_n)
    assert.same({ null, "closed", "" }, r.receiveany)
    assert.same({ null, "closed" }, r.send)
    assert.same({ true }, r.closer_connect)
    assert.same({ null, "closed", "" }, r.closer_receive)
    assert.same({ null, "closed", "" }, r.closer_again)
    assert.equal("closed", r.send_to_closed)
  end)

  it("raises clear errors on misuse, at the caller's line", function()
    local r = scenario("misuse")
    local function at(marker)
      return "site.lua:" .. helpers.line_of(SITE, marker) .. ": "
    end
    -- every mismatch listed at once
    local wrong = {}
    local function raised(got, msg)
      if not tostring(got):find(msg, 1, true) then
        wrong[#wrong + 1] = "expected [" .. msg .. "], got [" .. tostring(got) .. "]"
      end
    end
    raised(r.port0, at("M:port0") .. "moxy.socket: connect: port must be 1 to 65535")
    raised(r.port_big, "moxy.socket: connect: port must be 1 to 65535")
    raised(r.port_name, "moxy.socket: connect: port must be 1 to 65535")
    raised(r.port_frac, "moxy.socket: connect: port must be 1 to 65535")
    raised(r.host, "moxy.socket: connect: host must be a string")
    raised(r.pool, "moxy.socket: connect: opts.pool must be a non-empty string")
    raised(r.pattern, at("M:pattern") .. 'moxy.socket: receive: pattern must be "*l", "*a" or a number of bytes')
    raised(r.negative, 'moxy.socket: receive: pattern must be')
    raised(r.until_empty, "moxy.socket: receiveuntil: pattern must be a non-empty string")
    raised(r.any0, "moxy.socket: receiveany: max must be a number >= 1")
    raised(r.timeout, at("M:timeout") .. "moxy.socket: settimeout must be a number of milliseconds >= 0")
    raised(r.timeouts, "moxy.socket: settimeouts must be a number of milliseconds >= 0")
    raised(r.send_bool, "moxy.socket: send: data must be a string or a table")
    raised(r.ka_size, "moxy.socket: setkeepalive: size must be a number >= 1")
    raised(r.opt_name, "moxy.socket: setoption: name must be a string")
    raised(r.opt_value, "moxy.socket: setoption: value must be a number or a boolean")
    raised(r.sni, "moxy.socket: sslhandshake: server_name must be a string")
    raised(r.reader_size, "moxy.socket: receiveuntil reader: size must be a number >= 1")
    raised(r.send_table, at("M:send_table") .. "moxy.socket: send: a table may hold strings, numbers and tables only")
    raised(r.send_nested, at("M:send_nested") .. "moxy.socket: send: a table may hold strings, numbers and tables only")
    assert.same({}, wrong)
    assert.same({ null, "unix sockets are not supported" }, r.unix)
    assert.same({ null, "bad host" }, r.long_host)
    assert.same({ null, "bad host" }, r.nul_host)
    assert.same({ null, "bad pattern", "" }, r.long_pattern)
    assert.matches("^conn %d+$", r.id)
  end)

  it("says \"socket busy\" to a second task while one waits on the socket", function()
    local r = scenario("busy")
    assert.same({ "late" }, r.line)
    local busy = "socket busy: another call waits on it"
    assert.same({ null, busy, "" }, r.timer.receive)
    assert.same({ null, busy }, r.timer.send)
    assert.same({ null, busy }, r.timer.close)
    assert.same({ null, busy }, r.timer.keepalive)
    assert.matches("^conn %d+$", r.id)
  end)

  it("works from a moxy.timer callback started in worker_init", function()
    scenario("timer_start")
    local r = helpers.wait_until(function()
      local t = scenario("timer")
      return t.runs >= 5 and t
    end, 5 * S, 0.1)
    assert(r, "the timer's socket calls did not finish")
    assert.equal("from timer 5 nil", r.last)
  end)

  it("works from on_log, after the response is sent", function()
    local res = call({ ["X-Mode"] = "log", ["X-Tag"] = "fromlog-" .. run })
    assert.equal(200, res.status)
    assert(m:wait_error_log("on_log socket: fromlog-" .. run .. " nil", 3 * S), m:error_text())
  end)

  it("closes the socket when the client leaves while the hook waits on it, and keeps serving", function()
    local tags = {}
    local bh = helpers.blackhole()
    local waits = { "read", "send", "tls", "read", "send", "tls", "connect" }
    for i, wait in ipairs(waits) do
      local tag = "gone-" .. run .. "-" .. i
      if wait ~= "connect" then tags[#tags + 1] = tag end
      local c = assert(helpers.connection(m.port))
      assert(c:send(helpers.build_request({ path = "/", headers = {
        { "X-Mode", "hold" }, { "X-Tag", tag }, { "X-Wait", wait }, { "X-Port", bh and bh.port or peer.closer } } })))
      assert(helpers.wait_until(function() return peer:tagged(tag) end, 3 * S), "the hook never connected")
      helpers.sleep(0.1)
      c:close()
    end
    helpers.sleep(0.2)
    if bh then bh.close() end
    -- the hooks wait up to 10 s: the peer sees EOF well before, as the clients left
    for _, tag in ipairs(tags) do
      local seen = helpers.wait_until(function()
        local _, eof = peer:tagged(tag)
        return eof
      end, 3 * S, 0.05)
      assert(seen, "the peer never saw EOF on " .. tag .. "'s connection")
    end
    assert.is_true(m:alive())
    assert.same({ "hello" }, scenario("lines").lf)
  end)

  it("closes a socket the script dropped when it is collected", function()
    local tag = "gc-" .. run
    scenario("gc", { ["X-Tag"] = tag })
    assert(helpers.wait_until(function()
      local _, eof = peer:tagged(tag)
      return eof
    end, 3 * S, 0.05), "the dropped socket's connection stayed open")
  end)

  it("closes a socket its script forgot when the request that connected it ends", function()
    local tag = "forgot-" .. run
    scenario("forgotten", { ["X-Tag"] = tag })
    assert(helpers.wait_until(function()
      local _, eof = peer:tagged(tag)
      return eof
    end, 3 * S, 0.05), "the forgotten socket's connection stayed open after its request")
  end)

  it("runs 200 requests each doing a socket round trip at once", function()
    local conns = {}
    local t0 = helpers.now()
    for i = 1, 200 do
      conns[i] = assert(helpers.connection(m.port, { timeout = 20 * S }))
      assert(conns[i]:send(helpers.build_request({ path = "/", headers = {
        { "X-Mode", "round" }, { "X-I", tostring(i) } } })))
    end
    for i = 1, 200 do
      local res = assert(conns[i]:read_response())
      assert.equal(200, res.status, res.body)
      assert.same({ line = "r" .. i }, cjson.decode(res.body))
      conns[i]:close()
    end
    -- one worker, a 200 ms answer each: 40 s one after the other
    assert.is_true(helpers.now() - t0 < 10 * S, "the round trips did not overlap")
    assert.is_true(m:alive())
  end)

  it("stops cleanly with sockets waiting and connections kept idle", function()
    local tag = "term-" .. run
    local src = [[
local PORT = PLAINPORT
local function hold(tag)
  local s = moxy.socket.tcp()
  s:settimeout(10000)
  assert(s:connect("127.0.0.1", PORT))
  s:send("TAG " .. tag .. "\nHOLD\n")
  return s:receive()
end
return {
  worker_init = function()
    moxy.timer.at(0, hold, "TAG-timer")
  end,
  on_request = function(txn)
    if txn.req.headers:get("X-Keep") then
      local s = moxy.socket.tcp()
      assert(s:connect("127.0.0.1", PORT))
      s:send("TAG TAG-idle\nID\n")
      s:receive()
      s:setkeepalive()
      return txn:respond(200, "kept\n")
    end
    hold("TAG-hook")
    return txn:respond(200, "done\n")
  end,
}
]]
    src = src:gsub("PLAINPORT", tostring(peer.plain)):gsub("TAG%-", tag .. "-")
    local m2 = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:" .. peer.plain } } },
      scripts = { "term.lua" },
    }, { files = { ["term.lua"] = src } })
    assert.equal("kept\n", assert(helpers.request(m2.port, { path = "/", headers = { { "X-Keep", "1" } } })).body)
    local c = assert(helpers.connection(m2.port))
    assert(c:send(helpers.build_request({ path = "/" })))
    for _, what in ipairs({ "timer", "idle", "hook" }) do
      assert(helpers.wait_until(function() return peer:tagged(tag .. "-" .. what) end, 3 * S), what .. " never connected")
    end
    local code = m2:stop("TERM")
    c:close()
    assert.equal(0, code)
    assert.is_nil(helpers.sanitizer_report(m2:stderr()))
    for _, what in ipairs({ "timer", "idle", "hook" }) do
      assert(helpers.wait_until(function()
        local _, eof = peer:tagged(tag .. "-" .. what)
        return eof
      end, 3 * S, 0.05), "the " .. what .. " connection stayed open")
    end
  end)

  it("raises outside hooks, at the script's line (moxy does not start)", function()
    local src = [[
return {
  workers = 1,
  listen = { "127.0.0.1:18193" },
  upstreams = { app = { servers = { "127.0.0.1:18192" } } },
  scripts = { "bad.lua" },
}
]]
    local wrong = {}
    for _, case in ipairs({
      { "s:connect('127.0.0.1', 18192)", "connect" },
      { "s:send('x')", "send" },
      { "s:receive('*a')", "receive" },
      { "s:receiveuntil('--')()", "receiveuntil" },
      { "s:sslhandshake()", "sslhandshake" },
    }) do
      local bad = "local s = moxy.socket.tcp()\nlocal ok = " .. case[1] .. "\nreturn {}\n"
      local code, out = helpers.run_moxy_check(src, { files = { ["bad.lua"] = bad } })
      assert.equal(1, code, out)
      assert.matches("moxy.socket: " .. case[2] .. ": only hooks and timer callbacks may use sockets", out, 1, true)
      if not out:find("bad.lua:2: moxy.socket: " .. case[2] .. ":", 1, true) then
        wrong[#wrong + 1] = case[1] .. ": " .. (out:match("[^\n]*moxy%.socket:[^\n]*") or out)
      end
    end
    assert.same({}, wrong)
  end)
end)
