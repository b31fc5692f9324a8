-- moxy.re in a real moxy: a script routes with a PCRE2 regex (named and
-- numbered groups), answers from the captures, and lets other paths through
-- to the origin.
local helpers = require "spec.helpers"

local SITE = [[
local re = moxy.re
local ROUTE = [=[^/users/(\d+)/posts/(?<post>\d+)$]=]
return {
  on_request = function(txn)
    local m, err = re.match(txn.req.path, ROUTE)
    if err then return txn:respond(500, err .. "\n") end
    if m then
      return txn:respond(200, "user=" .. m[1] .. " post=" .. m.post .. "\n",
                         { ["Content-Type"] = "text/plain" })
    end
    if re.find(txn.req.path, "^/API/", "i") then
      txn.req.path = re.sub(txn.req.path, "^/api/", "/echo/", "i")
    end
  end,
}
]]

describe("moxy.re in a script", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("routes on a regex and answers with its captures", function()
    local res = assert(helpers.request(moxy.port, { path = "/users/42/posts/7" }))
    assert.equal(200, res.status)
    assert.equal("user=42 post=7\n", res.body)
    assert.equal(0, origin:stats().requests)
  end)

  it("lets a path the regex does not match go to the origin", function()
    local res = assert(helpers.request(moxy.port, { path = "/users/42/posts/x" }))
    assert.equal(404, res.status) -- the origin's answer to an unknown path
    assert.equal(1, #origin:saw("^/users/42/posts/x$"))
  end)

  it("rewrites a path with re.sub before it goes to the origin", function()
    local e = helpers.echo(assert(helpers.request(moxy.port, { path = "/Api/v1?x=1" })))
    assert.equal("/echo/v1", e.path)
    assert.equal("x=1", e.query)
  end)
end)
