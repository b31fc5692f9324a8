-- Configuration checking (moxy -t), errors as FILE:LINE: key.path: message,
-- and moxy -v.
local helpers = require "spec.helpers"

-- a complete valid config, one key per line so lines can be located
local BASE = {
  "return {",
  "  workers = 1,",
  "  listen = {",
  '    "127.0.0.1:18080",',
  '    { addr = "127.0.0.1:18081", name = "second", upstream = "other" },',
  "  },",
  "  upstreams = {",
  "    app = {",
  '      servers = { "127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 } },',
  "      keepalive = 64,",
  '      keepalive_timeout = "60s",',
  "    },",
  "    other = {",
  '      servers = { "127.0.0.1:9003" },',
  '      host = "backend.internal",',
  "    },",
  "  },",
  '  default_upstream = "app",',
  "  limits = {",
  '    header_bytes = "32k",',
  "    headers = 100,",
  '    uri_bytes = "8k",',
  '    body_bytes = "64m",',
  "    connections = 10000,",
  "  },",
  "  timeouts = {",
  '    client_header = "10s",',
  '    client_body = "30s",',
  '    client_send = "60s",',
  '    connect = "3s",',
  '    upstream = "60s",',
  '    keepalive = "75s",',
  "  },",
  "  log = {",
  '    access = "access.log",',
  '    format = "combined",',
  '    error = "stderr",',
  '    level = "info",',
  "  },",
  "}",
}

local function find_line(lines, needle)
  for i, l in ipairs(lines) do
    if l:find(needle, 1, true) then return i end
  end
  error("no line contains " .. needle)
end

-- edits: list of {"replace"|"after", needle, text}; returns source and the
-- line number of the last edited line
local function config(edits)
  local lines = {}
  for i, l in ipairs(BASE) do lines[i] = l end
  local at
  for _, e in ipairs(edits or {}) do
    local i = find_line(lines, e[2])
    if e[1] == "replace" then
      lines[i] = e[3]
      at = i
    else
      table.insert(lines, i + 1, e[3])
      at = i + 1
    end
  end
  return table.concat(lines, "\n") .. "\n", at
end

local function contains(out, needle)
  assert(out:find(needle, 1, true), "expected output to contain:\n  " .. needle .. "\ngot:\n" .. out)
end

local function check_fails(edits, keypath, extra)
  local src, line = config(edits)
  local code, out, path = helpers.run_moxy_check(src)
  assert.equal(1, code, "moxy -t exit code, output:\n" .. tostring(out))
  contains(out, path .. ":" .. line .. ": " .. keypath)
  if extra then contains(out, extra) end
  return out, path, line
end

describe("moxy -t", function()
  lazy_teardown(function() helpers.stop_all() end)

  it("accepts a complete valid config", function()
    local code, out, path = helpers.run_moxy_check((config()))
    assert.equal(0, code, out)
    contains(out, "moxy: configuration " .. path .. " ok")
  end)

  it("accepts a minimal config", function()
    local code, out = helpers.run_moxy_check([[
return {
  listen = { "127.0.0.1:18080" },
  upstreams = { app = { servers = { "127.0.0.1:9001" } } },
  default_upstream = "app",
}
]])
    assert.equal(0, code, out)
  end)

  it("accepts sizes and durations as numbers and as strings", function()
    local code, out = helpers.run_moxy_check((config({
      { "replace", "header_bytes", "    header_bytes = 32768," },
      { "replace", "uri_bytes", '    uri_bytes = "1m",' },
      { "replace", "body_bytes", '    body_bytes = "3g",' },
      { "replace", "client_header", "    client_header = 10," },
      { "replace", "connect =", '    connect = "250ms",' },
      { "replace", "keepalive = \"75s\"", '    keepalive = "5m",' },
      { "replace", "workers", '  workers = "auto",' },
    })))
    assert.equal(0, code, out)
  end)

  it("reports an unknown top-level key with file, line and key", function()
    check_fails({ { "after", "workers", "  bogus_key = 1," } }, "bogus_key")
  end)

  it("reports an unknown nested key with its key path", function()
    check_fails({ { "after", "headers = 100", "    header_byts = 1," } }, "limits.header_byts")
  end)

  it("reports an unknown key in a pool", function()
    check_fails({ { "after", "keepalive = 64", "      keepalive_timeuot = 1," } }, "upstreams.app.keepalive_timeuot")
  end)

  it("reports a wrong type", function()
    check_fails({ { "replace", "workers", "  workers = {}," } }, "workers")
    check_fails({ { "replace", "headers = 100", '    headers = "many",' } }, "limits.headers")
    check_fails({ { "replace", "connect =", "    connect = true," } }, "timeouts.connect")
    check_fails({ { "replace", "keepalive = 64", '      keepalive = "lots",' } }, "upstreams.app.keepalive")
  end)

  it("reports an invalid value", function()
    check_fails({ { "replace", "format", '    format = "xml",' } }, "log.format")
    check_fails({ { "replace", "level", '    level = "chatty",' } }, "log.level")
    check_fails({ { "replace", "workers", "  workers = -1," } }, "workers")
  end)

  it("reports a bad size and a bad duration", function()
    check_fails({ { "replace", "body_bytes", '    body_bytes = "12q",' } }, "limits.body_bytes")
    check_fails({ { "replace", "upstream = \"60s\"", '    upstream = "5 parsecs",' } }, "timeouts.upstream")
  end)

  -- found by fuzz/config_fuzz.c: these were accepted by the Lua check and
  -- then overflowed converting to C (size_t, struct timeval: UBSan)
  it("reports sizes and durations too large to convert, with file, line and key", function()
    check_fails({ { "replace", "body_bytes", "    body_bytes = 1e999," } }, "limits.body_bytes: size too large")
    check_fails({ { "replace", "header_bytes", '    header_bytes = "99999999999999999999g",' } },
      "limits.header_bytes: size too large")
    check_fails({ { "replace", "connect =", "    connect = 1e999," } }, "timeouts.connect: duration too long")
    check_fails({ { "replace", "upstream = \"60s\"", '    upstream = "99999999999999999999h",' } },
      "timeouts.upstream: duration too long")
    check_fails({ { "replace", "keepalive_timeout", "      keepalive_timeout = 1e300," } },
      "upstreams.app.keepalive_timeout: duration too long")
  end)

  -- found by fuzz/config_fuzz.c: the Lua check took "010.0.0.1", which
  -- inet_pton refuses; config.c then failed without a line number
  it("reports an IPv4 octet with a leading zero with file, line and key", function()
    check_fails({ { "replace", "\"127.0.0.1:18080\"", '    "127.0.0.01:18080",' } }, "listen[1]: bad address")
    check_fails({ { "after", "workers", '  trusted_proxies = { "010.0.0.0/8" },' } }, "trusted_proxies[1]: bad address")
  end)

  it("reports a bad server address", function()
    check_fails({ { "replace", "servers = { \"127.0.0.1:9001\"", '      servers = { "foo:bar" },' } },
      "upstreams.app.servers[1]: bad address \"foo:bar\"")
    check_fails({ { "replace", "servers = { \"127.0.0.1:9001\"",
      '      servers = { "127.0.0.1:9001", { addr = "127.0.0.1:99999" } },' } }, "upstreams.app.servers[2]")
  end)

  it("reports a bad listen address", function()
    check_fails({ { "replace", "\"127.0.0.1:18080\"", '    "nowhere",' } }, "listen[1]")
  end)

  it("reports references to unknown upstreams", function()
    check_fails({ { "replace", "default_upstream", '  default_upstream = "nope",' } }, "default_upstream")
    check_fails({ { "replace", "name = \"second\"",
      '    { addr = "127.0.0.1:18081", name = "second", upstream = "nope" },' } }, "listen[2]")
  end)

  it("reports every problem, one line each", function()
    local src = config({
      { "after", "workers", "  bogus_one = 1," },
      { "replace", "body_bytes", '    body_bytes = "12q",' },
    })
    local code, out, path = helpers.run_moxy_check(src)
    assert.equal(1, code, out)
    local lines = {}
    for l in src:gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
    contains(out, path .. ":" .. find_line(lines, "bogus_one") .. ": bogus_one")
    contains(out, path .. ":" .. find_line(lines, "12q") .. ": limits.body_bytes")
  end)

  it("reports a Lua syntax error with file and line", function()
    local code, out, path = helpers.run_moxy_check("return {\n  workers = 1,\n  listen = { ,\n}\n")
    assert.equal(1, code, out)
    contains(out, path .. ":3:")
  end)

  it("reports a runtime error in the config file", function()
    local code, out, path = helpers.run_moxy_check("local x = nil\nreturn { workers = x.y }\n")
    assert.equal(1, code, out)
    contains(out, path)
  end)

  it("reports a config that does not return a table", function()
    local code, out, path = helpers.run_moxy_check("return 42\n")
    assert.equal(1, code, out)
    contains(out, path)
  end)

  it("reports a missing config file", function()
    local path = helpers.tmpdir("check") .. "/absent.lua"
    local code, out = helpers.run_moxy({ "-t", "-c", path })
    assert.equal(1, code, out)
    contains(out, path)
  end)

  it("resolves script paths relative to the config file", function()
    local src = config({ { "after", "workers", '  scripts = { "site.lua" },' } })
    local code, out = helpers.run_moxy_check(src, {
      files = { ["site.lua"] = "return { on_request = function(txn) end }\n" }, cwd = "/",
    })
    assert.equal(0, code, out)
  end)

  it("reports a missing script", function()
    check_fails({ { "after", "workers", '  scripts = { "missing.lua" },' } }, "scripts[1]")
  end)

  it("fails to start with a bad config, with the same message", function()
    local src, line = config({ { "after", "workers", "  bogus_key = 1," } })
    local dir = helpers.tmpdir("check")
    local path = helpers.write_file(dir .. "/moxy.lua", src)
    local code, out = helpers.run_moxy({ "-c", path }, 5 * helpers.scale)
    assert.equal(1, code, out)
    contains(out, path .. ":" .. line .. ": bogus_key")
  end)
end)

describe("moxy -v", function()
  lazy_teardown(function() helpers.stop_all() end)

  local function modversion(pkg)
    local p = io.popen("pkg-config --modversion " .. pkg .. " 2>/dev/null")
    local v = p:read("*l")
    p:close()
    return v
  end

  it("prints its version and the versions of its libraries", function()
    local code, out = helpers.run_moxy({ "-v" })
    assert.equal(0, code, out)
    assert.matches("^moxy %d+%.%d+%.%d+", out)
    assert.matches("\nLuaJIT 2%.%d+", out)
    assert.matches("\nllhttp %d+%.%d+%.%d+", out)
    -- the compression libraries (gzip, br, zstd)
    assert.matches("\nzlib %d+%.%d+", out)
    assert.matches("\nbrotli %d+%.%d+%.%d+", out)
    assert.matches("\nzstd %d+%.%d+%.%d+", out)
    assert.matches("\nOpenSSL 3%.%d+%.%d+", out)
    for lib, pkg in pairs({ libevent = "libevent", libmaxminddb = "libmaxminddb", libnghttp2 = "libnghttp2",
                            zlib = "zlib", brotli = "libbrotlienc", zstd = "libzstd" }) do
      local v = modversion(pkg)
      if v then
        contains(out, "\n" .. lib .. " " .. v)
      else
        assert.matches("\n" .. lib .. " %d+%.%d+", out)
      end
    end
  end)
end)
