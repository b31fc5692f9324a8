-- The HTTP cache (RFC 9111) against a real origin whose response headers
-- the spec chooses (origin.py's ?rh=Name:Value), counting what reaches the
-- origin: a fresh hit must not.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local q, path = helpers.query_escape, helpers.origin_path

local function http_date(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", t) end

describe("HTTP cache", function()
  local origin, m, admin_port
  local n = 0

  lazy_setup(function()
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { origin.addr } } },
      -- sendfile: large bodies go from their memfd even to this loopback client
      cache = { size = "8m", max_object = "256k", sendfile = true },
      admin = {},
      scripts = { "hooks.lua" },
    }, { files = { ["hooks.lua"] = [[
return {
  on_request = function(txn)
    local tag = txn.req.headers:get("X-Tag")
    if tag then txn.ctx.tag = tag end
  end,
  on_upstream_request = function(txn)
    if txn.cache.status == "background" then
      txn.req.headers:set("X-Refresh", "refresh " .. tostring(txn.ctx.tag))
    end
  end,
  on_response = function(txn)
    txn.resp.headers:set("X-Hook", "ran")
    if txn.cache.status == "background" and txn.ctx.tag == "no-store" then txn.cache:no_store() end
  end,
}
]] } })
    admin_port = m.admin_port
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- a path no other case uses
  local function fresh(base, headers)
    n = n + 1
    local hs = { "X-Case:" .. n }
    for _, h in ipairs(headers or {}) do hs[#hs + 1] = h end
    return path(base or "/bytes/100", hs)
  end

  local function get(p, headers, method)
    return assert(helpers.request(m.port, { path = p, headers = headers, method = method }))
  end

  local function origin_saw(p)
    local pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$"
    return #origin:saw(pat)
  end

  local function status()
    return assert(cjson.decode(assert(helpers.request(admin_port, { path = "/status" })).body))
  end

  it("answers a fresh response from the cache: one origin request for many, Age and Cache-Status", function()
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    local first = get(p)
    assert.equal(200, first.status)
    assert.equal(100, #first.body)
    assert.matches("^moxy; fwd=uri%-miss; stored; ttl=%d+$", first:header("cache-status"))
    for _ = 1, 5 do
      local res = get(p)
      assert.equal(200, res.status)
      assert.equal(first.body, res.body)
      assert.matches("^moxy; hit; ttl=%d+$", res:header("cache-status"))
      assert.equal("ran", res:header("x-hook")) -- on_response runs on hits too
      assert.truthy(tonumber(res:header("age")))
    end
    assert.equal(1, origin_saw(p))
    helpers.sleep(1.1)
    local res = get(p)
    assert.is_true(tonumber(res:header("age")) >= 1, res:header("age"))
    local ttl = tonumber(res:header("cache-status"):match("ttl=(%-?%d+)"))
    assert.is_true(ttl <= 59 and ttl >= 55, tostring(ttl))
  end)

  it("expires: after max-age the next request goes to the origin and is stored again", function()
    local p = fresh(nil, { "Cache-Control:max-age=2" })
    get(p)
    assert.matches("hit", get(p):header("cache-status"))
    helpers.sleep(2.2)
    local res = get(p)
    assert.matches("^moxy; fwd=stale; stored", res:header("cache-status"))
    assert.equal(2, origin_saw(p))
  end)

  it("takes s-maxage over max-age, and Expires without max-age", function()
    local p = fresh(nil, { "Cache-Control:max-age=0, s-maxage=60" })
    get(p)
    get(p)
    assert.equal(1, origin_saw(p))
    p = fresh(nil, { "Expires:" .. http_date(os.time() + 60) })
    get(p)
    get(p)
    assert.equal(1, origin_saw(p))
    p = fresh(nil, { "Expires:" .. http_date(os.time() - 60) })
    get(p)
    get(p)
    assert.equal(2, origin_saw(p))
    p = fresh(nil, { "Expires:not a date" })
    get(p)
    get(p)
    assert.equal(2, origin_saw(p))
  end)

  it("uses heuristic freshness only with Last-Modified; stores nothing without freshness or validators", function()
    local p = fresh(nil, { "Last-Modified:" .. http_date(os.time() - 10 * 86400) })
    get(p)
    local res = get(p)
    assert.matches("hit", res:header("cache-status"))
    -- 10% of 10 days
    local ttl = tonumber(res:header("cache-status"):match("ttl=(%d+)"))
    assert.is_true(math.abs(ttl - 86400) < 120, tostring(ttl))
    assert.equal(1, origin_saw(p))
    p = fresh()
    get(p)
    res = get(p)
    assert.equal("moxy; fwd=uri-miss", res:header("cache-status"))
    assert.equal(2, origin_saw(p))
  end)

  it("does not store no-store, private, no-cache, Set-Cookie or 206; nor a response to a request with no-store", function()
    for _, h in ipairs { "Cache-Control:no-store, max-age=60", "Cache-Control:private, max-age=60",
                         "Cache-Control:no-cache, max-age=60", "Set-Cookie:a=b" } do
      local p = fresh(nil, { h, h:find("Set%-Cookie") and "Cache-Control:max-age=60" or nil })
      get(p)
      get(p)
      assert.equal(2, origin_saw(p), h)
    end
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    get(p, { ["Cache-Control"] = "no-store" })
    get(p)
    assert.equal(2, origin_saw(p))
  end)

  it("stores a response to a request with Authorization only when the response allows it", function()
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    get(p, { Authorization = "Bearer x" })
    get(p, { Authorization = "Bearer x" })
    assert.equal(2, origin_saw(p))
    p = fresh(nil, { "Cache-Control:public, max-age=60" })
    get(p, { Authorization = "Bearer x" })
    get(p, { Authorization = "Bearer x" })
    assert.equal(1, origin_saw(p))
  end)

  it("keeps variants by Vary, and never stores Vary: *", function()
    local p = fresh("/echo", { "Cache-Control:max-age=60", "Vary:Accept-Language" })
    local en = get(p, { ["Accept-Language"] = "en" })
    local fr = get(p, { ["Accept-Language"] = "fr" })
    assert.equal(2, origin_saw(p))
    local en2 = get(p, { ["Accept-Language"] = " en " })
    assert.matches("hit", en2:header("cache-status"))
    assert.equal(en.body, en2.body)
    local fr2 = get(p, { ["Accept-Language"] = "fr" })
    assert.equal(fr.body, fr2.body)
    assert.equal("moxy; fwd=vary-miss; stored; ttl=59", (get(p, { ["Accept-Language"] = "de" }):header("cache-status"):gsub("ttl=%d+", "ttl=59")))
    assert.equal(3, origin_saw(p))
    p = fresh(nil, { "Cache-Control:max-age=60", "Vary:*" })
    get(p)
    get(p)
    assert.equal(2, origin_saw(p))
  end)

  it("answers HEAD from a cached GET, and 304 to the client's own conditions", function()
    local p = fresh(nil, { "Cache-Control:max-age=60", 'ETag:"v1"', "Last-Modified:" .. http_date(os.time() - 3600) })
    get(p)
    local h = get(p, nil, "HEAD")
    assert.equal(200, h.status)
    assert.equal("100", h:header("content-length"))
    assert.equal("", h.body)
    local nm = get(p, { ["If-None-Match"] = 'W/"v1", "other"' })
    assert.equal(304, nm.status)
    assert.equal('"v1"', nm:header("etag"))
    assert.is_nil(nm:header("content-type"))
    assert.equal(200, get(p, { ["If-None-Match"] = '"v2"' }).status)
    assert.equal(304, get(p, { ["If-Modified-Since"] = http_date(os.time()) }).status)
    assert.equal(200, get(p, { ["If-Modified-Since"] = http_date(os.time() - 7200) }).status)
    assert.equal(1, origin_saw(p))
  end)

  it("answers a single byte range from a stored object (206, 416), the whole body for several", function()
    local p = fresh("/bytes/200000", { "Cache-Control:max-age=60", 'ETag:"r1"' })
    assert.equal(200000, #get(p).body)
    local function range(spec, extra)
      local h = { Range = spec }
      for k, v in pairs(extra or {}) do h[k] = v end
      return get(p, h)
    end
    -- across the object's segments (4k, 16k, 64k, 256k)
    local res = range("bytes=4000-90000")
    assert.equal(206, res.status)
    assert.equal("bytes 4000-90000/200000", res:header("content-range"))
    assert.equal(86001, #res.body)
    assert.is_true(helpers.pattern_ok(4000, res.body))
    res = range("bytes=199990-")
    assert.equal("bytes 199990-199999/200000", res:header("content-range"))
    assert.is_true(helpers.pattern_ok(199990, res.body))
    res = range("bytes=-5")
    assert.equal(5, #res.body)
    assert.is_true(helpers.pattern_ok(199995, res.body))
    res = range("bytes=0-999999")
    assert.equal("bytes 0-199999/200000", res:header("content-range"))
    res = range("bytes=200000-")
    assert.equal(416, res.status)
    assert.equal("bytes */200000", res:header("content-range"))
    assert.equal(200, range("bytes=0-1,5-9").status) -- several: the whole body
    assert.equal(200000, #range("bytes=0-1,5-9").body)
    assert.equal(206, range("bytes=0-9", { ["If-Range"] = '"r1"' }).status)
    assert.equal(200, range("bytes=0-9", { ["If-Range"] = '"other"' }).status)
    assert.equal(1, origin_saw(p))
  end)

  it("fills the cache on a range miss: the whole object is fetched and stored, the range served as it comes", function()
    local function header(e, name)
      for _, h in ipairs(e.headers) do if h[1]:lower() == name then return h[2] end end
    end
    local function seen(p) return origin:saw("^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$") end
    local p = fresh("/bytes/200000", { "Cache-Control:max-age=60", 'ETag:"f1"' })
    local res = get(p, { Range = "bytes=100000-100099" })
    assert.equal(206, res.status)
    assert.equal("bytes 100000-100099/200000", res:header("content-range"))
    assert.equal(100, #res.body)
    assert.is_true(helpers.pattern_ok(100000, res.body))
    assert.equal(1, #seen(p))
    assert.is_nil(header(seen(p)[1], "range")) -- the origin was asked for all of it
    res = get(p)
    assert.matches("^moxy; hit", res:header("cache-status"))
    assert.equal(200000, #res.body)
    assert.equal(1, #seen(p))
    -- the first bytes of a slow body: answered when they are in, not at its end
    p = fresh("/slow-body/1.5", { "Cache-Control:max-age=60" })
    local t0 = helpers.now()
    res = get(p, { Range = "bytes=0-4" })
    assert.equal(206, res.status)
    assert.equal("bytes 0-4/10", res:header("content-range"))
    assert.is_true(helpers.now() - t0 < 1, ("the range took %.2f s"):format(helpers.now() - t0))
    helpers.wait_until(function() return get(p):header("cache-status"):match("^moxy; hit") end, 5)
    assert.equal(1, #seen(p))
    -- not storable: the fetch stops at its head, and the range goes to the
    -- origin as the client sent it (then for a while without the detour)
    p = fresh("/bytes/200000", { "Cache-Control:no-store" })
    res = get(p, { Range = "bytes=0-9" })
    assert.equal(200, res.status) -- origin.py ignores Range
    assert.equal(2, #seen(p))
    assert.is_nil(header(seen(p)[1], "range"))
    assert.equal("bytes=0-9", header(seen(p)[2], "range"))
    get(p, { Range = "bytes=0-9" })
    assert.equal(3, #seen(p))
    assert.equal("bytes=0-9", header(seen(p)[3], "range"))
  end)

  it("parses what decides storing strictly: HTTP-dates, Age, Vary lists, Connection-named fields", function()
    local function stored(headers)
      local p = fresh(nil, headers)
      get(p)
      return get(p):header("cache-status"):match("^moxy; hit") ~= nil, p
    end
    -- Expires: the three forms of HTTP-date; anything else (or two of them) is in the past
    assert.is_true(stored({ "Expires:Thu, 18 Aug 2050 02:01:18 GMT" }))
    assert.is_true(stored({ "Expires:Thursday, 18-Aug-50 02:01:18 GMT" }))
    assert.is_true(stored({ "Expires:Thu Aug  8 02:01:18 2050" }))
    assert.is_true(stored({ "Expires:THU, 18 AUG 2050 02:01:18 gmt" }))
    for _, bad in ipairs({ "Thu, 18 Aug 2050 2:01:18 GMT", "Thu, 18  Aug  2050 02:01:18 GMT",
                           "Thu, 18 Aug 2050 02:01:18 UTC", "Thu, 18-Aug-2050 02:01:18 GMT",
                           "Thu 18 Aug 2050 02:01:18 GMT", "Thu, 18 Aug 50 02:01:18 GMT" }) do
      assert.is_false(stored({ "Expires:" .. bad }), bad)
    end
    assert.is_false(stored({ "Expires:Thu, 18 Aug 2050 02:01:18 GMT", "Expires:Thu, 18 Aug 2050 02:01:19 GMT" }))
    -- Age: the first member of a list counts; a malformed one is no Age
    assert.is_false(stored({ "Cache-Control:max-age=3600", "Age:7200, 0" }))
    assert.is_true(stored({ "Cache-Control:max-age=3600", "Age:0, 7200" }))
    assert.is_true(stored({ "Cache-Control:max-age=3600", "Age:7200.0" }))
    -- Vary: a "*" anywhere in the list
    assert.is_false(stored({ "Cache-Control:max-age=60", "Vary:Accept, *" }))
    assert.is_false(stored({ "Cache-Control:max-age=60", "Vary:*", "Vary:*" }))
    -- fields a Connection header names are hop-by-hop: not forwarded, not stored
    local ok, p = stored({ "Cache-Control:max-age=60", "Connection:x-a", "X-A:1", "X-B:2" })
    assert.is_true(ok)
    local hit = get(p)
    assert.is_nil(hit:header("x-a"))
    assert.equal("2", hit:header("x-b"))
  end)

  it("matches Vary'd lists without the whitespace around commas, languages in any case; honours must-understand", function()
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:Accept-Language, X-List" })
    get(p, { ["Accept-Language"] = "en-GB, fr;q=0.5", ["X-List"] = "a, b" })
    local res = get(p, { ["Accept-Language"] = "EN-gb,fr;q=0.5", ["X-List"] = "a ,b" })
    assert.matches("^moxy; hit", res:header("cache-status"))
    res = get(p, { ["Accept-Language"] = "fr;q=0.5, en-GB", ["X-List"] = "a, b" }) -- order counts
    assert.matches("^moxy; fwd=vary%-miss; stored", res:header("cache-status"))
    -- must-understand: no-store yields for a status moxy knows how to cache, not for another
    p = fresh(nil, { "Cache-Control:max-age=60, no-store, must-understand" })
    get(p)
    assert.matches("^moxy; hit", get(p):header("cache-status"))
    p = fresh("/status/299", { "Cache-Control:max-age=60, must-understand" })
    get(p)
    assert.equal("moxy; fwd=uri-miss", get(p):header("cache-status"))
  end)

  it("honours CDN-Cache-Control (RFC 9213) over Cache-Control, when it is a valid dictionary", function()
    local function stored(headers)
      local p = fresh(nil, headers)
      get(p)
      return get(p):header("cache-status"):match("^moxy; hit") ~= nil
    end
    assert.is_true(stored({ "Cache-Control:no-store", "CDN-Cache-Control:max-age=60" }))
    assert.is_false(stored({ "Cache-Control:max-age=60", "CDN-Cache-Control:private" }))
    assert.is_false(stored({ "Cache-Control:max-age=60", "CDN-Cache-Control:no-store" }))
    assert.is_false(stored({ "Cache-Control:max-age=3600", "CDN-Cache-Control:max-age=0" }))
    assert.is_true(stored({ "CDN-Cache-Control:foo, max-age=60" }))
    -- not a dictionary, or max-age of the wrong type: Cache-Control decides
    assert.is_false(stored({ "Cache-Control:no-store", "CDN-Cache-Control:max-age=60, &&&" }))
    assert.is_false(stored({ "Cache-Control:no-store", 'CDN-Cache-Control:max-age="60"' }))
    assert.is_true(stored({ "Cache-Control:max-age=60", "CDN-Cache-Control:MAX-AGE=0" }))
    -- the field itself goes on to the client
    local p = fresh(nil, { "CDN-Cache-Control:max-age=60" })
    assert.equal("max-age=60", get(p):header("cdn-cache-control"))
  end)

  it("invalidates on a method whose safety it does not know (M-SEARCH), not on OPTIONS", function()
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    get(p)
    assert.matches("^moxy; hit", get(p):header("cache-status"))
    assert.equal(200, get(p, nil, "OPTIONS").status)
    assert.matches("^moxy; hit", get(p):header("cache-status"))
    assert.equal(200, get(p, nil, "M-SEARCH").status)
    assert.matches("^moxy; fwd=uri%-miss", get(p):header("cache-status"))
  end)

  it("revalidates a stale object with its validators: a 304 refreshes it and the client gets the stored body", function()
    local p = fresh(nil, { "Cache-Control:max-age=2", 'ETag:"e1"' }) .. "&match304=" .. q('"e1"')
    local first = get(p)
    helpers.sleep(2.2)
    local res = get(p)
    assert.equal(200, res.status)
    assert.equal(first.body, res.body)
    assert.matches("^moxy; fwd=stale; fwd%-status=304; stored; ttl=%-?%d+$", res:header("cache-status"))
    assert.equal(2, origin_saw(p))
    assert.equal("ran", res:header("x-hook"))
    -- fresh again for max-age
    assert.matches("^moxy; hit", get(p):header("cache-status"))
    assert.equal(2, origin_saw(p))
    -- a client's own condition is not replaced by the cache's
    helpers.sleep(2.2)
    local own = get(p, { ["If-None-Match"] = '"e1"' })
    assert.equal(304, own.status)
    assert.equal(3, origin_saw(p))
  end)

  it("stores a no-cache response with a validator and revalidates it on every use", function()
    local p = fresh(nil, { "Cache-Control:no-cache", 'ETag:"nc"' }) .. "&match304=" .. q('"nc"')
    get(p)
    for i = 1, 3 do
      local res = get(p)
      assert.equal(100, #res.body)
      assert.matches("fwd%-status=304", res:header("cache-status"))
      assert.equal(1 + i, origin_saw(p))
    end
    -- without a validator it is not stored
    p = fresh(nil, { "Cache-Control:no-cache" })
    get(p)
    assert.equal("moxy; fwd=uri-miss", get(p):header("cache-status"))
  end)

  it("serves the stale object at once and refreshes it in the background, once (stale-while-revalidate)", function()
    -- max-age 2: a refreshed answer is 0.6 s old when it comes (the origin's delay counts in its
    -- age, RFC 9111 4.2.3), so 1 s left it fresh for 0.4 s, too little under ASan
    local p = fresh(nil, { "Cache-Control:max-age=2, stale-while-revalidate=30", 'ETag:"w1"' })
      .. "&match304=" .. q('"w1"') .. "&delay=0.6"
    get(p)
    helpers.sleep(2.2)
    -- stale: answered at once, though the origin takes 0.6 s
    local t0 = helpers.now()
    local first = get(p, { ["X-Tag"] = "from-client" })
    assert.is_true(helpers.now() - t0 < 0.3, ("the stale answer took %.2f s"):format(helpers.now() - t0))
    assert.equal(200, first.status)
    assert.equal(100, #first.body)
    assert.matches("^moxy; hit; ttl=%-%d+$", first:header("cache-status"))
    assert.equal("ran", first:header("x-hook"))
    -- while the refresh is at the origin, others get it stale too, and start no other
    t0 = helpers.now()
    for _ = 1, 5 do assert.matches("^moxy; hit; ttl=%-%d+$", get(p):header("cache-status")) end
    assert.is_true(helpers.now() - t0 < 0.4)
    assert.equal(2, origin_saw(p))
    -- the refresh: conditional, with the request's headers as its hooks left
    -- them, its hooks seeing txn.cache.status "background" and the client
    -- request's txn.ctx
    helpers.wait_until(function()
      return get(p):header("cache-status"):match("^moxy; hit; ttl=%d+$")
    end, 3)
    local seen = origin:saw("^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$")
    assert.equal(2, #seen)
    local function header(e, name)
      for _, h in ipairs(e.headers) do if h[1]:lower() == name then return h[2] end end
    end
    assert.equal('"w1"', header(seen[2], "if-none-match"))
    assert.equal("from-client", header(seen[2], "x-tag"))
    assert.equal("refresh from-client", header(seen[2], "x-refresh"))
    assert.is_nil(header(seen[1], "x-refresh"))
    -- a response the client conditioned is not what the refresh asks: the
    -- client's validators and Range stay with the client
    helpers.sleep(2.2)
    local own = get(p, { ["If-None-Match"] = '"other"', Range = "bytes=0-9" })
    assert.equal(206, own.status)
    helpers.wait_until(function() return origin_saw(p) == 3 end, 3)
    seen = origin:saw("^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$")
    assert.equal('"w1"', header(seen[3], "if-none-match"))
    assert.is_nil(header(seen[3], "range"))
    -- a refresh answered with something not to store drops the stale object
    -- (here its on_response says no_store); an origin that fails would not
    helpers.wait_until(function() return get(p):header("cache-status"):match("^moxy; hit; ttl=%d+$") end, 3)
    helpers.sleep(2.2)
    assert.matches("^moxy; hit; ttl=%-%d+$", get(p, { ["X-Tag"] = "no-store" }):header("cache-status"))
    helpers.wait_until(function() return origin_saw(p) == 4 end, 3)
    helpers.wait_until(function() return get(p):header("cache-status"):match("^moxy; fwd=uri%-miss; stored") end, 3)
    -- without stale-while-revalidate the second request waits for the first (coalesced)
    p = fresh(nil, { "Cache-Control:max-age=1", 'ETag:"w2"' }) .. "&match304=" .. q('"w2"') .. "&delay=0.6"
    get(p)
    helpers.sleep(1.2)
    leader = assert(helpers.connection(m.port))
    assert(leader:send(helpers.build_request({ path = p })))
    helpers.sleep(0.15)
    t0 = helpers.now()
    get(p)
    assert.is_true(helpers.now() - t0 > 0.3)
    assert(leader:read_response())
    leader:close()
  end)

  it("serves a stale object when the origin fails within stale-if-error, not after must-revalidate", function()
    local o2 = helpers.start_origin()
    local m2 = helpers.start_moxy({
      upstreams = { app = { servers = { o2.addr } } },
      cache = { size = "2m" },
      timeouts = { connect = "1s" },
    })
    local port = m2.port
    local ok_path = path("/bytes/100", { "Cache-Control:max-age=1, stale-if-error=60" })
    local strict = path("/bytes/100", { "Cache-Control:max-age=1, stale-if-error=60, must-revalidate" })
    local short = path("/bytes/100", { "Cache-Control:max-age=1, stale-if-error=1" })
    for _, p in ipairs { ok_path, strict, short } do
      assert.equal(200, assert(helpers.request(port, { path = p })).status)
    end
    o2:stop()
    helpers.sleep(1.2)
    local res = assert(helpers.request(port, { path = ok_path }))
    assert.equal(200, res.status)
    assert.equal(100, #res.body)
    assert.matches("^moxy; fwd=stale; fwd%-status=502; ttl=%-%d+$", res:header("cache-status"))
    assert.equal(502, assert(helpers.request(port, { path = strict })).status)
    helpers.sleep(1)
    assert.equal(502, assert(helpers.request(port, { path = short })).status)
    assert.matches("stale%-if%-error", m2:stderr())
  end)

  it("serves stale objects without stale-if-error for cache.stale_if_error when the origin fails", function()
    local o2 = helpers.start_origin()
    local m2 = helpers.start_moxy({
      upstreams = { app = { servers = { o2.addr } } },
      cache = { size = "2m", stale_if_error = "3s" },
      timeouts = { connect = "1s" },
    })
    local plain = path("/bytes/100", { "Cache-Control:max-age=1" })
    local own = path("/bytes/100", { "Cache-Control:max-age=1, stale-if-error=0" }) -- its own says no
    local nocache = path("/bytes/100", { "Cache-Control:no-cache", 'ETag:"n"' })
    local shared = path("/bytes/100", { "Cache-Control:s-maxage=1" }) -- implies proxy-revalidate
    for _, p in ipairs { plain, own, nocache, shared } do
      assert.equal(200, assert(helpers.request(m2.port, { path = p })).status)
    end
    o2:stop()
    helpers.sleep(1.2)
    local res = assert(helpers.request(m2.port, { path = plain }))
    assert.equal(200, res.status)
    assert.matches("^moxy; fwd=stale; fwd%-status=502", res:header("cache-status"))
    assert.equal(502, assert(helpers.request(m2.port, { path = own })).status)
    assert.equal(502, assert(helpers.request(m2.port, { path = nocache })).status)
    assert.equal(502, assert(helpers.request(m2.port, { path = shared })).status)
    helpers.sleep(3)
    assert.equal(502, assert(helpers.request(m2.port, { path = plain })).status) -- past the window
  end)

  it("honours the request's no-cache, max-age and only-if-cached", function()
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    get(p)
    assert.equal("moxy; fwd=request; stored", (get(p, { ["Cache-Control"] = "no-cache" }):header("cache-status"):gsub("; ttl=%d+", "")))
    assert.equal(2, origin_saw(p))
    helpers.sleep(1.1)
    assert.matches("fwd=request", get(p, { ["Cache-Control"] = "max-age=0" }):header("cache-status"))
    assert.matches("hit", get(p, { ["Cache-Control"] = "max-age=30" }):header("cache-status"))
    assert.equal(504, get(fresh(), { ["Cache-Control"] = "only-if-cached" }).status)
  end)

  it("ignores the request's directives with cache.request_directives = false", function()
    local m3 = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "2m", request_directives = false },
    })
    local p = fresh(nil, { "Cache-Control:max-age=60" })
    assert(helpers.request(m3.port, { path = p }))
    for _, h in ipairs { { ["Cache-Control"] = "no-cache" }, { Pragma = "no-cache" }, { ["Cache-Control"] = "max-age=0" } } do
      local res = assert(helpers.request(m3.port, { path = p, headers = h }))
      assert.matches("^moxy; hit", res:header("cache-status"))
    end
    assert.equal(1, origin_saw(p))
  end)

  it("shares an object between query strings that differ only in parameter order", function()
    n = n + 1
    local a = "/bytes/10?x=" .. n .. "&rh=Cache-Control:max-age%3D60&b=2"
    local b = "/bytes/10?b=2&rh=Cache-Control:max-age%3D60&x=" .. n
    get(a)
    assert.matches("hit", get(b):header("cache-status"))
    assert.equal(1, origin_saw(a))
    assert.equal(0, origin_saw(b))
  end)

  it("invalidates the URI, Location and Content-Location on an unsafe method's success", function()
    local p = fresh("/echo", { "Cache-Control:max-age=60" })
    local other = fresh("/echo", { "Cache-Control:max-age=60" })
    get(p)
    get(other)
    assert.matches("hit", get(p):header("cache-status"))
    -- a failed POST invalidates nothing
    local failed = p .. "&status=500"
    get(failed, nil, "POST")
    assert.matches("hit", get(p):header("cache-status"))
    assert.equal(200, get(p, nil, "POST").status)
    assert.matches("fwd=uri%-miss", get(p):header("cache-status"))
    -- Location names the other object
    local loc = fresh("/echo", { "Location:" .. other })
    assert.equal(200, get(loc, nil, "DELETE").status)
    assert.matches("fwd=uri%-miss", get(other):header("cache-status"))
  end)

  it("streams a response larger than max_object to its client without storing it", function()
    local p = fresh("/bytes/400000", { "Cache-Control:max-age=60" })
    local res = get(p)
    assert.equal(400000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
    get(p)
    assert.equal(2, origin_saw(p))
    -- chunked, of unknown length: abandoned mid-stream, the client gets it all
    p = fresh("/chunked/300000", { "Cache-Control:max-age=60" })
    res = get(p)
    assert.equal(300000, #res.body)
    assert.is_true(helpers.pattern_ok(0, res.body))
    get(p)
    assert.equal(2, origin_saw(p))
    assert.is_true(status().cache.too_big >= 2)
  end)

  -- n requests for p at once, on n connections: their responses
  local function at_once(p, count)
    local conns = {}
    for i = 1, count do
      conns[i] = assert(helpers.connection(m.port))
      assert(conns[i]:send(helpers.build_request({ path = p })))
    end
    local out = {}
    for i = 1, count do
      out[i] = assert(conns[i]:read_response())
      conns[i]:close()
    end
    return out
  end

  it("coalesces concurrent misses: 100 at once, one origin request, the others collapsed on its object", function()
    local p = fresh("/slow-headers/0.5", { "Cache-Control:max-age=60" })
    local t0 = helpers.now()
    local res = at_once(p, 100)
    local took = helpers.now() - t0
    local stored, collapsed = 0, 0
    for _, r in ipairs(res) do
      assert.equal(200, r.status)
      assert.equal("slow\n", r.body)
      local cs = r:header("cache-status")
      if cs:find("stored") then stored = stored + 1 end
      if cs:find("; collapsed") then collapsed = collapsed + 1 end
    end
    assert.equal(1, origin_saw(p))
    assert.equal(1, stored)
    assert.equal(99, collapsed)
    print(("\n    100 concurrent misses, origin 0.5 s: 1 origin request, 99 collapsed, all answered in %.2f s"):format(took))
    assert.is_true(took < 2.5, "took " .. took)
  end)

  it("streams the first response to the waiting requests as it comes from the origin", function()
    -- the origin sends 5 bytes, waits 1 s, sends 5 more
    local p = fresh("/slow-body/1", { "Cache-Control:max-age=60" })
    local leader = assert(helpers.connection(m.port))
    assert(leader:send(helpers.build_request({ path = p })))
    helpers.sleep(0.15) -- the leader's response head is in
    local waiters, firsts = {}, {}
    for i = 1, 10 do
      waiters[i] = assert(helpers.connection(m.port))
      assert(waiters[i]:send(helpers.build_request({ path = p })))
    end
    local t0 = helpers.now()
    for i = 1, 10 do
      -- head and the first 5 bytes, long before the origin's second half
      local data = ""
      while not data:find("\r\n\r\n01234", 1, true) do
        local more, err = waiters[i]:receive_some(0.6)
        assert(more, "waiter " .. i .. ": nothing within 0.6 s (" .. tostring(err) .. "): " .. data)
        data = data .. more
      end
      firsts[i] = data
    end
    assert.is_true(helpers.now() - t0 < 0.7, "the waiters got their first bytes only after the origin's second half")
    for i = 1, 10 do
      assert.matches("Cache%-Status: moxy; hit; ttl=%d+; collapsed", firsts[i])
      assert.matches("Content%-Length: 10", firsts[i])
      local data = firsts[i]
      while not data:find("0123456789", 1, true) do
        local more = assert(waiters[i]:receive_some(3))
        data = data .. more
      end
      waiters[i]:close()
    end
    assert.equal("0123456789", assert(leader:read_response()).body)
    leader:close()
    assert.equal(1, origin_saw(p))
  end)

  it("lets waiters go to the origin as soon as the first response turns out not storable", function()
    local p = fresh("/slow-headers/0.3")
    local t0 = helpers.now()
    local res = at_once(p, 20)
    for _, r in ipairs(res) do assert.equal(200, r.status) end
    assert.equal(20, origin_saw(p))
    assert.is_true(helpers.now() - t0 < 2.5, "waiters waited for the coalescing timeout")
  end)

  it("puts Cache-Status on the response that answers, not on a 103 Early Hints before it", function()
    n = n + 1
    local res = get("/early-hints?case=" .. n)
    assert.equal(200, res.status)
    assert.equal(1, #res.interim, "no 103 forwarded")
    assert.is_nil(res.interim[1]:header("cache-status"))
    assert.equal("moxy; fwd=uri-miss", res:header("cache-status"))
  end)

  it("leaves WebSocket handshakes alone: two to one path at once both switch at once, with no Cache-Status", function()
    local ws = {
      { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
      { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" }, { "Sec-WebSocket-Version", "13" },
    }
    local first = assert(helpers.connection(m.port))
    local res = assert(first:request({ path = "/ws", headers = ws }))
    assert.equal(101, res.status)
    assert.is_nil(res:header("cache-status"))
    -- the first tunnel is open: a second handshake must not wait for it
    -- (cache.coalesce_timeout, 5 s, if it were taken for a miss)
    local second = assert(helpers.connection(m.port))
    local t0 = helpers.now()
    res = assert(second:request({ path = "/ws", headers = ws }))
    local took = helpers.now() - t0
    assert.equal(101, res.status)
    assert.is_true(took < 2.5, ("the second handshake took %.1f s"):format(took))
    first:close()
    second:close()
  end)

  it("stays within cache.size and counts what it did", function()
    -- 8 MiB of cache, 120 objects of 100 KB
    for i = 1, 120 do
      local p = fresh("/bytes/100000", { "Cache-Control:max-age=60" })
      assert.equal(100000, #get(p).body, "object " .. i)
    end
    local st = status().cache
    assert.is_true(st.used <= st.capacity, st.used .. " > " .. st.capacity)
    assert.is_true(st.used > st.capacity / 2, "only " .. st.used .. " used")
    assert.is_true(st.evictions > 30, "evictions " .. st.evictions)
    assert.is_true(st.hits > 0 and st.misses > 0 and st.stores > 0)
    local metrics = assert(helpers.request(admin_port, { path = "/metrics" })).body
    assert.matches("moxy_cache_hits_total %d+", metrics)
    assert.matches("moxy_cache_used_bytes %d+", metrics)
  end)

  it("keeps a hot object through a scan of one-hit wonders 2.5 times its size (S3-FIFO; LRU would not)", function()
    local hot = fresh("/bytes/50000", { "Cache-Control:max-age=60" })
    get(hot)
    get(hot) -- hit once: promoted out of the probation queue when it comes up
    for _ = 1, 400 do -- 20 MB of objects requested once, the hot one untouched
      get(fresh("/bytes/50000", { "Cache-Control:max-age=60" }))
    end
    assert.matches("hit", get(hot):header("cache-status"))
    assert.equal(1, origin_saw(hot))
  end)
end)

describe("HTTP cache steered from Lua", function()
  local origin, m, denied, admin_port
  local n = 0

  lazy_setup(function()
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "8m", purge = { "127.0.0.1" } },
      admin = { token = "reload-token-0123456789" },
      scripts = { "rules.lua" },
    }, { files = { ["rules.lua"] = [[
return {
  on_request = function(txn)
    local path = txn.req.path
    if path == "/purge" then
      return txn:respond(200, tostring(moxy.cache.purge(txn.req.headers:get("X-Key"))))
    end
    if path == "/purge-prefix" then
      return txn:respond(200, tostring(moxy.cache.purge_prefix(txn.req.headers:get("X-Key"))))
    end
    if txn.req.headers:get("Cookie") then txn.cache:bypass() end
    if path:find("^/echo/keyed") then txn.cache.key = "custom:" .. path end
  end,
  on_cache_key = function(txn)
    -- tracking parameters are not part of the key
    local key = txn.cache.key
    if key:find("utm_") then
      return (key:gsub("[?&]utm_[^&]*", ""):gsub("^([^?]*)&", "%1?"))
    end
  end,
  on_body = function(txn, chunk, eof)
    if txn.req.path:find("^/echo/upper") then return chunk:upper() end
    if txn.req.path:find("^/echo/tagged") then return chunk .. (eof and "[on_body]" or "") end
  end,
  on_response = function(txn)
    txn.resp.headers:set("X-Cache", tostring(txn.cache.status) .. " " .. tostring(txn.cache.age ~= nil))
    txn.resp.headers:set("X-Key", tostring(txn.cache.key))
    if txn.req.path:find("^/echo/always") then txn.cache:store{ ttl = 60 } end
    if txn.req.path:find("^/echo/never") then txn.cache:no_store() end
  end,
}
]] } })
    admin_port = m.admin_port
    denied = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "2m", purge = { "10.0.0.0/8" } },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(p, headers, method, port)
    return assert(helpers.request(port or m.port, { path = p, headers = headers, method = method }))
  end

  local function saw(p) return #origin:saw("^" .. p:gsub("%p", "%%%0") .. "$") end

  local function uniq(base)
    n = n + 1
    return base .. n
  end

  it("on_cache_key edits the key: tracking parameters share an object", function()
    local p = uniq("/echo/k")
    local a = get(p .. "?utm_source=x&rh=Cache-Control:max-age%3D60")
    assert.equal("miss false", a:header("x-cache"))
    assert.matches("^http://localhost" .. p:gsub("%p", "%%%0") .. "%?rh=", a:header("x-key"))
    local b = get(p .. "?rh=Cache-Control:max-age%3D60&utm_campaign=y")
    assert.equal("hit true", b:header("x-cache"))
    assert.equal(a.body, b.body)
  end)

  it("runs on_body over a hit's body as over the origin's", function()
    local p = uniq("/echo/upper") .. "?rh=Cache-Control:max-age%3D60"
    local first = get(p)
    local hit = get(p)
    assert.equal("hit true", hit:header("x-cache"))
    assert.equal(first.body, hit.body)
    assert.equal(first.body:upper(), hit.body)
    assert.matches('"PATH"', hit.body)
    -- a large body (kept in a memfd) goes through on_body from memory, whole and in order
    p = "/bytes/300000?rh=Cache-Control:max-age%3D60&n=" .. uniq("")
    assert.is_true(helpers.pattern_ok(0, get(p).body))
    hit = get(p)
    assert.equal("hit true", hit:header("x-cache"))
    assert.equal(300000, #hit.body)
    assert.is_true(helpers.pattern_ok(0, hit.body))
    local part = get(p, { Range = "bytes=70000-200000" })
    assert.equal(206, part.status)
    assert.is_true(helpers.pattern_ok(70000, part.body))
  end)

  it("stores what the origin sent, and runs on_body once on the way out of a miss and of a hit", function()
    local p = uniq("/echo/tagged") .. "?rh=Cache-Control:max-age%3D60"
    local miss, hit = get(p), get(p)
    assert.equal("hit true", hit:header("x-cache"))
    assert.equal(miss.body, hit.body)
    local _, tags = hit.body:gsub("%[on_body%]", "")
    assert.equal(1, tags, hit.body)
    assert.equal(1, saw(p))
  end)

  it("keeps its objects across a reload", function()
    local p = uniq("/echo/reload") .. "?rh=Cache-Control:max-age%3D60"
    get(p)
    local res = assert(helpers.request(admin_port, { method = "POST", path = "/reload",
      headers = { Authorization = "Bearer reload-token-0123456789" } }))
    assert.equal(200, res.status, res.body)
    assert.equal("hit true", get(p):header("x-cache"))
    assert.equal(1, saw(p))
  end)

  it("txn.cache.key set in on_request keys the object", function()
    local p = uniq("/echo/keyed")
    get(p .. "?rh=Cache-Control:max-age%3D60")
    local res = get(p .. "?other=1")
    assert.equal("custom:" .. p, res:header("x-key"))
    assert.equal("hit true", res:header("x-cache"))
  end)

  it("answers a 5xx from the origin with the stale object within stale-if-error", function()
    local p = uniq("/echo/keyed")
    assert.equal(200, get(p .. "?rh=" .. "Cache-Control:max-age%3D1%2C%20stale-if-error%3D60").status)
    helpers.sleep(1.2)
    -- the same key (custom:path), an origin that now answers 503
    local res = get(p .. "?status=503")
    assert.equal(200, res.status)
    assert.matches("^moxy; fwd=stale; fwd%-status=503", res:header("cache-status"))
  end)

  it("txn.cache:bypass() skips the cache", function()
    local p = uniq("/echo/b") .. "?rh=Cache-Control:max-age%3D60"
    get(p)
    local res = get(p, { Cookie = "session=1" })
    assert.equal("moxy; fwd=bypass", res:header("cache-status"))
    assert.equal("bypass false", res:header("x-cache"))
    assert.equal(2, saw(p))
  end)

  it("txn.cache:store{ttl} stores what the origin did not mark cacheable; no_store() refuses what it did", function()
    local p = uniq("/echo/always")
    get(p)
    assert.equal("hit true", get(p):header("x-cache"))
    assert.equal(1, saw(p))
    -- a cookie goes to the client whose request fetched the response, not to the hits
    p = uniq("/echo/always") .. "?rh=Set-Cookie:session%3Dsecret&rh=X-Kept:yes"
    assert.equal("session=secret", get(p):header("set-cookie"))
    local hit = get(p)
    assert.equal("hit true", hit:header("x-cache"))
    assert.is_nil(hit:header("set-cookie"))
    assert.equal("yes", hit:header("x-kept"))
    p = uniq("/echo/never") .. "?rh=Cache-Control:max-age%3D60"
    get(p)
    get(p)
    assert.equal(2, saw(p))
  end)

  it("moxy.cache.purge and purge_prefix drop objects; PURGE from an allowed address too", function()
    local p = uniq("/echo/p") .. "?rh=Cache-Control:max-age%3D60"
    local key = get(p):header("x-key")
    assert.equal("hit true", get(p):header("x-cache"))
    assert.equal("1", get("/purge", { ["X-Key"] = key }).body)
    assert.equal("miss false", get(p):header("x-cache"))
    local dir = uniq("/echo/dir")
    get(dir .. "/a?rh=Cache-Control:max-age%3D60")
    get(dir .. "/b?rh=Cache-Control:max-age%3D60")
    assert.equal("2", get("/purge-prefix", { ["X-Key"] = "http://localhost" .. dir .. "/" }).body)
    assert.equal("miss false", get(dir .. "/a?rh=Cache-Control:max-age%3D60"):header("x-cache"))
    -- the PURGE method
    local res = get(p, nil, "PURGE")
    assert.equal(200, res.status)
    assert.equal("purged 1\n", res.body)
    assert.equal(404, get(p, nil, "PURGE").status)
    assert.equal("miss false", get(p):header("x-cache"))
    -- POST /purge on the admin listener (with its token)
    local q2 = uniq("/echo/admin") .. "?rh=Cache-Control:max-age%3D60"
    local k2 = get(q2):header("x-key")
    assert.equal("hit true", get(q2):header("x-cache"))
    local purge = function(query, token)
      return assert(helpers.request(admin_port, { method = "POST", path = "/purge?" .. query,
        headers = token and { Authorization = "Bearer " .. token } or nil }))
    end
    assert.equal(401, purge("key=x").status)
    local ok = purge("key=" .. k2:gsub("[^%w]", function(ch) return ("%%%02X"):format(ch:byte()) end), "reload-token-0123456789")
    assert.equal(200, ok.status, ok.body)
    assert.equal('{"purged":1}\n', ok.body)
    assert.equal("miss false", get(q2):header("x-cache"))
    assert.equal(400, purge("nothing=1", "reload-token-0123456789").status)
    -- from an address cache.purge does not allow
    local q = "/echo/denied?rh=Cache-Control:max-age%3D60"
    get(q, nil, nil, denied.port)
    assert.equal(403, get(q, nil, "PURGE", denied.port).status)
    assert.matches("hit", get(q, nil, nil, denied.port):header("cache-status"))
  end)
end)
