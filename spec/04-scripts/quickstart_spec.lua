-- scripts/quickstart.lua and conf/quickstart.lua: what `make run` starts.
local helpers = require "spec.helpers"

local ROOT = os.getenv("PWD")

describe("quickstart", function()
  local moxy

  lazy_setup(function()
    local proxy_port, origin_port = helpers.free_port(), helpers.free_port()
    moxy = helpers.start_moxy({
      workers = 2,
      listen = { "127.0.0.1:" .. proxy_port, { addr = "127.0.0.1:" .. origin_port, name = "demo-origin" } },
      upstreams = { demo = { servers = { "127.0.0.1:" .. origin_port } } },
      scripts = { ROOT .. "/scripts/quickstart.lua" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("answers through the proxy from the demo origin", function()
    local res = assert(helpers.request(moxy.port, { path = "/hello?x=1" }))
    assert.equal(200, res.status)
    assert.matches("Hello from moxy's demo origin", res.body, 1, true)
    assert.matches("request          GET /hello?x=1", res.body, 1, true)
    -- the proxy side's hook ran; X-Forwarded-For names the client and then
    -- the proxy hop (the demo origin is a moxy listener too)
    assert.matches("X-Edge-Proxy     moxy\n", res.body, 1, true)
    assert.matches("X-Forwarded-For  127.0.0.1, 127.0.0.1\n", res.body, 1, true)
    -- one request id from the client's side to the demo origin
    local id = res:header("x-request-id")
    assert.matches("^%x+$", id)
    assert.matches("request id       " .. id, res.body, 1, true)
  end)

  it("answers on the demo origin's own port without the proxy's tag", function()
    local res = assert(helpers.request(moxy.ports[2], { path = "/" }))
    assert.equal(200, res.status)
    assert.matches("X-Edge-Proxy     -\n", res.body, 1, true)
  end)

  it("ships a configuration that passes moxy -t", function()
    local code, out = helpers.run_moxy({ "-t", "-c", ROOT .. "/conf/quickstart.lua" })
    assert.equal(0, code, out)
    assert.matches("configuration .* ok", out)
  end)
end)
