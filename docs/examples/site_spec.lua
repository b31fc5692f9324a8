-- site_spec.lua: tests of site.lua with moxy.test, no server started.
--
--   moxy test docs/examples/site_spec.lua
local t = require "moxy.test"

-- site.lua lies next to this spec (a project would say "scripts/site.lua",
-- relative to where `moxy test` runs)
local SITE = (debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "site.lua"

-- fake origins, one per pool of the configuration
local function origins()
  return {
    app = t.upstream(function(req)
      return 200, "<h1>home</h1>", { ["Content-Type"] = "text/html", Server = "nginx/1.25" }
    end),
    api = t.upstream(function(req)
      return 200, '{"path":"' .. req.path .. '"}', { ["Content-Type"] = "application/json" }
    end),
  }
end

describe("site.lua", function()
  it("answers health checks itself", function()
    local up = origins()
    local txn = t.run(SITE, t.txn{ path = "/healthz" }, { upstreams = up, default_upstream = "app" })
    assert.equal(200, txn.resp.status)
    assert.equal("ok\n", txn.resp.body)
    assert.equal(0, up.app.calls)
    assert.is_nil(txn.upstream.request)
  end)

  it("sends /api/ to the api pool without the prefix and the cookies", function()
    local txn = t.run(SITE, t.txn{ path = "/api/users?page=2", headers = { Cookie = "sid=1" } },
      { upstreams = origins(), default_upstream = "app" })
    assert.equal("api", txn.upstream.pool)
    local req = txn.upstream.request
    assert.equal("/users?page=2", req.uri)
    assert.is_nil(req.headers:get("Cookie"))
    assert.equal('{"path":"/users"}', txn.resp.body)
    assert.equal("no-store", txn.resp.headers:get("Cache-Control"))
  end)

  it("sends other paths to the default pool and hides the origin's Server", function()
    local txn = t.run(SITE, t.txn{ path = "/" }, { upstreams = origins(), default_upstream = "app" })
    assert.equal("app", txn.upstream.pool)
    assert.equal("<h1>home</h1>", txn.resp.body)
    assert.is_nil(txn.resp.headers:get("Server"))
    assert.is_nil(txn.resp.headers:get("Cache-Control"))
  end)

  it("keeps /admin/ behind the token, and logs the refusal", function()
    local opts = { upstreams = origins(), default_upstream = "app" }
    local txn = t.run(SITE, t.txn{ path = "/admin/users", client_ip = "203.0.113.9" }, opts)
    assert.equal(401, txn.resp.status)
    assert.equal("Bearer", txn.resp.headers:get("WWW-Authenticate"))
    assert.same({ level = "warn", message = "admin: no token from 203.0.113.9" }, txn.logs[1])
    txn = t.run(SITE, t.txn{ path = "/admin/users", headers = { Authorization = "Bearer s3cret" } }, opts)
    assert.equal(200, txn.resp.status)
  end)

  it("answers JSON when the api cannot be reached", function()
    local txn = t.run(SITE, t.txn{ path = "/api/users" }, {
      upstreams = { app = origins().app, api = t.upstream(function() return nil, "connection refused" end) },
      default_upstream = "app",
    })
    assert.equal(503, txn.resp.status)
    assert.equal("application/json", txn.resp.headers:get("Content-Type"))
    assert.equal('{"error":"api unavailable"}\n', txn.resp.body)
  end)
end)
