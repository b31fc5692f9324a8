-- on_tls_hello: a Lua hook at a TLS client's hello, before moxy answers
-- it.  It sees the name asked for, the protocols offered, the client and
-- the hello's JA4 fingerprint; it may choose one of the listener's
-- certificates, supply one (PEM strings, here fetched with moxy.http from a
-- "certificate store" served by the same moxy), or refuse the handshake.
-- Supplied certificates are kept by name (hello_cache of them).
local helpers = require "spec.helpers"

local S = helpers.scale

describe("on_tls_hello", function()
  local dir, origin, m, port, small_port, store_port, admin_port

  local function make_cert(name, kind, cn, sans) helpers.make_cert(dir, name, kind, cn, sans) end

  -- openssl s_client to p asking for name: its output (bounded in time)
  local function s_client(p, name, args)
    return (helpers.sh(string.format(
      "echo | timeout %d openssl s_client -connect 127.0.0.1:%d %s %s 2>&1",
      math.ceil(10 * S), p, name and ("-servername " .. name) or "-noservername", args or "")))
  end

  -- the subject CN of the certificate moxy presented, or nil
  local function presented(out)
    return out:match("subject=CN%s*=%s*([%w%.%-%*]+)")
  end

  local function shared_get(key)
    local out = helpers.sh(string.format("curl -sS http://127.0.0.1:%d/shared/%s", store_port, key))
    return out
  end

  lazy_setup(function()
    dir = helpers.tmpdir("tls_hello")
    make_cert("a", "ec", "a.test", { "a.test" })
    make_cert("b", "ec", "b.test", { "b.test", "*.b.test" })
    make_cert("s1", "ec", "s1.test", { "s1.test" })
    make_cert("s2", "rsa", "s2.test", { "s2.test" })
    make_cert("s3", "ec", "s3.test", { "s3.test" })
    origin = helpers.start_origin()
    port, small_port, store_port, admin_port = helpers.free_port(), helpers.free_port(), helpers.free_port(),
      helpers.free_port()
    local certs = {
      { cert = dir .. "/a.pem", key = dir .. "/a.key" },
      { cert = dir .. "/b.pem", key = dir .. "/b.key" },
    }
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      timeouts = { client_header = 2 },
      admin = { listen = "127.0.0.1:" .. admin_port },
      shared = { hello = "1m" },
      listen = {
        { addr = "127.0.0.1:" .. port, name = "main", tls = { certificates = certs } },
        { addr = "127.0.0.1:" .. small_port, name = "small", tls = { certificates = certs, hello_cache = 1 } },
        { addr = "127.0.0.1:" .. store_port, name = "store" },
      },
      scripts = { "hello.lua" },
    }, { files = { ["hello.lua"] = string.format([[
      local dir, store = %q, %d
      local seen = moxy.shared.hello
      local kept
      local function read(path)
        local f = assert(io.open(path, "rb"))
        local s = f:read("*a")
        f:close()
        return s
      end
      return {
        on_tls_hello = function(hello)
          local sni = hello.sni or "-"
          seen:set("last", table.concat({ sni, table.concat(hello.alpn, ","), hello.client.ip,
            tostring(hello.client.port > 0), hello.listener, hello.ja4 or "none" }, " "))
          seen:set("ja4:" .. sni, hello.ja4 or "none")
          if sni == "refused.test" then return hello:refuse() end
          if sni == "broken.test" then error("the store is down") end
          if sni == "alias.test" then assert(hello:use("B.test")) return end
          if sni == "sub.alias.test" then assert(hello:use("x.b.test")) return end
          if sni == "keep.test" then kept = hello return end
          if sni == "last.test" then -- the last choice wins
            assert(hello:supply(read(dir .. "/s1.pem"), read(dir .. "/s1.key"), ""))
            assert(hello:use("a.test"))
            return
          end
          if sni == "last2.test" then
            assert(hello:use("b.test"))
            assert(hello:supply(read(dir .. "/s3.pem"), read(dir .. "/s3.key"), ""))
            return
          end
          if sni == "late.test" then
            moxy.sleep(0.2)
            assert(hello:use("b.test"))
            return
          end
          if sni == "slow.test" then moxy.sleep(30) return end
          local name = sni:match("^(s%%d)%%.test$")
          if name then
            if hello:use(sni) then seen:incr("cached:" .. sni, 1, 0) return end
            -- the certificate store: moxy.http yields until it answers
            local res = assert(moxy.http.get("http://127.0.0.1:" .. store .. "/cert/" .. name))
            seen:incr("fetched:" .. sni, 1, 0)
            assert(hello:supply(res.body, read(dir .. "/" .. name .. ".key")))
            local ok, err = hello:supply("not a certificate", "nor a key")
            seen:set("bad_supply", tostring(ok) .. " " .. tostring(err))
            assert(hello:supply(res.body, read(dir .. "/" .. name .. ".key")))
          end
        end,
        on_request = function(txn)
          if txn.listener ~= "store" then
            if txn.req.path == "/ja4" then
              return txn:respond(200, (txn.client.tls and txn.client.tls.ja4 or "none"))
            end
            return
          end
          local cert = txn.req.path:match("^/cert/(s%%d)$")
          if cert then return txn:respond(200, read(dir .. "/" .. cert .. ".pem")) end
          local key = txn.req.path:match("^/shared/(.+)$")
          if key == "stale" then
            local ok, err = pcall(function() kept:use("a.test") end)
            return txn:respond(200, tostring(ok) .. " " .. tostring(err))
          end
          if key then return txn:respond(200, tostring(seen:get(key))) end
          return txn:respond(404, "")
        end,
      }
    ]], dir, store_port) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("sees the name, the protocols offered, the client, the listener and the JA4 fingerprint", function()
    local out = helpers.sh(string.format(
      "timeout %d curl -sS -k --resolve a.test:%d:127.0.0.1 https://a.test:%d/ja4",
      math.ceil(10 * S), port, port))
    local last = shared_get("last")
    local sni, alpn, ip, has_port, listener, ja4 = last:match("^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$")
    assert.equal("a.test", sni)
    assert.equal("h2,http/1.1", alpn)
    assert.equal("127.0.0.1", ip)
    assert.equal("true", has_port)
    assert.equal("main", listener)
    assert.truthy(ja4:match("^t1[23]d%d%d%d%d[%w][%w]_%x+_%x+$"), ja4)
    -- the request on that connection sees the same fingerprint
    assert.equal(ja4, out)
  end)

  it("shows scripts no name that is not a host name (scripts put it in URLs and keys)", function()
    for _, bad in ipairs({ "x/../admin.test", "a%2fb.test", "a..b.test" }) do
      s_client(port, "a.test")
      assert.matches("^a%.test ", shared_get("last"))
      s_client(port, "'" .. bad .. "'")
      assert.matches("^%- ", shared_get("last"), nil, bad)
    end
    s_client(port, "Good-Name_1.TEST")
    assert.matches("^good%-name_1%.test ", shared_get("last"))
  end)

  it("computes JA4 equal to the reference value for a known ClientHello", function()
    local hello = require "spec.support.client_hello"
    local record, expected = hello.ja4_example("ja4.test")
    assert.equal("t13d1516h2_8daaf6152771_e5627efa2ab1", expected) -- FoxIO's JA4.md, "Example"
    -- a raw hello (GREASE values and all) to the listener; the hook runs
    -- before moxy answers, so the handshake need not finish
    local c = assert(helpers.connection(port))
    c:send(record)
    c:receive_some(2 * S) -- moxy's answer (a ServerHello): the hook ran
    c:close()
    assert.equal(expected, shared_get("ja4:ja4.test"))
  end)

  it("chooses one of the listener's certificates by a name of its own", function()
    assert.equal("b.test", presented(s_client(port, "alias.test")))
    assert.equal("b.test", presented(s_client(port, "sub.alias.test")))
    -- without a choice, the name asked for chooses as always
    assert.equal("a.test", presented(s_client(port, "a.test")))
    assert.equal("b.test", presented(s_client(port, "b.test")))
  end)

  it("presents the last choice a hook made", function()
    assert.equal("a.test", presented(s_client(port, "last.test")))
    assert.equal("s3.test", presented(s_client(port, "last2.test")))
  end)

  it("may wait (moxy.sleep) before it chooses", function()
    assert.equal("b.test", presented(s_client(port, "late.test")))
  end)

  it("supplies a certificate fetched with moxy.http, then reuses it by name without fetching again", function()
    local out = s_client(port, "s1.test")
    assert.equal("s1.test", presented(out))
    assert.equal("1", shared_get("fetched:s1.test"))
    assert.equal("nil the certificate is not a PEM certificate", shared_get("bad_supply"))
    assert.equal("s1.test", presented(s_client(port, "s1.test")))
    assert.equal("s1.test", presented(s_client(port, "s1.test")))
    assert.equal("1", shared_get("fetched:s1.test"))
    assert.equal("2", shared_get("cached:s1.test"))
    -- an RSA certificate too
    assert.equal("s2.test", presented(s_client(port, "s2.test")))
  end)

  it("keeps at most hello_cache supplied certificates, the least recently used going first", function()
    for _ = 1, 2 do
      assert.equal("s1.test", presented(s_client(small_port, "s1.test")))
      assert.equal("s3.test", presented(s_client(small_port, "s3.test")))
    end
    -- one kept: each name pushed the other out, every handshake fetched
    assert.equal("2", shared_get("fetched:s3.test"))
    assert.equal("nil", shared_get("cached:s3.test"))
    assert.equal("s3.test", presented(s_client(small_port, "s3.test")))
    assert.equal("1", shared_get("cached:s3.test"))
  end)

  it("refuses the handshake when a hook says so or fails, and counts it", function()
    local out = s_client(port, "refused.test")
    assert.falsy(presented(out))
    assert.truthy(out:match("alert handshake failure") or out:match("handshake failure"), out)
    out = s_client(port, "broken.test")
    assert.falsy(presented(out))
    assert.truthy(m:wait_error_log("the store is down", 5 * S))
    local metrics = helpers.sh(string.format("curl -sS http://127.0.0.1:%d/metrics", admin_port))
    local n = tonumber(metrics:match('moxy_tls_handshake_failures_total{reason="refused"} (%d+)'))
    assert.is_true(n and n >= 2, metrics:match("moxy_tls_handshake_failures_total[^\n]*refused[^\n]*"))
  end)

  it("gives a hello object no power outside its own hook", function()
    s_client(port, "keep.test")
    local out = shared_get("stale")
    assert.truthy(out:match("^false .*only inside the on_tls_hello hook that received it"), out)
  end)

  it("closes a connection whose hook outlasts timeouts.client_header, and one whose client leaves", function()
    local t0 = helpers.now()
    local out = s_client(port, "slow.test")
    assert.falsy(presented(out))
    local took = helpers.now() - t0
    assert.is_true(took >= 1.5 and took < 8 * S, "took " .. took)
    -- a client that leaves while its hook waits: nothing is left behind
    local hello = require "spec.support.client_hello"
    for _ = 1, 5 do
      local c = assert(helpers.connection(port))
      c:send((hello.ja4_example("slow.test")))
      c:close()
    end
    helpers.sleep(0.3)
    assert.equal("a.test", presented(s_client(port, "a.test")))
    assert.truthy(m:alive())
  end)
end)
