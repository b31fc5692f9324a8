-- txn:read_body(): a hook waits for the whole request body (Content-Length
-- or chunked), sees it, and the origin still gets it, sized; over the limit
-- it is 413 unless the hook answers.
local helpers = require "spec.helpers"

local SITE = [[
return {
  on_request = function(txn)
    local mode = txn.req.headers:get("X-Mode")
    if mode == "echo" then
      local body = assert(txn:read_body())
      return txn:respond(200, "got " .. #body .. ": " .. body:sub(1, 20))
    elseif mode == "pass" then
      local body = assert(txn:read_body())
      txn.req.headers:set("X-Body-Seen", tostring(#body))
    elseif mode == "small" then
      local body, err = txn:read_body(10)
      txn.ctx.err = err
    elseif mode == "small-own" then
      local body, err = txn:read_body(10)
      if not body then return txn:respond(422, "mine: " .. err) end
    elseif mode == "twice" then
      local a = assert(txn:read_body())
      local b = assert(txn:read_body())
      return txn:respond(200, tostring(a == b) .. " " .. #a)
    end
  end,
  on_response = function(txn)
    if txn.req.headers:get("X-Mode") == "pass" then
      -- later phases get the body a hook read before
      txn.resp.headers:set("X-Body-Later", tostring(#assert(txn:read_body())))
    end
  end,
}
]]

describe("txn:read_body", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({
      upstreams = { app = { servers = { origin.addr } } },
      scripts = { "site.lua" },
      limits = { body_bytes = "1m" },
    }, { files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  it("returns a Content-Length body that arrives in pieces", function()
    local conn = assert(helpers.connection(moxy.port))
    local body = string.rep("abcdefghij", 1000)
    assert(conn:send("POST /x HTTP/1.1\r\nHost: a\r\nX-Mode: echo\r\nContent-Length: " .. #body .. "\r\n\r\n"))
    helpers.sleep(0.1)
    assert(conn:send(body:sub(1, 5000)))
    helpers.sleep(0.1)
    assert(conn:send(body:sub(5001)))
    local res = assert(conn:read_response())
    assert.equal(200, res.status)
    assert.equal("got 10000: abcdefghijabcdefghij", res.body)
    -- the connection serves the next request
    local res2 = assert(conn:request({ method = "POST", path = "/x", headers = { { "X-Mode", "echo" } }, body = "hi" }))
    assert.equal("got 2: hi", res2.body)
    conn:close()
  end)

  it("decodes a chunked body, and the origin gets it with a Content-Length", function()
    local res = assert(helpers.request(moxy.port, {
      method = "POST", path = "/upload", headers = { { "X-Mode", "pass" } },
      chunks = { helpers.pattern(0, 3000), helpers.pattern(3000, 5000) },
    }))
    assert.equal(200, res.status)
    local doc = helpers.json(res.body)
    assert.equal(8000, doc.bytes)
    assert.is_true(doc.pattern_ok)
    assert.is_false(doc.chunked)
    assert.equal("8000", res:header("X-Body-Later"))
  end)

  it("answers a request without a body with an empty string", function()
    local res = assert(helpers.request(moxy.port, { path = "/x", headers = { { "X-Mode", "echo" } } }))
    assert.equal("got 0: ", res.body)
  end)

  it("gives the same body twice", function()
    local res = assert(helpers.request(moxy.port, { method = "PUT", path = "/x",
      headers = { { "X-Mode", "twice" } }, body = "same" }))
    assert.equal("true 4", res.body)
  end)

  it("answers 413 over the limit (Content-Length known, or chunked midway)", function()
    local res = assert(helpers.request(moxy.port, { method = "POST", path = "/x",
      headers = { { "X-Mode", "small" } }, body = string.rep("x", 11) }))
    assert.equal(413, res.status)
    local res2 = assert(helpers.request(moxy.port, { method = "POST", path = "/x",
      headers = { { "X-Mode", "small" } }, chunks = { "12345", "67890", "abc" } }))
    assert.equal(413, res2.status)
    assert.equal("close", res2:header("Connection"))
  end)

  it("lets the hook answer instead of the 413", function()
    local res = assert(helpers.request(moxy.port, { method = "POST", path = "/x",
      headers = { { "X-Mode", "small-own" } }, body = string.rep("x", 50) }))
    assert.equal(422, res.status)
    assert.equal("mine: request body too large", res.body)
  end)

  it("sends 100 Continue before reading when the client expects it", function()
    local conn = assert(helpers.connection(moxy.port))
    assert(conn:send("POST /x HTTP/1.1\r\nHost: a\r\nX-Mode: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"))
    local interim = assert(conn:receive_some(2))
    assert.truthy(interim:find("^HTTP/1.1 100 Continue"), interim)
    assert(conn:send("hello"))
    local res = assert(conn:read_response())
    assert.equal("got 5: hello", res.body)
    conn:close()
  end)

  it("a client that leaves while the hook waits costs nothing", function()
    local conn = assert(helpers.connection(moxy.port))
    assert(conn:send("POST /x HTTP/1.1\r\nHost: a\r\nX-Mode: echo\r\nContent-Length: 100\r\n\r\nabc"))
    helpers.sleep(0.1)
    conn:close()
    helpers.sleep(0.1)
    local res = assert(helpers.request(moxy.port, { method = "POST", path = "/x",
      headers = { { "X-Mode", "echo" } }, body = "ok" }))
    assert.equal("got 2: ok", res.body)
  end)
end)
