-- WebSocket: the Upgrade handshake is forwarded, the 101 comes back with the
-- origin's Sec-WebSocket-Accept, then moxy tunnels bytes both ways.
local helpers = require "spec.helpers"

-- RFC 6455 section 1.3 sample
local KEY, ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

local function ws_headers()
  return {
    { "Upgrade", "websocket" },
    { "Connection", "Upgrade" },
    { "Sec-WebSocket-Key", KEY },
    { "Sec-WebSocket-Version", "13" },
  }
end

describe("websocket", function()
  local origin, moxy

  lazy_setup(function()
    origin = helpers.start_origin()
    moxy = helpers.start_moxy({ upstreams = { app = { servers = { origin.addr } } } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function open(path)
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ path = path or "/ws", headers = ws_headers() }))
    assert.equal(101, res.status, "handshake answered " .. res.status .. ": " .. res.body)
    return c, res
  end

  it("answers the handshake with 101 and the origin's accept key", function()
    local c, res = open()
    assert.equal(ACCEPT, res:header("sec-websocket-accept"))
    assert.is_true(helpers.has_token(res.headers.upgrade, "websocket"), "no Upgrade: websocket")
    assert.is_true(helpers.has_token(res.headers.connection, "upgrade"), "no Connection: upgrade")
    c:close()
  end)

  it("echoes text frames", function()
    local c = open()
    for i = 1, 5 do
      assert(c:send(helpers.ws_frame(1, "message " .. i)))
      local f = assert(c:read_ws_frame())
      assert.equal(1, f.opcode)
      assert.is_true(f.fin)
      assert.is_false(f.masked, "server frames must not be masked")
      assert.equal("message " .. i, f.payload)
    end
    c:close()
  end)

  it("carries a 70000-byte binary frame and several frames in one write", function()
    local c = open()
    local big = helpers.pattern(0, 70000)
    assert(c:send(helpers.ws_frame(2, big) .. helpers.ws_frame(1, "a") .. helpers.ws_frame(1, "b")))
    local f = assert(c:read_ws_frame())
    assert.equal(2, f.opcode)
    assert.is_true(f.payload == big, "binary payload changed")
    assert.equal("a", assert(c:read_ws_frame()).payload)
    assert.equal("b", assert(c:read_ws_frame()).payload)
    c:close()
  end)

  it("forwards data the origin sends together with the 101", function()
    local c = open("/ws?hello=1")
    local f = assert(c:read_ws_frame())
    assert.equal("hello from origin", f.payload)
    assert(c:send(helpers.ws_frame(1, "after hello")))
    assert.equal("after hello", assert(c:read_ws_frame()).payload)
    c:close()
  end)

  it("answers ping with pong", function()
    local c = open()
    assert(c:send(helpers.ws_frame(9, "ping!")))
    local f = assert(c:read_ws_frame())
    assert.equal(10, f.opcode)
    assert.equal("ping!", f.payload)
    c:close()
  end)

  it("closes the client connection after the close handshake", function()
    local c = open()
    assert(c:send(helpers.ws_frame(8, "\3\232bye")))
    local f = assert(c:read_ws_frame())
    assert.equal(8, f.opcode)
    assert.is_true((c:wait_closed(3 * helpers.scale)), "tunnel not closed after the origin hung up")
    c:close()
  end)

  it("treats a refused upgrade as an ordinary response", function()
    local c = assert(helpers.connection(moxy.port))
    local res = assert(c:request({ path = "/echo?refused", headers = ws_headers() }))
    assert.equal(200, res.status)
    assert.equal("/echo?refused", helpers.json(res.body).uri)
    local res2 = assert(c:request({ path = "/echo?next" }))
    assert.equal(200, res2.status)
    c:close()
  end)

  it("keeps serving plain requests while a tunnel is open", function()
    local c = open()
    local res = assert(helpers.request(moxy.port, { path = "/echo?meanwhile" }))
    assert.equal(200, res.status)
    assert(c:send(helpers.ws_frame(1, "still here")))
    assert.equal("still here", assert(c:read_ws_frame()).payload)
    c:close()
  end)
end)
