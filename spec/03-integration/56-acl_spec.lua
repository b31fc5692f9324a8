-- moxy.acl: rules in order, the first that matches decides.  Address lists
-- of 100,000 prefixes (inline and from files) match exactly like a naive
-- model; country, continent and ASN (a GeoIP database built here); method,
-- path, host, header and TLS-less cert conditions; deny answers 403, auth
-- asks for a password (bcrypt, sha512crypt) checked off the worker's loop;
-- the deciding rule in the access log and /metrics; mistakes named at load.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale

local BCRYPT_S3CRET = "$2b$04$AWP0iPFcuSfmxfPpiFEA5eDq6oPsN0MXxcgS6rayBoVX0PD5JJGzS"      -- "s3cret"
local BCRYPT_SLOW = "$2b$12$rGFfEpK04ixLV91WpWMlOODjfyjHIDdH7fT1yotpwAAZDl/1Ahkc6"        -- "slow pass", ~0.2 s a check
local SHA512_HUNTER2 = "$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj."

local SITE = [[
local acl = moxy.acl.new({
  { name = "blocked",  deny = true, ip = { "192.0.2.66", "2001:db8:bad::/48", file = "block.txt" } },
  { name = "office",   allow = true, ip = { "10.0.0.0/8" } },
  { name = "embargo",  deny = true, country = { "cn" }, status = 451, body = "Unavailable For Legal Reasons\n" },
  { name = "asn",      deny = true, asn = { 64497 } },
  { name = "oceania",  deny = true, continent = { "OC" } },
  { name = "no-trace", deny = true, method = { "TRACE", "CONNECT" } },
  { name = "internal", deny = true, path = "^/internal(/|$)" },
  { name = "bots",     deny = true, header = { ["User-Agent"] = "(?i)badbot" } },
  { name = "need-key", deny = true, path = "^/api/", header = { ["X-Api-Key"] = false } },
  { name = "staff",    auth = { realm = "staff", users = "staff.htpasswd" }, path = "^/staff/" },
  { name = "slow",     auth = { realm = "slow", users = { carol = "BCRYPT_SLOW" } }, path = "^/slow/" },
  { name = "admin-host", deny = true, host = "^admin\\." },
}, { name = "site" })

local big -- the 100,000-prefix lists, built on demand
return {
  on_request = function(txn)
    local p = txn.req.path
    if p == "/match" then
      -- body: a list file's path, then one address per line; answer one 0/1 per address
      local body = txn:read_body()
      local file, rest = body:match("^([^\n]+)\n(.*)$")
      big = big or {}
      big[file] = big[file] or moxy.acl.new({ { name = "big", deny = true, ip = { file = file } } })
      local out = {}
      for ip in rest:gmatch("[^\n]+") do out[#out + 1] = big[file]:match_ip(ip) and "1" or "0" end
      return txn:respond(200, table.concat(out))
    elseif p == "/info" then
      return txn:respond(200, moxy.json.encode(acl:info()))
    end
    if not acl:enforce(txn) then return end
    return txn:respond(200, "through\n")
  end,
}
]]

local STAFF = "# staff of the site\nalice:" .. BCRYPT_S3CRET .. "\n\nbob:" .. SHA512_HUNTER2 .. "\r\n"

describe("moxy.acl", function()
  local m, dir

  local function go(path, ip, headers, method)
    local list = { { "X-Forwarded-For", ip or "127.0.0.1" } }
    for k, v in pairs(headers or {}) do list[#list + 1] = { k, v } end
    local res, err = helpers.request(m.port, { method = method, path = path, headers = list, timeout = 10 * S })
    assert(res, tostring(err))
    return res
  end

  local function basic(user, pass)
    return "Basic " .. (require "mime").b64(user .. ":" .. pass)
  end

  lazy_setup(function()
    dir = helpers.tmpdir("acl")
    local city, asn = dir .. "/city.mmdb", dir .. "/asn.mmdb"
    for _, db in ipairs({ { "city", city }, { "asn", asn } }) do
      local p = assert(io.popen("cd '" .. helpers.root .. "' && luajit geoip/mmdb-build spec/support/geoip/"
        .. db[1] .. ".json '" .. db[2] .. "' 2>&1"))
      local out = p:read("*a")
      assert(p:close(), "mmdb-build: " .. out)
    end
    m = helpers.start_moxy({
      workers = 2,
      geoip = { city = city, asn = asn },
      trusted_proxies = { "127.0.0.1" },
      real_ip_header = "X-Forwarded-For",
      scripts = { "site.lua" },
      lua = { cpu_budget = 0 }, -- /match builds 100,000-prefix sets inside a hook
      admin = {},
      log = { access = "access.log", format = "json", error = "stderr" },
    }, { files = { ["site.lua"] = SITE:gsub("BCRYPT_SLOW", BCRYPT_SLOW), ["staff.htpasswd"] = STAFF,
                   ["block.txt"] = "# blocked networks\n198.51.100.0/25   # half of BR's test net\n\n2001:db8:dead::1\n" } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("decides by the first rule that matches: addresses, lists from files, IPv6", function()
    assert.equal(403, go("/", "192.0.2.66").status)
    assert.equal(200, go("/", "192.0.2.67").status)           -- ZA, no rule
    assert.equal(403, go("/", "198.51.100.5").status)         -- block.txt
    assert.equal(200, go("/", "198.51.100.200").status)       -- the other half: BR, no rule
    assert.equal(403, go("/", "2001:db8:bad:1::7").status)
    assert.equal(403, go("/", "2001:db8:dead::1").status)
    assert.equal(403, go("/", "::ffff:192.0.2.66").status)    -- an IPv4-mapped address is its IPv4 one
    -- the office may do what others may not: its rule comes first
    assert.equal(200, go("/internal/x", "10.1.2.3").status)
    assert.equal(403, go("/internal/x", "192.0.2.67").status)
  end)

  it("matches countries, continents and ASNs from GeoIP", function()
    local r = go("/", "175.16.199.10")                          -- CN
    assert.equal(451, r.status)
    assert.equal("Unavailable For Legal Reasons\n", r.body)
    assert.equal(403, go("/", "89.160.20.1").status)            -- AS64497
    assert.equal(403, go("/", "203.0.113.9").status)            -- OC
    assert.equal(200, go("/", "81.2.69.160").status)            -- GB, AS64496
  end)

  it("matches methods, paths, headers and hosts", function()
    assert.equal(403, go("/", "192.0.2.67", nil, "TRACE").status)
    assert.equal(403, go("/internal", "192.0.2.67").status)
    assert.equal(200, go("/internals", "192.0.2.67").status)
    assert.equal(403, go("/", "192.0.2.67", { ["User-Agent"] = "Mozilla BadBot/2" }).status)
    assert.equal(403, go("/api/v1", "192.0.2.67").status)
    assert.equal(200, go("/api/v1", "192.0.2.67", { ["X-Api-Key"] = "k" }).status)
    assert.equal(403, go("/", "192.0.2.67", { Host = "admin.example.com" }).status)
  end)

  it("asks for a password: bcrypt and sha512crypt, 401 with WWW-Authenticate, the user in the log", function()
    local r = go("/staff/x", "192.0.2.67")
    assert.equal(401, r.status)
    assert.equal('Basic realm="staff", charset="UTF-8"', r:header("www-authenticate"))
    assert.equal(401, go("/staff/x", "192.0.2.67", { Authorization = basic("alice", "wrong") }).status)
    assert.equal(401, go("/staff/x", "192.0.2.67", { Authorization = basic("mallory", "s3cret") }).status)
    assert.equal(401, go("/staff/x", "192.0.2.67", { Authorization = "Basic !!!" }).status)
    assert.equal(200, go("/staff/x", "192.0.2.67", { Authorization = basic("alice", "s3cret") }).status)
    assert.equal(200, go("/staff/x", "192.0.2.67", { Authorization = basic("bob", "hunter2") }).status)
    assert.equal(200, go("/staff/x", "192.0.2.67", { Authorization = basic("alice", "s3cret") }).status) -- cached
    local log = helpers.wait_until(function()
      local text = helpers.read_file(m.access_log) or ""
      return text:find('"user":"bob"', 1, true) and text
    end, 3 * S)
    assert(log, "no user in the access log")
    assert.matches('"acl":"staff"', log, 1, true)
    assert.matches('"acl":"blocked"', log, 1, true)
  end)

  it("checks a slow hash off the worker's loop: the worker serves meanwhile", function()
    local conns, t0 = {}, helpers.now()
    for i = 1, 4 do
      conns[i] = assert(helpers.connection(m.port))
      assert(conns[i]:send(helpers.build_request({ path = "/slow/" .. i, headers = {
        { "X-Forwarded-For", "192.0.2.67" }, { "Authorization", basic("carol", "slow pass") } } })))
    end
    -- while four bcrypt-12 checks run, other requests are answered at once
    local quick = helpers.now()
    assert.equal(200, go("/", "192.0.2.67").status)
    assert.is_true(helpers.now() - quick < 0.15 * S, "a request waited for the password checks")
    for i = 1, 4 do
      local res = assert(conns[i]:read_response())
      assert.equal(200, res.status, res.body)
      conns[i]:close()
    end
    assert.is_true(helpers.now() - t0 < 10 * S)
  end)

  it("counts the decisions per rule in /metrics", function()
    local res = helpers.request(m.admin_port, { path = "/metrics" })
    assert.matches('moxy_acl_decisions_total{acl="site",result="deny",rule="blocked"} ', res.body, 1, true)
    assert.matches('moxy_acl_decisions_total{acl="site",result="auth_ok",rule="staff"} ', res.body, 1, true)
  end)

  it("matches 100,000-prefix lists exactly like a naive model, IPv4 and IPv6", function()
    math.randomseed(20261206)
    local floor = math.floor
    local function v4(n)
      return string.format("%d.%d.%d.%d", floor(n / 2 ^ 24) % 256, floor(n / 2 ^ 16) % 256, floor(n / 256) % 256, n % 256)
    end
    local bit = require "bit"
    local function rnd32() return math.random(0, 0xffff) * 65536 + math.random(0, 0xffff) end
    -- IPv4: 100,000 prefixes of /8 to /32; the model: a set per length
    local lines, model = {}, {}
    for len = 0, 32 do model[len] = {} end
    for i = 1, 100000 do
      local len = math.random(8, 32)
      local a = rnd32()
      local masked = len == 0 and 0 or (a - a % 2 ^ (32 - len))
      model[len][masked] = true
      lines[i] = v4(masked) .. "/" .. len
    end
    local file4 = dir .. "/big4.txt"
    helpers.write_file(file4, table.concat(lines, "\n") .. "\n")
    local addrs, want = {}, {}
    for i = 1, 20000 do
      local a
      if i % 2 == 0 then -- inside a listed prefix, half of the time
        local l = lines[math.random(#lines)]
        local base, len = l:match("^(.*)/(%d+)$")
        local o = {}
        for x in base:gmatch("%d+") do o[#o + 1] = tonumber(x) end
        local n = ((o[1] * 256 + o[2]) * 256 + o[3]) * 256 + o[4]
        a = n + math.random(0, 2 ^ (32 - tonumber(len)) - 1)
      else
        a = rnd32()
      end
      addrs[i] = v4(a)
      local hit = false
      for len = 32, 0, -1 do
        if model[len][len == 0 and 0 or (a - a % 2 ^ (32 - len))] then hit = true break end
      end
      want[i] = hit and "1" or "0"
    end
    local res = assert(helpers.request(m.port, { method = "POST", path = "/match", timeout = 30 * S,
      body = file4 .. "\n" .. table.concat(addrs, "\n") }))
    assert.equal(200, res.status, res.body)
    assert.equal(table.concat(want), res.body)
    -- IPv6: 100,000 prefixes of /16 to /128 under 2001:db8::/16..; the model on hex text
    local function hex128() local t = {} for i = 1, 8 do t[i] = string.format("%04x", math.random(0, 0xffff)) end return t end
    local function bits_of(g) -- 8 groups -> a string of 128 '0'/'1'
      local b = {}
      for i = 1, 8 do
        local v = tonumber(g[i], 16)
        for k = 15, 0, -1 do b[#b + 1] = bit.band(bit.rshift(v, k), 1) == 1 and "1" or "0" end
      end
      return table.concat(b)
    end
    local function from_bits(s)
      local g = {}
      for i = 1, 8 do g[i] = string.format("%x", tonumber(s:sub(i * 16 - 15, i * 16), 2)) end
      return table.concat(g, ":")
    end
    local lines6, model6 = {}, {}
    for i = 1, 100000 do
      local len = math.random(16, 128)
      local b = bits_of(hex128()):sub(1, len)
      model6[b] = true
      lines6[i] = from_bits(b .. string.rep("0", 128 - len)) .. "/" .. len
    end
    local file6 = dir .. "/big6.txt"
    helpers.write_file(file6, table.concat(lines6, "\n") .. "\n")
    local addrs6, want6 = {}, {}
    for i = 1, 20000 do
      local b
      if i % 2 == 0 then
        local l = lines6[math.random(#lines6)]
        local base, len = l:match("^(.*)/(%d+)$")
        local g = {}
        -- expand base (written by from_bits: 8 full groups, no ::)
        for x in base:gmatch("[^:]+") do g[#g + 1] = ("0000" .. x):sub(-4) end
        b = bits_of(g):sub(1, tonumber(len)) .. bits_of(hex128()):sub(tonumber(len) + 1)
      else
        b = bits_of(hex128())
      end
      addrs6[i] = from_bits(b)
      local hit = false
      for len = 128, 0, -1 do
        if model6[b:sub(1, len)] then hit = true break end
      end
      want6[i] = hit and "1" or "0"
    end
    res = assert(helpers.request(m.port, { method = "POST", path = "/match", timeout = 30 * S,
      body = file6 .. "\n" .. table.concat(addrs6, "\n") }))
    assert.equal(200, res.status, res.body)
    assert.equal(table.concat(want6), res.body)
  end)

  it("names the rule, the file and the line of a mistake, and the script does not load", function()
    local cases = {
      { "{ { name = 'x', deny = true, ip = { '10.0.0.300/8' } } }", "rule x: ip: bad address" },
      { "{ { name = 'x', deny = true, ip = { file = 'list.txt' } } }", "list.txt:2: prefix length past /32" },
      { "{ { name = 'x', allow = true, deny = true } }", "one of allow = true, deny = true or auth" },
      { "{ { name = 'x', deny = true, colour = 'red' } }", "unknown key colour" },
      { "{ { name = 'x', deny = true, path = '(' } }", "rule x: path" },
      { "{ { name = 'x', auth = { users = 'weak.htpasswd' } } }", "weak.htpasswd:1: user eve: a weak hash" },
      { "{ { name = 'x', auth = { users = { eve = '$9$nothing' } } } }", "not a crypt(3) hash" },
      { "{ { name = 'x', deny = true }, { name = 'x', allow = true } }", "rule x: a name used twice" },
    }
    local files = { ["list.txt"] = "10.0.0.0/8\n10.1.0.0/99\n", ["weak.htpasswd"] = "eve:$1$abc$Kb85XxsXB.VXinPhbS4431\n" }
    local src = [[
return { workers = 1, listen = { "127.0.0.1:18199" }, scripts = { "bad.lua" } }
]]
    for _, c in ipairs(cases) do
      files["bad.lua"] = "local acl = moxy.acl.new(" .. c[1] .. ")\nreturn {}\n"
      local code, out = helpers.run_moxy_check(src, { files = files })
      assert.equal(1, code, out)
      assert.matches(c[2], out, 1, true)
      assert.matches("bad.lua:1:", out, 1, true)
    end
  end)
end)
