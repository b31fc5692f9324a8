-- Lua scripting: on_request(txn) can edit the request, answer directly, pick
-- another pool; a script error is a 500 plus an error log line naming
-- file:line, and does not break later requests.
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    local t = txn.req.headers:get("X-Test")
    if t == "set" then
      txn.req.headers:set("X-From-Lua", "yes")
      txn.req.headers:add("X-Added", "one")
      txn.req.headers:add("X-Added", "two")
      txn.req.headers:remove("X-Remove-Me")
    elseif t == "respond" then
      txn:respond(418, "short and stout\n", { ["Content-Type"] = "text/plain", ["X-Lua"] = "1" })
    elseif t == "pick" then
      txn.upstream:pick("other")
    elseif t == "error" then
      error("boom from site.lua") -- ERROR_LINE
    elseif t == "info" then
      local r = txn.req
      local lines = {
        "method=" .. tostring(r.method),
        "path=" .. tostring(r.path),
        "query=" .. tostring(r.query),
        "uri=" .. tostring(r.uri),
        "host=" .. tostring(r.host),
        "client=" .. tostring(txn.client.ip),
        "id=" .. tostring(txn.id),
        "listener=" .. tostring(txn.listener),
        "missing=" .. tostring(r.headers:get("X-Not-There")),
        "mixed=" .. tostring(r.headers:get("x-mIxEd-CaSe")),
      }
      txn:respond(200, table.concat(lines, "\n") .. "\n", { ["Content-Type"] = "text/plain" })
    end
  end,
}
]]

local ERROR_LINE = helpers.line_of(SITE, "ERROR_LINE")

describe("lua on_request", function()
  local a, b, moxy, p_second

  lazy_setup(function()
    a = helpers.start_origin()
    b = helpers.start_origin()
    p_second = helpers.free_port()
    moxy = helpers.start_moxy({
      listen = {
        { addr = "127.0.0.1:" .. helpers.free_port(), name = "main" },
        { addr = "127.0.0.1:" .. p_second, name = "second" },
      },
      upstreams = {
        app = { servers = { a.addr } },
        other = { servers = { b.addr } },
      },
      default_upstream = "app",
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(headers, path, port)
    return assert(helpers.request(port or moxy.port, { path = path or "/echo", headers = headers }))
  end

  it("passes requests the script does not touch", function()
    local e = helpers.echo(get({}))
    assert.equal(a.port, e.port)
  end)

  it("sets, adds and removes request headers seen by the origin", function()
    local e = helpers.echo(get({ { "X-Test", "set" }, { "X-From-Lua", "no" }, { "X-Remove-Me", "gone" } }))
    assert.same({ "yes" }, helpers.echo_values(e, "x-from-lua"))
    assert.same({ "one", "two" }, helpers.echo_values(e, "x-added"))
    assert.same({}, helpers.echo_values(e, "x-remove-me"))
  end)

  it("answers with txn:respond without touching the origin", function()
    a:reset_stats()
    b:reset_stats()
    local res = get({ { "X-Test", "respond" } }, "/echo?responded")
    assert.equal(418, res.status)
    assert.equal("short and stout\n", res.body)
    assert.equal("1", res:header("x-lua"))
    assert.equal("text/plain", res:header("content-type"))
    assert.equal(0, a:stats().requests)
    assert.equal(0, b:stats().requests)
  end)

  it("keeps the connection usable after txn:respond", function()
    local c = assert(helpers.connection(moxy.port))
    assert.equal(418, assert(c:request({ path = "/echo", headers = { { "X-Test", "respond" } } })).status)
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    c:close()
  end)

  it("routes to another pool with txn.upstream:pick", function()
    local e = helpers.echo(get({ { "X-Test", "pick" } }))
    assert.equal(b.port, e.port)
  end)

  it("exposes the request, the client, the id and the listener", function()
    local res = assert(helpers.request(p_second, { path = "/some/path?a=1&b=2", host = "example.test",
      headers = { { "X-Test", "info" }, { "X-Request-Id", "lua-info-1" }, { "X-Mixed-Case", "mc" } } }))
    assert.equal(200, res.status)
    local t = {}
    for k, v in res.body:gmatch("([%w_]+)=([^\n]*)") do t[k] = v end
    assert.same({
      method = "GET", path = "/some/path", query = "a=1&b=2", uri = "/some/path?a=1&b=2",
      host = "example.test", client = "127.0.0.1", id = "lua-info-1", listener = "second",
      missing = "nil", mixed = "mc",
    }, t)
  end)

  it("answers 500 to a script error, logs file:line, and keeps serving", function()
    local res = get({ { "X-Test", "error" }, { "X-Request-Id", "lua-error-1" } })
    assert.equal(500, res.status)
    local line = moxy:wait_error_log("site.lua:" .. ERROR_LINE .. ":")
    assert(line, "no error log line naming site.lua:" .. ERROR_LINE .. ":\n" .. moxy:error_text())
    assert(line:find("boom from site.lua", 1, true), "the error message is missing: " .. line)
    assert(line:find("rid=lua-error-1", 1, true), "the request id is missing: " .. line)
    local e = helpers.echo(get({}))
    assert.equal(a.port, e.port)
    assert.equal(200, get({ { "X-Test", "set" } }).status)
  end)

  it("survives many script errors", function()
    for _ = 1, 50 do
      assert.equal(500, get({ { "X-Test", "error" } }).status)
    end
    assert.equal(200, get({}).status)
  end)
end)
