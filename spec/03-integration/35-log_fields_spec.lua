-- Access-log fields from scripts (txn:log_field) and the access log on
-- stdout/stderr for containers.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local SITE = [[
return {
  on_request = function(txn)
    if txn.req.path == "/bad" then txn:log_field("bad name", 1) end
    txn:log_field("user", txn.req.headers:get("X-User") or "anonymous")
  end,
  on_log = function(txn)
    txn:log_field("score", 12)
    txn:log_field("ratio", 0.25)
    txn:log_field("cached", false)
    txn:log_field("note", "two words \"quoted\"")
    txn:log_field("user", txn.ctx.user or "alice") -- given again: replaced
  end,
}
]]

describe("access log", function()
  local origin
  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  local function start(log)
    return helpers.start_moxy({ upstreams = { app = { servers = { origin.addr } } }, scripts = { "site.lua" },
                                log = log }, { files = { ["site.lua"] = SITE } })
  end

  local function last_line(m, path)
    local line
    assert.truthy(helpers.wait_until(function()
      local lines = m:access_lines(path)
      line = lines[#lines]
      return line
    end, 5 * helpers.scale))
    return line
  end

  it("ends a combined line with the fields hooks added, in order, a value given twice replaced", function()
    local m = start({ access = "access.log", error = "stderr" })
    finally(function() m:stop() end)
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo", headers = { ["X-User"] = "bob" } })).status)
    local line = last_line(m)
    assert.matches(' rt=%d+%.%d+ user=alice score=12 ratio=0%.25 cached=false note="two words \\"quoted\\""$', line)
  end)

  it("adds them as typed keys of a JSON line", function()
    local m = start({ access = "access.log", format = "json", error = "stderr" })
    finally(function() m:stop() end)
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo" })).status)
    local doc = assert(cjson.decode(last_line(m)))
    assert.equal("alice", doc.user)
    assert.equal(12, doc.score)
    assert.equal(0.25, doc.ratio)
    assert.equal(false, doc.cached)
    assert.equal('two words "quoted"', doc.note)
    assert.equal(200, doc.status)
  end)

  it("writes the JSON fields log.fields names, in that order, then the hooks' fields", function()
    local m = start({ access = "access.log", format = "json", error = "stderr",
                      fields = { "status", "pool", "tries", "upstream_status", "upstream_header_ms", "host",
                                 "listener", "socket_client", "client" } })
    finally(function() m:stop() end)
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo", host = "example.test" })).status)
    local line = last_line(m)
    local doc = assert(cjson.decode(line))
    assert.equal(200, doc.status)
    assert.equal("app", doc.pool)
    assert.equal(1, doc.tries)
    assert.equal(200, doc.upstream_status)
    assert.is_true(doc.upstream_header_ms >= 0)
    assert.equal("example.test", doc.host)
    assert.equal("127.0.0.1", doc.socket_client)
    assert.is_nil(doc.uri)
    assert.is_nil(doc.time)
    local keys = {}
    for k in line:gmatch('"([%w_]+)":') do keys[#keys + 1] = k end
    assert.same({ "status", "pool", "tries", "upstream_status", "upstream_header_ms", "host", "listener",
                  "socket_client", "client", "user", "score", "ratio", "cached", "note" }, keys)
  end)

  it("names an unknown log field in the configuration", function()
    local code, out = helpers.run_moxy_check([[
return {
  listen = "127.0.0.1:1",
  upstreams = { app = { servers = { "127.0.0.1:2" } } },
  log = { format = "json", fields = { "status", "colour" } },
}
]])
    assert.equal(1, code)
    assert.matches(":4: log%.fields%[2%]: unknown field colour", out)
  end)

  it("refuses a bad field name with a script error", function()
    local m = start({ access = "access.log", error = "stderr" })
    finally(function() m:stop() end)
    assert.equal(500, assert(helpers.request(m.port, { path = "/bad" })).status)
    assert.matches("txn:log_field: bad name \"bad name\"", m:stderr())
  end)

  it("writes to stdout for containers", function()
    local m = start({ access = "stdout", format = "json", error = "stderr" })
    finally(function() m:stop() end)
    assert.equal(200, assert(helpers.request(m.port, { path = "/echo" })).status)
    local doc
    assert.truthy(helpers.wait_until(function()
      for line in m.proc:stdout():gmatch("[^\n]+") do doc = cjson.decode(line) or doc end
      return doc
    end, 5 * helpers.scale))
    assert.equal("/echo", doc.uri)
    assert.equal("alice", doc.user)
  end)
end)
