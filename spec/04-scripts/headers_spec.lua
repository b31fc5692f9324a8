-- scripts/headers.lua: request and response headers from its CONFIG block.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/headers.lua"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

describe("scripts/headers.lua", function()
  local origin

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  describe("as shipped", function()
    local moxy

    lazy_setup(function()
      moxy = helpers.start_moxy({
        upstreams = { app = { servers = { origin.addr } } },
        scripts = { PATH },
      })
    end)

    it("adds security headers and hides the origin's software", function()
      local res = assert(helpers.request(moxy.port, {
        path = "/echo?rh=Server:gunicorn&rh=X-Powered-By:PHP/8.3",
        headers = { { "X-Debug-Token", "let-me-in" } },
      }))
      local doc = helpers.echo(res)
      -- the origin: X-Edge set, X-Debug-Token dropped
      assert.equal("moxy", helpers.echo_value(doc, "X-Edge"))
      assert.is_nil(helpers.echo_value(doc, "X-Debug-Token"))
      -- the client
      assert.equal("max-age=31536000; includeSubDomains", res:header("strict-transport-security"))
      assert.equal("nosniff", res:header("x-content-type-options"))
      assert.equal("DENY", res:header("x-frame-options"))
      assert.equal("strict-origin-when-cross-origin", res:header("referrer-policy"))
      assert.equal("default-src 'self'", res:header("content-security-policy"))
      assert.is_nil(res:header("server"))
      assert.is_nil(res:header("x-powered-by"))
    end)

    it("keeps the origin's own Content-Security-Policy (a default only)", function()
      local res = assert(helpers.request(moxy.port, { path = "/echo?rh=Content-Security-Policy:default-src%20none" }))
      assert.equal(200, res.status)
      assert.equal("default-src none", res:header("content-security-policy"))
    end)

    it("changes error responses from the origin too", function()
      local res = assert(helpers.request(moxy.port, { path = "/status/404?rh=Server:nginx" }))
      assert.equal(404, res.status)
      assert.equal("nosniff", res:header("x-content-type-options"))
      assert.is_nil(res:header("server"))
    end)
  end)

  describe("with a CONFIG of each kind", function()
    local moxy

    lazy_setup(function()
      local script = with_config([[{
        request = {
          remove = { "Cookie" },
          set = { ["X-Tier"] = "edge" },
          add = { ["X-Forwarded-For"] = "10.9.9.9" },
          default = { ["X-Tenant"] = "public" },
        },
        response = {
          remove = { "Server" },
          set = { ["Server"] = "moxy" },
          add = { ["Link"] = { "</a.css>; rel=preload", "</b.js>; rel=preload" } },
        },
      }]])
      moxy = helpers.start_moxy({
        upstreams = { app = { servers = { origin.addr } } },
        scripts = { "headers.lua" },
      }, { files = { ["headers.lua"] = script } })
    end)

    it("changes what the origin receives", function()
      local doc = helpers.echo(helpers.request(moxy.port, {
        path = "/echo",
        headers = { { "Cookie", "sid=secret" }, { "X-Tier", "client-said" } },
      }))
      assert.is_nil(helpers.echo_value(doc, "Cookie"))
      assert.same({ "edge" }, helpers.echo_values(doc, "X-Tier"))
      -- add keeps moxy's own X-Forwarded-For value and appends
      assert.same({ "127.0.0.1", "10.9.9.9" }, helpers.echo_values(doc, "X-Forwarded-For"))
      assert.equal("public", helpers.echo_value(doc, "X-Tenant"))
    end)

    it("sets a default request header only when the client sent none", function()
      local doc = helpers.echo(helpers.request(moxy.port, { path = "/echo", headers = { { "X-Tenant", "acme" } } }))
      assert.same({ "acme" }, helpers.echo_values(doc, "X-Tenant"))
    end)

    it("replaces, adds and keeps response headers", function()
      local res = assert(helpers.request(moxy.port, { path = "/echo?rh=Server:apache&rh=Link:</o.css>;%20rel=preload" }))
      assert.equal(200, res.status)
      assert.same({ "moxy" }, res.headers["server"])
      assert.same({ "</o.css>; rel=preload", "</a.css>; rel=preload", "</b.js>; rel=preload" }, res.headers["link"])
    end)
  end)

  it("refuses a CONFIG with a value that is not a string (moxy -t)", function()
    local code, out = helpers.run_moxy_check([[
      return { listen = { "127.0.0.1:1" }, upstreams = { app = { servers = { "127.0.0.1:1" } } }, scripts = { "headers.lua" } }
    ]], { files = { ["headers.lua"] = with_config([[{ response = { set = { ["X-Frame-Options"] = true } } }]]) } })
    assert.equal(1, code, out)
    assert.matches("CONFIG.response.set%[\"X%-Frame%-Options\"%] must be a string", out)
  end)
end)
