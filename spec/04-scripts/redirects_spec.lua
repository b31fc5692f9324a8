-- scripts/redirects.lua: exact and prefix redirects answered by moxy.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/redirects.lua"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

describe("scripts/redirects.lua", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "redirects.lua" },
    }, { files = { ["redirects.lua"] = with_config([[{
      status = 301,
      exact = {
        ["/old"] = "/new",
        ["/promo"] = { to = "https://shop.example.com/sale?src=edge", status = 302 },
        ["/form"] = { to = "/form2", status = 307, keep_query = false },
      },
      prefix = {
        ["/blog/"] = "/articles",
        ["/blog/drafts"] = { to = "/preview/", status = 308 },
        ["/docs"] = "https://docs.example.com/",
      },
    }]]) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- status and Location for a request
  local function get(path, method)
    local res = assert(helpers.request(moxy.port, { path = path, method = method }))
    return res.status, res:header("location")
  end

  it("redirects an exact path with the default status, keeping the query", function()
    assert.same({ 301, "/new" }, { get("/old") })
    assert.same({ 301, "/new?a=1&b=2" }, { get("/old?a=1&b=2") })
  end)

  it("joins the query to a target that has one", function()
    assert.same({ 302, "https://shop.example.com/sale?src=edge&utm=x" }, { get("/promo?utm=x") })
    assert.same({ 302, "https://shop.example.com/sale?src=edge" }, { get("/promo") })
  end)

  it("drops the query with keep_query = false, and redirects any method", function()
    assert.same({ 307, "/form2" }, { get("/form?x=1", "POST") })
  end)

  it("matches exact paths exactly", function()
    origin:reset_stats()
    local status = get("/old/")
    assert.equal(404, status) -- the origin's answer
    assert.equal(1, #origin:saw("^/old/$"))
  end)

  it("redirects a prefix, keeping the rest of the path and the query", function()
    assert.same({ 301, "/articles/2024/hello?p=2" }, { get("/blog/2024/hello?p=2") })
    assert.same({ 301, "/articles/" }, { get("/blog/") })
    assert.same({ 301, "/articles" }, { get("/blog") })
    assert.same({ 301, "https://docs.example.com/guide/install" }, { get("/docs/guide/install") })
  end)

  it("prefers the longest prefix", function()
    assert.same({ 308, "/preview/7" }, { get("/blog/drafts/7") })
  end)

  it("matches prefixes on whole segments and leaves other paths to the origin", function()
    origin:reset_stats()
    assert.equal(404, (get("/blogroll")))
    assert.equal(1, #origin:saw("^/blogroll$"))
    local doc = helpers.echo(helpers.request(moxy.port, { path = "/echo/blog/x" }))
    assert.equal("/echo/blog/x", doc.path)
  end)

  it("refuses a status that is not a redirect (moxy -t)", function()
    local code, out = helpers.run_moxy_check([[
      return { listen = { "127.0.0.1:1" }, upstreams = { app = { servers = { "127.0.0.1:1" } } }, scripts = { "r.lua" } }
    ]], { files = { ["r.lua"] = with_config([[{ exact = { ["/a"] = { to = "/b", status = 200 } } }]]) } })
    assert.equal(1, code, out)
    assert.matches("status must be 301, 302, 303, 307 or 308", out, 1, true)
  end)

  it("ships a CONFIG that works", function()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { PATH },
    })
    local res = assert(helpers.request(m.port, { path = "/old-page?x=1" }))
    assert.same({ 301, "/new-page?x=1" }, { res.status, res:header("location") })
    res = assert(helpers.request(m.port, { path = "/docs/a" }))
    assert.same({ 308, "https://docs.example.com/a" }, { res.status, res:header("location") })
  end)
end)
