-- GeoIP: moxy reads MaxMind databases exactly as libmaxminddb's own
-- mmdblookup does (MaxMind's official test databases, when
-- ../shared/testdata/geoip is present), fails cleanly on broken ones, and
-- swaps a database replaced on disk without dropping a request.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local TESTDATA = helpers.root .. "/../shared/testdata/geoip"
local MMDBLOOKUP = "/usr/bin/mmdblookup"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local HAVE_TESTDATA = exists(TESTDATA .. "/GeoIP2-City-Test.mmdb")

-- The project's own test databases (spec/support/geoip/*.json), built once
-- with geoip/mmdb-build into a temporary directory: name -> path.
local built
local function own_dbs()
  if built then return built end
  local dir = helpers.tmpdir("geodb")
  built = {}
  for _, name in ipairs { "city", "asn", "anonymous-ip" } do
    local out = dir .. "/" .. name .. ".mmdb"
    local p = assert(io.popen("cd '" .. helpers.root .. "' && luajit geoip/mmdb-build spec/support/geoip/" .. name
      .. ".json '" .. out .. "' 2>&1"))
    local text = p:read("*a")
    assert(p:close(), "mmdb-build " .. name .. ": " .. text)
    built[name] = out
  end
  return built
end

-- The site: POST /lookup with lines "db ip" -> a JSON list of
-- { rec = record } or { err = message }, one per line (db "-": all merged).
local SITE = [[
return {
  on_request = function(txn)
    if txn.req.path ~= "/lookup" then return end
    local body = assert(txn:read_body())
    local out = {}
    for line in body:gmatch("[^\n]+") do
      local db, ip = line:match("^(%S+) (%S+)$")
      local rec, err = moxy.geo.lookup(ip, db ~= "-" and db or nil)
      out[#out + 1] = rec and { rec = rec } or { err = err }
    end
    return txn:respond(200, moxy.json.encode(out))
  end,
}
]]

local DBS = {
  city = "GeoIP2-City-Test.mmdb", lite_city = "GeoLite2-City-Test.mmdb", country = "GeoIP2-Country-Test.mmdb",
  lite_country = "GeoLite2-Country-Test.mmdb", asn = "GeoLite2-ASN-Test.mmdb",
  anon = "GeoIP2-Anonymous-IP-Test.mmdb", mixed = "MaxMind-DB-test-mixed-24.mmdb",
  ipv4 = "MaxMind-DB-test-ipv4-24.mmdb",
}

-- What the source JSON of each database lists (database -> source file).
local SOURCES = {
  city = "GeoIP2-City-Test.json", country = "GeoIP2-Country-Test.json", asn = "GeoLite2-ASN-Test.json",
  anon = "GeoIP2-Anonymous-IP-Test.json",
}

local function lookups(m, lines)
  local res = assert(helpers.request(m.port, { method = "POST", path = "/lookup", body = table.concat(lines, "\n") }))
  assert.equal(200, res.status, res.body)
  return assert(cjson.decode(res.body))
end

-- mmdblookup's output -> the record as a Lua table (numbers as numbers,
-- uint64 above 2^53 and uint128 as text), or nil when not found.
local function parse_mmdblookup(text)
  if text:find("Could not find an entry") then return nil end
  local stack, key_stack, root = {}, {}, nil
  local pending_key
  local function put(v)
    local top = stack[#stack]
    if not top then
      root = v
    elseif top.array then
      top.t[#top.t + 1] = v
    else
      top.t[pending_key] = v
      pending_key = nil
    end
  end
  for line in text:gmatch("[^\n]+") do
    local s = line:match("^%s*(.-)%s*$")
    if s == "{" or s == "[" then
      local t = {}
      put(t)
      key_stack[#key_stack + 1] = pending_key
      stack[#stack + 1] = { t = t, array = s == "[" }
    elseif s == "}" or s == "]" then
      stack[#stack] = nil
    elseif s:match('^".*":$') then
      pending_key = s:match('^"(.*)":$')
    elseif s ~= "" then
      local v, ty = s:match("^(.-) <([%w_]+)>$")
      assert(v, "cannot parse mmdblookup line: " .. s)
      if ty == "utf8_string" then
        put(v:match('^"(.*)"$'))
      elseif ty == "boolean" then
        put(v == "true")
      elseif ty == "uint128" or (ty == "uint64" and #v > 15) then
        put(v)
      elseif ty == "bytes" then
        put(v)
      else
        put(tonumber(v))
      end
    end
  end
  return root
end

local function mmdblookup(file, ip)
  local p = assert(io.popen(MMDBLOOKUP .. " --file '" .. file .. "' --ip '" .. ip .. "' 2>&1"))
  local out = p:read("*a")
  p:close()
  return parse_mmdblookup(out), out
end

-- Deep equality; numbers within 1e-6 (mmdblookup prints doubles with 6
-- decimals); an empty table equals an empty table (map or array).
local function same(a, b, path)
  path = path or "record"
  if type(a) == "number" and type(b) == "number" then
    if math.abs(a - b) > 1e-6 * math.max(1, math.abs(a)) then return false, path .. ": " .. a .. " ~= " .. b end
    return true
  end
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " ~= " .. type(b) end
  if type(a) ~= "table" then
    if a ~= b then return false, path .. ": " .. tostring(a) .. " ~= " .. tostring(b) end
    return true
  end
  for k, v in pairs(a) do
    local ok, why = same(v, b[k], path .. "." .. tostring(k))
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "." .. tostring(k) .. ": missing" end
  end
  return true
end

-- The addresses to look up for a source network: its first address as
-- written, and for IPv4 networks written as ::a.b.c.d also a.b.c.d and
-- ::ffff:a.b.c.d.
local function addresses(network)
  local ip = network:match("^(.-)/%d+$") or network
  local out = { ip }
  local v4 = ip:match("^::(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    out[#out + 1] = v4
    out[#out + 1] = "::ffff:" .. v4
  elseif ip:match("^%d+%.%d+%.%d+%.%d+$") then
    out[#out + 1] = "::ffff:" .. ip
  end
  return out
end

describe("geoip", function()
  describe("reads MaxMind's test databases as mmdblookup does", function()
    local m
    setup(function()
      if not HAVE_TESTDATA then return end
      assert(exists(MMDBLOOKUP), "mmdblookup (Debian package mmdb-bin) is missing")
      local geoip = {}
      for name, file in pairs(DBS) do geoip[name] = TESTDATA .. "/" .. file end
      -- one hook call looks up every network of a database: under ASan, on a
      -- busy machine, that is more than the default 50 ms budget of wall time
      m = helpers.start_moxy({ geoip = geoip, scripts = { "site.lua" }, lua = { cpu_budget = "2s" } },
        { files = { ["site.lua"] = SITE } })
    end)
    teardown(function() if m then m:stop() end end)

    for db, source in pairs(SOURCES) do
      it("for every network of " .. DBS[db] .. " (IPv4 and IPv6)", function()
        if not HAVE_TESTDATA then pending("no " .. TESTDATA) return end
        local networks = assert(cjson.decode((assert(helpers.read_file(TESTDATA .. "/source/" .. source)))))
        local lines, ips = {}, {}
        for _, entry in ipairs(networks) do
          local net = next(entry)
          for _, ip in ipairs(addresses(net)) do
            ips[#ips + 1] = ip
            lines[#lines + 1] = db .. " " .. ip
          end
        end
        local got = lookups(m, lines)
        local found, v6, v4 = 0, 0, 0
        for i, ip in ipairs(ips) do
          local want, raw = mmdblookup(TESTDATA .. "/" .. DBS[db], ip)
          if want == nil then
            assert.equal("not found", got[i].err, ip .. ": mmdblookup: " .. raw)
          else
            assert.is_table(got[i].rec, ip .. ": " .. tostring(got[i].err))
            local ok, why = same(want, got[i].rec)
            assert(ok, DBS[db] .. " " .. ip .. ": " .. tostring(why))
            found = found + 1
            if ip:find(":") then v6 = v6 + 1 else v4 = v4 + 1 end
          end
        end
        print(string.format("  %s: %d addresses, %d found and identical to mmdblookup (%d IPv4, %d IPv6)",
          DBS[db], #ips, found, v4, v6))
        assert.is_true(found > 0 and v4 > 0 and v6 > 0)
      end)
    end

    it("answers the README's addresses, unknown ones and bad input", function()
      if not HAVE_TESTDATA then pending("no " .. TESTDATA) return end
      local got = lookups(m, { "city 81.2.69.142", "city 2001:218::1", "city 1.1.1.1", "city ::1", "city nonsense",
                               "nope 81.2.69.142", "- 81.2.69.142", "ipv4 2001:db8::1", "mixed 1.1.1.1",
                               "lite_country 89.160.20.112" })
      assert.equal("London", got[1].rec.city.names.en)
      assert.equal("GB", got[1].rec.country.iso_code)
      assert.equal("JP", got[2].rec.country.iso_code)
      assert.equal("not found", got[3].err)
      assert.equal("not found", got[4].err)
      assert.equal("invalid address", got[5].err)
      assert.equal('no database named "nope"', got[6].err)
      -- all databases merged: the city's fields and the anonymous-IP flags
      assert.equal("London", got[7].rec.city.names.en)
      assert.equal(true, got[7].rec.is_anonymous)
      assert.equal("not found", got[8].err) -- an IPv6 address in an IPv4-only database
      assert.equal("::1.1.1.1", got[9].rec.ip)
      assert.equal("SE", got[10].rec.country.iso_code)
    end)
  end)

  describe("with a broken database", function()
    it("refuses to start when a file cannot be opened, naming file, line and key", function()
      local code, out = helpers.run_moxy_check([[
return {
  listen = "127.0.0.1:1",
  upstreams = { app = { servers = { "127.0.0.1:2" } } },
  geoip = {
    missing = "/nonexistent/x.mmdb",
    notdb = "/etc/hostname",
  },
}
]])
      assert.equal(1, code)
      assert.matches(":5: geoip%.missing: cannot open /nonexistent/x%.mmdb: No such file", out)
      assert.matches(":6: geoip%.notdb: cannot open /etc/hostname: .*", out)
    end)

    -- found by fuzz/geoip_fuzz.c: libmaxminddb lists a map used as a map key
    -- with its contents, and moxy.geo.lookup read the record out of step
    -- ({ [""] = "v" } instead of an error)
    it("answers a database error for a record whose map key is not a string", function()
      local dir = helpers.tmpdir("badkey")
      helpers.write_file(dir .. "/badkey.json", [=[
{ "database_type": "Moxy-Test-Bad-Key", "ip_version": 4,
  "networks": [ { "network": "10.0.0.0/8", "data": { "": "v", "w": "x" } } ] }
]=])
      local p = assert(io.popen("cd '" .. helpers.root .. "' && luajit geoip/mmdb-build '" .. dir .. "/badkey.json' '"
        .. dir .. "/badkey.mmdb' 2>&1"))
      local text = p:read("*a")
      assert(p:close(), "mmdb-build: " .. text)
      -- the record { "": "v", "w": "x" } is E2 40 41'v' 41'w' 41'x'; make it
      -- { {"v": "w"}: "x" }: a map of one pair whose key is a map
      local db = helpers.read_file(dir .. "/badkey.mmdb")
      local at = assert(db:find("\226\64Av" .. "AwAx", 1, true), "record not found in the built database")
      helpers.write_file(dir .. "/badkey.mmdb", db:sub(1, at - 1) .. "\225\225" .. db:sub(at + 2))
      local m = helpers.start_moxy({ geoip = { bad = dir .. "/badkey.mmdb" }, scripts = { "site.lua" } },
        { files = { ["site.lua"] = SITE } })
      finally(function() m:stop() end)
      local got = lookups(m, { "bad 10.1.2.3", "bad 192.0.2.1" })
      assert.is_nil(got[1].rec, "a record read out of step: " .. cjson.encode(got[1]))
      assert.matches("^database error", got[1].err)
      assert.equal("not found", got[2].err)
      assert.is_true(m:alive())
    end)

    it("rejects a broken MaxMind file at start, and answers lookup errors in broken records", function()
      if not HAVE_TESTDATA then pending("no " .. TESTDATA) return end
      local code, out = helpers.run_moxy_check([[
return {
  listen = "127.0.0.1:1",
  upstreams = { app = { servers = { "127.0.0.1:2" } } },
  geoip = { bad = "]] .. TESTDATA .. [[/GeoIP2-City-Test-Invalid-Node-Count.mmdb" },
}
]])
      assert.equal(1, code)
      assert.matches("geoip%.bad: cannot open .*Invalid%-Node%-Count%.mmdb: ", out)

      local m = helpers.start_moxy({
        geoip = { double = TESTDATA .. "/GeoIP2-City-Test-Broken-Double-Format.mmdb",
                  pointers = TESTDATA .. "/MaxMind-DB-test-broken-pointers-24.mmdb" },
        scripts = { "site.lua" },
      }, { files = { ["site.lua"] = SITE } })
      finally(function() m:stop() end)
      local got = lookups(m, { "double 2001:220::1", "pointers 1.1.1.16", "pointers 1.1.1.32" })
      for i = 1, 3 do
        if got[i].err then assert.matches("database error", got[i].err) end
      end
      local errors = 0
      for i = 1, 3 do if got[i].err then errors = errors + 1 end end
      assert.is_true(errors >= 2, moxy.json and "" or cjson.encode(got))
      assert.is_true(m:alive())
    end)
  end)

  describe("when a database file is replaced", function()
    it("serves on, without a failed request, and answers from the new file within a few seconds", function()
      local db = own_dbs()
      local dir = helpers.tmpdir("geo")
      local path = dir .. "/live.mmdb"
      local function install(src) -- as geoipupdate does: a new file renamed over the old
        assert(os.execute("cp '" .. src .. "' '" .. path .. ".tmp' && mv '" .. path .. ".tmp' '" .. path .. "'"))
      end
      install(db.city)
      local m = helpers.start_moxy({ workers = 2, geoip = { live = path }, scripts = { "site.lua" } },
        { files = { ["site.lua"] = SITE } })
      finally(function() m:stop() end)
      local function city()
        local got = lookups(m, { "live 81.2.69.142" })
        return got[1].rec and got[1].rec.city and got[1].rec.city.names.en or "none"
      end
      assert.equal("London", city())
      -- swap between the City and the ASN database while requests run
      local conn = assert(helpers.connection(m.port))
      local failed, sent, swaps = 0, 0, 0
      local deadline = helpers.now() + 4 * helpers.scale
      local next_swap = helpers.now()
      while helpers.now() < deadline do
        if helpers.now() >= next_swap then
          swaps = swaps + 1
          install(swaps % 2 == 1 and db.asn or db.city)
          next_swap = helpers.now() + 0.3
        end
        local res = conn:request({ method = "POST", path = "/lookup", body = "live 81.2.69.142\nlive 2001:db8::1" })
        sent = sent + 1
        if not res or res.status ~= 200 then failed = failed + 1 end
        if not res then conn = assert(helpers.connection(m.port)) end
      end
      conn:close()
      print(string.format("  %d requests with lookups while the file was replaced %d times: %d failed", sent, swaps,
        failed))
      assert.equal(0, failed)
      assert.is_true(sent > 100)
      -- the last install is the City database again after an even number of swaps
      install(db.asn)
      assert(helpers.wait_until(function() return city() == "none" end, 5 * helpers.scale), m:stderr())
      install(db.city)
      assert.truthy(helpers.wait_until(function() return city() == "London" end, 5 * helpers.scale))
      assert.matches("geoip live: reopened", m:stderr())
      -- a broken file is refused and the old one stays in use
      helpers.write_file(dir .. "/broken", "not a MaxMind database\n")
      install(dir .. "/broken")
      assert.truthy(m:wait_error_log("changed but cannot be opened", 5 * helpers.scale), m:stderr())
      assert.equal("London", city())
    end)
  end)
end)
