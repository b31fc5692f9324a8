-- moxy.config: the checks and normalisation of configuration files, pure Lua.
package.path = "lua/?.lua;" .. package.path
local config = require "moxy.config"

local function tmpfile(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(src)
  f:close()
  return path
end

local BASE = [[
return {
  workers = 2,
  listen = { "127.0.0.1:8080", { addr = "[::1]:8081", name = "v6" } },
  upstreams = {
    app = { servers = { "127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 } } },
  },
  limits = { header_bytes = "16k", body_bytes = "2m" },
  timeouts = { connect = "250ms", upstream = 5, keepalive = "2m" },
}
]]

describe("moxy.config", function()
  it("normalises sizes, durations and addresses", function()
    local path = tmpfile(BASE)
    local c, errs = config.load(path)
    os.remove(path)
    assert.is_nil(errs)
    assert.equal(2, c.workers)
    assert.equal(16384, c.limits.header_bytes)
    assert.equal(2 * 1024 * 1024, c.limits.body_bytes)
    assert.equal(100, c.limits.headers) -- default
    assert.near(0.25, c.timeouts.connect, 1e-9)
    assert.equal(5, c.timeouts.upstream)
    assert.equal(120, c.timeouts.keepalive)
    assert.equal("::1", c.listen[2].addr.host)
    assert.equal(6, c.listen[2].addr.family)
    assert.equal(8081, c.listen[2].addr.port)
    assert.equal("v6", c.listen[2].name)
    assert.equal("127.0.0.1:8080", c.listen[1].name)
    assert.equal(3, c.upstreams[1].servers[2].weight)
    assert.equal("app", c.default_upstream) -- the only pool
  end)

  it("turns workers = \"auto\" into 0 (one per core, decided by the core)", function()
    local path = tmpfile((BASE:gsub("workers = 2", 'workers = "auto"')))
    local c = config.load(path)
    os.remove(path)
    assert.equal(0, c.workers)
  end)

  it("names file, line and key path of each problem", function()
    local src = BASE:gsub("workers = 2,", "workers = 2,\n  colour = 'blue',")
      :gsub('"127.0.0.1:9001"', '"127.0.0.1:70000"')
      :gsub('connect = "250ms"', 'connect = "fast"')
    local path = tmpfile(src)
    local c, errs = config.load(path)
    os.remove(path)
    assert.is_nil(c)
    local text = table.concat(errs, "\n")
    assert.matches(path:gsub("%p", "%%%0") .. ":3: colour: unknown key", text)
    assert.matches(":6: upstreams%.app%.servers%[1%]: bad address \"127%.0%.0%.1:70000\"", text)
    assert.matches(":9: timeouts%.connect: bad duration \"fast\"", text)
    assert.equal(3, #errs)
  end)

  it("takes IP literals, localhost and * for listeners, not names", function()
    assert.is_nil((config._address("example.com:80")))
    assert.same("0.0.0.0", config._address("*:80").host)
    assert.same("127.0.0.1", config._address("localhost:80").host)
    assert.is_nil((config._address("1.2.3.256:80")))
    assert.is_nil((config._address("1.2.3.4:0")))
  end)

  it("parses sizes and durations with units", function()
    assert.equal(1024, config._size("1k"))
    assert.equal(3 * 1024 ^ 3, config._size("3g"))
    assert.equal(77, config._size(77))
    assert.is_nil((config._size("1.5m")))
    assert.equal(0.5, config._duration("500ms"))
    assert.equal(3600, config._duration("1h"))
    assert.equal(90, config._duration("1.5m"))
    assert.is_nil((config._duration("-1")))
  end)

  -- found by fuzz/config_fuzz.c (the core converts them to size_t and to
  -- microseconds in 64 bits: inf and 1e20 do not fit)
  it("refuses sizes and durations too large to convert", function()
    assert.equal(2 ^ 53, config._size(2 ^ 53))
    assert.is_nil((config._size(2 ^ 53 + 2)))
    assert.is_nil((config._size(math.huge)))
    assert.is_nil((config._size("99999999999999999999")))
    assert.is_nil((config._size("9999999999g")))
    assert.equal(3650 * 86400, config._duration(3650 * 86400))
    assert.is_nil((config._duration(math.huge)))
    assert.is_nil((config._duration(0 / 0)))
    assert.is_nil((config._duration("1e999")))
    assert.is_nil((config._duration("99999999999999999999h")))
    assert.equal(87600 * 3600, config._duration("87600h"))
  end)

  it("refuses IPv4 octets with a leading zero, as inet_pton does", function()
    assert.is_nil((config._address("127.0.0.01:80")))
    assert.is_nil((config._cidr("010.0.0.0/8")))
    assert.is_nil((config._cidr("::ffff:10.0.0.01")))
    assert.same("10.0.0.0", config._cidr("10.0.0.0/8").addr)
    assert.same("0.0.0.0", config._address("0.0.0.0:80").host)
  end)

  it("takes scripts as paths or { path, jit } and a CPU budget", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/a.lua", "wb"))
    f:write("return {}\n")
    f:close()
    local path = dir .. "/moxy.lua"
    f = assert(io.open(path, "wb"))
    f:write((BASE:gsub("workers = 2,", 'workers = 2,\n  scripts = { "a.lua", { path = "a.lua", jit = true }, { "a.lua" } },\n'
      .. '  lua = { cpu_budget = "20ms" },')))
    f:close()
    local c, errs = config.load(path)
    assert.is_nil(errs)
    assert.same({ path = dir .. "/a.lua", jit = false }, c.scripts[1])
    assert.same({ path = dir .. "/a.lua", jit = true }, c.scripts[2])
    assert.same({ path = dir .. "/a.lua", jit = false }, c.scripts[3])
    assert.near(0.02, c.lua.cpu_budget, 1e-9)
    f = assert(io.open(path, "wb"))
    f:write((BASE:gsub("workers = 2,", 'workers = 2,\n  scripts = { { path = "a.lua", jit = "yes" } },')))
    f:close()
    c, errs = config.load(path)
    assert.is_nil(c)
    assert.matches(":3: scripts%[1%]%.jit: expected a boolean", errs[1])
    os.execute("rm -rf " .. dir)
  end)

  local function load_src(src)
    local path = tmpfile(src)
    local c, errs = config.load(path)
    os.remove(path)
    return c, errs
  end

  it("fills every upstream option's default", function()
    local c = assert(load_src(BASE))
    local u = c.upstreams[1]
    assert.equal("round_robin", u.balance)
    assert.equal(2, u.tries)
    assert.equal(0, u.retry_timeout)
    assert.same({}, u.retry_statuses)
    assert.equal(0.2, u.retry_budget)
    assert.equal(10, u.retry_budget_min)
    assert.equal(30, u.resolve)
    assert.same({ failures = 3, window = 10, backoff = 10, max_backoff = 300, statuses = {}, max_ejected = 0.5 },
      u.passive)
    assert.is_nil(u.health)
    local s = u.servers[1]
    assert.same({ false, 0, 0, false, 1 }, { s.backup, s.max_conns, s.slow_start, s.drain, s.weight })
    assert.same({ nameservers = {}, timeout = 5 }, c.resolver)
  end)

  it("reads balance, retries, passive and active health, names and server options", function()
    local c, errs = load_src([[
return {
  listen = "127.0.0.1:8080",
  upstreams = { app = {
    servers = { "127.0.0.1:9001", { addr = "app.internal:9002", backup = true, max_conns = 5, slow_start = "30s",
                                    drain = true } },
    balance = "hash", tries = 3, retry_timeout = "2s", retry_statuses = { 429, "502-503", "5xx" },
    passive = false,
    health = { path = "/healthz", interval = "1s", body = "ok$", statuses = { 200 } },
  } },
  resolver = { nameservers = { "127.0.0.1:5353" }, timeout = "1s" },
}
]])
    assert.is_nil(errs)
    local u = c.upstreams[1]
    assert.equal("hash", u.balance)
    assert.equal(3, u.tries)
    assert.equal(2, u.retry_timeout)
    assert.equal(429, u.retry_statuses[1])
    assert.equal(1 + 2 + 100, #u.retry_statuses)
    assert.equal(0, u.passive.failures)
    assert.same({ 200 }, u.health.statuses)
    assert.same({ "http", "GET", "/healthz", 1, 2, 2, 2 },
      { u.health.type, u.health.method, u.health.path, u.health.interval, u.health.timeout, u.health.healthy,
        u.health.unhealthy })
    local s = u.servers[2]
    assert.same({ "app.internal", 9002, 0 }, { s.name, s.port, s.family })
    assert.same({ true, 5, 30, true }, { s.backup, s.max_conns, s.slow_start, s.drain })
    assert.same({ "127.0.0.1:5353" }, c.resolver.nameservers)
  end)

  it("names the key of each bad upstream option", function()
    local _, errs = load_src([[
return {
  listen = "127.0.0.1:8080",
  upstreams = { app = {
    servers = { "127.0.0.1:9001", "127.0.0.1:9001", { addr = "bad_name!:80" } },
    balance = "fastest",
    retry_statuses = { 700 },
    retry_budget = 2,
    passive = { failures = -1, colour = 1 },
    health = { type = "udp", path = "healthz", body = "(" },
    host = "a\r\nX-Evil: 1",
  },
  only_backups = { servers = { { addr = "127.0.0.1:1", backup = true } } } },
}
]])
    local text = table.concat(errs, "\n")
    assert.matches(":4: upstreams%.app%.servers%[2%]: listed twice", text)
    assert.matches("upstreams%.app%.servers%[3%]%.addr: bad address", text)
    assert.matches(":5: upstreams%.app%.balance: expected one of", text)
    assert.matches(":6: upstreams%.app%.retry_statuses%[1%]: expected a status", text)
    assert.matches(":7: upstreams%.app%.retry_budget: expected a number in 0%.%.1", text)
    assert.matches(":8: upstreams%.app%.passive%.failures: expected a number in 0%.%.1000", text)
    assert.matches(":8: upstreams%.app%.passive%.colour: unknown key", text)
    assert.matches(":9: upstreams%.app%.health%.type: expected one of", text)
    assert.matches(":9: upstreams%.app%.health%.path: expected a path", text)
    assert.matches(":9: upstreams%.app%.health%.body: bad pattern", text)
    assert.matches("upstreams%.only_backups%.servers: every server is a backup", text)
    assert.matches("upstreams%.app%.host: bad Host value", text)
  end)

  it("reads trusted_proxies, real_ip_header and a listener's proxy_protocol", function()
    local c, errs = load_src([[
return {
  listen = { { addr = "127.0.0.1:8080", proxy_protocol = true }, "127.0.0.1:8081" },
  upstreams = { app = { servers = { "127.0.0.1:9001" } } },
  trusted_proxies = { "127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "::ffff:192.168.0.0/112", "1:2:3:4:5:6:7:8/128" },
  real_ip_header = "forwarded",
}
]])
    assert.is_nil(errs)
    assert.is_true(c.listen[1].proxy_protocol)
    assert.is_false(c.listen[2].proxy_protocol)
    assert.equal("Forwarded", c.real_ip_header)
    assert.same({ text = "10.0.0.0/8", addr = "10.0.0.0", family = 4, bits = 8 }, c.trusted_proxies[2])
    assert.same({ text = "::1", addr = "::1", family = 6, bits = 128 }, c.trusted_proxies[3])
    assert.equal(112, c.trusted_proxies[5].bits)
    assert.equal(6, #c.trusted_proxies)
    local d = load_src('return { listen = "127.0.0.1:8080" }')
    assert.same({}, d.trusted_proxies)
    assert.equal("X-Forwarded-For", d.real_ip_header)
    assert.is_false(d.listen[1].proxy_protocol)
  end)

  it("names each bad trusted_proxies entry, real_ip_header and proxy_protocol", function()
    local _, errs = load_src([[
return {
  listen = { { addr = "127.0.0.1:8080", proxy_protocol = "yes" } },
  trusted_proxies = { "10.0.0.0/33", "proxy.internal", "::1/129", 7, "1::2::3", "1.2.3.4/" },
  real_ip_header = "X-Real-IP",
}
]])
    local text = table.concat(errs, "\n")
    assert.matches(":2: listen%[1%]%.proxy_protocol: expected a boolean", text)
    assert.matches(":3: trusted_proxies%[1%]: bad prefix in \"10%.0%.0%.0/33\" %(at most /32%)", text)
    assert.matches(":3: trusted_proxies%[2%]: bad address \"proxy%.internal\"", text)
    assert.matches(":3: trusted_proxies%[3%]: bad prefix in \"::1/129\" %(at most /128%)", text)
    assert.matches("trusted_proxies%[4%]: expected an address or CIDR", text)
    assert.matches(":3: trusted_proxies%[5%]: bad address \"1::2::3\"", text)
    assert.matches(":3: trusted_proxies%[6%]: bad address \"1%.2%.3%.4/\"", text)
    assert.matches(":4: real_ip_header: expected \"X%-Forwarded%-For\" or \"Forwarded\", got X%-Real%-IP", text)
    assert.equal(8, #errs)
  end)

  it("tells IPv6 literals from what only looks like one", function()
    for _, ok in ipairs { "::", "::1", "2001:db8::1", "fe80::1:2", "1:2:3:4:5:6:7:8", "::ffff:10.0.0.1",
                          "1:2:3:4:5:6:1.2.3.4", "2001:DB8::A" } do
      assert.is_table(config._cidr(ok), ok)
    end
    for _, bad in ipairs { ":", ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", "g::1", ":1::", "1::2:",
                           "::1.2.3.256", "1:2:3:4:5:6:7:1.2.3.4", "[::1]", "::1%eth0", "" } do
      assert.is_nil((config._cidr(bad)), bad)
    end
  end)

  it("reads geoip databases by name, paths relative to the file, and names bad ones", function()
    local c, errs = load_src([[
return {
  listen = "127.0.0.1:8080",
  upstreams = { app = { servers = { "127.0.0.1:9001" } } },
  geoip = { city = "GeoLite2-City.mmdb", asn = "/var/lib/GeoIP/GeoLite2-ASN.mmdb" },
}
]])
    assert.is_nil(errs)
    assert.equal("asn", c.geoip[1].name)
    assert.equal("/var/lib/GeoIP/GeoLite2-ASN.mmdb", c.geoip[1].path)
    assert.equal(4, c.geoip[1].line)
    assert.matches("/GeoLite2%-City%.mmdb$", c.geoip[2].path)
    assert.are_not.equal("G", c.geoip[2].path:sub(1, 1))
    local _, errs2 = load_src([[
return {
  listen = "127.0.0.1:8080",
  upstreams = { app = { servers = { "127.0.0.1:9001" } } },
  geoip = { ["2bad"] = "x.mmdb", ok = 42 },
}
]])
    local text = table.concat(errs2, "\n")
    assert.matches(":4: geoip%.2bad: database names are identifiers", text)
    assert.matches(":4: geoip%.ok: expected a string, got number", text)
  end)

  it("reads pid_file, watch and cache, with their defaults and errors", function()
    local path = tmpfile(BASE)
    local c = config.load(path)
    os.remove(path)
    assert.matches("/moxy%.pid$", c.pid_file) -- beside the file
    assert.is_false(c.watch)
    assert.is_nil(c.cache) -- off unless configured
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, pid_file = false, watch = true,
  cache = { size = "64m", purge = { "127.0.0.1", "10.0.0.0/8" }, coalesce_timeout = "2s" },]])))
    c = config.load(path)
    os.remove(path)
    assert.is_nil(c.pid_file)
    assert.is_true(c.watch)
    assert.equal(64 * 1024 * 1024, c.cache.size)
    assert.equal(8 * 1024 * 1024, c.cache.max_object) -- an eighth of a cache under 128m
    assert.equal(2, #c.cache.purge)
    assert.equal(2, c.cache.coalesce_timeout)
    assert.same({ "CDN-Cache-Control" }, c.cache.targeted_fields)
    assert.equal("auto", c.cache.sendfile)
    assert.equal(0, c.cache.stale_if_error)
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, cache = { targeted_fields = { "Moxy-Cache-Control" }, sendfile = false, stale_if_error = "10s" },]])))
    c = config.load(path)
    os.remove(path)
    assert.equal(10, c.cache.stale_if_error)
    assert.same({ "Moxy-Cache-Control" }, c.cache.targeted_fields)
    assert.is_false(c.cache.sendfile)
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, watch = "yes",
  cache = { size = "100k", max_object = "1g", colour = 1, purge = { "nope" }, targeted_fields = { "a b" },
            sendfile = "yes" },]])))
    local errs
    c, errs = config.load(path)
    os.remove(path)
    assert.is_nil(c)
    local all = table.concat(errs, "\n")
    assert.matches("watch", all)
    assert.matches("cache%.size: at least 1m", all)
    assert.matches("cache%.colour", all)
    assert.matches("cache%.purge%[1%]", all)
    assert.matches("cache%.targeted_fields%[1%]: a header field name", all)
    assert.matches('cache%.sendfile: true, false or "auto"', all)
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, cache = { size = "4m", max_object = "3m" },]])))
    c, errs = config.load(path)
    os.remove(path)
    assert.is_nil(c)
    assert.matches("cache%.max_object: at most half of cache%.size", table.concat(errs, "\n"))
  end)

  it("reads mask: the defaults, a listener's over the top level's, lists lower-cased without repeats", function()
    local path = tmpfile(BASE)
    local c = config.load(path)
    os.remove(path)
    local want = {}
    for i, n in ipairs(config.MASK_HEADERS) do want[i] = n:lower() end
    assert.same({ headers = want, via = "moxy" }, c.mask) -- no Server of moxy's own
    assert.is_nil(c.listen[1].mask) -- the top level's
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2,
  mask = { headers = { "Server", "x-RUNTIME", "server" }, add = { "X-Internal-Host" }, server = true, via = "edge-1" },]])
      :gsub('name = "v6" }', 'name = "v6", mask = { add = { "X-Extra" }, via = false } }')))
    c = config.load(path)
    os.remove(path)
    assert.same({ headers = { "server", "x-runtime", "x-internal-host" }, server = "moxy", via = "edge-1" }, c.mask)
    assert.same({ headers = { "server", "x-runtime", "x-internal-host", "x-extra" }, server = "moxy" },
      c.listen[2].mask)
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, mask = false,]])
      :gsub('name = "v6" }', 'name = "v6", mask = true }')))
    c = config.load(path)
    os.remove(path)
    assert.same({ headers = {}, via = "moxy" }, c.mask)
    assert.same(want, c.listen[2].mask.headers)
    path = tmpfile((BASE:gsub("workers = 2,", [[workers = 2, mask = { headers = false, server = "edge/2" },]])))
    c = config.load(path)
    os.remove(path)
    assert.same({ headers = {}, server = "edge/2", via = "moxy" }, c.mask)
  end)

  it("reports a syntax error with its line", function()
    local path = tmpfile("return {\n  workers = ,\n}\n")
    local c, errs = config.load(path)
    os.remove(path)
    assert.is_nil(c)
    assert.matches(":2:", errs[1])
  end)
end)
