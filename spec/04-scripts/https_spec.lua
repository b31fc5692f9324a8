-- scripts/https.lua: plain HTTP redirected to HTTPS, HSTS on HTTPS responses.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/https.lua"
local S = helpers.scale

describe("scripts/https.lua", function()
  local dir, origin, m, plain, tls

  lazy_setup(function()
    dir = helpers.tmpdir("https")
    helpers.make_cert(dir, "s", "ec", "site.test", { "site.test" })
    origin = helpers.start_origin()
    plain, tls = helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { "127.0.0.1:" .. plain,
                 { addr = "127.0.0.1:" .. tls,
                   tls = { certificates = { { cert = dir .. "/s.pem", key = dir .. "/s.key" } } } } },
      scripts = { "https.lua" },
    }, { files = { ["https.lua"] = helpers.script_with_config(PATH, [[{
      redirect = true, status = 308, https_port = ]] .. tls .. [[,
      except = { "/echo/acme/" },
      hsts = { max_age = 600, include_subdomains = true },
    }]]) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function https_get(path)
    local out = helpers.sh(string.format("timeout %d curl -sS -D - -o /dev/null --cacert %s/s.pem "
      .. "--resolve site.test:%d:127.0.0.1 https://site.test:%d%s", math.ceil(10 * S), dir, tls, tls, path))
    return out
  end

  it("redirects plain HTTP to the same host and target over HTTPS, keeping the method (308)", function()
    local res = assert(helpers.request(plain, { path = "/a/b?x=1&y=2", headers = { Host = "site.test:" .. plain } }))
    assert.equal(308, res.status)
    assert.equal("https://site.test:" .. tls .. "/a/b?x=1&y=2", res:header("location"))
    res = assert(helpers.request(plain, { method = "POST", path = "/form", body = "a=1",
                                          headers = { Host = "site.test" } }))
    assert.equal(308, res.status)
    assert.equal("https://site.test:" .. tls .. "/form", res:header("location"))
    assert.same({}, origin:saw("^/a/b"))
  end)

  it("follows through: the redirect leads to the page over HTTPS, with HSTS", function()
    local out = helpers.sh(string.format("timeout %d curl -sS -L -D - -o /dev/null --cacert %s/s.pem "
      .. "--resolve site.test:%d:127.0.0.1 --resolve site.test:%d:127.0.0.1 http://site.test:%d/echo/page",
      math.ceil(10 * S), dir, plain, tls, plain))
    assert.matches("HTTP/1.1 308", out, 1, true)
    assert.matches("HTTP/1.1 200", out, 1, true)
    assert.matches("[Ss]trict%-[Tt]ransport%-[Ss]ecurity: max%-age=600; includeSubDomains", out)
  end)

  it("serves the excepted paths over plain HTTP as they are, without HSTS", function()
    local res = assert(helpers.request(plain, { path = "/echo/acme/token", headers = { Host = "site.test" } }))
    assert.equal(200, res.status)
    assert.is_nil(res:header("strict-transport-security"))
  end)

  it("keeps an origin's own Strict-Transport-Security", function()
    local out = https_get("/echo/x?rh=Strict-Transport-Security:max-age%3D5")
    assert.matches("[Ss]trict%-[Tt]ransport%-[Ss]ecurity: max%-age=5\r\n", out)
    assert.is_nil(out:find("max-age=600", 1, true))
  end)

  it("answers 400 to a plain-HTTP request without a Host", function()
    local text = helpers.raw(plain, "GET /x HTTP/1.0\r\n\r\n", { timeout = 3 * S })
    assert.matches("^HTTP/1.%d 400", text)
  end)
end)
