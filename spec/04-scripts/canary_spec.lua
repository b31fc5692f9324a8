-- scripts/canary.lua: a sticky share of clients to the canary pool.
local helpers = require "spec.helpers"
local bit = require "bit"

local PATH = helpers.root .. "/scripts/canary.lua"

local function with_config(config)
  return helpers.script_with_config(PATH, config)
end

-- FNV-1a 32 of s mod 10000, computed independently of the script (plain
-- arithmetic on the unsigned value): the bucket the script must give s
local function fnv_bucket(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i)) % 4294967296
    -- h * 16777619 mod 2^32 without losing precision: split the prime
    h = ((h * 16777216) % 4294967296 + h * 403) % 4294967296
  end
  return h % 10000
end

describe("scripts/canary.lua", function()
  local stable, canary

  lazy_setup(function()
    stable, canary = helpers.start_origin(), helpers.start_origin()
  end)
  lazy_teardown(function() helpers.stop_all() end)

  local function start(config)
    return helpers.start_moxy({
      upstreams = { app = { servers = { stable.addr } }, canary = { servers = { canary.addr } } },
      default_upstream = "app",
      scripts = { "canary.lua" },
    }, { files = { ["canary.lua"] = with_config(config) } })
  end

  -- which pool answered, and the Set-Cookie values the client got
  local function get(moxy, headers, path)
    local res = assert(helpers.request(moxy.port, { path = path or "/echo", headers = headers }))
    local doc = helpers.echo(res)
    local group = doc.port == canary.port and "canary" or (doc.port == stable.port and "stable" or "?")
    return group, res.headers["set-cookie"] or {}, doc
  end

  describe("at 0 %", function()
    local moxy
    lazy_setup(function() moxy = start([[{ percent = 0, pool = "canary", cookie = "canary", cookie_attrs = "Path=/; Max-Age=60", force_header = "X-Canary" }]]) end)

    it("sends a new client to the stable pool and sets the cookie", function()
      local group, cookies = get(moxy)
      assert.equal("stable", group)
      assert.same({ "canary=stable; Path=/; Max-Age=60" }, cookies)
    end)

    it("honours a canary cookie among others, without setting it again", function()
      local group, cookies = get(moxy, { { "Cookie", "sid=1; canary=canary; theme=dark" } })
      assert.equal("canary", group)
      assert.same({}, cookies)
    end)

    it("finds the cookie in a second Cookie header", function()
      local group = get(moxy, { { "Cookie", "sid=1" }, { "Cookie", "canary=canary" } })
      assert.equal("canary", group)
    end)

    it("ignores a cookie value other than canary/stable", function()
      local group, cookies = get(moxy, { { "Cookie", "canary=yes-please" } })
      assert.equal("stable", group)
      assert.same({ "canary=stable; Path=/; Max-Age=60" }, cookies)
    end)

    it("does not mistake a cookie whose name ends like it", function()
      local group = get(moxy, { { "Cookie", "notcanary=canary" } })
      assert.equal("stable", group)
    end)

    it("forces the canary with X-Canary: 1, for that request only", function()
      local group, cookies = get(moxy, { { "X-Canary", "1" }, { "Cookie", "canary=stable" } })
      assert.equal("canary", group)
      assert.same({}, cookies)
      assert.equal("stable", (get(moxy, { { "X-Canary", "0" } })))
    end)

    it("keeps the origin's own Set-Cookie", function()
      local _, cookies = get(moxy, nil, "/echo?rh=Set-Cookie:sid=42")
      assert.same({ "sid=42", "canary=stable; Path=/; Max-Age=60" }, cookies)
    end)
  end)

  describe("at 100 %", function()
    local moxy
    lazy_setup(function() moxy = start([[{ percent = 100, pool = "canary", cookie = "cn", cookie_attrs = "" }]]) end)

    it("sends a new client to the canary and sets the cookie", function()
      local group, cookies = get(moxy)
      assert.equal("canary", group)
      assert.same({ "cn=canary" }, cookies)
    end)

    it("keeps a client that has the stable cookie on stable", function()
      assert.equal("stable", (get(moxy, { { "Cookie", "cn=stable" } })))
    end)
  end)

  describe("by the client's address", function()
    -- every request here comes from 127.0.0.1: its bucket decides
    local b = fnv_bucket("127.0.0.1")

    it("puts the address in the canary when its bucket is under percent, every time", function()
      local moxy = start(([[{ percent = %s, pool = "canary", cookie = "canary" }]]):format((b + 1) / 100))
      for _ = 1, 10 do
        local group, cookies = get(moxy)
        assert.equal("canary", group)
        assert.matches("^canary=canary", cookies[1])
      end
    end)

    it("keeps it stable when percent stops at its bucket, every time", function()
      local moxy = start(([[{ percent = %s, pool = "canary", cookie = "canary", stable_pool = "app" }]]):format(b / 100))
      for _ = 1, 10 do
        assert.equal("stable", (get(moxy)))
      end
    end)
  end)

  it("refuses a percent out of range (moxy -t)", function()
    local code, out = helpers.run_moxy_check([[
      return { listen = { "127.0.0.1:1" }, upstreams = { app = { servers = { "127.0.0.1:1" } } }, scripts = { "canary.lua" } }
    ]], { files = { ["canary.lua"] = with_config([[{ percent = 150, pool = "canary", cookie = "canary" }]]) } })
    assert.equal(1, code, out)
    assert.matches("CONFIG.percent must be a number from 0 to 100", out, 1, true)
  end)

  it("ships a CONFIG that loads (moxy -t)", function()
    local code, out = helpers.run_moxy_check([[
      return { listen = { "127.0.0.1:1" }, upstreams = { app = { servers = { "127.0.0.1:1" } },
        canary = { servers = { "127.0.0.1:2" } } }, default_upstream = "app", scripts = { "canary.lua" } }
    ]], { files = { ["canary.lua"] = helpers.read_file(PATH) } })
    assert.equal(0, code, out)
  end)
end)
