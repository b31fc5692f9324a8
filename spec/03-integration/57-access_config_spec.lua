-- access = {...} in the configuration: an ACL and rate and concurrency
-- limits without a script of one's own, at the top level and per listener
-- (false: none), applied before the scripts' hooks; mistakes named with the
-- file, the key or the rule; a reload with a mistake keeps the old one.
local helpers = require "spec.helpers"

local S = helpers.scale

local BCRYPT_S3CRET = "$2b$04$AWP0iPFcuSfmxfPpiFEA5eDq6oPsN0MXxcgS6rayBoVX0PD5JJGzS" -- "s3cret"

local SITE = [[
return {
  on_request = function(txn)
    if txn.req.path == "/hold" then moxy.sleep(0.5) end
    return txn:respond(200, "site " .. txn.listener .. "\n")
  end,
}
]]

describe("access = {...}", function()
  local m, main, open, strict

  local function go(port, path, ip, headers)
    local list = { { "X-Forwarded-For", ip or "192.0.2.1" } }
    for k, v in pairs(headers or {}) do list[#list + 1] = { k, v } end
    local res, err = helpers.request(port, { path = path, headers = list, timeout = 10 * S })
    assert(res, tostring(err))
    return res
  end

  lazy_setup(function()
    main, open, strict = helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      workers = 2,
      listen = {
        { addr = "127.0.0.1:" .. main, name = "main" },
        { addr = "127.0.0.1:" .. open, name = "open", access = false },
        { addr = "127.0.0.1:" .. strict, name = "strict", access = {
          acl = { { name = "office-only", allow = true, ip = { "10.0.0.0/8" } }, { name = "rest", deny = true } },
        } },
      },
      trusted_proxies = { "127.0.0.1" },
      access = {
        acl = {
          { name = "blocked", deny = true, ip = { file = "block.txt" } },
          { name = "staff", auth = { realm = "staff", users = "staff.htpasswd" }, path = "^/staff/" },
        },
        limits = {
          { name = "per_ip", key = "ip", rate = "5r/s", burst = 2, path = "^/limited" },
          { name = "api", key = "header:X-Api-Key", rate = "2r/s", path = "^/api" },
          { name = "holds", key = "all", concurrent = 2, path = "^/hold" },
        },
        dict = "1m",
      },
      scripts = { "site.lua" },
    }, { ports = { main, open, strict }, files = {
      ["site.lua"] = SITE,
      ["block.txt"] = "198.51.100.0/24\n",
      ["staff.htpasswd"] = "alice:" .. BCRYPT_S3CRET .. "\n",
    } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("denies by the ACL before the scripts run, and lets the rest reach them", function()
    assert.equal(403, go(main, "/", "198.51.100.7").status)
    local r = go(main, "/", "192.0.2.1")
    assert.equal(200, r.status)
    assert.equal("site main\n", r.body)
    assert.equal(401, go(main, "/staff/x").status)
    local auth = "Basic " .. (require "mime").b64("alice:s3cret")
    assert.equal(200, go(main, "/staff/x", nil, { Authorization = auth }).status)
  end)

  it("limits by client address and by header, with 429 and the RateLimit fields", function()
    local codes = {}
    for i = 1, 6 do codes[i] = go(main, "/limited", "192.0.2.50").status end
    assert.same({ 200, 200, 200, 429, 429, 429 }, codes) -- burst 2: three at once
    local r = go(main, "/limited", "192.0.2.50")
    assert.equal(429, r.status)
    assert.equal('"per_ip";q=5;w=1', r:header("ratelimit-policy"))
    assert.truthy(r:header("retry-after"))
    assert.equal(200, go(main, "/limited", "192.0.2.51").status) -- another client
    -- a request without the header is not counted by the header's limit
    for _ = 1, 5 do assert.equal(200, go(main, "/api").status) end
    assert.equal(200, go(main, "/api", nil, { ["X-Api-Key"] = "a" }).status)
    assert.equal(429, go(main, "/api", nil, { ["X-Api-Key"] = "a" }).status)
    assert.equal(200, go(main, "/api", nil, { ["X-Api-Key"] = "b" }).status)
  end)

  it("keeps at most `concurrent` requests in flight", function()
    local conns, codes = {}, {}
    for i = 1, 5 do
      conns[i] = assert(helpers.connection(main))
      assert(conns[i]:send(helpers.build_request({ path = "/hold" })))
    end
    for i = 1, 5 do
      local res = assert(conns[i]:read_response())
      codes[res.status] = (codes[res.status] or 0) + 1
      conns[i]:close()
    end
    assert.same({ [200] = 2, [503] = 3 }, codes)
  end)

  it("applies a listener's own access, and none with access = false", function()
    assert.equal(200, go(open, "/", "198.51.100.7").status)
    assert.equal(200, go(open, "/staff/x").status)
    assert.equal(403, go(strict, "/", "192.0.2.1").status)
    local r = go(strict, "/", "10.2.3.4")
    assert.equal(200, r.status)
    assert.equal("site strict\n", r.body)
  end)

  it("names the file and the key of a mistake (moxy -t)", function()
    local function check(access, want)
      local src = "return { workers = 1, listen = { '127.0.0.1:18198' },\n  access = " .. access .. " }\n"
      local code, out = helpers.run_moxy_check(src)
      assert.equal(1, code, out)
      assert.matches(want, out, 1, true)
    end
    check("{ colour = 1 }", "moxy.lua:2: access.colour: unknown key")
    check("{ limits = { { name = 'x' } } }", "access.limits[1]: one of rate or concurrent is required")
    check("{ limits = { { name = 'x', rate = '1r/s', key = 'client' } } }", 'access.limits[1].key: expected "ip"')
    check("{ limits = { { name = 'x', rate = 'fast' } } }", "access.limits[1] (x): moxy.ratelimit.new: rate must be")
    check("{ acl = { { name = 'x', deny = true, ip = { '10.0.0.300/8' } } } }", "access.acl: moxy.acl: rule x: ip: bad address")
    check("{ limits = { { name = 'x', rate = '1r/s', redis = true } } }", "access.redis is not set")
  end)

  it("keeps the old configuration serving when a reload brings a mistake", function()
    local conf = helpers.read_file(m.conf_path)
    helpers.write_file(m.conf_path, (conf:gsub('"198%.51%.100%.0/24"', '"198.51.100.0/240"')))
    helpers.write_file(m.dir .. "/block.txt", "198.51.100.0/240\n")
    m:signal("HUP")
    assert(m:wait_error_log("block.txt:1", 5 * S), "the reload's error does not name the list's line")
    assert.equal(403, go(main, "/", "198.51.100.7").status) -- the old ACL still serves
    helpers.write_file(m.dir .. "/block.txt", "198.51.100.0/24\n")
  end)
end)
