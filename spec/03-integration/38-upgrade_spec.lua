-- Binary upgrade: SIGUSR2 starts the binary again with the listening
-- sockets; the new process serves, then the old one drains and exits.  Under
-- wrk load no connection and no request is lost; a new binary that cannot
-- start leaves the old one serving.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local WRK = "/usr/bin/wrk"

local function config(port, admin_port, origin)
  return ([[
return {
  workers = 2,
  listen = { "127.0.0.1:%d" },
  upstreams = { app = { servers = { %q } } },
  admin = { listen = "127.0.0.1:%d" },
  log = { error = "stderr" },
  timeouts = { drain = "10s" },
}
]]):format(port, origin.addr, admin_port)
end

local function alive(pid)
  local _, code = helpers.sh("kill -0 " .. pid .. " 2>/dev/null")
  return code == 0
end

describe("binary upgrade (SIGUSR2)", function()
  local origin, m, port, admin_port, new_pid

  before_each(function()
    origin = helpers.start_origin()
    port, admin_port = helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy(config(port, admin_port, origin), { ports = { port, admin_port } })
    new_pid = nil
  end)

  after_each(function()
    -- the new process is not one the helpers started
    if new_pid and alive(new_pid) then
      helpers.sh("kill -TERM " .. new_pid)
      helpers.wait_until(function() return not alive(new_pid) end, 10 * helpers.scale)
      if alive(new_pid) then helpers.sh("kill -KILL " .. new_pid) end
    end
    helpers.stop_all()
  end)

  local function pid_in_file()
    return tonumber((helpers.read_file(m.dir .. "/moxy.pid") or ""):match("%d+"))
  end

  local function served_by()
    local res = helpers.request(admin_port, { path = "/status" })
    local doc = res and cjson.decode(res.body)
    return doc and doc.pid
  end

  it("hands the sockets over under load without losing a connection", function()
    if not io.open(WRK) then
      pending(WRK .. " is missing: install wrk (Debian package wrk)")
      return
    end
    local old_pid = m.pid
    local wrk = helpers.spawn({ WRK, "-t2", "-c32", "-d6s", "http://127.0.0.1:" .. port .. "/echo" }, { kind = "wrk" })
    finally(function() wrk:stop("KILL") end)
    helpers.sleep(1.5)
    m:signal("USR2")
    assert(helpers.wait_until(function()
      local p = pid_in_file()
      return p and p ~= old_pid and p
    end, 10 * helpers.scale), "no new PID in the pid file:\n" .. m:stderr())
    new_pid = pid_in_file()
    local code = m:wait_exit(20 * helpers.scale)
    assert.equal(0, code, "the old moxy did not drain and exit 0:\n" .. m:stderr())
    assert.is_true(alive(new_pid))
    assert.truthy(wrk:wait_exit(15), "wrk did not end")
    local text = wrk:stdout() .. wrk:stderr()
    local requests = tonumber(text:match("(%d+) requests in"))
    assert(requests and requests > 1000, "wrk did not run:\n" .. text)
    assert.is_nil(text:match("Socket errors"), text .. "\n" .. m:stderr())
    assert.is_nil(text:match("Non%-2xx"), text)
    assert.matches("upgrade: started .* as pid " .. new_pid, m:stderr())
    assert.matches("upgrade: serving; the old moxy %(pid " .. old_pid .. "%) drains", m:stderr())
    assert.equal(new_pid, served_by())
    local res = assert(helpers.request(port, { path = "/echo" }))
    assert.equal(200, res.status)
    print(("\n    wrk 6 s, 32 connections, upgrade at 1.5 s: %d requests, no socket error, no non-2xx; "
      .. "pid %d -> %d"):format(requests, old_pid, new_pid))
  end)

  it("drains HTTP/2 connections with GOAWAY: streams in flight finish, the new process serves HTTP/2", function()
    -- the same moxy with an HTTP/2 listener beside (a restart with the new configuration)
    m:stop()
    local h2_port = helpers.free_port()
    local src = config(port, admin_port, origin):gsub('listen = { "127.0.0.1:%d+" }', ('listen = { "127.0.0.1:%d", '
      .. '{ addr = "127.0.0.1:%d", http2 = true } }'):format(port, h2_port))
    m = helpers.start_moxy(src, { ports = { port, h2_port, admin_port } })
    local old_pid = m.pid
    local h2load = helpers.spawn({ "h2load", "-c", "4", "-m", "8", "-D", "6",
      "http://127.0.0.1:" .. h2_port .. "/slow-headers/0.2" }, { kind = "h2load" })
    finally(function() h2load:stop("KILL") end)
    helpers.sleep(1.5)
    m:signal("USR2")
    assert(helpers.wait_until(function()
      local p = pid_in_file()
      return p and p ~= old_pid and p
    end, 10 * helpers.scale), "no new PID in the pid file:\n" .. m:stderr())
    new_pid = pid_in_file()
    assert.equal(0, m:wait_exit(20 * helpers.scale), "the old moxy did not drain and exit 0:\n" .. m:stderr())
    assert.truthy(h2load:wait_exit(20), "h2load did not end")
    local text = h2load:stdout() .. h2load:stderr()
    local total, done, ok, failed, errored = text:match(
      "requests: (%d+) total, %d+ started, (%d+) done, (%d+) succeeded, (%d+) failed, (%d+) errored")
    assert(total, text)
    assert.is_true(tonumber(ok) > 50, text)
    assert.equal("0", failed, text)
    assert.equal("0", errored, text)
    assert.equal(done, ok, text)
    -- the new process speaks HTTP/2 on the handed-over socket
    local r = helpers.sh("timeout 10 curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code} %{http_version}' "
      .. "http://127.0.0.1:" .. h2_port .. "/echo")
    assert.equal("200 2", r)
    print(("\n    h2load 6 s, 4 connections x 8 streams, upgrade at 1.5 s: %s requests, %s succeeded, none failed; "
      .. "pid %d -> %d"):format(total, ok, old_pid, new_pid))
  end)

  it("keeps the old process serving when the new one cannot start", function()
    helpers.write_file(m.conf_path, "return { listen = {}, nonsense = true }\n")
    m:signal("USR2")
    assert(helpers.wait_until(function()
      return m:stderr():find("before taking over; this moxy keeps serving", 1, true)
    end, 10 * helpers.scale), m:stderr())
    assert.is_true(m:alive())
    assert.equal(m.pid, pid_in_file())
    assert.equal(200, assert(helpers.request(port, { path = "/echo" })).status)
    assert.equal(m.pid, served_by())
  end)
end)
