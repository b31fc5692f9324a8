-- on_response(txn): runs on the origin's status and headers before they go
-- to the client; it can change them, answer instead, yield, and sees the
-- txn.ctx that on_request filled.
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    txn.ctx.path = txn.req.path
    txn.ctx.mode = txn.req.headers:get("X-Mode")
  end,
  on_response = function(txn)
    local mode = txn.ctx.mode
    txn.resp.headers:set("X-Seen-Path", txn.ctx.path)
    txn.resp.headers:set("X-Origin-Status", tostring(txn.resp.status))
    txn.resp.headers:set("X-Peer", txn.upstream.peer .. " " .. txn.upstream.tries)
    txn.resp.headers:set("X-Started", string.format("%.3f", txn.started))
    if mode == "strip" then
      txn.resp.headers:remove("X-Secret")
    elseif mode == "status" then
      txn.resp.status = 203
    elseif mode == "nap" then
      moxy.sleep(0.1)
      txn.resp.headers:set("X-Napped", "yes")
    elseif mode == "replace" then
      return txn:respond(451, "not here\n", { ["Content-Type"] = "text/plain" })
    elseif mode == "error" then
      error("bad response hook")
    elseif mode == "bad-status" then
      txn.resp.status = 204
    end
  end,
}
]]

describe("on_response", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(mode, path)
    return assert(helpers.request(moxy.port, { path = path or "/echo", headers = { { "X-Mode", mode } } }))
  end

  it("sees the origin's status and the ctx of on_request", function()
    local res = get("none", "/echo?q=1")
    assert.equal(200, res.status)
    assert.equal("/echo", res:header("x-seen-path"))
    assert.equal("200", res:header("x-origin-status"))
    assert.equal(origin.addr .. " 1", res:header("x-peer"))
    assert.is_true(math.abs(tonumber(res:header("x-started")) - os.time()) < 5)
  end)

  it("removes an origin header", function()
    local res = get("strip", "/echo?rh=X-Secret:s3cret")
    assert.is_nil(res:header("x-secret"))
    res = get("none", "/echo?rh=X-Secret:s3cret")
    assert.equal("s3cret", res:header("x-secret"))
  end)

  it("changes the status, keeping the body", function()
    local res = get("status", "/bytes/1000")
    assert.equal(203, res.status)
    assert.equal(1000, #res.body)
  end)

  it("yields and then lets the body through", function()
    local res = get("nap", "/chunked/50000")
    assert.equal(200, res.status)
    assert.equal("yes", res:header("x-napped"))
    assert.equal(50000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
  end)

  it("answers instead of the origin, with the answer's headers only", function()
    local res = get("replace", "/echo?rh=X-Secret:s3cret")
    assert.equal(451, res.status)
    assert.equal("not here\n", res.body)
    assert.is_nil(res:header("x-secret"))
    assert.equal(200, get("none").status) -- the connection pool is fine after
  end)

  it("turns a script error into a 500", function()
    local res = get("error")
    assert.equal(500, res.status)
    local line = assert(moxy:wait_log("bad response hook", 3, moxy.error_log))
    assert.matches("site%.lua:%d+: bad response hook", line)
  end)

  it("refuses a status change that would change the body's framing", function()
    local res = get("bad-status", "/bytes/10")
    assert.equal(500, res.status)
    assert(moxy:wait_log("cannot change this response's status to 204", 3, moxy.error_log))
  end)
end)
