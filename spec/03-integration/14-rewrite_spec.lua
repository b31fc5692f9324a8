-- on_request rewrites the request target (txn.req.path / txn.req.query) and
-- answers redirects (txn:redirect).
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    local p = txn.req.path
    if p == "/old" then
      txn.req.path = "/echo"
    elseif p == "/requery" then
      txn.req.path = "/echo"
      txn.req.query = "b=2&c=%20"
    elseif p == "/noquery" then
      txn.req.path = "/echo"
      txn.req.query = nil
    elseif p == "/args" then
      local args = txn.req.args
      txn.req.path = "/echo"
      args.page = tonumber(args.page) + 1
      args.drop = nil
      args.tag = { "x y", "z" }
      txn.req.args = args
      txn.req.headers:set("X-Seen", tostring(txn.req.args.page))
    elseif p == "/noargs" then
      txn.req.path = "/echo"
      txn.req.args = {}
    elseif p == "/badpath" then
      txn.req.path = "/a b"
    elseif p == "/moved" then
      return txn:redirect("https://example.test/new", 301)
    elseif p == "/found" then
      return txn:redirect("/elsewhere")
    end
  end,
}
]]

describe("request rewriting", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("sends a new path with the query kept", function()
    local e = helpers.echo(assert(helpers.request(moxy.port, { path = "/old?x=1" })))
    assert.equal("/echo?x=1", e.uri)
  end)

  it("sets and removes the query", function()
    local e = helpers.echo(assert(helpers.request(moxy.port, { path = "/requery?a=1" })))
    assert.equal("/echo?b=2&c=%20", e.uri)
    e = helpers.echo(assert(helpers.request(moxy.port, { path = "/noquery?a=1" })))
    assert.equal("/echo", e.uri)
  end)

  it("reads and sets the query as a table (txn.req.args)", function()
    local e = helpers.echo(assert(helpers.request(moxy.port, { path = "/args?page=1&drop=1&tag=a" })))
    assert.equal("/echo?page=2&tag=x%20y&tag=z", e.uri)
    assert.equal("2", helpers.echo_value(e, "X-Seen"))
    e = helpers.echo(assert(helpers.request(moxy.port, { path = "/noargs?a=1" })))
    assert.equal("/echo", e.uri)
  end)

  it("refuses a target that would break the request line (500, logged)", function()
    local res = assert(helpers.request(moxy.port, { path = "/badpath" }))
    assert.equal(500, res.status)
    assert(moxy:wait_log('invalid request target "/a b"', 3, moxy.error_log))
    assert.same({}, origin:saw("^/a b"))
  end)

  it("redirects with the given or the default status", function()
    local res = assert(helpers.request(moxy.port, { path = "/moved" }))
    assert.equal(301, res.status)
    assert.equal("https://example.test/new", res:header("location"))
    res = assert(helpers.request(moxy.port, { path = "/found" }))
    assert.equal(302, res.status)
    assert.equal("/elsewhere", res:header("location"))
    assert.equal("0", res:header("content-length"))
  end)
end)
