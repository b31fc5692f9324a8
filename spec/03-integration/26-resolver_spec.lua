-- Upstream servers given by name: resolved through the configured name
-- servers (spec/support/dns.py, a fake DNS server on loopback) without
-- blocking, again every `resolve` interval; a name that stops resolving keeps
-- its addresses, one that never resolved gets no requests; startup waits at
-- most resolver.timeout for the first answers.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale
local PYTHON = (os.getenv("PYTHON") or "") ~= "" and os.getenv("PYTHON") or "python3"

-- dns.py on a free port, answering from a zone file the spec rewrites
local function start_dns(zone)
  local dir = helpers.tmpdir("dns")
  local d = { path = dir .. "/zone.json" }
  function d.set(z)
    -- written whole, then renamed: dns.py never reads half a zone
    helpers.write_file(d.path .. ".tmp", cjson.encode(z))
    assert(os.rename(d.path .. ".tmp", d.path))
  end
  d.set(zone)
  d.proc = helpers.spawn({ PYTHON, "-u", helpers.support .. "/dns.py", d.path }, { dir = dir })
  d.port = helpers.wait_until(function()
    local port = d.proc:stdout():match("ready (%d+)")
    if port then return tonumber(port) end
    if not d.proc:alive() then return -1 end
  end, 10 * S)
  assert(d.port and d.port > 0, "dns.py did not start: " .. d.proc:stdout() .. d.proc:stderr())
  d.addr = "127.0.0.1:" .. d.port
  -- queries dns.py received for name (both types)
  function d.queries(name)
    local n = 0
    for _ in d.proc:stdout():gmatch("query " .. name:gsub("%p", "%%%0") .. " ") do n = n + 1 end
    return n
  end
  return d
end

-- origin.py listening on host:port (another loopback address than 127.0.0.1)
local function start_origin_at(host, port)
  local p = helpers.spawn({ PYTHON, "-u", helpers.support .. "/origin.py", tostring(port), host },
    { dir = helpers.tmpdir("origin") })
  local ok = helpers.wait_until(function()
    if p:stdout():match("ready %d+") then return "up" end
    if not p:alive() then return "exited" end
  end, 10 * S)
  assert(ok == "up", "origin.py on " .. host .. " did not start: " .. p:stdout() .. p:stderr())
  return p
end

-- requests host:port's origin.py served (its /stats), and whether it saw
-- a request for path
local function origin_stats(host, port)
  local c = assert(helpers.connection(port, { host = host }))
  local res = assert(c:request({ path = "/stats" }))
  c:close()
  return helpers.json(res.body)
end

local function origin_saw(host, port, path)
  for _, e in ipairs(origin_stats(host, port).log) do
    if e.target == path then return true end
  end
  return false
end

-- moxy with one pool of the given servers, asking dns for names
local function start_moxy(dns, servers, extra)
  local conf = {
    upstreams = { app = { servers = servers, resolve = "1s" } },
    resolver = { nameservers = { dns.addr }, timeout = "1s" },
    timeouts = { connect = "1s", upstream = "2s" },
    log = { level = "info" },
  }
  for k, v in pairs(extra or {}) do conf[k] = v end
  return helpers.start_moxy(conf)
end

local function grep(text, needle) return text:find(needle, 1, true) ~= nil end

describe("resolver", function()
  local origin -- on 127.0.0.1

  lazy_setup(function() origin = helpers.start_origin() end)
  lazy_teardown(function() helpers.stop_all() end)

  describe("a name", function()
    local dns, m

    lazy_setup(function()
      -- a slow answer: moxy has to wait for it before it listens
      dns = start_dns({ ["app.test"] = { a = { "127.0.0.1" }, delay = 0.3 } })
      m = start_moxy(dns, { "app.test:" .. origin.port })
    end)

    it("is resolved before moxy listens", function()
      assert.truthy(grep(m:stderr(), "[info] upstream app: app.test:" .. origin.port .. " resolves to 127.0.0.1"),
        m:stderr())
      assert.is_true(dns.queries("app.test") >= 1)
    end)

    it("gets its requests at the address the name server gives", function()
      local res = helpers.request(m.port, { path = "/echo/by-name" })
      assert.equal(200, res and res.status, res and res.body)
      assert.equal(1, #origin:saw("^/echo/by%-name$"))
    end)
  end)

  describe("a name that moves", function()
    local port, dns, m

    lazy_setup(function()
      port = helpers.free_port()
      start_origin_at("127.0.0.1", port)
      start_origin_at("127.0.0.2", port)
      dns = start_dns({ ["moving.test"] = { a = { "127.0.0.1" } } })
      m = start_moxy(dns, { "moving.test:" .. port })
    end)

    it("gets its requests at its first address", function()
      local res = helpers.request(m.port, { path = "/echo/before" })
      assert.equal(200, res and res.status, res and res.body)
      assert.is_true(origin_saw("127.0.0.1", port, "/echo/before"))
      assert.is_false(origin_saw("127.0.0.2", port, "/echo/before"))
    end)

    it("is resolved again every `resolve`, and the new address is logged", function()
      local before = dns.queries("moving.test")
      dns.set({ ["moving.test"] = { a = { "127.0.0.2" } } })
      -- resolve = 1s: within a few seconds moxy asks again and moves
      local moved = helpers.wait_until(function()
        return grep(m:stderr(), "upstream app: moving.test:" .. port .. " resolves to 127.0.0.2")
      end, 5 * S, 0.05)
      assert.truthy(moved, m:stderr())
      assert.is_true(dns.queries("moving.test") > before)
    end)

    it("gets new requests at its new address", function()
      local n = 0
      local reached = helpers.wait_until(function()
        n = n + 1
        local path = "/echo/after-" .. n
        local r = helpers.request(m.port, { path = path })
        return r and r.status == 200 and origin_saw("127.0.0.2", port, path)
      end, 5 * S, 0.1)
      assert.truthy(reached, "no request reached 127.0.0.2 after the move")
      -- and the next ones too: the old address is gone
      for i = 1, 3 do
        local path = "/echo/later-" .. i
        local r = helpers.request(m.port, { path = path })
        assert.equal(200, r and r.status)
        assert.is_true(origin_saw("127.0.0.2", port, path))
        assert.is_false(origin_saw("127.0.0.1", port, path))
      end
    end)
  end)

  describe("a name that stops resolving", function()
    local dns, m

    lazy_setup(function()
      dns = start_dns({ ["sticky.test"] = { a = { "127.0.0.1" } } })
      m = start_moxy(dns, { "sticky.test:" .. origin.port })
    end)

    local function warnings()
      return select(2, m:stderr():gsub("cannot resolve sticky%.test", ""))
    end

    it("keeps its addresses when the name server says it does not exist, with a warning", function()
      local before = dns.queries("sticky.test")
      dns.set({}) -- NXDOMAIN from now on
      local warned = helpers.wait_until(function()
        return m:stderr():match("%[warn%] upstream app: cannot resolve sticky%.test:%d+: [^\n]*; " ..
          "keeping its last addresses %(127%.0%.0%.1%)")
      end, 5 * S, 0.05)
      assert.truthy(warned, m:stderr())
      assert.is_true(dns.queries("sticky.test") > before)
    end)

    it("still gets requests at its last address", function()
      local res = helpers.request(m.port, { path = "/echo/after-nxdomain" })
      assert.equal(200, res and res.status, res and res.body)
      assert.equal(1, #origin:saw("^/echo/after%-nxdomain$"))
    end)

    it("keeps its addresses when the name server stops answering, with a warning", function()
      dns.set({ __silent = true })
      local warned = helpers.wait_until(function()
        return grep(m:stderr(), "[warn] upstream app: cannot resolve sticky.test:" .. origin.port ..
          ": no answer from the name servers within 1s; keeping its last addresses (127.0.0.1)")
      end, 6 * S, 0.05)
      assert.truthy(warned, m:stderr())
    end)

    it("still gets requests at its last address while the name server is silent", function()
      local res = helpers.request(m.port, { path = "/echo/after-silence" })
      assert.equal(200, res and res.status, res and res.body)
      assert.equal(1, #origin:saw("^/echo/after%-silence$"))
    end)

    it("logs a failure that goes on once, and when the name answers again", function()
      local n = warnings()
      assert.equal(2, n) -- NXDOMAIN, then the timeout: not one per interval
      local before = dns.queries("sticky.test")
      helpers.wait_until(function() return dns.queries("sticky.test") >= before + 4 end, 6 * S, 0.05)
      assert.is_true(dns.queries("sticky.test") >= before + 4) -- two more lookups of A + AAAA
      assert.equal(n, warnings())
      dns.set({ ["sticky.test"] = { a = { "127.0.0.1" } } })
      assert.truthy(helpers.wait_until(function()
        return grep(m:stderr(), "[info] upstream app: sticky.test:" .. origin.port .. " resolves again to 127.0.0.1")
      end, 6 * S, 0.05), m:stderr())
    end)
  end)

  describe("a name that never resolves", function()
    local dns

    lazy_setup(function() dns = start_dns({}) end)

    it("does not stop moxy, gets a quick 502 and a warning that says why", function()
      local m = start_moxy(dns, { "nowhere.test:" .. origin.port })
      assert.truthy(grep(m:stderr(), "[warn] upstream app: cannot resolve nowhere.test:" .. origin.port ..
        ": nodename nor servname provided, or not known; it gets no requests until it resolves"), m:stderr())
      local t0 = helpers.now()
      local res = helpers.request(m.port, { path = "/echo/unresolved" })
      assert.equal(502, res and res.status)
      assert.is_true(helpers.now() - t0 < 1 * S, "the 502 took " .. (helpers.now() - t0) .. " s")
      assert.equal(0, #origin:saw("^/echo/unresolved$"))
    end)

    it("leaves the other servers of its pool serving", function()
      local m = start_moxy(dns, { "nowhere.test:" .. origin.port, origin.addr })
      for i = 1, 4 do
        local r = helpers.request(m.port, { path = "/echo/mixed-" .. i })
        assert.equal(200, r and r.status, r and r.body)
      end
      assert.equal(4, #origin:saw("^/echo/mixed%-%d$"))
    end)
  end)

  it("does not wait longer than resolver.timeout for a name server that does not answer", function()
    local dns = start_dns({ __silent = true })
    local t0 = helpers.now()
    local m = start_moxy(dns, { "quiet.test:" .. origin.port })
    local took = helpers.now() - t0
    assert.is_true(took < 1 + 1.5 * S, "moxy took " .. took .. " s to listen")
    assert.is_true(dns.queries("quiet.test") >= 1)
    assert.truthy(helpers.wait_until(function()
      return grep(m:stderr(), "[warn] upstream app: cannot resolve quiet.test:" .. origin.port ..
        ": no answer from the name servers within 1s; it gets no requests until it resolves")
    end, 3 * S, 0.05), m:stderr())
    local res = helpers.request(m.port, { path = "/echo/quiet" })
    assert.equal(502, res and res.status)
    assert.is_true(m:alive())
  end)

  it("does not wait at all when no server is given by name", function()
    local dns = start_dns({ __silent = true })
    local t0 = helpers.now()
    local m = start_moxy(dns, { origin.addr })
    assert.is_true(helpers.now() - t0 < 0.8 * S, "moxy took " .. (helpers.now() - t0) .. " s to listen")
    assert.equal(200, helpers.request(m.port, { path = "/echo/literal" }).status)
    assert.equal(0, select(2, dns.proc:stdout():gsub("query ", "")))
  end)

  it("reads /etc/hosts before asking the name servers", function()
    -- a name this machine's /etc/hosts maps to 127.0.0.1, other than localhost
    local name
    for line in (helpers.read_file("/etc/hosts") or ""):gmatch("[^\n]+") do
      local ip, names = line:match("^%s*(127%.0%.0%.1)%s+([^#]+)")
      for n in (ip and names or ""):gmatch("%S+") do
        if not name and n ~= "localhost" and n:match("^[%a][%w.-]*$") then name = n end
      end
    end
    if not name then
      pending("no name other than localhost maps to 127.0.0.1 in /etc/hosts")
      return
    end
    local dns = start_dns({ __silent = true }) -- only /etc/hosts can answer
    local m = start_moxy(dns, { name .. ":" .. origin.port })
    assert.truthy(grep(m:stderr(), "[info] upstream app: " .. name .. ":" .. origin.port .. " resolves to 127.0.0.1"),
      m:stderr())
    assert.equal(0, dns.queries(name:lower()))
    -- and the requests go there
    local res = helpers.request(m.port, { path = "/echo/hosts" })
    assert.equal(200, res and res.status, res and res.body)
  end)
end)
