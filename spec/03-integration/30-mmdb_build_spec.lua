-- geoip/mmdb-build writes MaxMind DB files that libmaxminddb reads as the
-- input describes: every value type, IPv4 and IPv6 networks (IPv4 also through
-- ::ffff:0:0/96 and 2002::/16 in an IPv6 tree), overrides by more specific
-- networks, 24/28/32-bit records, deduplicated data, metadata, clear errors and
-- atomic output.  Files are checked with mmdblookup (Debian package mmdb-bin),
-- an independent reader; MaxMind's GeoIP2-City-Test is rebuilt from its source
-- and compared with the official file when ../shared/testdata is present.
local helpers = require "spec.helpers"

local BUILD = helpers.root .. "/geoip/mmdb-build"
local TESTDATA = helpers.root .. "/../shared/testdata/geoip"
local S = helpers.scale

local quote, sh = helpers.shell_quote, helpers.sh

local MMDBLOOKUP = (function()
  local out = sh("command -v mmdblookup")
  return out:match("^(/%S+)")
end)()

local function need_mmdblookup()
  assert(MMDBLOOKUP, "mmdblookup is missing: install the Debian package mmdb-bin "
    .. "(this spec checks the files mmdb-build writes with it)")
end

-- build(input, output, args) -> output text, exit status of mmdb-build
local function build(input, output, args)
  return sh(string.format("luajit %s %s %s %s", quote(BUILD), args or "", quote(input), quote(output)))
end

-- build_ok(dir, json_text, args) -> path of the .mmdb built from json_text
local function build_ok(dir, json, args, name)
  name = name or "db"
  local input = helpers.write_file(dir .. "/" .. name .. ".json", json)
  local out, code = build(input, dir .. "/" .. name .. ".mmdb", args)
  assert(code == 0, "mmdb-build failed: " .. out)
  return dir .. "/" .. name .. ".mmdb", out
end

-- lookup(file, ip, ...) -> mmdblookup's output for ip (and a data path), status
local function lookup(file, ip, ...)
  need_mmdblookup()
  local path = {}
  for i, k in ipairs({ ... }) do path[i] = quote(k) end
  return sh(string.format("%s --file %s --ip %s %s", MMDBLOOKUP, quote(file), quote(ip),
    table.concat(path, " ")))
end

-- value(file, ip, ...) -> the scalar at the path as mmdblookup prints it, type
local function value(file, ip, ...)
  local out, code = lookup(file, ip, ...)
  assert(code == 0, "lookup of " .. ip .. " failed: " .. out)
  local v, t = out:match("^%s*(.-) <([%w_]+)>%s*$")
  assert(v, "not a scalar at that path: " .. out)
  return v, t
end

local function not_found(file, ip)
  local out, code = lookup(file, ip)
  return code ~= 0 and out:match("Could not find an entry") ~= nil
end

local function file_size(path)
  local f = assert(io.open(path, "rb"))
  local n = f:seek("end")
  f:close()
  return n
end

local function count(haystack, needle)
  local n, i = 0, 1
  while true do
    local j = haystack:find(needle, i, true)
    if not j then return n end
    n, i = n + 1, j + 1
  end
end

local function dir_entries(dir)
  local out = {}
  for name in io.popen("ls -A " .. quote(dir)):lines() do out[#out + 1] = name end
  table.sort(out)
  return out
end

describe("geoip/mmdb-build", function()
  local dir

  lazy_setup(function()
    need_mmdblookup()
    dir = helpers.tmpdir("mmdb")
  end)
  lazy_teardown(function() helpers.stop_all() end)

  it("prints its usage with --help", function()
    local out, code = sh("luajit " .. quote(BUILD) .. " --help")
    assert.equal(0, code)
    assert.matches("Usage: geoip/mmdb%-build", out)
  end)

  it("round-trips every value type", function()
    local f = build_ok(dir, [==[
      { "database_type": "Types", "types": { "lat": "double", "small": "uint16" },
        "networks": [ { "network": "10.0.0.0/8", "data": {
          "s": "Zürich – 東京 ✓", "empty_s": "",
          "u32": 4294967295, "u64": 4294967296, "u64max": 18446744073709551615,
          "u128": 340282366920938463463374607431768211455,
          "u16": { "$type": "uint16", "value": 65535 }, "small": 7,
          "u64s": { "$type": "uint64", "value": "1234567890123456789" },
          "u128h": { "$type": "uint128", "value": "0x0102030405060708090a0b0c0d0e0f10" },
          "i32": -2147483648, "i32e": { "$type": "int32", "value": 5 },
          "d": -1.5, "lat": 52, "e": 2.5e-3,
          "f": { "$type": "float", "value": 1.25 },
          "yes": true, "no": false,
          "raw": { "$type": "bytes", "value": "00ff10" },
          "arr": [1, "two", 3.5, [true]], "ea": [], "em": {},
          "nested": { "a": { "b": [ { "c": "deep" } ] } }
        } } ] }
    ]==])
    local function check(path, want, want_type)
      local v, t = value(f, "10.1.2.3", unpack(path))
      assert.equal(want_type, t, table.concat(path, "."))
      assert.equal(want, v, table.concat(path, "."))
    end
    check({ "s" }, '"Zürich – 東京 ✓"', "utf8_string")
    check({ "empty_s" }, '""', "utf8_string")
    check({ "u32" }, "4294967295", "uint32")
    check({ "u64" }, "4294967296", "uint64")
    check({ "u64max" }, "18446744073709551615", "uint64")
    check({ "u128" }, "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "uint128")
    check({ "u16" }, "65535", "uint16")
    check({ "small" }, "7", "uint16")
    check({ "u64s" }, "1234567890123456789", "uint64")
    check({ "u128h" }, "0x0102030405060708090A0B0C0D0E0F10", "uint128")
    check({ "i32" }, "-2147483648", "int32")
    check({ "i32e" }, "5", "int32")
    check({ "d" }, "-1.500000", "double")
    check({ "lat" }, "52.000000", "double")
    check({ "e" }, "0.002500", "double")
    check({ "f" }, "1.250000", "float")
    check({ "yes" }, "true", "boolean")
    check({ "no" }, "false", "boolean")
    check({ "raw" }, "00FF10", "bytes")
    check({ "arr", "0" }, "1", "uint32")
    check({ "arr", "1" }, '"two"', "utf8_string")
    check({ "arr", "2" }, "3.500000", "double")
    check({ "arr", "3", "0" }, "true", "boolean")
    check({ "nested", "a", "b", "0", "c" }, '"deep"', "utf8_string")
    local out = lookup(f, "10.1.2.3", "ea")
    assert.matches("^%s*%[%s*%]%s*$", out)
    out = lookup(f, "10.1.2.3", "em")
    assert.matches("^%s*{%s*}%s*$", out)
  end)

  it("reads a Lua description file", function()
    local input = helpers.write_file(dir .. "/lua.lua", [[
      return { database_type = "Lua", ip_version = 4, networks = {
        { network = "192.0.2.0/24", data = { n = 3, d = 0.5, list = { "a", "b" } } } } }
    ]])
    local out, code = build(input, dir .. "/lua.mmdb")
    assert.equal(0, code, out)
    assert.same({ "3", "uint32" }, { value(dir .. "/lua.mmdb", "192.0.2.1", "n") })
    assert.same({ "0.500000", "double" }, { value(dir .. "/lua.mmdb", "192.0.2.1", "d") })
    assert.same({ '"b"', "utf8_string" }, { value(dir .. "/lua.mmdb", "192.0.2.1", "list", "1") })
  end)

  describe("an IPv6 tree", function()
    local f
    lazy_setup(function()
      -- the more specific networks come first on purpose: the rule is by
      -- prefix length, not by order in the file
      f = build_ok(dir, [[
        { "database_type": "Mixed", "ip_version": 6, "networks": [
          { "network": "10.1.2.0/24", "data": { "n": "C" } },
          { "network": "10.1.0.0/16", "data": { "n": "B" } },
          { "network": "10.0.0.0/8", "data": { "n": "A" } },
          { "network": "2001:db8:1::/48", "data": { "n": "E" } },
          { "network": "2001:db8::/32", "data": { "n": "D" } },
          { "network": "::ffff:192.0.2.0/120", "data": { "n": "mapped" } }
        ] }
      ]], nil, "mixed")
    end)

    it("finds IPv4 networks as IPv4, IPv4-mapped, IPv4-compatible and 6to4 addresses", function()
      for ip, want in pairs({
        ["10.1.2.3"] = "C", ["::ffff:10.1.2.3"] = "C", ["::10.1.2.3"] = "C",
        ["2002:a01:203::"] = "C",
        ["10.9.9.9"] = "A", ["::ffff:10.9.9.9"] = "A", ["2002:a09:909::1"] = "A",
        ["192.0.2.7"] = "mapped", ["::ffff:192.0.2.7"] = "mapped",
      }) do
        assert.equal('"' .. want .. '"', (value(f, ip, "n")), ip)
      end
    end)

    it("lets a more specific network override a broader one", function()
      assert.equal('"A"', (value(f, "10.0.0.1", "n")))
      assert.equal('"B"', (value(f, "10.1.255.255", "n")))
      assert.equal('"C"', (value(f, "10.1.2.255", "n")))
      assert.equal('"B"', (value(f, "10.1.3.0", "n")))
      assert.equal('"D"', (value(f, "2001:db8::1", "n")))
      assert.equal('"E"', (value(f, "2001:db8:1:ffff::1", "n")))
      assert.equal('"D"', (value(f, "2001:db8:2::1", "n")))
    end)

    it("does not find addresses outside every network", function()
      for _, ip in ipairs({ "11.0.0.1", "9.255.255.255", "::ffff:11.0.0.1", "2002:b00:1::",
                            "2001:db9::1", "::1", "fe80::1", "192.0.3.1" }) do
        assert.is_true(not_found(f, ip), ip)
      end
    end)
  end)

  it("builds IPv4 trees, which take IPv4 networks only", function()
    local f = build_ok(dir, [[
      { "database_type": "V4", "ip_version": 4, "networks": [
        { "network": "0.0.0.0/1", "data": "low half" },
        { "network": "198.51.100.0/24", "data": "doc" } ] }
    ]], nil, "v4")
    assert.equal('"low half"', (value(f, "1.2.3.4")))
    assert.equal('"doc"', (value(f, "198.51.100.200")))
    assert.is_true(not_found(f, "198.51.101.1"))
    assert.matches("IP version:%s+IPv4", (sh(MMDBLOOKUP .. " --verbose --file " .. quote(f) .. " --ip 1.2.3.4")))
    local out = lookup(f, "2001:db8::1")
    assert.matches("IPv6 address in an IPv4%-only database", out)
  end)

  it("writes 24-, 28- and 32-bit records that read back", function()
    local json = [[
      { "database_type": "Sizes", "networks": [
        { "network": "203.0.113.0/24", "data": { "v": 1 } },
        { "network": "2001:db8::/32", "data": { "v": 2 } } ] }
    ]]
    for _, rs in ipairs({ 24, 28, 32 }) do
      local f = build_ok(dir, json, "--record-size " .. rs, "rs" .. rs)
      local meta = sh(MMDBLOOKUP .. " --verbose --file " .. quote(f) .. " --ip 203.0.113.9")
      assert.matches("Record size:%s+" .. rs .. " bits", meta)
      assert.equal("1", (value(f, "203.0.113.9", "v")))
      assert.equal("2", (value(f, "2001:db8:ffff::", "v")))
      assert.is_true(not_found(f, "203.0.114.1"))
    end
  end)

  it("builds a big tree (20,000 /24 networks, over 16 MiB of data) in reasonable time", function()
    -- ~900-byte distinct records push record values past 2^24: the automatic
    -- record size is 28 and the high nibbles in the middle byte are used
    local pad = string.rep("x", 880)
    local parts = {}
    for i = 0, 19999 do
      parts[#parts + 1] = string.format(
        '{"network": "20.%d.%d.0/24", "data": {"id": %d, "pad": "%d-%s"}}',
        math.floor(i / 256), i % 256, i, i, pad)
    end
    local input = helpers.write_file(dir .. "/big.json",
      '{"database_type": "Big", "networks": [' .. table.concat(parts, ",\n") .. "]}")
    local t0 = helpers.now()
    local out, code = build(input, dir .. "/big.mmdb")
    local took = helpers.now() - t0
    assert.equal(0, code, out)
    local size = file_size(dir .. "/big.mmdb")
    print(string.format("\n  big tree: 20000 networks built in %.2f s, %d bytes (%s)",
      took, size, out:match("(%d+ nodes, record_size %d+)")))
    assert.matches("record_size 28", out)
    assert.is_true(size > 16 * 1024 * 1024)
    assert.is_true(took < 20 * S, "took " .. took .. " s")
    for i = 0, 19999, 487 do
      local ip = string.format("20.%d.%d.%d", math.floor(i / 256), i % 256, i % 250 + 1)
      assert.equal(tostring(i), (value(dir .. "/big.mmdb", ip, "id")), ip)
    end
    assert.equal("19999", (value(dir .. "/big.mmdb", "::ffff:20.78.31.255", "id")))
    assert.is_true(not_found(dir .. "/big.mmdb", "20.78.32.0"))
    assert.is_true(not_found(dir .. "/big.mmdb", "19.255.255.255"))

    out, code = build(input, dir .. "/big24.mmdb", "--record-size 24")
    assert.equal(1, code)
    assert.matches("record_size 24 is too small", out)
    assert.is_nil(io.open(dir .. "/big24.mmdb"))
  end)

  it("writes each distinct record once", function()
    -- non-adjacent networks, so the tree cannot merge them: the difference is
    -- the data section alone
    local function input(shared)
      local parts = {}
      for i = 0, 9999 do
        local name = shared and "shared-record" or ("record-" .. i)
        parts[#parts + 1] = string.format(
          '{"network": "10.%d.%d.0/24", "data": {"name": "%s", "note": "note-%s %s"}}',
          math.floor(i / 128), (i % 128) * 2, name, shared and "S" or i, string.rep("-", 150))
      end
      return '{"database_type": "Dedup", "networks": [' .. table.concat(parts, ",") .. "]}"
    end
    local shared = build_ok(dir, input(true), nil, "shared")
    local distinct = build_ok(dir, input(false), nil, "distinct")
    local ss, ds = file_size(shared), file_size(distinct)
    print(string.format("\n  dedup: 10000 networks, one shared record %d bytes, distinct records %d bytes", ss, ds))
    assert.is_true(ss * 5 < ds, ss .. " vs " .. ds)
    assert.equal(1, count(helpers.read_file(shared), "shared-record"))
    assert.equal(1, count(helpers.read_file(shared), "note-S"))
    assert.equal('"shared-record"', (value(shared, "10.0.0.1", "name")))
    assert.equal('"shared-record"', (value(shared, "10.78.30.1", "name")))
    assert.is_true(not_found(shared, "10.0.1.1"))
    assert.equal('"record-9999"', (value(distinct, "10.78.30.1", "name")))

    -- a value repeated inside different records is written once too (pointers)
    local f = build_ok(dir, [[
      { "database_type": "Ptr", "networks": [
        { "network": "192.0.2.0/25", "data": { "city": "Repeated-City-Name", "n": 1 } },
        { "network": "192.0.2.128/25", "data": { "city": "Repeated-City-Name", "n": 2 } } ] }
    ]], nil, "ptr")
    assert.equal(1, count(helpers.read_file(f), "Repeated-City-Name"))
    assert.equal('"Repeated-City-Name"', (value(f, "192.0.2.200", "city")))
    assert.equal("2", (value(f, "192.0.2.200", "n")))
  end)

  it("writes the metadata mmdblookup shows", function()
    local json = [[
      { "database_type": "Moxy-Meta", "ip_version": 6, "record_size": 28,
        "description": { "en": "Meta test", "de": "Metatest" }, "languages": ["en", "de"],
        "networks": [ { "network": "192.0.2.0/24", "data": { "x": 1 } } ] }
    ]]
    local input = helpers.write_file(dir .. "/meta.json", json)
    local out, code = sh("SOURCE_DATE_EPOCH=1700000000 luajit " .. quote(BUILD) .. " "
      .. quote(input) .. " " .. quote(dir .. "/meta.mmdb"))
    assert.equal(0, code, out)
    local nodes = out:match("(%d+) nodes")
    local meta = sh(MMDBLOOKUP .. " --verbose --file " .. quote(dir .. "/meta.mmdb") .. " --ip 192.0.2.1")
    assert.matches("Node count:%s+" .. nodes .. "\n", meta)
    assert.matches("Record size:%s+28 bits", meta)
    assert.matches("IP version:%s+IPv6", meta)
    assert.matches("Binary format:%s+2%.0", meta)
    assert.matches("Build epoch:%s+1700000000 ", meta)
    assert.matches("Type:%s+Moxy%-Meta", meta)
    assert.matches("Languages:%s+en de", meta)
    assert.matches("en:%s+Meta test", meta)
    assert.matches("de:%s+Metatest", meta)

    -- the same input and SOURCE_DATE_EPOCH give the same bytes
    sh("SOURCE_DATE_EPOCH=1700000000 luajit " .. quote(BUILD) .. " " .. quote(input) .. " "
      .. quote(dir .. "/meta2.mmdb"))
    assert.equal(helpers.read_file(dir .. "/meta.mmdb"), helpers.read_file(dir .. "/meta2.mmdb"))

    -- options override the file
    out, code = build(input, dir .. "/meta3.mmdb",
      "--type Other --record-size 32 --description 'From options' --languages en")
    assert.equal(0, code, out)
    meta = sh(MMDBLOOKUP .. " --verbose --file " .. quote(dir .. "/meta3.mmdb") .. " --ip 192.0.2.1")
    assert.matches("Type:%s+Other", meta)
    assert.matches("Record size:%s+32 bits", meta)
    assert.matches("en:%s+From options", meta)
    assert.matches("Languages:%s+en\n", meta)
  end)

  it("reads MaxMind's source format with metadata and type hints from options", function()
    local types = helpers.write_file(dir .. "/types.json", '{ "radius": "uint16" }')
    local f = build_ok(dir, [[
      [ { "::198.51.100.0/120": { "location": { "latitude": 10, "radius": 5 } } },
        { "2001:db8::/32": { "location": { "latitude": -33.5, "radius": 50 } } } ]
    ]], "--type Src --types geoip2 --types " .. quote(types), "source")
    assert.same({ "10.000000", "double" }, { value(f, "198.51.100.1", "location", "latitude") })
    assert.same({ "5", "uint16" }, { value(f, "198.51.100.1", "location", "radius") })
    assert.same({ "-33.500000", "double" }, { value(f, "2001:db8::1", "location", "latitude") })
    local out, code = build(dir .. "/source.json", dir .. "/source2.mmdb")
    assert.equal(1, code)
    assert.matches("no database_type", out)
  end)

  describe("errors", function()
    local cases = {
      { "a prefix length out of range",
        '{"database_type": "E", "networks": [{"network": "10.0.0.0/33", "data": 1}]}',
        'networks%[1%]: network "10%.0%.0%.0/33" has prefix length 33, more than 32' },
      { "a bad address",
        '{"database_type": "E", "networks": [{"network": "10.0.0.256/8", "data": 1}]}',
        'network "10%.0%.0%.256/8" is not a valid IPv4 address' },
      { "a bad IPv6 address",
        '{"database_type": "E", "networks": [{"network": "2001:db8::g/32", "data": 1}]}',
        'network "2001:db8::g/32" is not a valid IPv6 address' },
      { "IPv6 in an IPv4 tree",
        '{"database_type": "E", "ip_version": 4, "networks": [{"network": "2001:db8::/32", "data": 1}]}',
        'network "2001:db8::/32" is an IPv6 network in an ip_version 4 database' },
      { "a bad record_size",
        '{"database_type": "E", "record_size": 30, "networks": []}',
        "record_size 30 is not 24, 28 or 32" },
      { "a bad ip_version",
        '{"database_type": "E", "ip_version": 5, "networks": []}',
        "ip_version 5 is not 4 or 6" },
      { "a null value",
        '{"database_type": "E", "networks": [{"network": "10.0.0.0/8", "data": {"a": {"b": null}}}]}',
        "networks%[1%] %(10%.0%.0%.0/8%): data%.a%.b: unsupported value null" },
      { "a value too large for its type",
        '{"database_type": "E", "networks": [{"network": "10.0.0.0/8", "data": {"r": {"$type": "uint16", "value": 70000}}}]}',
        "data%.r: 70000 does not fit uint16" },
      { "an unknown type",
        '{"database_type": "E", "networks": [{"network": "10.0.0.0/8", "data": {"r": {"$type": "uint8", "value": 1}}}]}',
        'data%.r: unknown type "uint8"' },
      { "invalid JSON",
        '{"database_type": "E",\n "networks": [1,]}',
        ":2: invalid JSON" },
      { "an unknown key",
        '{"database_type": "E", "netwrks": []}',
        'unknown top%-level key "netwrks"' },
    }
    for _, case in ipairs(cases) do
      it("rejects " .. case[1] .. " with a message naming it, exit 1, no output", function()
        local edir = helpers.tmpdir("mmdb-err")
        local input = helpers.write_file(edir .. "/bad.json", case[2])
        local out, code = build(input, edir .. "/out.mmdb")
        assert.equal(1, code, out)
        assert.matches("^mmdb%-build: [^\n]*bad%.json", out)
        assert.matches(case[3], out)
        assert.same({ "bad.json" }, dir_entries(edir))
      end)
    end
  end)

  it("replaces OUTPUT atomically and leaves it alone on error", function()
    local adir = helpers.tmpdir("mmdb-atomic")
    local good = helpers.write_file(adir .. "/good.json",
      '{"database_type": "A", "networks": [{"network": "192.0.2.0/24", "data": "one"}]}')
    local out, code = build(good, adir .. "/db.mmdb")
    assert.equal(0, code, out)
    local old = helpers.read_file(adir .. "/db.mmdb")
    -- a reader holding the old file keeps reading the old file whole
    local reader = assert(io.open(adir .. "/db.mmdb", "rb"))

    local bad = helpers.write_file(adir .. "/bad.json",
      '{"database_type": "A", "networks": [{"network": "192.0.2.0/99", "data": "two"}]}')
    out, code = build(bad, adir .. "/db.mmdb")
    assert.equal(1, code, out)
    assert.equal(old, helpers.read_file(adir .. "/db.mmdb"))

    helpers.write_file(good, '{"database_type": "A", "networks": [{"network": "192.0.2.0/24", "data": "two"}]}')
    out, code = build(good, adir .. "/db.mmdb")
    assert.equal(0, code, out)
    assert.equal('"two"', (value(adir .. "/db.mmdb", "192.0.2.1")))
    assert.equal(old, reader:read("*a"))
    reader:close()
    assert.same({ "bad.json", "db.mmdb", "good.json" }, dir_entries(adir))

    out, code = build(good, adir .. "/no-such-dir/db.mmdb")
    assert.equal(1, code)
    assert.matches("cannot write", out)
  end)

  it("builds the project's test databases in spec/support/geoip", function()
    local support = helpers.support .. "/geoip/"
    local city, asn, anon = dir .. "/city.mmdb", dir .. "/asn.mmdb", dir .. "/anon.mmdb"
    for src, dst in pairs({ ["city.json"] = city, ["asn.json"] = asn, ["anonymous-ip.json"] = anon }) do
      local out, code = build(support .. src, dst)
      assert.equal(0, code, out)
    end
    for ip, want in pairs({
      ["81.2.69.142"] = { "GB", "EU", "London" }, ["89.160.20.112"] = { "SE", "EU", "Linköping" },
      ["216.160.83.56"] = { "US", "NA", "Milton" }, ["175.16.199.1"] = { "CN", "AS", "Changchun" },
      ["2001:db8::1"] = { "JP", "AS", "Tokyo" }, ["203.0.113.10"] = { "AU", "OC", "Sydney" },
      ["198.51.100.10"] = { "BR", "SA", "São Paulo" }, ["192.0.2.10"] = { "ZA", "AF", "Johannesburg" },
    }) do
      assert.equal('"' .. want[1] .. '"', (value(city, ip, "country", "iso_code")), ip)
      assert.equal('"' .. want[2] .. '"', (value(city, ip, "continent", "code")), ip)
      assert.equal('"' .. want[3] .. '"', (value(city, ip, "city", "names", "en")), ip)
      assert.equal("uint16", select(2, value(city, ip, "location", "accuracy_radius")))
      assert.equal("double", select(2, value(city, ip, "location", "latitude")))
      assert.equal("utf8_string", select(2, value(city, ip, "subdivisions", "0", "iso_code")))
      assert.equal("utf8_string", select(2, value(city, ip, "postal", "code")))
      assert.equal("uint32", select(2, value(asn, ip, "autonomous_system_number")))
    end
    assert.equal("65536", (value(asn, "192.0.2.1", "autonomous_system_number")))
    assert.equal("true", (value(anon, "198.51.100.1", "is_tor_exit_node")))
    assert.equal("true", (value(anon, "203.0.113.1", "is_anonymous_vpn")))
    assert.equal("true", (value(anon, "203.0.113.200", "is_hosting_provider")))
    assert.is_true(not_found(anon, "81.2.69.142"))
    assert.is_true(not_found(city, "1.1.1.1"))
  end)

  it("rebuilds MaxMind's GeoIP2-City-Test from its source as the official file reads", function()
    local src = TESTDATA .. "/source/GeoIP2-City-Test.json"
    local official = TESTDATA .. "/GeoIP2-City-Test.mmdb"
    if not io.open(src) or not io.open(official) then
      pending("MaxMind's test data is absent (" .. TESTDATA .. "): nothing to compare with")
      return
    end
    local rebuilt = dir .. "/GeoIP2-City-Test.mmdb"
    local out, code = build(src, rebuilt, "--type GeoIP2-City --types geoip2")
    assert.equal(0, code, out)
    -- every network's first address (written before the '/')
    local ips = {}
    for net in helpers.read_file(src):gmatch('\n  {\n    "([^"]+)": {') do
      ips[#ips + 1] = net:match("^[^/]+")
    end
    assert.is_true(#ips > 200, "found " .. #ips .. " networks in " .. src)
    -- mmdblookup's output for every address, in one shell per file
    local function all(file)
      local cmd = {}
      for _, ip in ipairs(ips) do
        cmd[#cmd + 1] = string.format("echo '@@@ %s'; %s --file %s --ip %s", ip, MMDBLOOKUP, quote(file), ip)
      end
      local text = sh(table.concat(cmd, "; "))
      local by_ip, pos = {}, 1
      while true do
        local _, e, ip = text:find("@@@ (%S+)\n", pos)
        if not ip then break end
        local nxt = text:find("\n@@@ ", e, true)
        by_ip[#by_ip + 1] = { ip, text:sub(e + 1, nxt or #text) }
        pos = nxt or #text + 1
      end
      return by_ip
    end
    local want, got = all(official), all(rebuilt)
    assert.equal(#ips, #want)
    assert.equal(#ips, #got)
    for i, w in ipairs(want) do
      assert.not_matches("Could not find", w[2], w[1])
      assert.equal(w[1], got[i][1])
      assert.equal(w[2], got[i][2], "mmdblookup output differs for " .. w[1])
    end
  end)
end)
