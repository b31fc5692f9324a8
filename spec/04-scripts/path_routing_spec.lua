-- scripts/path_routing.lua: pools by path prefix, longest first, strip_prefix.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/path_routing.lua"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

describe("scripts/path_routing.lua", function()
  local app, api, static

  lazy_setup(function()
    app, api, static = helpers.start_origin(), helpers.start_origin(), helpers.start_origin()
  end)
  lazy_teardown(function() helpers.stop_all() end)

  local function pools()
    return {
      app = { servers = { app.addr } },
      api = { servers = { api.addr } },
      static = { servers = { static.addr } },
    }
  end

  describe("with routes and no default", function()
    local moxy

    lazy_setup(function()
      moxy = helpers.start_moxy({
        upstreams = pools(),
        default_upstream = "app",
        scripts = { "routing.lua" },
      }, { files = { ["routing.lua"] = with_config([[{
        routes = {
          ["/echo/api"] = "api",
          ["/echo/api/v2/"] = { pool = "static", strip_prefix = true },
          ["/assets"] = { pool = "static", strip_prefix = true },
        },
      }]]) } })
    end)

    -- the origin that answered and what it was asked
    local function get(path)
      local doc = helpers.echo(helpers.request(moxy.port, { path = path }))
      return doc.port, doc.uri
    end

    it("sends a matching prefix to its pool, path unchanged", function()
      assert.same({ api.port, "/echo/api/users?id=7" }, { get("/echo/api/users?id=7") })
      assert.same({ api.port, "/echo/api" }, { get("/echo/api") })
      assert.same({ api.port, "/echo/api/" }, { get("/echo/api/") })
    end)

    it("matches whole path segments only", function()
      assert.same({ app.port, "/echo/apiary" }, { get("/echo/apiary") })
    end)

    it("prefers the longest prefix, and strips it when asked, keeping the query", function()
      assert.same({ static.port, "/echo/x?q=1" }, { get("/echo/api/v2/echo/x?q=1") })
    end)

    it("strips a prefix to / when nothing is left", function()
      static:reset_stats()
      local res = assert(helpers.request(moxy.port, { path = "/assets" }))
      assert.equal(404, res.status) -- the static origin has nothing at /
      assert.equal(1, #static:saw("^/$"))
      assert.same({ static.port, "/echo/app.css?v=3" }, { get("/assets/echo/app.css?v=3") })
    end)

    it("leaves other paths to the default pool", function()
      assert.same({ app.port, "/echo/other" }, { get("/echo/other") })
      assert.same({ app.port, "/echo" }, { get("/echo") })
    end)
  end)

  describe("with a default pool and a catch-all", function()
    it("uses CONFIG.default for unmatched paths", function()
      local moxy = helpers.start_moxy({
        upstreams = pools(),
        default_upstream = "app",
        scripts = { "routing.lua" },
      }, { files = { ["routing.lua"] = with_config([[{
        routes = { ["/echo/s"] = "static" },
        default = "api",
      }]]) } })
      assert.equal(static.port, helpers.echo(helpers.request(moxy.port, { path = "/echo/s/1" })).port)
      assert.equal(api.port, helpers.echo(helpers.request(moxy.port, { path = "/echo/t" })).port)
    end)

    it("treats / as a catch-all that longer prefixes beat", function()
      local moxy = helpers.start_moxy({
        upstreams = pools(),
        default_upstream = "app",
        scripts = { "routing.lua" },
      }, { files = { ["routing.lua"] = with_config([[{
        routes = { ["/"] = "static", ["/echo/a"] = "api" },
      }]]) } })
      assert.equal(static.port, helpers.echo(helpers.request(moxy.port, { path = "/echo/b" })).port)
      assert.equal(api.port, helpers.echo(helpers.request(moxy.port, { path = "/echo/a/b" })).port)
    end)
  end)

  it("ships a CONFIG that loads (moxy -t) with its pools", function()
    local code, out = helpers.run_moxy_check([[
      return {
        listen = { "127.0.0.1:1" },
        upstreams = {
          app = { servers = { "127.0.0.1:1" } },
          api = { servers = { "127.0.0.1:2" } },
          static = { servers = { "127.0.0.1:3" } },
        },
        default_upstream = "app",
        scripts = { "path_routing.lua" },
      }
    ]], { files = { ["path_routing.lua"] = helpers.read_file(PATH) } })
    assert.equal(0, code, out)
  end)
end)
