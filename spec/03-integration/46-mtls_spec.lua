-- Mutual TLS: a listener asks clients for a certificate chained to its
-- client_ca (verify_clients = "require" refuses a client without one,
-- "optional" lets it in and says so in txn.client.tls); a pool presents
-- its client_cert to an origin that asks.  Certificates made by openssl.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("mutual TLS", function()
  local dir, origin, front, req_port, opt_port, m

  local function sh(fmt, ...)
    local out, code = helpers.sh(string.format(fmt, ...))
    assert(code == 0, out)
  end

  -- curl to port p as site.test, with a client certificate name (or none)
  local function curl(p, path, cert)
    local out = helpers.sh(string.format(
      "timeout %d curl -sS -k --resolve site.test:%d:127.0.0.1 %s -w '\\n%%{http_code}' https://site.test:%d%s",
      math.ceil(10 * S), p, cert and string.format("--cert %s/%s.pem --key %s/%s.key", dir, cert, dir, cert) or "",
      p, path))
    local body, code = out:match("^(.*)\n(%d+)$")
    return body or out, tonumber(code)
  end

  lazy_setup(function()
    dir = helpers.tmpdir("mtls")
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    sh("openssl req -x509 %s -keyout %s/site.key -out %s/site.pem -days 30 -subj /CN=site.test "
      .. "-addext subjectAltName=DNS:site.test", ec, dir, dir)
    sh("openssl req -x509 %s -keyout %s/ca.key -out %s/ca.pem -days 30 -subj /CN=Test-CA", ec, dir, dir)
    sh("openssl req %s -keyout %s/client.key -out %s/client.csr -subj /O=Edge/CN=client-1", ec, dir, dir)
    sh("openssl x509 -req -in %s/client.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial -out %s/client.pem "
      .. "-days 30", dir, dir, dir, dir)
    sh("openssl req -x509 %s -keyout %s/rogue.key -out %s/rogue.pem -days 30 -subj /CN=rogue", ec, dir, dir)
    origin = helpers.start_origin()
    req_port, opt_port = helpers.free_port(), helpers.free_port()
    local certs = { { cert = dir .. "/site.pem", key = dir .. "/site.key" } }
    front = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = {
        { addr = "127.0.0.1:" .. req_port,
          tls = { certificates = certs, client_ca = dir .. "/ca.pem", verify_clients = "require" } },
        { addr = "127.0.0.1:" .. opt_port,
          tls = { certificates = certs, client_ca = dir .. "/ca.pem", verify_clients = "optional" } },
      },
      scripts = { "who.lua" },
    }, { files = { ["who.lua"] = [[
      return { on_request = function(txn)
        local t = txn.client.tls
        if t.subject == nil then return txn:respond(200, "no certificate\n") end
        return txn:respond(200, table.concat({ tostring(t.verified), t.subject, t.issuer, t.serial,
          #t.fingerprint, tostring(t.not_after > os.time()) }, "|") .. "\n")
      end }
    ]] } })
    m = helpers.start_moxy({
      upstreams = {
        with_cert = { servers = { "127.0.0.1:" .. req_port },
                      tls = { ca = dir .. "/site.pem", name = "site.test",
                              client_cert = dir .. "/client.pem", client_key = dir .. "/client.key" } },
        without = { servers = { "127.0.0.1:" .. req_port }, tls = { ca = dir .. "/site.pem", name = "site.test" } },
      },
      default_upstream = "with_cert",
      scripts = { "pick.lua" },
    }, { files = { ["pick.lua"] = [[
      return { on_request = function(txn)
        local pool, rest = txn.req.path:match("^/([%w_]+)(/.*)$")
        if pool then txn.upstream:pick(pool); txn.req.path = rest end
      end }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("lets in a client whose certificate chains to client_ca, and tells the script who it is", function()
    local body, code = curl(req_port, "/who", "client")
    assert.equal(200, code, body)
    local verified, subject, issuer, serial, fplen, valid = body:match("^(%a+)|(.-)|(.-)|(%x+)|(%d+)|(%a+)\n$")
    assert.equal("true", verified, body)
    assert.equal("CN=client-1,O=Edge", subject)
    assert.equal("CN=Test-CA", issuer)
    assert.truthy(serial)
    assert.equal("64", fplen)
    assert.equal("true", valid)
  end)

  it("refuses, when required, a client without a certificate or with one from another CA", function()
    local _, code = curl(req_port, "/who", nil)
    assert.is_not.equal(200, code)
    _, code = curl(req_port, "/who", "rogue")
    assert.is_not.equal(200, code)
    assert.truthy(front:wait_error_log("TLS handshake failed"))
  end)

  it("lets them in when optional, saying whether the certificate verified", function()
    local body, code = curl(opt_port, "/who", nil)
    assert.equal(200, code, body)
    assert.equal("no certificate\n", body)
    body, code = curl(opt_port, "/who", "rogue")
    assert.equal(200, code, body)
    assert.matches("^false|CN=rogue|CN=rogue|", body)
    body = curl(opt_port, "/who", "client")
    assert.matches("^true|CN=client%-1,O=Edge|", body)
  end)

  it("presents a pool's client certificate to an origin that requires one", function()
    local res = assert(helpers.request(m.port, { path = "/with_cert/who" }))
    assert.equal(200, res.status, res.body)
    assert.matches("^true|CN=client%-1,O=Edge|CN=Test%-CA|", res.body)
    res = assert(helpers.request(m.port, { path = "/without/who" }))
    assert.equal(502, res.status)
  end)

  it("refuses verify_clients without client_ca, naming the key", function()
    local code, out = helpers.run_moxy_check("return { pid_file = false, upstreams = { app = { servers = { '127.0.0.1:2' } } },\n"
      .. "listen = { { addr = '127.0.0.1:1', tls = { certificates = { { cert = '" .. dir .. "/site.pem', key = '"
      .. dir .. "/site.key' } }, verify_clients = 'require' } } } }\n")
    assert.equal(1, code)
    assert.matches("listen[1].tls.verify_clients: client_ca is required to verify clients", out, 1, true)
  end)
end)
