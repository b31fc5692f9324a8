-- Basic proxying: requests and responses pass through, forwarding headers are
-- added, X-Request-Id is generated or kept, hop-by-hop headers are removed,
-- listeners route to their pool, pools send their Host, weights are honoured.
local helpers = require "spec.helpers"

local echo, value, values = helpers.echo, helpers.echo_value, helpers.echo_values

describe("proxy", function()
  local a, b, moxy, port2, port3

  lazy_setup(function()
    a = helpers.start_origin()
    b = helpers.start_origin()
    port2, port3 = helpers.free_port(), helpers.free_port()
    moxy = helpers.start_moxy({
      listen = {
        "127.0.0.1:" .. helpers.free_port(),
        { addr = "127.0.0.1:" .. port2, name = "hosted", upstream = "hosted" },
        { addr = "127.0.0.1:" .. port3, name = "weighted", upstream = "weighted" },
      },
      upstreams = {
        app = { servers = { a.addr } },
        hosted = { servers = { b.addr }, host = "backend.internal" },
        weighted = { servers = { a.addr, { addr = b.addr, weight = 3 } } },
      },
      default_upstream = "app",
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path, headers, extra)
    local req = { path = path, headers = headers }
    for k, v in pairs(extra or {}) do req[k] = v end
    return helpers.request(moxy.port, req)
  end

  it("forwards a GET with its path and query untouched", function()
    local res = assert(get("/echo/a%20b?x=1&y=%2F&z"))
    assert.equal(200, res.status)
    assert.equal("application/json", res:header("content-type"))
    local e = echo(res)
    assert.equal("GET", e.method)
    assert.equal("/echo/a%20b?x=1&y=%2F&z", e.uri)
    assert.equal("HTTP/1.1", e.version)
    assert.equal(a.port, e.port)
  end)

  it("forwards a POST body", function()
    local e = echo(helpers.request(moxy.port, { method = "POST", path = "/echo", body = "hello moxy",
      headers = { ["Content-Type"] = "text/plain" } }))
    assert.equal("POST", e.method)
    assert.equal("hello moxy", e.body)
    assert.equal(10, e.body_length)
    assert.equal("text/plain", value(e, "content-type"))
  end)

  it("forwards other methods", function()
    for _, m in ipairs({ "PUT", "PATCH", "DELETE", "OPTIONS" }) do
      local body = (m == "PUT" or m == "PATCH") and ("body of " .. m) or nil
      local e = echo(helpers.request(moxy.port, { method = m, path = "/echo/" .. m, body = body }))
      assert.equal(m, e.method)
      assert.equal("/echo/" .. m, e.uri)
      if body then assert.equal(body, e.body) end
    end
  end)

  it("passes the origin's status, headers and body through", function()
    for _, code in ipairs({ 201, 404, 503 }) do
      local res = assert(get("/status/" .. code))
      assert.equal(code, res.status)
      assert.equal("status " .. code .. "\n", res.body)
    end
    local res = assert(get("/echo?rh=X-Kept:yes&rh=Set-Cookie:a=1&rh=Set-Cookie:b=2"))
    assert.equal("yes", res:header("x-kept"))
    assert.same({ "a=1", "b=2" }, res.headers["set-cookie"])
  end)

  it("forwards client headers, repeated ones in order", function()
    local e = echo(get("/echo", {
      { "X-Custom", "abc" }, { "X-Multi", "a" }, { "X-Multi", "b" }, { "User-Agent", "spec/1.0" },
      { "X-Long", string.rep("v", 2000) },
    }))
    assert.equal("abc", value(e, "x-custom"))
    assert.equal("a, b", value(e, "x-multi"))
    assert.equal("spec/1.0", value(e, "user-agent"))
    assert.equal(string.rep("v", 2000), value(e, "x-long"))
  end)

  it("forwards the client's Host by default", function()
    local e = echo(get("/echo", nil, { host = "example.test" }))
    assert.same({ "example.test" }, values(e, "host"))
  end)

  it("adds X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host", function()
    local e = echo(get("/echo", nil, { host = "example.test" }))
    assert.equal("127.0.0.1", value(e, "x-forwarded-for"))
    assert.equal("http", value(e, "x-forwarded-proto"))
    assert.equal("example.test", value(e, "x-forwarded-host"))
  end)

  it("appends the client address to an existing X-Forwarded-For", function()
    local e = echo(get("/echo", { ["X-Forwarded-For"] = "10.1.2.3" }))
    assert.equal("10.1.2.3, 127.0.0.1", value(e, "x-forwarded-for"))
  end)

  it("adds Via to the request and to the response", function()
    local res = assert(get("/echo"))
    local e = echo(res)
    assert.equal("1.1 moxy", value(e, "via"))
    assert.matches("1%.1 moxy", res:header("via"))
  end)

  it("appends to an existing Via both ways", function()
    local res = assert(get("/echo?rh=Via:1.1%20origin", { Via = "1.0 fred" }))
    local e = echo(res)
    assert.equal("1.0 fred, 1.1 moxy", value(e, "via"))
    assert.equal("1.1 origin, 1.1 moxy", res:header("via"))
  end)

  it("generates an X-Request-Id when the client sends none", function()
    local r1, r2 = assert(get("/echo")), assert(get("/echo"))
    local e1, e2 = echo(r1), echo(r2)
    assert.matches("^%x+$", value(e1, "x-request-id"))
    assert.equal(32, #value(e1, "x-request-id"))
    assert.equal(value(e1, "x-request-id"), r1:header("x-request-id"))
    assert.equal(value(e2, "x-request-id"), r2:header("x-request-id"))
    assert.not_equal(value(e1, "x-request-id"), value(e2, "x-request-id"))
  end)

  it("keeps a valid client X-Request-Id", function()
    for _, id in ipairs({ "abc-123.X:y_z", "a", string.rep("7", 128) }) do
      local res = assert(get("/echo", { ["X-Request-Id"] = id }))
      local e = echo(res)
      assert.same({ id }, values(e, "x-request-id"))
      assert.equal(id, res:header("x-request-id"))
    end
  end)

  it("replaces an invalid X-Request-Id", function()
    for _, id in ipairs({ "bad id", "semi;colon", string.rep("7", 129), "quote\"d", "slash/ed" }) do
      local res = assert(get("/echo", { ["X-Request-Id"] = id }))
      local e = echo(res)
      local seen = values(e, "x-request-id")
      assert.equal(1, #seen, "origin got " .. #seen .. " X-Request-Id for " .. id)
      assert.matches("^" .. string.rep("%x", 32) .. "$", seen[1])
      assert.equal(seen[1], res:header("x-request-id"))
    end
  end)

  it("removes hop-by-hop request headers", function()
    local e = echo(get("/echo", {
      { "Connection", "keep-alive, X-Hop" },
      { "X-Hop", "1" },
      { "Keep-Alive", "timeout=5" },
      { "TE", "trailers" },
      { "Trailer", "X-Foo" },
      { "Upgrade", "h2c" },
      { "Proxy-Connection", "keep-alive" },
      { "Proxy-Authorization", "Basic Zm9vOmJhcg==" },
      { "Proxy-Anything", "x" },
      { "X-End-To-End", "kept" },
    }))
    for _, h in ipairs({ "x-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-connection",
      "proxy-authorization", "proxy-anything" }) do
      assert.is_nil(value(e, h), h .. " reached the origin")
    end
    local conn = (value(e, "connection") or ""):lower()
    assert.is_nil(conn:find("x-hop", 1, true), "Connection still names X-Hop: " .. conn)
    assert.equal("kept", value(e, "x-end-to-end"))
  end)

  it("removes hop-by-hop response headers", function()
    local res = assert(get("/echo?rh=Connection:X-Resp-Hop&rh=X-Resp-Hop:1&rh=Keep-Alive:timeout%3D5"
      .. "&rh=Trailer:X-Foo&rh=Upgrade:h2c&rh=X-Kept:yes"))
    assert.equal(200, res.status)
    for _, h in ipairs({ "x-resp-hop", "keep-alive", "trailer", "upgrade" }) do
      assert.is_nil(res:header(h), h .. " reached the client")
    end
    local conn = (res:header("connection") or ""):lower()
    assert.is_nil(conn:find("x-resp-hop", 1, true))
    assert.equal("yes", res:header("x-kept"))
    assert.is_string(res:header("x-request-id"))
  end)

  it("routes a named listener to its upstream and sends the pool's Host", function()
    local e = echo(helpers.request(port2, { path = "/echo", host = "example.test" }))
    assert.equal(b.port, e.port)
    assert.same({ "backend.internal" }, values(e, "host"))
    assert.equal("example.test", value(e, "x-forwarded-host"))
  end)

  it("balances a pool by weight", function()
    local count = { [a.port] = 0, [b.port] = 0 }
    for _ = 1, 40 do
      local e = echo(helpers.request(port3, { path = "/echo" }))
      count[e.port] = count[e.port] + 1
    end
    assert.is_true(count[a.port] >= 1, "weight 1 server got no request")
    assert.is_true(count[b.port] > 2 * count[a.port],
      string.format("weight 3 got %d, weight 1 got %d", count[b.port], count[a.port]))
  end)
end)
