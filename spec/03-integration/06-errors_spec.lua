-- Upstream failures become 502/504 with moxy's error page: HTML by default,
-- JSON when the client asks for application/json.
local helpers = require "spec.helpers"

local S = helpers.scale

describe("errors", function()
  local origin, moxy, p_dead

  lazy_setup(function()
    origin = helpers.start_origin()
    p_dead = helpers.free_port()
    moxy = helpers.start_moxy({
      listen = {
        "127.0.0.1:" .. helpers.free_port(),
        { addr = "127.0.0.1:" .. p_dead, name = "dead", upstream = "dead" },
      },
      upstreams = {
        app = { servers = { origin.addr } },
        dead = { servers = { "127.0.0.1:" .. helpers.free_port() } }, -- nobody listens
      },
      default_upstream = "app",
      timeouts = { upstream = "1s" },
    })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function assert_html_error(res, code)
    assert.equal(code, res.status)
    assert.matches("^text/html", res:header("content-type") or "")
    assert.matches(tostring(code), res.body)
    assert.matches("^" .. string.rep("%x", 32) .. "$", res:header("x-request-id") or "")
  end

  local function assert_json_error(res, code, text)
    assert.equal(code, res.status)
    assert.matches("^application/json", res:header("content-type") or "")
    local doc = helpers.json(res.body)
    assert.equal(code, doc.status)
    assert.equal(text, doc.error)
    assert.equal(res:header("x-request-id"), doc.request_id)
  end

  it("answers 502 with an HTML page when the origin refuses the connection", function()
    assert_html_error(assert(helpers.request(p_dead, { path = "/echo" })), 502)
  end)

  it("answers 502 as JSON when the client accepts application/json", function()
    local res = assert(helpers.request(p_dead, { path = "/echo", headers = { Accept = "application/json" } }))
    assert_json_error(res, 502, "Bad Gateway")
  end)

  it("keeps the client's request id in the error page", function()
    local res = assert(helpers.request(p_dead, { path = "/echo",
      headers = { Accept = "application/json", ["X-Request-Id"] = "err-id-1" } }))
    assert.equal("err-id-1", res:header("x-request-id"))
    assert.equal("err-id-1", helpers.json(res.body).request_id)
  end)

  it("answers 502 when the origin resets the connection", function()
    assert_html_error(assert(helpers.request(moxy.port, { path = "/reset" })), 502)
  end)

  it("answers 502 when the origin closes in the middle of the headers", function()
    assert_html_error(assert(helpers.request(moxy.port, { path = "/half-headers" })), 502)
  end)

  it("answers 502 to an invalid status line", function()
    assert_html_error(assert(helpers.request(moxy.port, { path = "/bad-response" })), 502)
  end)

  it("answers 502 when the origin does not speak HTTP", function()
    assert_html_error(assert(helpers.request(moxy.port, { path = "/bad-response?kind=nonhttp" })), 502)
  end)

  it("answers 504 as JSON when the origin is too slow", function()
    local res = assert(helpers.request(moxy.port, { path = "/slow-headers/3",
      headers = { Accept = "application/json" }, timeout = 5 * S }))
    assert_json_error(res, 504, "Gateway Timeout")
  end)

  it("answers 400 with an HTML page to a malformed request", function()
    local text, closed = helpers.raw(moxy.port, "GARBAGE\r\n\r\n")
    local res = helpers.parse_responses(text)[1]
    assert(res, "no response to garbage: " .. text)
    assert.equal(400, res.status)
    assert.matches("^text/html", res:header("content-type") or "")
    assert.matches("400", res.body)
    assert.is_true(closed, "connection not closed after 400")
  end)

  it("keeps serving after errors", function()
    local c = assert(helpers.connection(moxy.port))
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    c:close()
    assert.equal(200, assert(helpers.request(moxy.port, { path = "/echo" })).status)
  end)
end)
