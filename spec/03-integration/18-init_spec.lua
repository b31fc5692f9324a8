-- init (once per configuration, before the workers) and worker_init (in each
-- worker's VM before it serves): they may sleep, and an error stops moxy
-- from starting with the script's file:line.
local helpers = require "spec.helpers"

describe("init and worker_init", function()
  lazy_teardown(function() helpers.stop_all() end)

  it("run before requests, once per worker for worker_init", function()
    local origin = helpers.start_origin()
    local site = [[
local ready = 0
return {
  init = function()
    moxy.sleep(0.05) -- may wait (e.g. for a dependency) before the workers start
  end,
  worker_init = function()
    ready = ready + 1
  end,
  on_request = function(txn)
    return txn:respond(200, "worker_init ran " .. ready .. " time(s) in this worker\n")
  end,
}
]]
    local moxy = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = site } })
    for _ = 1, 6 do
      local res = assert(helpers.request(moxy.port, { path = "/" }))
      assert.equal("worker_init ran 1 time(s) in this worker\n", res.body)
    end
  end)

  it("stop moxy from starting when init fails, naming file:line", function()
    local src = [[
return {
  workers = 1,
  listen = { "127.0.0.1:18097" },
  upstreams = { app = { servers = { "127.0.0.1:18096" } } },
  scripts = { "bad.lua" },
}
]]
    local bad = "return {\n  init = function()\n    error('no database')\n  end,\n}\n"
    local code, out = helpers.run_moxy_check(src, { files = { ["bad.lua"] = bad } })
    assert.equal(1, code, out)
    assert.matches("init: .*bad%.lua:3: no database", out)
  end)

  it("stop moxy from starting when worker_init fails", function()
    local dir = helpers.tmpdir("winit")
    helpers.write_file(dir .. "/w.lua", "return { worker_init = function() error('no cache') end }\n")
    helpers.write_file(dir .. "/moxy.lua", [[
return {
  workers = 1,
  listen = { "127.0.0.1:18095" },
  upstreams = { app = { servers = { "127.0.0.1:18094" } } },
  scripts = { "w.lua" },
}
]])
    local code, out = helpers.run_moxy({ "-c", dir .. "/moxy.lua" }, 10)
    assert.equal(1, code, out)
    assert.matches("worker_init: .*w%.lua:1: no cache", out)
  end)
end)
