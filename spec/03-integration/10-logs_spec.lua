-- Access log (combined and json formats) and error log lines.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("access log, combined format", function()
  local origin, moxy, p_dead

  lazy_setup(function()
    origin = helpers.start_origin()
    p_dead = helpers.free_port()
    moxy = helpers.start_moxy({
      listen = {
        "127.0.0.1:" .. helpers.free_port(),
        { addr = "127.0.0.1:" .. p_dead, name = "dead", upstream = "dead" },
      },
      upstreams = {
        app = { servers = { origin.addr } },
        dead = { servers = { "127.0.0.1:" .. helpers.free_port() } },
      },
      default_upstream = "app",
      log = { access = "access.log", format = "combined", error = "error.log", level = "info" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("writes a combined line with the request id", function()
    local res = assert(helpers.request(moxy.port, { path = "/bytes/1234?x=1", headers = {
      ["X-Request-Id"] = "log-combined-1", ["User-Agent"] = "spec-agent/1.0",
      Referer = "http://ref.example/page",
    } }))
    assert.equal(200, res.status)
    local line = moxy:wait_log("rid=log-combined-1")
    assert(line, "no access log line for the request")
    local ip, date, bytes = line:match('^(%S+) %- %- %[([^%]]+)%] "GET /bytes/1234%?x=1 HTTP/1%.1" 200 (%d+) '
      .. '"http://ref%.example/page" "spec%-agent/1%.0" rid=log%-combined%-1')
    assert(ip, "line not in combined format: " .. line)
    assert.equal("127.0.0.1", ip)
    assert.matches("^%d%d/%a%a%a/%d%d%d%d:%d%d:%d%d:%d%d [%+%-]%d%d%d%d$", date)
    assert.is_true(tonumber(bytes) >= 1234, "bytes " .. bytes .. " < body size")
  end)

  it("writes - for a missing referer and user agent", function()
    assert(helpers.request(moxy.port, { path = "/echo", headers = { ["X-Request-Id"] = "log-dash-1" } }))
    local line = moxy:wait_log("rid=log-dash-1")
    assert(line, "no access log line")
    assert.matches('" 200 %d+ "%-" "%-" rid=log%-dash%-1', line)
  end)

  it("writes exactly one line per request, with the generated id", function()
    local ids = {}
    for i = 1, 5 do
      local res = assert(helpers.request(moxy.port, { path = "/echo?one-line=" .. i }))
      ids[i] = res:header("x-request-id")
    end
    assert(moxy:wait_log("rid=" .. ids[5]), "no line for the last request")
    helpers.sleep(0.2)
    local lines = moxy:access_lines()
    for i, id in ipairs(ids) do
      local n = 0
      for _, l in ipairs(lines) do
        if l:find("rid=" .. id, 1, true) then
          n = n + 1
          assert.matches('"GET /echo%?one%-line=' .. i .. ' HTTP/1%.1" 200 ', l)
        end
      end
      assert.equal(1, n, "lines for request " .. i)
    end
  end)

  it("logs error statuses", function()
    assert.equal(404, assert(helpers.request(moxy.port, { path = "/status/404",
      headers = { ["X-Request-Id"] = "log-404" } })).status)
    assert.equal(502, assert(helpers.request(p_dead, { path = "/echo",
      headers = { ["X-Request-Id"] = "log-502" } })).status)
    assert.matches('" 404 ', assert(moxy:wait_log("rid=log-404")))
    assert.matches('" 502 ', assert(moxy:wait_log("rid=log-502")))
  end)

  it("logs requests rejected before proxying", function()
    assert.equal(400, helpers.parse_responses((helpers.raw(moxy.port,
      "GET /bad HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")))[1].status)
    assert(moxy:wait_log('" 400 '), "no access log line for a 400")
  end)

  it("resolves a relative log path against the config file's directory", function()
    assert(helpers.read_file(moxy.dir .. "/access.log"), "no access.log next to the config")
    assert.is_nil(helpers.read_file(moxy.dir .. "/cwd/access.log"), "access.log written in the working directory")
  end)

  it("writes error log lines with level and request id", function()
    assert.equal(502, assert(helpers.request(p_dead, { path = "/echo",
      headers = { ["X-Request-Id"] = "errlog-502" } })).status)
    local line = moxy:wait_error_log("rid=errlog-502")
    assert(line, "no error log line for a refused origin connection:\n" .. moxy:error_text())
    assert.matches("^%S.-%d.- %[%a+%] ", line)
  end)
end)

describe("access log, json format", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      log = { access = "access.json", format = "json" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function entry(id)
    local line = moxy:wait_log(id)
    assert(line, "no access log line for " .. id)
    return helpers.json(line), line
  end

  it("writes one JSON object per line with the documented fields", function()
    local res = assert(helpers.request(moxy.port, { path = "/bytes/777?q=1",
      headers = { ["X-Request-Id"] = "json-1" } }))
    assert.equal(200, res.status)
    local e = entry("json-1")
    assert.equal("json-1", e.request_id)
    assert.equal("127.0.0.1", e.client)
    assert.equal("GET", e.method)
    assert.equal("/bytes/777?q=1", e.uri)
    assert.equal(200, e.status)
    assert.is_number(e.bytes)
    assert.is_true(e.bytes >= 777)
    assert.is_string(e.upstream)
    assert(e.upstream:find(tostring(origin.port), 1, true) or e.upstream:find("app", 1, true),
      "upstream field names neither the pool nor the server: " .. e.upstream)
    assert.is_number(e.duration_ms)
    assert.is_true(e.duration_ms >= 0)
  end)

  it("measures the duration", function()
    assert(helpers.request(moxy.port, { path = "/slow-headers/0.3", headers = { ["X-Request-Id"] = "json-slow" } }))
    local e = entry("json-slow")
    assert.is_true(e.duration_ms >= 250 and e.duration_ms < 5000 * S, "duration_ms " .. tostring(e.duration_ms))
  end)

  it("keeps every line valid JSON whatever the request carries", function()
    assert(helpers.request(moxy.port, { path = "/echo?q=%22quoted%22&b=%5C", headers = {
      ["X-Request-Id"] = "json-escape",
      ["User-Agent"] = 'agent "with quotes" and \\ backslash \t tab',
      Referer = "http://x/\"><script>",
    } }))
    local e = entry("json-escape")
    assert.equal("/echo?q=%22quoted%22&b=%5C", e.uri)
    for _, line in ipairs(moxy:access_lines()) do helpers.json(line) end
  end)

  it("uses the generated request id", function()
    local res = assert(helpers.request(moxy.port, { path = "/echo?gen" }))
    local id = res:header("x-request-id")
    local e = entry(id)
    assert.equal(id, e.request_id)
    assert.equal("/echo?gen", e.uri)
  end)
end)

describe("access log off", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      log = { access = false },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("writes no access log with access = false", function()
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo" })).status)
    helpers.sleep(1.5 * S)
    local files = {}
    for name in io.popen("ls -A '" .. moxy.dir .. "'"):lines() do files[#files + 1] = name end
    table.sort(files)
    -- moxy.pid.reload: the reload status `moxy reload` reads, written from the start
    assert.same({ "cwd", "moxy.lua", "moxy.pid", "moxy.pid.reload", "stderr.log", "stdout.log" }, files)
  end)
end)
