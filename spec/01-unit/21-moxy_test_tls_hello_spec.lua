-- moxy.test's t.tls_hello: a script's on_tls_hello hooks run without a
-- server, on a hello made of the fields a spec gives, and what they decided
-- is returned.
local t = require "moxy.test"

local PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
local PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"

describe("t.tls_hello", function()
  local hooks = {
    on_tls_hello = function(hello)
      if hello.ja4 and hello.ja4:match("^t13i") then return hello:refuse() end
      if hello.sni == "broken.test" then error("no store") end
      if hello.sni == "alias.test" then assert(hello:use("www.example.com")) return end
      if hello.sni and hello:use(hello.sni) then return end
      local res = assert(moxy.http.get("http://store/" .. tostring(hello.sni)))
      if res.status == 200 then
        local ok, err = hello:supply(res.body, PEM_KEY)
        if not ok then moxy.log.warn("supply: " .. err) end
      end
      moxy.log.info(table.concat(hello.alpn, ",") .. " " .. hello.client.ip .. " " .. hello.listener)
    end,
  }
  local function store(opts)
    if opts.url == "http://store/new.test" then return { status = 200, body = PEM_CERT, headers = {} } end
    if opts.url == "http://store/bad.test" then return { status = 200, body = "junk", headers = {} } end
    return { status = 404, body = "", headers = {} }
  end

  it("chooses a loaded certificate, exactly or by a wildcard", function()
    local r = t.tls_hello(hooks, { sni = "alias.test" }, { certificates = { "*.example.com" } })
    assert.equal("www.example.com", r.used)
    assert.is_nil(r.refused)
    r = t.tls_hello(hooks, { sni = "WWW.example.com" }, { certificates = { "*.example.com" } })
    assert.equal("www.example.com", r.used)
  end)

  it("supplies a certificate fetched with moxy.http, answered by opts.http", function()
    local r = t.tls_hello(hooks, { sni = "new.test", alpn = { "http/1.1" }, client_ip = "192.0.2.1" },
      { http = store })
    assert.same({ cert = PEM_CERT, key = PEM_KEY, name = "new.test" }, r.supplied)
    assert.same({ level = "info", message = "http/1.1 192.0.2.1 test" }, r.logs[1])
    -- kept from an earlier handshake: used without a fetch
    r = t.tls_hello(hooks, { sni = "new.test" }, { supplied = { "new.test" } })
    assert.equal("new.test", r.used)
    assert.is_nil(r.supplied)
  end)

  it("says why a supplied certificate is refused", function()
    local r = t.tls_hello(hooks, { sni = "bad.test" }, { http = store })
    assert.is_nil(r.supplied)
    assert.equal("supply: the certificate is not a PEM certificate", r.logs[1].message)
  end)

  it("refuses, and reports a failing hook as a refusal with its error", function()
    local r = t.tls_hello(hooks, { sni = "x.test", ja4 = "t13i1516h2_8daaf6152771_e5627efa2ab1" })
    assert.is_true(r.refused)
    r = t.tls_hello(hooks, { sni = "broken.test" })
    assert.is_true(r.refused)
    assert.matches("^on_tls_hello: .*no store", r.error)
  end)

  it("checks its arguments", function()
    assert.has_error(function() t.tls_hello(hooks, { name = "x" }) end, "t.tls_hello: unknown hello field name")
    assert.has_error(function() t.tls_hello(hooks, {}, { certs = {} }) end, "t.tls_hello: unknown option certs")
  end)
end)
