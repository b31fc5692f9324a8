-- scripts/maintenance.lua: 503 + Retry-After for everyone but allowed
-- addresses and paths.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/maintenance.lua"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

describe("scripts/maintenance.lua", function()
  local origin

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  local function start(config)
    return helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "maintenance.lua" },
    }, { files = { ["maintenance.lua"] = with_config(config) } })
  end

  describe("enabled", function()
    local moxy

    lazy_setup(function()
      moxy = start([[{
        enabled = true,
        retry_after = 120,
        title = "Back <soon>",
        message = "Upgrading & testing.",
        allow_ips = { "192.0.2.1" },
        allow_paths = { "/echo/health", "/status/" },
      }]])
    end)

    it("answers 503 with an HTML page and Retry-After, without asking the origin", function()
      origin:reset_stats()
      local res = assert(helpers.request(moxy.port, { path = "/echo/anything?x=1" }))
      assert.equal(503, res.status)
      assert.equal("120", res:header("retry-after"))
      assert.equal("no-store", res:header("cache-control"))
      assert.equal("text/html; charset=utf-8", res:header("content-type"))
      assert.matches("<title>Back &lt;soon&gt;</title>", res.body, 1, true)
      assert.matches("Upgrading &amp; testing.", res.body, 1, true)
      assert.equal(0, origin:stats().requests)
    end)

    it("answers JSON to clients asking for it", function()
      local res = assert(helpers.request(moxy.port, { path = "/", headers = { { "Accept", "application/json" } } }))
      assert.equal(503, res.status)
      assert.equal("application/json", res:header("content-type"))
      assert.same({ error = "Back <soon>", message = "Upgrading & testing." }, helpers.json(res.body))
    end)

    it("answers POSTs too", function()
      local res = assert(helpers.request(moxy.port, { method = "POST", path = "/echo", body = "x=1" }))
      assert.equal(503, res.status)
    end)

    it("lets allowed paths through, on whole segments", function()
      assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo/health" })).status)
      assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo/health/db?deep=1" })).status)
      assert.equal(204, assert(helpers.request(moxy.port, { path = "/status/204" })).status)
      assert.equal(503, assert(helpers.request(moxy.port, { path = "/echo/healthz" })).status)
    end)

    it("does not let 127.0.0.1 through when it is not in allow_ips", function()
      assert.equal(503, assert(helpers.request(moxy.port, { path = "/echo" })).status)
    end)
  end)

  it("lets the addresses of allow_ips through", function()
    local moxy = start([[{ enabled = true, allow_ips = { "127.0.0.1" }, allow_paths = {} }]])
    local doc = helpers.echo(helpers.request(moxy.port, { path = "/echo/x" }))
    assert.equal("/echo/x", doc.path)
  end)

  it("lets everything through when not enabled", function()
    local moxy = start([[{ enabled = false, allow_ips = {}, allow_paths = {} }]])
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo" })).status)
  end)

  it("as shipped, answers 503 but lets /healthz through", function()
    local moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { PATH },
    })
    local res = assert(helpers.request(moxy.port, { path = "/" }))
    assert.equal(503, res.status)
    assert.equal("600", res:header("retry-after"))
    assert.matches("Down for maintenance", res.body, 1, true)
    origin:reset_stats()
    -- the origin has no /healthz (404), but it was asked
    assert.equal(404, assert(helpers.request(moxy.port, { path = "/healthz" })).status)
    assert.equal(1, #origin:saw("^/healthz$"))
  end)
end)
