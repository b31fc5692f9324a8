-- scripts/cache_rules.lua: static assets for a day, /api/ only when the
-- origin says so, tracking parameters out of the key, logged-in users
-- bypass -- against a real moxy with a cache and a real origin.
local helpers = require "spec.helpers"

local PATH = helpers.root .. "/scripts/cache_rules.lua"

local function http_date(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", t) end
local function enc(s) return (s:gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end)) end

describe("scripts/cache_rules.lua", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "4m" },
      scripts = { "cache_rules.lua" },
    }, { files = { ["cache_rules.lua"] = helpers.read_file(PATH) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(p, headers)
    return assert(helpers.request(moxy.port, { path = p, headers = headers }))
  end

  local function saw(p) return #origin:saw("^" .. p:gsub("%p", "%%%0") .. "$") end

  it("stores static assets for a day whatever the origin says, when they answer 200", function()
    local p = "/echo/assets/app.css"
    get(p)
    local res = get(p)
    assert.equal(200, res.status)
    assert.matches("^moxy; hit; ttl=8639%d$", res:header("cache-status"))
    assert.equal(1, saw(p))
    -- by extension, anywhere
    get("/echo/img/logo.PNG")
    assert.matches("hit", get("/echo/img/logo.PNG"):header("cache-status"))
    -- not a 404
    p = "/echo/missing.js?status=404"
    get(p)
    get(p)
    assert.equal(2, saw(p))
    -- not a page
    p = "/echo/index.html"
    get(p)
    get(p)
    assert.equal(2, saw(p))
  end)

  it("stores nothing under /api/ unless the origin says it may", function()
    local lm = "rh=" .. enc("Last-Modified:" .. http_date(os.time() - 10 * 86400))
    local p = "/api/items?" .. lm -- heuristically cacheable for RFC 9111, not for this script
    get(p)
    get(p)
    assert.equal(2, saw(p))
    p = "/api/config?rh=" .. enc("Cache-Control:max-age=60")
    get(p)
    assert.matches("hit", get(p):header("cache-status"))
    assert.equal(1, saw(p))
  end)

  it("keeps tracking parameters out of the key", function()
    local first = "/echo/t/app.js?utm_source=news&v=2&utm_medium=mail"
    get(first)
    local res = get("/echo/t/app.js?v=2&fbclid=xyz")
    assert.matches("hit", res:header("cache-status"))
    assert.equal(1, saw(first))
    assert.matches("miss", get("/echo/t/app.js?v=3&gclid=1"):header("cache-status"))
  end)

  it("lets logged-in users bypass the cache, and only them", function()
    local p = "/echo/u/site.css"
    get(p)
    local res = get(p, { Cookie = "theme=dark; session=abc" })
    assert.equal("moxy; fwd=bypass", res:header("cache-status"))
    assert.equal(2, saw(p))
    assert.matches("hit", get(p, { Cookie = "sessionid=1; mysession=2" }):header("cache-status"))
    assert.equal(2, saw(p))
  end)
end)
