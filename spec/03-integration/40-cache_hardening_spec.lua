-- The HTTP cache against what an attacker sends: request and response
-- fields chosen to overflow a buffer, poison a key, or grow a chain that
-- lookups walk.  Each case failed against moxy before its fix; the heap
-- overflows also show exactly under `make check` (ASan).
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local q, path = helpers.query_escape, helpers.origin_path

-- an Accept-Encoding of about n bytes: a list of codings the client chose
local function big_accept_encoding(n, tag)
  local parts, len = {}, 0
  local i = 0
  while len < n do
    i = i + 1
    local item = ("x-%s-%05d;q=0.5"):format(tag, i)
    parts[#parts + 1] = item
    len = len + #item + 2
  end
  return table.concat(parts, ", ")
end

describe("HTTP cache hardening", function()
  local origin, m
  local n = 0

  lazy_setup(function()
    origin = helpers.start_origin()
    m = helpers.start_moxy({
      workers = 1,
      upstreams = { app = { servers = { origin.addr } } },
      cache = { size = "8m", max_object = "256k" },
      log = { level = "debug" },
      admin = {},
      scripts = { "hooks.lua" },
    }, { files = { ["hooks.lua"] = [[
return {
  on_response = function(txn)
    txn.resp.headers:set("X-Cache-Key", txn.cache.key)
  end,
}
]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  -- a path no other case uses
  local function fresh(base, headers)
    n = n + 1
    local hs = { "X-Case:" .. n }
    for _, h in ipairs(headers or {}) do hs[#hs + 1] = h end
    return path(base or "/bytes/100", hs)
  end

  local function get(p, headers, host)
    local res, err = helpers.request(m.port, { path = p, headers = headers, host = host })
    assert(res, ("moxy did not answer %s: %s (alive: %s)"):format(p:sub(1, 80), tostring(err), tostring(m:alive())))
    return res
  end

  local function used()
    local st = assert(helpers.request(m.admin_port, { path = "/status" }))
    return assert(cjson.decode(st.body)).cache.used
  end

  local function origin_saw(p)
    local pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$"
    return #origin:saw(pat)
  end

  it("stores a Vary that names a field twice once, and matches a 12 KB Accept-Encoding by it", function()
    local forms = {
      { "Vary:Accept-Encoding, Accept-Encoding" },
      { "Vary:accept-encoding,Accept-Encoding" },
      { "Vary:Accept-Encoding", "Vary:ACCEPT-ENCODING" },
    }
    for i, vary in ipairs(forms) do
      local hs = { "Cache-Control:max-age=60" }
      for _, v in ipairs(vary) do hs[#hs + 1] = v end
      local p = fresh(nil, hs)
      local ae = big_accept_encoding(12 * 1024, "a" .. i)
      local first = get(p, { ["Accept-Encoding"] = ae })
      assert.equal(200, first.status)
      assert.matches("^moxy; fwd=uri%-miss; stored", first:header("cache-status"))
      local hit = get(p, { ["Accept-Encoding"] = ae:upper() }) -- codings match in any case
      assert.matches("^moxy; hit", hit:header("cache-status"))
      assert.equal(first.body, hit.body)
      local other = get(p, { ["Accept-Encoding"] = big_accept_encoding(12 * 1024, "b" .. i) })
      assert.matches("^moxy; fwd=vary%-miss; stored", other:header("cache-status"))
      assert.equal(2, origin_saw(p))
    end
    assert.is_true(m:alive())
  end)

  it("neither stores nor serves a variant whose request values pass 16 KiB, and keeps answering", function()
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:Accept-Encoding, Accept-Encoding" })
    local ae = big_accept_encoding(20 * 1024, "big")
    for _ = 1, 3 do
      local res = get(p, { ["Accept-Encoding"] = ae })
      assert.equal(200, res.status)
      assert.equal(100, #res.body)
      assert.not_matches("stored", res:header("cache-status"))
    end
    assert.equal(3, origin_saw(p))
    assert.truthy(m:wait_error_log("not stored: the request's values of Vary's fields pass 16384 bytes", 5 * helpers.scale))
    -- the same URL with a small value is cached as usual
    local small = get(p, { ["Accept-Encoding"] = "gzip" })
    assert.matches("stored", small:header("cache-status"))
    assert.matches("^moxy; hit", get(p, { ["Accept-Encoding"] = "gzip" }):header("cache-status"))
    assert.is_true(m:alive())
  end)

  it("stores a Vary of 32 one-letter names without spaces, and selects variants by them", function()
    local names, headers = {}, {}
    for i = 1, 32 do
      local name = "X" .. string.char(64 + (i - 1) % 26 + 1) .. (i > 26 and "2" or "")
      names[#names + 1] = name
      headers[name] = "v" .. i
    end
    -- "Vary:XA,XB,...": each name's separator is one byte where the stored list has two
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:" .. table.concat(names, ",") })
    local first = get(p, headers)
    assert.matches("^moxy; fwd=uri%-miss; stored", first:header("cache-status"))
    assert.matches("^moxy; hit", get(p, headers):header("cache-status"))
    headers.XZ = "changed"
    assert.matches("^moxy; fwd=vary%-miss; stored", get(p, headers):header("cache-status"))
    assert.equal(2, origin_saw(p))
    assert.is_true(m:alive())
  end)

  it("does not store a response whose Vary names more than 32 fields or 1024 bytes, and says why", function()
    local names = {}
    for i = 1, 33 do names[i] = ("F%02d"):format(i) end
    local cases = {
      { "Vary:" .. table.concat(names, ",") },
      -- the same 33 spread over lines, repeats not counted twice
      { "Vary:" .. table.concat(names, ",", 1, 20), "Vary:" .. table.concat(names, ", ", 1, 33) },
      { "Vary:X-" .. ("a"):rep(600) .. ", X-" .. ("b"):rep(600) },
    }
    for _, vary in ipairs(cases) do
      local hs = { "Cache-Control:max-age=60" }
      for _, v in ipairs(vary) do hs[#hs + 1] = v end
      local p = fresh(nil, hs)
      for _ = 1, 2 do
        local res = get(p)
        assert.equal(200, res.status)
        assert.equal("moxy; fwd=uri-miss", res:header("cache-status"))
      end
      assert.equal(2, origin_saw(p))
    end
    assert.truthy(m:wait_error_log("not stored: Vary names more than 32 fields or 1024 bytes", 5 * helpers.scale))
    -- 32 distinct names, each also repeated in another case, are within the cap
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:" .. table.concat(names, ",", 1, 32),
                           "Vary:" .. table.concat(names, ",", 1, 32):lower() })
    get(p)
    assert.matches("^moxy; hit", get(p):header("cache-status"))
  end)

  it("counts the Vary values a variant keeps against cache.size", function()
    local before = used()
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:Accept-Encoding" })
    local ae = big_accept_encoding(12 * 1024, "charge")
    assert.matches("stored", get(p, { ["Accept-Encoding"] = ae }):header("cache-status"))
    assert.matches("^moxy; hit", get(p, { ["Accept-Encoding"] = ae }):header("cache-status"))
    local after = used()
    assert.is_true(after - before >= #ae, ("used grew by %d bytes for %d of Vary values"):format(after - before, #ae))
  end)

  it("keeps at most 64 variants of a key: one more replaces the one stored longest ago", function()
    -- a client choosing the values of a field the origin varies on must not
    -- grow one key's chain of variants without bound (every lookup walks it)
    local p = fresh(nil, { "Cache-Control:max-age=60", "Vary:X-V" })
    for i = 1, 65 do
      assert.matches("stored", get(p, { ["X-V"] = tostring(i) }):header("cache-status"))
    end
    assert.matches("^moxy; hit", get(p, { ["X-V"] = "65" }):header("cache-status"))
    assert.matches("^moxy; hit", get(p, { ["X-V"] = "2" }):header("cache-status"))
    assert.matches("^moxy; fwd=vary%-miss; stored", get(p, { ["X-V"] = "1" }):header("cache-status"))
    assert.equal(66, origin_saw(p))
  end)

  it("keys a Host that holds a path, a query, a fragment, '%' or '@' apart from every other host", function()
    -- Host "shop.example/cc/login" with /cc/x was the key of shop.example's
    -- /cc/login/cc/x (the origin answers both 404, cacheable with max-age)
    local evil = fresh("/cc/x", { "Cache-Control:max-age=60" })
    local res = get(evil, nil, "shop.example/cc/login")
    if res.status ~= 400 then -- (an HTTP core that refuses such a Host answers 400: as good)
      assert.matches("stored", res:header("cache-status"))
      assert.equal("http://shop.example%2Fcc%2Flogin/cc/x?", (res:header("x-cache-key"):gsub("%?.*", "?")))
    end
    local victim = "/cc/login" .. evil
    local v = get(victim, nil, "shop.example")
    assert.not_matches("hit", v:header("cache-status"))
    assert.equal(1, origin_saw(victim))
    assert.equal("http://shop.example/cc/login/cc/x?", (v:header("x-cache-key"):gsub("%?.*", "?")))
    -- no two of these hosts share a key, and each is its own
    local hosts = { "a.example", "A.Example", "a.example/x", "a.example%2Fx", "a.example%252Fx", "a.example?x",
                    "a.example#x", "user@a.example", "a.example:8080", "[::1]:8080" }
    local p = fresh("/echo", { "Cache-Control:max-age=60" })
    local keys = {}
    for _, h in ipairs(hosts) do
      local r = get(p, nil, h)
      if r.status == 200 then
        local k = r:header("x-cache-key")
        assert.matches("^http://[%w%-%._~!%$&'%(%)%*%+,;=:%[%]%%]+/echo%?", k)
        keys[#keys + 1] = { host = h, key = k }
      end
    end
    local by_key = {}
    for _, e in ipairs(keys) do
      local prev = by_key[e.key]
      -- only the host's case may not count
      if prev then assert.equal(prev:lower(), e.host:lower(), e.key) end
      by_key[e.key] = e.host
    end
    -- keys of ordinary hosts are as they were: lower case, nothing encoded
    local plain = get(p, nil, "A.Example:8080")
    assert.equal("http://a.example:8080/echo?", (plain:header("x-cache-key"):gsub("%?.*", "?")))
  end)
end)

describe("HTTP cache key hash", function()
  lazy_teardown(function() helpers.stop_all() end)

  it("is keyed per process: two moxy processes hash one key differently", function()
    -- a script may call any C function of moxy through the FFI; this one
    -- asks for the hash the cache's index puts a key under
    local hooks = [[
local ffi = require "ffi"
pcall(ffi.cdef, "uint64_t moxy_cache_hash(const char *key, size_t len);")
return {
  on_request = function(txn)
    local key = "http://shop.example/cc/login"
    txn:respond(200, tostring(ffi.C.moxy_cache_hash(key, #key)))
  end,
}
]]
    local seen = {}
    for i = 1, 2 do
      local mi = helpers.start_moxy({ workers = 2, cache = { size = "1m" }, scripts = { "hooks.lua" } },
                                    { files = { ["hooks.lua"] = hooks } })
      -- one process answers alike, whichever of its workers (they share the store)
      local a = assert(helpers.request(mi.port, { path = "/" }))
      assert.equal(200, a.status)
      for _ = 1, 6 do assert.equal(a.body, assert(helpers.request(mi.port, { path = "/" })).body) end
      seen[i] = a.body
      mi:stop()
    end
    assert.matches("^%d+ULL$", seen[1])
    assert.not_equal(seen[1], seen[2])
  end)
end)
