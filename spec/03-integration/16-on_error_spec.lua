-- on_error(txn): runs when moxy is about to answer a failure itself (502,
-- 504, a script error); it sees the status and the reason, may yield, and
-- may answer with a page of its own.
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    txn.ctx.tag = txn.req.headers:get("X-Tag")
    if txn.req.path == "/boom" then error("boom in on_request") end
  end,
  on_error = function(txn)
    if txn.ctx.tag == "plain" then return end -- moxy's own page
    if txn.ctx.tag == "nap" then moxy.sleep(0.05) end
    if txn.ctx.tag == "fail" then error("on_error fails too") end
    return txn:respond(txn.resp.status, "sorry: " .. tostring(txn.resp.status) .. " " .. tostring(txn.error)
      .. " tag=" .. tostring(txn.ctx.tag) .. "\n", { ["Content-Type"] = "text/plain" })
  end,
}
]]

describe("on_error", function()
  local moxy, dead_port

  lazy_setup(function()
    dead_port = helpers.free_port() -- nothing listens there: connection refused
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { "127.0.0.1:" .. dead_port } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path, tag)
    return assert(helpers.request(moxy.port, { path = path, headers = { { "X-Tag", tag } } }))
  end

  it("answers a refused origin with the script's page, status and reason", function()
    local res = get("/x", "mine")
    assert.equal(502, res.status)
    assert.matches("^sorry: 502 connect failed: connection refused tag=mine\n$", res.body)
  end)

  it("can yield first", function()
    local res = get("/x", "nap")
    assert.equal(502, res.status)
    assert.matches("^sorry: 502 ", res.body)
  end)

  it("answers a script error of on_request (whose txn.ctx died with it)", function()
    local res = get("/boom", "mine")
    assert.equal(500, res.status)
    assert.matches("^sorry: 500 script error in on_request tag=nil\n$", res.body)
  end)

  it("leaves moxy's page when it does not answer", function()
    local res = get("/x", "plain")
    assert.equal(502, res.status)
    assert.matches("<h1>502 Bad Gateway</h1>", res.body, 1, true)
  end)

  it("falls back to moxy's page when it fails itself", function()
    local res = get("/x", "fail")
    assert.equal(502, res.status)
    assert.matches("<h1>502 Bad Gateway</h1>", res.body, 1, true)
    assert(moxy:wait_log("on_error fails too", 3, moxy.error_log))
  end)
end)
