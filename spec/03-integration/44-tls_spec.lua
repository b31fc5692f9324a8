-- TLS termination on a listener: certificates chosen by the name the client
-- asks for (SNI, from the certificates' own names, wildcards), the first
-- one for clients that name none (or a refusal), RSA and ECDSA side by
-- side, TLS 1.2 and 1.3 only, the PROXY protocol before the handshake,
-- handshake timeouts and failures, certificates reloaded, configuration
-- errors naming file and key.  Certificates are made here with openssl;
-- clients are curl and openssl s_client.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("TLS listener", function()
  local dir, origin, m, port, plain_port, strict_port

  local function make_cert(name, kind, cn, sans) helpers.make_cert(dir, name, kind, cn, sans) end

  -- openssl s_client to port with args: its output (bounded in time)
  local function s_client(p, args)
    return (helpers.sh(string.format("echo | timeout %d openssl s_client -connect 127.0.0.1:%d %s",
      math.ceil(10 * S), p, args or "")))
  end

  -- curl over TLS to name on port p, trusting cacert: body, code
  local function curl(p, name, path, cacert, extra)
    local out = helpers.sh(string.format(
      "timeout %d curl -sS --cacert %s/%s.pem --resolve %s:%d:127.0.0.1 %s -w '\\n%%{http_code}' https://%s:%d%s",
      math.ceil(10 * S), dir, cacert, name, p, extra or "", name, p, path))
    local body, code = out:match("^(.*)\n(%d+)$")
    return body or out, tonumber(code)
  end

  local function conf(extra_tls)
    local tls = {
      certificates = {
        { cert = dir .. "/a.pem", key = dir .. "/a.key" },
        { cert = dir .. "/b.pem", key = dir .. "/b.key" },
        { cert = dir .. "/c_ec.pem", key = dir .. "/c_ec.key" },
        { cert = dir .. "/c_rsa.pem", key = dir .. "/c_rsa.key" },
      },
    }
    for k, v in pairs(extra_tls or {}) do tls[k] = v end
    return tls
  end

  lazy_setup(function()
    dir = helpers.tmpdir("tls")
    make_cert("a", "ec", "a.test", { "a.test", "*.w.test" })
    make_cert("b", "rsa", "b.test", { "b.test" })
    make_cert("c_ec", "ec", "c.test", { "c.test" })
    make_cert("c_rsa", "rsa", "c.test", { "c.test" })
    origin = helpers.start_origin()
    port, plain_port, strict_port = helpers.free_port(), helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      timeouts = { client_header = 1 },
      admin = {},
      listen = {
        { addr = "127.0.0.1:" .. port, tls = conf() },
        "127.0.0.1:" .. plain_port,
        { addr = "127.0.0.1:" .. strict_port, tls = conf({ refuse_unknown = true, protocols = { "TLSv1.3" } }) },
      },
      scripts = { "scheme.lua" },
    }, { files = { ["scheme.lua"] = [[
      return { on_response = function(txn)
        txn.resp.headers:set("X-Scheme", txn.req.scheme)
        local t = txn.client.tls
        txn.resp.headers:set("X-TLS", t and table.concat({ t.version, t.cipher, tostring(t.sni), tostring(t.alpn),
          tostring(t.resumed) }, " ") or "none")
      end }
    ]] } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("serves each name its own certificate, a wildcard one label deep, and tells the origin https", function()
    local body, code = curl(port, "a.test", "/echo/a", "a")
    assert.equal(200, code, body)
    assert.matches('"X-Forwarded-Proto", "https"', body, 1, true)
    body, code = curl(port, "b.test", "/echo/b", "b")
    assert.equal(200, code, body)
    body, code = curl(port, "x.w.test", "/echo/w", "a")
    assert.equal(200, code, body)
    -- two labels under the wildcard are not its name: a gets no match, curl refuses
    local _, bad = curl(port, "y.x.w.test", "/echo/w", "a")
    assert.is_not.equal(200, bad)
    assert.matches("subject=CN = b.test", s_client(port, "-servername B.TEST"), 1, true)
  end)

  it("gives clients without a name, or with an unknown one, the first certificate", function()
    assert.matches("subject=CN = a.test", s_client(port, ""), 1, true)
    assert.matches("subject=CN = a.test", s_client(port, "-servername nobody.test"), 1, true)
  end)

  it("refuses them when the listener says so", function()
    local out = s_client(strict_port, "-servername nobody.test")
    assert.matches("unrecognized name", out, 1, true)
    assert.is_nil(out:find("subject=", 1, true))
    assert.matches("subject=CN = b.test", s_client(strict_port, "-servername b.test"), 1, true)
  end)

  it("picks the ECDSA or the RSA certificate of one name by what the client can verify", function()
    local ec = s_client(port, "-servername c.test -tls1_2 -sigalgs ECDSA+SHA256")
    assert.matches("Peer signature type: ECDSA", ec, 1, true)
    local rsa = s_client(port, "-servername c.test -tls1_2 -sigalgs RSA+SHA256:RSA-PSS+SHA256")
    assert.matches("Server public key is 2048 bit", rsa, 1, true)
  end)

  it("speaks TLS 1.2 and 1.3 with forward-secret AEAD ciphers only, never 1.0 or 1.1", function()
    assert.matches("New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256", s_client(port, "-servername a.test"), 1, true)
    local t12 = s_client(port, "-servername a.test -tls1_2")
    assert.matches("New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256", t12, 1, true)
    -- (the client told to offer what its defaults would not)
    for _, old in ipairs({ "-tls1_1", "-tls1" }) do
      assert.matches("alert protocol version",
        s_client(port, "-servername a.test -cipher DEFAULT@SECLEVEL=0 " .. old), 1, true)
    end
    -- no RSA key exchange, no CBC
    for _, weak in ipairs({ "AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES256-GCM-SHA384" }) do
      assert.matches("alert handshake failure",
        s_client(port, "-servername b.test -tls1_2 -cipher " .. weak .. "@SECLEVEL=0"), 1, true)
    end
    -- a listener limited to TLS 1.3
    assert.matches("Cipher is (NONE)", s_client(strict_port, "-servername b.test -tls1_2"), 1, true)
    assert.matches("listener .*TLS handshake failed", m:error_text())
  end)

  it("carries keep-alive requests and large bodies, selects http/1.1 by ALPN; txn.req.scheme and txn.client.tls say how", function()
    local out = helpers.sh(string.format(
      "timeout %d curl -sS -k --resolve a.test:%d:127.0.0.1 -w '%%{http_code} %%{num_connects} %%{http_version} %%{size_download}\\n' "
        .. "-o /dev/null https://a.test:%d/bytes/1048576 -o /dev/null https://a.test:%d/echo/2 -D -",
      math.ceil(20 * S), port, port, port))
    assert.matches("200 1 1.1 1048576", out, 1, true)
    assert.matches("200 0 1.1 %d+", out) -- the second request on the same connection
    assert.matches("[Xx]%-[Ss]cheme: https", out)
    assert.matches("[Xx]%-TLS: TLSv1.3 TLS_AES_128_GCM_SHA256 a.test http/1.1 false", out)
    local res = assert(helpers.request(plain_port, { path = "/echo/p" }))
    assert.equal("http", res:header("x-scheme"))
    assert.equal("none", res:header("x-tls"))
    assert.matches("ALPN protocol: http/1.1", s_client(port, "-servername a.test -alpn h2,http/1.1"), 1, true)
  end)

  it("reads large request bodies and pipelined requests that come in one record", function()
    local f = dir .. "/upload"
    helpers.write_file(f, string.rep("0123456789abcdef", 131072)) -- 2 MiB
    local sum = helpers.sh("sha256sum " .. f):match("^(%x+)")
    local body, code = curl(port, "a.test", "/echo/up", "a", "--data-binary @" .. f)
    assert.equal(200, code, body)
    assert.matches('"body_length": 2097152', body, 1, true)
    assert.matches('"body_sha256": "' .. sum .. '"', body, 1, true)
    -- three requests in one write: one TLS record, all answered in order
    local out = helpers.sh(string.format("(printf 'GET /echo/1 HTTP/1.1\r\nHost: a.test\r\n\r\n"
      .. "GET /echo/2 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /echo/3 HTTP/1.1\r\nHost: a.test\r\n"
      .. "Connection: close\r\n\r\n'; sleep 2) | timeout %d openssl s_client -quiet -connect 127.0.0.1:%d "
      .. "-servername a.test 2>/dev/null", math.ceil(10 * S), port))
    local uris = {}
    for u in out:gmatch('"uri": "([^"]+)"') do uris[#uris + 1] = u end
    assert.same({ "/echo/1", "/echo/2", "/echo/3" }, uris)
  end)

  it("resumes sessions: by ticket (TLS 1.2 and 1.3) and by session id (TLS 1.2)", function()
    local sess = dir .. "/sess"
    for _, case in ipairs({ "-tls1_2", "-tls1_2 -no_ticket", "-tls1_3" }) do
      -- (a TLS 1.3 ticket comes after the handshake: the first client waits a little for it)
      local first = helpers.sh(string.format("(sleep 0.3; echo) | timeout %d openssl s_client -connect 127.0.0.1:%d "
        .. "-servername b.test %s -sess_out %s", math.ceil(10 * S), port, case, sess))
      assert.matches("\nNew, TLSv1", first, 1, true)
      local again = s_client(port, "-servername b.test " .. case .. " -sess_in " .. sess)
      assert.matches("\nReused, TLSv1", again, 1, true, case)
    end
    -- TLS 1.3 clients use a ticket once: a resumed connection gets a new
    -- one, which resumes the next
    local sess2 = dir .. "/sess2"
    local resumed = helpers.sh(string.format("(sleep 0.3; echo) | timeout %d openssl s_client -connect 127.0.0.1:%d "
      .. "-servername b.test -tls1_3 -sess_in %s -sess_out %s", math.ceil(10 * S), port, sess, sess2))
    assert.matches("\nReused, TLSv1.3", resumed, 1, true)
    local function ticket(path)
      return (helpers.sh("openssl sess_id -in " .. path .. " -noout -text"):match("TLS session ticket:\n(.-)\n%s*\n"))
    end
    assert.truthy(ticket(sess) and ticket(sess2))
    assert.are_not.equal(ticket(sess), ticket(sess2))
    assert.matches("\nReused, TLSv1.3", s_client(port, "-servername b.test -tls1_3 -sess_in " .. sess2), 1, true)
  end)

  it("counts handshakes by kind and version, failures by reason, and shows when certificates expire", function()
    s_client(port, "-servername a.test -tls1_2")
    s_client(port, "-servername a.test -cipher DEFAULT@SECLEVEL=0 -tls1_1")
    s_client(strict_port, "-servername nobody.test")
    local metrics
    local function value(pattern)
      return tonumber(metrics:match(pattern:gsub("[%{%}%.%-\"]", "%%%0") .. " (%d+)"))
    end
    assert.truthy(helpers.wait_until(function()
      local res = helpers.request(m.admin_port, { path = "/metrics" })
      metrics = res and res.body or ""
      return (value('moxy_tls_handshake_failures_total{reason="name"}') or 0) >= 1 and
             (value('moxy_tls_handshakes_by_version_total{version="TLSv1.2"}') or 0) >= 1
    end, 5 * S, 0.1), metrics)
    assert.is_true(value('moxy_tls_handshakes_total{kind="full"}') >= 2)
    assert.is_true(value('moxy_tls_handshake_failures_total{reason="protocol"}') >= 1)
    local st = helpers.json(assert(helpers.request(m.admin_port, { path = "/status" })).body)
    assert.is_true(st.tls.handshakes.full >= 2)
    assert.is_true(st.tls.versions["TLSv1.2"] >= 1)
    assert.is_true(st.tls.failures.name >= 1 and st.tls.failures.protocol >= 1)
    local expiry = value('moxy_tls_certificate_expiry_seconds{listener="127.0.0.1:' .. port .. '"}')
    assert.is_true(expiry > os.time() + 25 * 86400 and expiry < os.time() + 31 * 86400, tostring(expiry))
  end)

  it("resumes across processes that share a ticket_keys file, and across a reload", function()
    local keys = dir .. "/ticket.keys"
    local out, code = helpers.sh("openssl rand -out " .. keys .. " 160")
    assert(code == 0, out)
    local function node()
      return helpers.start_moxy({
        upstreams = { app = { servers = { origin.addr } } },
        listen = { { addr = "127.0.0.1:" .. helpers.free_port(),
                     tls = { certificates = { { cert = dir .. "/b.pem", key = dir .. "/b.key" } }, ticket_keys = keys } } },
      })
    end
    local a, b = node(), node()
    local sess = dir .. "/sess-nodes"
    for _, v in ipairs({ "-tls1_2", "-tls1_3" }) do
      local first = helpers.sh(string.format("(sleep 0.3; echo) | timeout %d openssl s_client -connect 127.0.0.1:%d "
        .. "-servername b.test %s -sess_out %s", math.ceil(10 * S), a.port, v, sess))
      assert.matches("\nNew, TLSv1", first, 1, true)
      assert.matches("\nReused, TLSv1", s_client(b.port, "-servername b.test " .. v .. " -sess_in " .. sess), 1, true, v)
    end
    -- the process's own keys outlive a reload
    local sr = dir .. "/sess-reload"
    helpers.sh(string.format("(sleep 0.3; echo) | timeout %d openssl s_client -connect 127.0.0.1:%d "
      .. "-servername b.test -tls1_3 -sess_out %s", math.ceil(10 * S), port, sr))
    m:signal("HUP")
    assert.truthy(helpers.wait_until(function()
      return m:error_text():match("reload: [^\n]*%(%d+%.%d+ s%)")
    end, 5 * S, 0.05), m:error_text())
    assert.matches("\nReused, TLSv1.3", s_client(port, "-servername b.test -tls1_3 -sess_in " .. sr), 1, true)
  end)

  it("says at start how responses go out over TLS (copied through OpenSSL; whether the kernel offers TLS offload)", function()
    local line = m:wait_error_log("kernel TLS offload: ", 5 * S)
    assert.truthy(line, m:error_text())
    assert.matches("cache hits included, are encrypted by OpenSSL in moxy and copied", m:error_text(), 1, true)
  end)

  it("reads a PROXY protocol header before the handshake", function()
    local pp = helpers.free_port()
    local m2 = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. pp, proxy_protocol = true, tls = conf() } },
    })
    local body, code = curl(m2.port, "b.test", "/echo/pp", "b", "--haproxy-protocol")
    assert.equal(200, code, body)
    assert.matches('"X-Forwarded-Proto", "https"', body, 1, true)
  end)

  it("closes a connection whose handshake does not finish within timeouts.client_header, and one that sends no TLS", function()
    local c = assert(helpers.connection(port))
    local t0 = helpers.now()
    local data, err = c:receive_some(5 * S)
    assert.is_nil(data)
    assert.equal("closed", err)
    assert.is_true(helpers.now() - t0 < 3 * S)
    c:close()
    assert.truthy(m:wait_error_log("TLS handshake not done within timeouts.client_header"))
    local text = helpers.raw(port, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", { timeout = 3 * S })
    assert.is_nil(text:find("HTTP/1.1", 1, true))
    assert.truthy(m:wait_error_log("TLS handshake failed"))
  end)
end)

describe("TLS resumption across workers", function()
  it("resumes by ticket (TLS 1.3) and by session id (TLS 1.2) whichever worker takes the connection", function()
    local dir = helpers.tmpdir("tls-workers")
    helpers.make_cert(dir, "w", "ec", "w.test", { "w.test" })
    local origin = helpers.start_origin()
    local port = helpers.free_port()
    -- each worker has its own VM: a token drawn in worker_init names it
    local m = helpers.start_moxy({
      workers = 2,
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. port, tls = { certificates = { { cert = dir .. "/w.pem", key = dir .. "/w.key" } } } } },
      scripts = { "vm.lua" },
    }, { files = { ["vm.lua"] = [[
      local me
      return {
        worker_init = function() me = moxy.crypto.hex(moxy.crypto.random_bytes(8)) end,
        on_response = function(txn) txn.resp.headers:set("X-VM", me) end,
      }
    ]] } })
    finally(function() m:stop() origin:stop() end)
    for _, case in ipairs({ "-tls1_3", "-tls1_2 -no_ticket" }) do
      local sess = dir .. "/sess"
      local first = helpers.sh(string.format("(sleep 0.3; echo) | timeout %d openssl s_client -connect 127.0.0.1:%d "
        .. "-servername w.test %s -sess_out %s", math.ceil(10 * S), port, case, sess))
      assert.matches("\nNew, TLSv1", first, 1, true)
      local vms, reused = {}, 0
      for _ = 1, 16 do
        local got = helpers.sh(string.format("printf 'GET /echo HTTP/1.1\\r\\nHost: w.test\\r\\nConnection: close\\r\\n\\r\\n' "
          .. "| timeout %d openssl s_client -connect 127.0.0.1:%d -servername w.test %s -sess_in %s -ign_eof 2>&1",
          math.ceil(10 * S), port, case, sess))
        if got:find("\nReused, TLSv1", 1, true) then reused = reused + 1 end
        local vm = got:match("X%-VM: (%x+)")
        if vm then vms[vm] = true end
      end
      local n = 0
      for _ in pairs(vms) do n = n + 1 end
      assert.equal(16, reused, case)
      assert.equal(2, n, case .. ": the connections did not reach both workers")
    end
  end)
end)

describe("TLS configuration", function()
  local dir

  lazy_setup(function()
    dir = helpers.tmpdir("tlsconf")
    for _, n in ipairs({ "a", "b" }) do helpers.make_cert(dir, n, "ec", n .. ".test", { n .. ".test" }) end
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function check(tls)
    local src = "return { listen = { { addr = '127.0.0.1:1', tls = " .. tls .. " } },\n"
      .. "upstreams = { app = { servers = { '127.0.0.1:2' } } }, pid_file = false }\n"
    local code, out = helpers.run_moxy_check(src)
    return code, out
  end

  it("names the file and the key of a missing file, a key that is not the certificate's, a bad cipher list", function()
    local code, out = check("{ certificates = { { cert = '" .. dir .. "/a.pem', key = '" .. dir .. "/none.key' } } }")
    assert.equal(1, code)
    assert.matches("moxy.lua:1: listen[1].tls.certificates[1].key: cannot open key", out, 1, true)
    code, out = check("{ certificates = { { cert = '" .. dir .. "/a.pem', key = '" .. dir .. "/b.key' } } }")
    assert.equal(1, code)
    assert.matches("listen[1].tls.certificates[1].key: " .. dir .. "/b.key does not match the certificate", out, 1, true)
    code, out = check("{ certificates = { { cert = '" .. dir .. "/a.pem', key = '" .. dir .. "/a.key' } }, ciphers = 'NOPE' }")
    assert.equal(1, code)
    assert.matches("listen[1].tls.ciphers: no cipher OpenSSL knows", out, 1, true)
    code, out = check("{ certificates = { { cert = '" .. dir .. "/a.pem', key = '" .. dir .. "/a.key' } }, protocols = { 'TLSv1.1' } }")
    assert.equal(1, code)
    assert.matches("listen[1].tls.protocols[1]: expected \"TLSv1.2\" or \"TLSv1.3\"", out, 1, true)
    code, out = check("{ certificates = {} }")
    assert.equal(1, code)
    assert.matches("listen[1].tls.certificates: at least one", out, 1, true)
  end)

  it("warns at load about a certificate that expires within 14 days, with its date", function()
    helpers.make_cert(dir, "soon", "ec", "soon.test", { "soon.test" }, 5)
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. helpers.free_port(), name = "edge",
                   tls = { certificates = { { cert = dir .. "/soon.pem", key = dir .. "/soon.key" } } } } },
    })
    local line = m:wait_error_log("the certificate for soon.test expires on", 5 * S)
    assert.truthy(line)
    assert.matches("listener edge: .*expires on %d%d%d%d%-%d%d%-%d%d .*UTC %(in [45] days%)", line)
  end)

  it("renews certificates by reloads under load without a failed handshake or request", function()
    if not io.open("/usr/bin/wrk") then
      pending("/usr/bin/wrk is missing: install wrk (Debian package wrk)")
      return
    end
    local p = helpers.free_port()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. p,
                   tls = { certificates = { { cert = dir .. "/b.pem", key = dir .. "/b.key" } } } } },
    })
    local wrk_s = math.ceil(6 * S)
    -- a new connection, so a full handshake, for every request
    local wrk = helpers.spawn({ "/usr/bin/wrk", "-t1", "-c8", "-d" .. wrk_s .. "s", "-H", "Connection: close",
                                "https://127.0.0.1:" .. p .. "/echo/load" }, { kind = "wrk" })
    finally(function() wrk:stop("KILL") end)
    helpers.sleep(0.5)
    for i = 1, 5 do
      local out, code = helpers.sh(string.format(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout %s/b.key.new -out %s/b.pem.new "
          .. "-days 30 -subj /CN=b%d.test -addext subjectAltName=DNS:b.test && mv %s/b.key.new %s/b.key && "
          .. "mv %s/b.pem.new %s/b.pem", dir, dir, i, dir, dir, dir, dir))
      assert(code == 0, out)
      m:signal("HUP")
      helpers.sleep(0.4)
    end
    assert.truthy(wrk:wait_exit(wrk_s + 10), "wrk did not end")
    local text = wrk:stdout() .. wrk:stderr()
    local requests = tonumber(text:match("(%d+) requests in"))
    assert(requests and requests > 100, "wrk did not run:\n" .. text)
    assert.is_nil(text:match("Socket errors"), text)
    assert.is_nil(text:match("Non%-2xx"), text)
    assert.matches("subject=CN = b5.test", helpers.sh(string.format(
      "echo | timeout 5 openssl s_client -connect 127.0.0.1:%d -servername b.test", p)), 1, true)
    print(("\n    wrk %d s, a TLS handshake per request, 5 certificate renewals: %d requests, no error"):format(
      wrk_s, requests))
  end)

  it("reloads renewed certificates; a broken one leaves the old ones serving", function()
    local p = helpers.free_port()
    local origin = helpers.start_origin()
    local m = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = { { addr = "127.0.0.1:" .. p, tls = { certificates = { { cert = dir .. "/a.pem", key = dir .. "/a.key" } } } } },
    })
    local function subject()
      return (helpers.sh(string.format("echo | timeout 5 openssl s_client -connect 127.0.0.1:%d -servername a.test", p)))
        :match("subject=CN = (%S+)")
    end
    assert.equal("a.test", subject())
    -- renewed: a new key and certificate for the same name, with another common name
    helpers.make_cert(dir, "a", "ec", "renewed.test", { "a.test" })
    m:signal("HUP")
    assert.equal("renewed.test", helpers.wait_until(function()
      local s = subject()
      return s == "renewed.test" and s or nil
    end, 5 * S, 0.1))
    -- a key that does not match: the reload fails, the renewed one serves on
    os.execute(string.format("cp %s/b.key %s/a.key", dir, dir))
    m:signal("HUP")
    assert.truthy(m:wait_error_log("does not match the certificate", 5 * S))
    assert.equal("renewed.test", subject())
  end)
end)

describe("OCSP stapling", function()
  it("staples a certificate's OCSP response to clients that ask, and refuses a file that is not one", function()
    local dir = helpers.tmpdir("ocsp")
    local function sh(cmd)
      local out, code = helpers.sh(cmd)
      assert(code == 0, cmd .. "\n" .. out)
      return out
    end
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    sh(string.format("cd %s && openssl req -x509 %s -keyout ca.key -out ca.pem -days 30 -subj /CN=OCSP-CA", dir, ec))
    sh(string.format("cd %s && openssl req %s -keyout site.key -out site.csr -subj /CN=site.test", dir, ec))
    helpers.write_file(dir .. "/ext.cnf", "subjectAltName=DNS:site.test\n")
    sh(string.format("cd %s && openssl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
      .. "-out site.pem -days 30 -extfile ext.cnf", dir))
    local serial = sh(string.format("openssl x509 -in %s/site.pem -noout -serial", dir)):match("serial=(%x+)")
    helpers.write_file(dir .. "/index.txt", "V\t" .. os.date("!%y%m%d%H%M%SZ", os.time() + 30 * 86400) .. "\t\t"
      .. serial .. "\tunknown\t/CN=site.test\n")
    sh(string.format("cd %s && openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -issuer ca.pem "
      .. "-cert site.pem -respout resp.der -ndays 1", dir))
    local origin = helpers.start_origin()
    local p, plain_p = helpers.free_port(), helpers.free_port()
    helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      listen = {
        { addr = "127.0.0.1:" .. p, tls = { certificates = {
            { cert = dir .. "/site.pem", key = dir .. "/site.key", ocsp = dir .. "/resp.der" } } } },
        { addr = "127.0.0.1:" .. plain_p, tls = { certificates = { { cert = dir .. "/site.pem", key = dir .. "/site.key" } } } },
      },
    })
    for _, v in ipairs({ "-tls1_2", "-tls1_3" }) do
      local out = helpers.sh(string.format("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -servername site.test "
        .. "-status %s", p, v))
      assert.matches("OCSP Response Status: successful", out, 1, true, v)
      assert.matches("Cert Status: good", out, 1, true, v)
    end
    local out = helpers.sh(string.format("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -servername site.test "
      .. "-status", plain_p))
    assert.matches("OCSP response: no response sent", out, 1, true)
    local code, msg = helpers.run_moxy_check("return { pid_file = false, upstreams = { app = { servers = { '127.0.0.1:2' } } },\n"
      .. "listen = { { addr = '127.0.0.1:1', tls = { certificates = { { cert = '" .. dir .. "/site.pem', key = '"
      .. dir .. "/site.key', ocsp = '" .. dir .. "/site.pem' } } } } } }\n")
    assert.equal(1, code)
    assert.matches("listen[1].tls.certificates[1].ocsp: " .. dir .. "/site.pem is not a successful OCSP response", msg, 1, true)
  end)
end)
