-- scripts/cors.lua: preflights answered at the edge, Access-Control-Allow-Origin
-- on the origin's responses for allowed origins only.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/cors.lua"
local APP = "https://app.example.com"
local EVIL = "https://evil.example.net"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

describe("scripts/cors.lua", function()
  local origin

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  local function start(config)
    return helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "cors.lua" },
      -- the script's Vary alone: no Vary: Accept-Encoding of moxy's compression
      compression = false,
    }, { files = { ["cors.lua"] = with_config(config) } })
  end

  local function preflight(moxy, from, extra)
    local headers = { { "Origin", from }, { "Access-Control-Request-Method", "POST" } }
    for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
    return assert(helpers.request(moxy.port, { method = "OPTIONS", path = "/echo/api", headers = headers }))
  end

  describe("with a list of origins and credentials", function()
    local moxy

    lazy_setup(function()
      moxy = start([[{
        origins = { "https://app.example.com", "http://localhost:3000" },
        methods = { "GET", "POST" },
        headers = { "Content-Type", "X-Token" },
        expose_headers = { "X-Request-Id" },
        max_age = 300,
        credentials = true,
      }]])
    end)

    it("answers a preflight from an allowed origin with 204, without the origin", function()
      origin:reset_stats()
      local res = preflight(moxy, APP, { { "Access-Control-Request-Headers", "content-type" } })
      assert.equal(204, res.status)
      assert.equal(APP, res:header("access-control-allow-origin"))
      assert.equal("GET, POST", res:header("access-control-allow-methods"))
      assert.equal("Content-Type, X-Token", res:header("access-control-allow-headers"))
      assert.equal("300", res:header("access-control-max-age"))
      assert.equal("true", res:header("access-control-allow-credentials"))
      assert.equal("Origin", res:header("vary"))
      assert.equal("", res.body)
      assert.equal(0, origin:stats().requests)
    end)

    it("refuses a preflight from another origin with 403 and no CORS headers", function()
      local res = preflight(moxy, EVIL)
      assert.equal(403, res.status)
      assert.is_nil(res:header("access-control-allow-origin"))
      assert.is_nil(res:header("access-control-allow-methods"))
    end)

    it("passes an OPTIONS that is not a preflight to the origin", function()
      local res = assert(helpers.request(moxy.port, { method = "OPTIONS", path = "/echo", headers = { { "Origin", APP } } }))
      assert.equal("OPTIONS", helpers.echo(res).method)
      assert.equal(APP, res:header("access-control-allow-origin"))
    end)

    it("adds the CORS headers to an allowed origin's response", function()
      local res = assert(helpers.request(moxy.port, { path = "/echo", headers = { { "Origin", "http://localhost:3000" } } }))
      local doc = helpers.echo(res)
      assert.equal("http://localhost:3000", helpers.echo_value(doc, "Origin")) -- the origin sees it too
      assert.equal("http://localhost:3000", res:header("access-control-allow-origin"))
      assert.equal("true", res:header("access-control-allow-credentials"))
      assert.equal("X-Request-Id", res:header("access-control-expose-headers"))
      assert.equal("Origin", res:header("vary"))
    end)

    it("replaces the origin's CORS header and extends its Vary", function()
      local res = assert(helpers.request(moxy.port, {
        path = "/echo?rh=Access-Control-Allow-Origin:*&rh=Vary:Accept-Encoding",
        headers = { { "Origin", APP } },
      }))
      assert.same({ APP }, res.headers["access-control-allow-origin"])
      assert.equal("Accept-Encoding, Origin", res:header("vary"))
      res = assert(helpers.request(moxy.port, { path = "/echo?rh=Vary:origin", headers = { { "Origin", APP } } }))
      assert.equal("origin", res:header("vary"))
      res = assert(helpers.request(moxy.port, { path = "/echo?rh=Vary:Accept&rh=Vary:Cookie", headers = { { "Origin", APP } } }))
      assert.same({ "Accept, Cookie, Origin" }, res.headers["vary"])
    end)

    it("adds no CORS headers for another origin or without Origin, but Vary: Origin", function()
      for _, headers in ipairs({ { { "Origin", EVIL } }, {} }) do
        local res = assert(helpers.request(moxy.port, { path = "/echo", headers = headers }))
        assert.equal(200, res.status)
        assert.is_nil(res:header("access-control-allow-origin"))
        assert.is_nil(res:header("access-control-allow-credentials"))
        assert.equal("Origin", res:header("vary"))
      end
    end)
  end)

  describe("with origins = \"*\"", function()
    it("answers * without credentials, and echoes the requested headers", function()
      local moxy = start([[{ origins = "*", methods = { "GET", "PUT" }, headers = "*", max_age = nil, credentials = false }]])
      local res = preflight(moxy, EVIL, { { "Access-Control-Request-Headers", "x-foo, content-type" } })
      assert.equal(204, res.status)
      assert.equal("*", res:header("access-control-allow-origin"))
      assert.equal("GET, PUT", res:header("access-control-allow-methods"))
      assert.equal("x-foo, content-type", res:header("access-control-allow-headers"))
      assert.is_nil(res:header("access-control-max-age"))
      assert.is_nil(res:header("access-control-allow-credentials"))
      res = assert(helpers.request(moxy.port, { path = "/echo", headers = { { "Origin", EVIL } } }))
      assert.equal("*", res:header("access-control-allow-origin"))
      assert.is_nil(res:header("vary"))
    end)

    it("echoes the Origin instead of * with credentials", function()
      local moxy = start([[{ origins = "*", methods = { "GET" }, headers = {}, credentials = true }]])
      local res = preflight(moxy, EVIL)
      assert.equal(204, res.status)
      assert.equal(EVIL, res:header("access-control-allow-origin"))
      assert.equal("true", res:header("access-control-allow-credentials"))
      assert.is_nil(res:header("access-control-allow-headers"))
      res = assert(helpers.request(moxy.port, { path = "/echo", headers = { { "Origin", EVIL } } }))
      assert.equal(EVIL, res:header("access-control-allow-origin"))
      assert.equal("Origin", res:header("vary"))
    end)
  end)

  it("ships a CONFIG that works", function()
    local moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { PATH },
    })
    local res = preflight(moxy, APP)
    assert.equal(204, res.status)
    assert.equal(APP, res:header("access-control-allow-origin"))
    assert.equal("600", res:header("access-control-max-age"))
  end)
end)
