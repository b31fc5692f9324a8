-- moxy.test (lua/moxy/test.lua, core/api/test_txn.c): a script's hooks run on a
-- real request without a server, in production's order; the project's own
-- scripts tested through it; `moxy test` running a user's spec end to end.
local helpers = require "spec.helpers"
local t = require "moxy.test"

local ROOT = helpers.root
local function script(name) return ROOT .. "/scripts/" .. name end

-- a script file of `source` in a temp dir; its path
local function script_file(source, name)
  return helpers.write_file(helpers.tmpdir("mtest") .. "/" .. (name or "site.lua"), source)
end

-- a fake origin that answers 200 "ok"
local function ok_origin()
  return t.upstream(function() return 200, "ok", { ["Content-Type"] = "text/plain" } end)
end

describe("moxy.test", function()
  lazy_teardown(function() helpers.stop_all() end)

  describe("t.run", function()
    it("runs cache rules as a moxy without a cache does: txn.cache's calls do nothing", function()
      local txn = t.run({
        on_request = function(txn) txn.cache:bypass(); txn.cache.key = "k" end,
        on_response = function(txn)
          txn.cache:store { ttl = 60 }
          txn.cache:no_store()
          txn.resp.headers:set("X-Status", tostring(txn.cache.status) .. " " .. tostring(txn.cache.key))
        end,
      }, t.txn{ path = "/" }, { upstreams = { app = ok_origin() } })
      assert.equal(200, txn.resp.status)
      assert.equal("nil nil", txn.resp.headers:get("X-Status"))
    end)

    it("with opts.cache: makes the key, runs on_cache_key, and says whether and how long the response is stored", function()
      local origin = function(headers)
        return t.upstream(function() return 200, "body", headers end)
      end
      local rules = t.load(script("cache_rules.lua"))
      -- a static asset: a day, whatever the origin said
      local txn = t.run(rules, t.txn{ path = "/assets/app.js", host = "example.com" },
        { upstreams = { app = origin({ ["Cache-Control"] = "no-cache" }) }, cache = {} })
      assert.equal("miss", txn.cache.status)
      assert.equal("http://example.com/assets/app.js", txn.cache.key)
      assert.same({ ttl = 86400 }, txn.stored)
      assert.matches("^moxy; fwd=uri%-miss; stored; ttl=86[34]%d%d$", txn.resp.headers:get("Cache-Status"))
      assert.same({ "on_request", "on_cache_key", "on_response" }, txn.phases)
      -- tracking parameters are not part of the key (query sorted by the default key)
      txn = t.run(rules, t.txn{ path = "/page", query = "utm_source=x&b=2&gclid=9&a=1", host = "example.com" },
        { upstreams = { app = origin({ ["Cache-Control"] = "max-age=60" }) }, cache = {} })
      assert.equal("http://example.com/page?a=1&b=2", txn.cache.key)
      assert.same({ ttl = 60 }, txn.stored)
      -- /api/ without explicit freshness: not stored, though heuristics would
      txn = t.run(rules, t.txn{ path = "/api/users" },
        { upstreams = { app = origin({ ["Last-Modified"] = "Mon, 01 Jan 2024 00:00:00 GMT" }) }, cache = {} })
      assert.same({ why = "no-store" }, txn.stored)
      txn = t.run(rules, t.txn{ path = "/api/users" },
        { upstreams = { app = origin({ ["Cache-Control"] = "public, max-age=30" }) }, cache = {} })
      assert.same({ ttl = 30 }, txn.stored)
      -- the origin's own rules: private, Set-Cookie, no freshness
      txn = t.run(rules, t.txn{ path = "/page" },
        { upstreams = { app = origin({ ["Cache-Control"] = "private, max-age=60" }) }, cache = {} })
      assert.same({ why = "private" }, txn.stored)
      txn = t.run(rules, t.txn{ path = "/page" }, { upstreams = { app = origin({}) }, cache = {} })
      assert.same({ why = "no freshness" }, txn.stored)
      -- a logged-in user bypasses: no on_cache_key, nothing stored
      txn = t.run(rules, t.txn{ path = "/assets/app.js", headers = { Cookie = "theme=dark; session=abc" } },
        { upstreams = { app = origin({}) }, cache = {} })
      assert.equal("bypass", txn.cache.status)
      assert.is_nil(txn.cache.key)
      assert.same({ why = "bypass" }, txn.stored)
      assert.equal("moxy; fwd=bypass", txn.resp.headers:get("Cache-Status"))
      assert.same({ "on_request", "on_response" }, txn.phases)
      -- a body larger than max_object is not stored
      txn = t.run(rules, t.txn{ path = "/assets/app.js" },
        { upstreams = { app = origin({}) }, cache = { max_object = 3 } })
      assert.same({ why = "too big" }, txn.stored)
      -- without opts.cache: no cache, as before
      txn = t.run(rules, t.txn{ path = "/assets/app.js" }, { upstreams = { app = origin({}) } })
      assert.is_nil(txn.cache.status)
      assert.is_nil(txn.stored)
    end)

    it("with opts.cache: on_cache_key may answer, fail, or return a key", function()
      local up = { app = t.upstream(function() return 200, "x", { ["Cache-Control"] = "max-age=5" } end) }
      local txn = t.run({ on_cache_key = function() return "custom" end }, t.txn{ path = "/" },
        { upstreams = up, cache = {} })
      assert.equal("custom", txn.cache.key)
      txn = t.run({ on_cache_key = function(txn) txn:respond(403, "no") end }, t.txn{ path = "/" },
        { upstreams = up, cache = {} })
      assert.equal(403, txn.resp.status)
      txn = t.run({ on_cache_key = function() return 42 end }, t.txn{ path = "/" },
        { upstreams = up, cache = {} })
      assert.equal(500, txn.resp.status)
      assert.matches("on_cache_key hook #1 returned a number", txn.error)
      -- POST is not looked up
      txn = t.run({ on_cache_key = function() error("not run") end }, t.txn{ method = "POST", path = "/", body = "b" },
        { upstreams = up, cache = {} })
      assert.equal(200, txn.resp.status)
      assert.is_nil(txn.cache.status)
      assert.same({ why = "not looked up" }, txn.stored)
      assert.error_matches(function() t.run({}, t.txn{}, { cache = { size = 1 } }) end, "opts.cache: unknown field")
    end)

    it("routes, tags and answers as the brief's example says", function()
      local hooks = {
        on_request = function(txn)
          txn.ctx.notes = { "seen" }
          moxy.log.info("hello", txn.req.path)
          if txn.req.path:find("^/api/") then txn.upstream:pick("api") end
        end,
      }
      local txn = t.run(hooks, t.txn{ method = "GET", path = "/api/x?a=1",
          headers = { ["X-Foo"] = "bar", Cookie = "s=1" }, client_ip = "10.1.2.3", body = nil },
        { upstreams = { api = t.upstream(function() return 200, "ok", { ["Content-Type"] = "text/plain" } end),
                        app = t.upstream(function() return 404 end) },
          default_upstream = "app" })
      assert.equal("api", txn.upstream.pool)
      assert.equal("bar", txn.upstream.request.headers:get("x-foo"))
      assert.equal(200, txn.resp.status)
      assert.equal("ok", txn.resp.body)
      assert.equal("text/plain", txn.resp.headers:get("Content-Type"))
      assert.same({ "seen" }, txn.ctx.notes)
      assert.same({ level = "info", message = "hello /api/x" }, txn.logs[1])
      assert.same({ "on_request" }, txn.phases)
      -- the request as it ended stays readable
      assert.equal("/api/x?a=1", txn.req.uri)
      assert.equal("a=1", txn.req.query)
      assert.equal("10.1.2.3", txn.client.ip)
      assert.equal("test", txn.listener)
      assert.matches("^%x+$", txn.id)
      assert.equal(txn.id, txn.req.headers:get("X-Request-Id"))
      assert.is_number(txn.duration)
      assert.equal(2, txn.bytes_sent)
    end)

    it("runs every phase in order, with txn.ctx from on_request to on_log", function()
      local seen = {}
      local function trace(txn, name)
        local tr = txn.ctx.trace or {}
        txn.ctx.trace = tr
        tr[#tr + 1] = name
      end
      local hooks = {
        on_request = function(txn) trace(txn, "request") end,
        on_upstream = function(txn) trace(txn, "upstream") end,
        on_upstream_request = function(txn)
          trace(txn, "upstream_request")
          txn.req.headers:set("X-Trace", table.concat(txn.ctx.trace, ","))
        end,
        on_response = function(txn)
          trace(txn, "response")
          txn.resp.headers:set("X-Up", tostring(txn.upstream.status))
        end,
        on_body = function(txn, chunk, eof)
          if eof then trace(txn, "body") end
          return chunk
        end,
        on_log = function(txn)
          trace(txn, "log")
          seen.status, seen.bytes = txn.resp.status, txn.bytes_sent
          seen.times = { type(txn.upstream.connect_time), type(txn.upstream.header_time),
                         type(txn.upstream.response_time) }
        end,
        on_error = function(txn) trace(txn, "error") end,
      }
      local txn = t.run(hooks, t.txn{ path = "/p" }, { upstreams = { app = ok_origin() } })
      assert.same({ "on_request", "on_upstream", "on_upstream_request", "on_response", "on_body", "on_log" },
        txn.phases)
      assert.same({ "request", "upstream", "upstream_request", "response", "body", "log" }, txn.ctx.trace)
      assert.equal("request,upstream,upstream_request", txn.upstream.request.headers:get("X-Trace"))
      assert.equal("200", txn.resp.headers:get("X-Up"))
      assert.same({ status = 200, bytes = 2, times = { "number", "number", "number" } }, seen)
      assert.equal("app", txn.upstream.pool)
      assert.equal("app:80", txn.upstream.peer)
      assert.equal(1, txn.upstream.tries)
    end)

    it("skips to on_log when a hook answers, and the origin is not asked", function()
      local origin = ok_origin()
      local txn = t.run({
        on_request = function(txn)
          if txn.req.path == "/ping" then return txn:respond(200, "pong\n", { ["X-A"] = { "1", "2" } }) end
        end,
        on_upstream = function() error("not reached") end,
        on_log = function(txn) txn.ctx.logged = txn.resp.status end,
      }, t.txn{ path = "/ping" }, { upstreams = { app = origin } })
      assert.equal(200, txn.resp.status)
      assert.equal("pong\n", txn.resp.body)
      assert.same({ "1", "2" }, txn.resp.headers:get_all("X-A"))
      assert.equal("text/plain", txn.resp.headers:get("Content-Type")) -- as moxy adds it
      assert.is_string(txn.resp.headers:get("Date"))
      assert.same({ "on_request", "on_log" }, txn.phases)
      assert.equal(200, txn.ctx.logged)
      assert.equal(0, origin.calls)
      assert.is_nil(txn.upstream.request)
    end)

    it("lets on_response replace the origin's answer, and change its status", function()
      local txn = t.run({
        on_response = function(txn)
          if txn.req.path == "/replace" then return txn:respond(403, "no\n") end
          txn.resp.status = 203
        end,
      }, t.txn{ path = "/replace" }, { upstreams = { app = ok_origin() } })
      assert.equal(403, txn.resp.status)
      assert.equal("no\n", txn.resp.body)
      assert.is_nil(txn.resp.headers:get("Content-Length")) -- the origin's headers are gone
      assert.equal(200, txn.upstream.status)
      txn = t.run({ on_response = function(txn) txn.resp.status = 203 end }, t.txn{ path = "/x" },
        { upstreams = { app = ok_origin() } })
      assert.equal(203, txn.resp.status)
      assert.equal("ok", txn.resp.body)
    end)

    it("filters the body through on_body in chunks, eof on the last", function()
      local calls = {}
      local hooks = {
        on_response = function(txn) if txn.req.path == "/raw" then txn.resp.filter = false end end,
        on_body = function(txn, chunk, eof)
          calls[#calls + 1] = { chunk, eof }
          txn.ctx.n = (txn.ctx.n or 0) + #chunk
          return chunk:upper() .. (eof and ("|" .. txn.ctx.n) or "")
        end,
      }
      local opts = { upstreams = { app = t.upstream(function() return 200, "abcdefgh" end) }, chunk_size = 3 }
      local txn = t.run(hooks, t.txn{ path = "/" }, opts)
      assert.equal("ABCDEFGH|8", txn.resp.body)
      assert.same({ { "abc", false }, { "def", false }, { "gh", true } }, calls)
      assert.equal(10, txn.bytes_sent)
      -- the whole body in one call by default
      calls = {}
      opts.chunk_size = nil
      assert.equal("ABCDEFGH|8", t.run(hooks, t.txn{ path = "/" }, opts).resp.body)
      assert.same({ { "abcdefgh", true } }, calls)
      -- txn.resp.filter = false skips on_body
      calls = {}
      assert.equal("abcdefgh", t.run(hooks, t.txn{ path = "/raw" }, opts).resp.body)
      assert.same({}, calls)
      -- no body, no on_body: HEAD, 204
      assert.equal("", t.run(hooks, t.txn{ method = "HEAD", path = "/" }, opts).resp.body)
      assert.same({}, calls)
    end)

    it("retries an idempotent request through on_upstream, with txn.ctx and the error kept", function()
      local n = 0
      local origin = t.upstream(function(req)
        n = n + 1
        if n == 1 then error("connection reset", 0) end
        return 200, "second " .. req.headers:get("X-Try")
      end)
      local txn = t.run({
        on_request = function(txn) txn.ctx.tries = "" end,
        on_upstream = function(txn)
          txn.ctx.tries = txn.ctx.tries .. txn.upstream.tries
          txn.ctx.previous = txn.error
        end,
        on_upstream_request = function(txn) txn.req.headers:set("X-Try", txn.upstream.tries) end,
      }, t.txn{ path = "/" }, { upstreams = { app = origin } })
      assert.equal(200, txn.resp.status)
      assert.equal("second 2", txn.resp.body)
      assert.equal("12", txn.ctx.tries)
      assert.equal("connection reset", txn.ctx.previous)
      assert.equal(2, txn.upstream.tries)
      assert.equal(2, origin.calls)
      assert.equal(2, #txn.upstream.requests)
      assert.equal("1", txn.upstream.requests[1].headers:get("X-Try"))
      assert.same({ "on_request", "on_upstream", "on_upstream_request", "on_upstream", "on_upstream_request" },
        txn.phases)
      assert.same({ level = "err", message = "origin app:80 (pool app): connection reset" }, txn.logs[1])
      assert.same({ level = "warn", message = "origin app:80: connection reset; trying again (2 of 2)" },
        txn.logs[2])
    end)

    it("answers 502 and runs on_error when the tries are used up or the method is not idempotent", function()
      local origin = t.upstream(function() return nil, "connection refused" end)
      local hooks = {
        on_upstream = function() end,
        on_error = function(txn)
          txn.ctx.error = txn.error
          txn.ctx.status = txn.resp.status
        end,
      }
      local txn = t.run(hooks, t.txn{ path = "/" }, { upstreams = { app = origin }, tries = 3 })
      assert.equal(502, txn.resp.status)
      assert.equal(3, origin.calls)
      assert.equal("connection refused", txn.error)
      assert.same({ error = "connection refused", status = 502 }, txn.ctx)
      assert.matches("<h1>502 Bad Gateway</h1>", txn.resp.body, 1, true)
      assert.equal("no-store", txn.resp.headers:get("Cache-Control"))
      assert.same({ level = "warn", message = "GET / from 127.0.0.1: 502: connection refused" }, txn.logs[#txn.logs])
      -- POST is not retried; a JSON client gets moxy's JSON page
      origin.calls = 0
      txn = t.run(hooks, t.txn{ method = "POST", path = "/", body = "x", headers = { Accept = "application/json" } },
        { upstreams = { app = origin } })
      assert.equal(502, txn.resp.status)
      assert.equal(1, origin.calls)
      assert.equal('{"status":502,"error":"Bad Gateway","request_id":"' .. txn.id .. '"}\n', txn.resp.body)
    end)

    it("retries only through on_upstream, as production does with a one-server pool", function()
      local origin = t.upstream(function() return nil, "refused" end)
      local txn = t.run({}, t.txn{ path = "/" }, { upstreams = { app = origin } })
      assert.equal(502, txn.resp.status)
      assert.equal(1, origin.calls)
    end)

    it("answers 502 when no pool is picked and there is no default", function()
      local txn = t.run({}, t.txn{ path = "/" }, { upstreams = { a = ok_origin(), b = ok_origin() } })
      assert.equal(502, txn.resp.status)
      assert.equal("no upstream pool for this request", txn.error)
    end)

    it("sends a try to txn.upstream:set_peer's address, answered by opts.peers", function()
      local peer = ok_origin()
      local txn = t.run({ on_upstream = function(txn) txn.upstream:set_peer("10.0.0.7", 8080) end },
        t.txn{ path = "/" }, { upstreams = { app = ok_origin() }, peers = { ["10.0.0.7:8080"] = peer } })
      assert.equal(200, txn.resp.status)
      assert.equal(1, peer.calls)
      assert.equal("10.0.0.7:8080", txn.upstream.peer)
      assert.equal("10.0.0.7:8080", txn.upstream.request.peer)
      -- without an entry the connection is refused
      txn = t.run({ on_upstream = function(txn) txn.upstream:set_peer("10.0.0.8", 80) end },
        t.txn{ path = "/" }, { upstreams = { app = ok_origin() }, tries = 1 })
      assert.equal(502, txn.resp.status)
      assert.matches("connection refused", txn.error, 1, true)
    end)

    describe("a script error", function()
      local src = [[
return {
  on_request = function(txn)
    if txn.req.path == "/boom" then error("boom") end -- BOOM
  end,
  on_response = function(txn)
    if txn.req.path == "/late" then local x = nil; x.y = 1 end -- LATE
  end,
  on_body = function(txn, chunk, eof)
    if txn.req.path == "/cut" and eof then error("filter broke") end -- CUT
    return chunk
  end,
  on_error = function(txn)
    txn.ctx.why = txn.error
    if txn.req.headers:get("X-Custom") then return txn:respond(500, "custom page\n") end
  end,
  on_log = function(txn) moxy.log.info("logged", txn.resp.status) end,
}
]]
      local path, opts

      lazy_setup(function()
        path = script_file(src)
        opts = { upstreams = { app = t.upstream(function() return 200, "body" end) } }
      end)

      it("answers 500, logs phase: file:line: message and sets txn.error", function()
        local txn = t.run(path, t.txn{ path = "/boom" }, opts)
        assert.equal(500, txn.resp.status)
        local msg = "on_request: " .. path .. ":" .. helpers.line_of(src, "BOOM") .. ": boom"
        assert.same({ level = "err", message = msg }, txn.logs[1])
        assert.equal(msg, txn.error)
        assert.same({ level = "warn", message = "GET /boom from 127.0.0.1: 500: script error in on_request" },
          txn.logs[2])
        assert.same({ level = "info", message = "logged 500" }, txn.logs[3])
        assert.matches("<h1>500 Internal Server Error</h1>", txn.resp.body, 1, true)
        assert.is_nil(txn.upstream.request)
        -- on_error ran with production's txn.error (its txn is new: the failed hook's was not kept)
        assert.same({ "on_request", "on_error", "on_log" }, txn.phases)
        assert.equal("script error in on_request", txn.ctx.why)
      end)

      it("lets on_error answer instead of moxy's page", function()
        local txn = t.run(path, t.txn{ path = "/late", headers = { ["X-Custom"] = "1" } }, opts)
        assert.equal(500, txn.resp.status)
        assert.equal("custom page\n", txn.resp.body)
        assert.matches("^on_response: .*site%.lua:" .. helpers.line_of(src, "LATE") .. ": attempt to index",
          txn.error)
        assert.equal("script error in on_response", txn.ctx.why)
      end)

      it("in on_body cuts the response after what was sent", function()
        local txn = t.run(path, t.txn{ path = "/cut" }, opts)
        assert.equal(200, txn.resp.status) -- the head was out
        assert.equal("", txn.resp.body)
        assert.matches("^on_body: .*: filter broke$", txn.error)
        assert.same({ level = "warn", message = "response cut: script error in on_body" }, txn.logs[2])
        assert.same({ "on_request", "on_response", "on_body", "on_log" }, txn.phases)
      end)

      it("in a hook that yields outside moxy's API", function()
        local txn = t.run({ on_request = function() coroutine.yield() end }, t.txn{}, opts)
        assert.equal(500, txn.resp.status)
        assert.equal("on_request: a hook yielded outside moxy's API (coroutine.yield in a hook?)", txn.error)
      end)
    end)

    it("lets hooks moxy.sleep (it blocks for that long)", function()
      local start = helpers.now()
      local txn = t.run({
        on_request = function(txn) moxy.sleep(0.05); txn.ctx.a = 1 end,
        on_log = function(txn) moxy.sleep(0.02); txn.ctx.b = 2 end,
      }, t.txn{}, { upstreams = { app = ok_origin() } })
      local took = helpers.now() - start
      assert.is_true(took >= 0.065, "took " .. took)
      assert.same({ a = 1, b = 2 }, txn.ctx)
      assert.equal(200, txn.resp.status)
    end)

    it("runs no timers: moxy.timer gives nil, err in hooks", function()
      local txn = t.run({ on_request = function(txn)
        local id, err = moxy.timer.at(0, function() end)
        return txn:respond(200, tostring(id) .. " " .. tostring(err))
      end }, t.txn{})
      assert.matches("^nil no event loop", txn.resp.body)
    end)

    it("answers moxy.http.request from opts.http", function()
      local src = helpers.read_file(ROOT .. "/lua/moxy/http.lua") or ""
      if not src:find("runtime.test", 1, true) then
        pending("lua/moxy/http.lua does not read runtime.test.http yet")
        return
      end
      local asked
      local txn = t.run({
        on_request = function(txn)
          local res, err = moxy.http.request{ url = "http://auth.internal/check", headers = { ["X-User"] = "u1" } }
          txn.ctx.res, txn.ctx.err = res and res.status, err
          if res and res.status ~= 200 then return txn:respond(403, res.body) end
        end,
      }, t.txn{}, { upstreams = { app = ok_origin() }, http = function(o)
        asked = o
        return { status = 401, headers = {}, body = "denied" }
      end })
      assert.equal("http://auth.internal/check", asked.url)
      assert.equal(403, txn.resp.status)
      assert.equal("denied", txn.resp.body)
    end)

    it("creates opts.shared dicts for the scripts", function()
      local hooks = { on_request = function(txn)
        local n = moxy.shared.mtest_hits:incr("k", 1, 0)
        return txn:respond(200, tostring(n))
      end }
      moxy.shared.create("mtest_hits", "64k"):flush_all()
      assert.equal("1", t.run(hooks, t.txn{}, { shared = { mtest_hits = "64k" } }).resp.body)
      assert.equal("2", t.run(hooks, t.txn{}, { shared = { mtest_hits = "64k" } }).resp.body)
    end)

    it("shows the origin what production sends: Host, X-Forwarded-*, no hop-by-hop headers, the body", function()
      local body_seen
      local txn = t.run({
        on_request = function(txn)
          body_seen = txn:read_body()
          txn.req.headers:set("X-Edge", "moxy")
        end,
      }, t.txn{ method = "PUT", path = "/items/1", host = "shop.example", client_ip = "192.0.2.1",
                headers = { { "Connection", "keep-alive, X-Secret" }, { "X-Secret", "s" }, { "Keep-Alive", "5" },
                            { "X-Forwarded-For", "198.51.100.1" }, { "TE", "trailers" }, { "X-Request-Id", "abc-123" } },
                body = "{\"n\":1}" }, { upstreams = { app = ok_origin() } })
      assert.equal('{"n":1}', body_seen)
      local req = txn.upstream.request
      assert.equal("PUT", req.method)
      assert.equal("/items/1", req.uri)
      assert.equal('{"n":1}', req.body)
      assert.equal("shop.example", req.host)
      assert.equal("Host", req.headers[1][1])
      assert.equal("7", req.headers:get("content-length"))
      assert.equal("198.51.100.1, 192.0.2.1", req.headers:get("X-Forwarded-For"))
      assert.equal("shop.example", req.headers:get("X-Forwarded-Host"))
      assert.equal("1.1 moxy", req.headers:get("Via"))
      assert.equal("moxy", req.headers:get("x-edge"))
      assert.equal("abc-123", req.headers:get("X-Request-Id"))
      assert.equal("abc-123", txn.id)
      for _, name in ipairs({ "Connection", "Keep-Alive", "X-Secret", "TE" }) do
        assert.same({}, req.headers:get_all(name))
      end
      assert.equal(#req.headers, (function() local n = 0; for _ in ipairs(req.headers) do n = n + 1 end; return n end)())
    end)

    it("captures moxy.log, also when a script keeps its functions in locals", function()
      local path = script_file([[
local warn = moxy.log.warn
return { on_request = function(txn) warn("kept", 1) moxy.log.debug("dbg", nil) end }
]])
      local expected = { { level = "warn", message = "kept 1" }, { level = "debug", message = "dbg nil" } }
      assert.same(expected, t.run(path, t.txn{}, { upstreams = { app = ok_origin() } }).logs)
      assert.same(expected, t.run(t.load(path), t.txn{}, { upstreams = { app = ok_origin() } }).logs)
    end)

    it("runs init and worker_init of the scripts, once per t.load", function()
      local inits = 0
      local hooks = {
        init = function() inits = inits + 1 end,
        worker_init = function() inits = inits + 10 end,
        on_request = function(txn) return txn:respond(200, tostring(inits)) end,
      }
      assert.equal("11", t.run(hooks, t.txn{}).resp.body)
      local loaded = t.load(hooks)
      assert.equal("22", t.run(loaded, t.txn{}).resp.body)
      assert.equal("22", t.run(loaded, t.txn{}).resp.body)
    end)

    it("leaves the last request readable until the next t.run switches it", function()
      local a = t.run({}, t.txn{ path = "/a" }, { upstreams = { app = ok_origin() } })
      assert.equal("/a", a.req.path)
      local b = t.run({}, t.txn{ path = "/b" }, { upstreams = { app = ok_origin() } })
      assert.equal("/b", a.req.path) -- txn.req addresses the request of the last run
      assert.equal("/b", b.req.path)
      assert.same({}, a.phases) -- its own fields stay
    end)

    it("raises for what moxy would refuse before the hooks, and for misuse", function()
      assert.has_error(function() t.txn{ pth = "/" } end, 't.txn: unknown field "pth"')
      assert.has_error(function() t.run({}, t.txn{}, { upstream = {} }) end)
      assert.has_error(function() t.run({}, t.txn{ method = "BREW" }) end)
      assert.has_error(function() t.run({}, t.txn{ path = "no-slash" }) end)
      assert.has_error(function() t.run({}, t.txn{ path = "/a b" }) end)
      assert.has_error(function() t.run({}, t.txn{ client_ip = "not-an-ip" }) end)
      assert.has_error(function() t.run({}, t.txn{ headers = { ["Bad Name"] = "x" } }) end)
      assert.has_error(function() t.run({}, t.txn{ headers = { Host = "a" }, host = "b" }) end)
      assert.has_error(function() t.run({}, t.txn{ host = false }) end) -- HTTP/1.1 needs a Host
      assert.has_error(function() t.run({ on_request = 1 }, t.txn{}) end)
      assert.has_error(function() t.run({}, t.txn{}, { upstreams = { app = ok_origin() }, default_upstream = "x" }) end)
      assert.has_error(function()
        t.run({}, t.txn{}, { upstreams = { app = t.upstream(function() return "200" end) } })
      end)
      -- a script that does not load: its file:line
      local bad = script_file("return { on_request = function( end }\n", "bad.lua")
      local ok, err = pcall(t.run, bad, t.txn{})
      assert.is_false(ok)
      assert.matches("bad%.lua:1:", err)
      -- HTTP/1.0 may go without Host
      local txn = t.run({ on_request = function(txn) return txn:respond(200, txn.req.http_version) end },
        t.txn{ host = false, http_version = "1.0" })
      assert.equal("1.0", txn.resp.body)
      assert.is_nil(txn.req.host)
    end)

    it("runs thousands of times in a row, each request freed", function()
      local loaded = t.load({
        on_request = function(txn) txn.ctx.n = tonumber(txn.req.headers:get("X-N")) end,
        on_response = function(txn) txn.resp.headers:set("X-N", txn.ctx.n) end,
        on_body = function(_, chunk) return chunk .. "!" end,
      })
      local opts = { upstreams = { app = t.upstream(function(req) return 200, req.headers:get("X-N") end) } }
      for i = 1, 2000 do
        local txn = t.run(loaded, t.txn{ path = "/n", headers = { ["X-N"] = tostring(i) }, body = string.rep("b", i % 50) },
          opts)
        if txn.resp.body ~= i .. "!" or txn.resp.headers:get("X-N") ~= tostring(i) then
          error("run " .. i .. ": " .. tostring(txn.resp.body))
        end
      end
      assert.equal(2000, opts.upstreams.app.calls)
    end)
  end)

  describe("the mask (opts.mask, as the configuration's mask)", function()
    local function leaky()
      return t.upstream(function()
        return 200, "x", { Server = { "gunicorn", "nginx" }, ["x-powered-by"] = "PHP/8.3", ["X-Kept"] = "yes" }
      end)
    end
    local hooks = {
      on_request = function(txn)
        if txn.req.path == "/answer" then return txn:respond(200, "mine") end
      end,
      on_response = function(txn)
        txn.ctx.seen = txn.resp.headers:get_all("Server")
      end,
    }

    it("by default: the origin's Server and X-Powered-By gone before on_response, Via 1.1 moxy", function()
      local txn = t.run(hooks, t.txn{}, { upstreams = { app = leaky() } })
      assert.same({}, txn.ctx.seen)
      assert.is_nil(txn.resp.headers:get("X-Powered-By"))
      assert.equal("yes", txn.resp.headers:get("X-Kept"))
      assert.equal("1.1 moxy", txn.upstream.request.headers:get("Via"))
    end)

    it("takes the configuration's keys: a list, moxy's Server, a pseudonym, no Via", function()
      local txn = t.run(hooks, t.txn{}, { upstreams = { app = leaky() },
                                          mask = { headers = { "x-kept" }, server = "edge/2", via = "edge-1" } })
      assert.same({ "gunicorn", "nginx" }, txn.ctx.seen) -- no longer masked: moxy adds none
      assert.is_nil(txn.resp.headers:get("X-Kept"))
      assert.equal("1.1 edge-1", txn.upstream.request.headers:get("Via"))
      txn = t.run(hooks, t.txn{}, { upstreams = { app = leaky() }, mask = { server = "edge/2", via = false } })
      assert.same({ "edge/2" }, txn.ctx.seen)
      assert.is_nil(txn.upstream.request.headers:get("Via"))
      txn = t.run(hooks, t.txn{ path = "/answer" }, { upstreams = { app = leaky() }, mask = { server = "edge/2" } })
      assert.equal("edge/2", txn.resp.headers:get("Server")) -- moxy's own answers too
      txn = t.run(hooks, t.txn{}, { upstreams = { app = leaky() }, mask = false })
      assert.same({ "gunicorn", "nginx" }, txn.ctx.seen)
      assert.equal("PHP/8.3", txn.resp.headers:get("X-Powered-By"))
    end)

    it("refuses a bad mask with the key that is wrong", function()
      local ok, err = pcall(t.run, hooks, t.txn{}, { upstreams = { app = leaky() }, mask = { via = "a b" } })
      assert.is_false(ok)
      assert.matches("opts%.mask%.via: expected true, false or a pseudonym", err)
      ok, err = pcall(t.run, hooks, t.txn{}, { upstreams = { app = leaky() }, mask = { headers = { "Connection" } } })
      assert.is_false(ok)
      assert.matches("opts%.mask%.headers%[1%]: Connection is framing", err)
    end)
  end)

  describe("on the project's scripts", function()
    it("headers.lua: sets request headers for the origin and hardens the response", function()
      local txn = t.run(script("headers.lua"), t.txn{ headers = { ["X-Debug-Token"] = "let-me-in" } },
        { upstreams = { app = t.upstream(function()
          return 200, "x", { Server = "gunicorn", ["X-Powered-By"] = "PHP/8.3" }
        end) } })
      local req = txn.upstream.request
      assert.equal("moxy", req.headers:get("X-Edge"))
      assert.is_nil(req.headers:get("X-Debug-Token"))
      local h = txn.resp.headers
      assert.equal("nosniff", h:get("X-Content-Type-Options"))
      assert.equal("DENY", h:get("X-Frame-Options"))
      assert.equal("default-src 'self'", h:get("Content-Security-Policy"))
      assert.is_nil(h:get("Server"))
      assert.is_nil(h:get("X-Powered-By"))
    end)

    it("path_routing.lua: picks the pool by prefix and strips it when asked", function()
      local opts = { upstreams = { api = ok_origin(), static = ok_origin(), app = ok_origin() }, default_upstream = "app" }
      local function route(path)
        local txn = t.run(script("path_routing.lua"), t.txn{ path = path }, opts)
        return txn.upstream.pool, txn.upstream.request.uri
      end
      assert.same({ "api", "/api/v1/users" }, { route("/api/v1/users") })
      assert.same({ "static", "/img/a.png?v=2" }, { route("/static/img/a.png?v=2") })
      assert.same({ "static", "/" }, { route("/static") })
      assert.same({ "app", "/apiary" }, { route("/apiary") })
    end)

    it("path_routing.lua with a CONFIG: the default pool", function()
      local path = script_file(helpers.script_with_config(script("path_routing.lua"),
        [[{ routes = { ["/v2"] = "new" }, default = "old" }]]), "routing.lua")
      local opts = { upstreams = { new = ok_origin(), old = ok_origin() } }
      assert.equal("new", t.run(path, t.txn{ path = "/v2/x" }, opts).upstream.pool)
      assert.equal("old", t.run(path, t.txn{ path = "/v1/x" }, opts).upstream.pool)
    end)

    it("canary.lua: sticks clients to a group with a cookie", function()
      local path = script_file(helpers.script_with_config(script("canary.lua"),
        [[{ percent = 100, pool = "canary", cookie = "grp", cookie_attrs = "Path=/", force_header = "X-Canary" }]]),
        "canary.lua")
      local opts = { upstreams = { app = ok_origin(), canary = ok_origin() }, default_upstream = "app" }
      local txn = t.run(path, t.txn{ client_ip = "198.51.100.7" }, opts)
      assert.equal("canary", txn.upstream.pool)
      assert.same({ "grp=canary; Path=/" }, txn.resp.headers:get_all("Set-Cookie"))
      txn = t.run(path, t.txn{ headers = { Cookie = "a=1; grp=stable" } }, opts)
      assert.equal("app", txn.upstream.pool)
      assert.same({}, txn.resp.headers:get_all("Set-Cookie"))
    end)

    it("maintenance.lua: answers 503 without the origin, except allowed paths", function()
      local origin = ok_origin()
      local opts = { upstreams = { app = origin } }
      local txn = t.run(script("maintenance.lua"), t.txn{ path = "/shop" }, opts)
      assert.equal(503, txn.resp.status)
      assert.equal("600", txn.resp.headers:get("Retry-After"))
      assert.matches("Down for maintenance", txn.resp.body, 1, true)
      txn = t.run(script("maintenance.lua"), t.txn{ path = "/shop", headers = { Accept = "application/json" } }, opts)
      assert.equal("application/json", txn.resp.headers:get("Content-Type"))
      assert.equal(0, origin.calls)
      txn = t.run(script("maintenance.lua"), t.txn{ path = "/healthz/db" }, opts)
      assert.equal(200, txn.resp.status)
      assert.equal(1, origin.calls)
    end)

    it("redirects.lua: answers redirects from its table, keeping the query", function()
      local txn = t.run(script("redirects.lua"), t.txn{ path = "/old-page?x=1" })
      assert.equal(301, txn.resp.status)
      assert.equal("/new-page?x=1", txn.resp.headers:get("Location"))
      txn = t.run(script("redirects.lua"), t.txn{ path = "/blog/2024/x" })
      assert.equal("/articles/2024/x", txn.resp.headers:get("Location"))
      txn = t.run(script("redirects.lua"), t.txn{ path = "/docs/intro" })
      assert.equal(308, txn.resp.status)
      assert.equal("https://docs.example.com/intro", txn.resp.headers:get("Location"))
      assert.same({ "on_request", }, txn.phases)
    end)

    it("cors.lua: answers preflights and adds the CORS headers", function()
      local opts = { upstreams = { app = ok_origin() } }
      local origin = "https://app.example.com"
      local txn = t.run(script("cors.lua"), t.txn{ method = "OPTIONS", path = "/api",
        headers = { Origin = origin, ["Access-Control-Request-Method"] = "PUT" } }, opts)
      assert.equal(204, txn.resp.status)
      assert.equal(origin, txn.resp.headers:get("Access-Control-Allow-Origin"))
      assert.equal("600", txn.resp.headers:get("Access-Control-Max-Age"))
      assert.is_nil(txn.upstream.request)
      txn = t.run(script("cors.lua"), t.txn{ method = "OPTIONS", path = "/api",
        headers = { Origin = "https://evil.example", ["Access-Control-Request-Method"] = "PUT" } }, opts)
      assert.equal(403, txn.resp.status)
      txn = t.run(script("cors.lua"), t.txn{ path = "/api", headers = { Origin = origin } }, opts)
      assert.equal(origin, txn.resp.headers:get("Access-Control-Allow-Origin"))
      assert.equal("Origin", txn.resp.headers:get("Vary"))
    end)
  end)

  describe("`moxy test` with moxy.test", function()
    it("runs the user-style example spec (docs/examples), exit 0", function()
      local code, out = helpers.run_moxy({ "test", "-o", "TAP", "docs/examples/site_spec.lua" }, 30 * helpers.scale,
        { cwd = ROOT })
      assert.equal(0, code, out)
      assert.matches("ok 5 %- site.lua answers JSON when the api cannot be reached", out)
      assert.falsy(out:find("not ok", 1, true), out)
    end)

    it("exits 1 when a moxy.test assertion fails", function()
      local dir = helpers.tmpdir("mtest")
      helpers.write_file(dir .. "/site.lua", helpers.read_file(ROOT .. "/docs/examples/site.lua"))
      helpers.write_file(dir .. "/wrong_spec.lua", [[
local t = require "moxy.test"
describe("site.lua", function()
  it("is wrong about health checks", function()
    assert.equal(204, t.run("site.lua", t.txn{ path = "/healthz" }).resp.status)
  end)
end)
]])
      local code, out = helpers.run_moxy({ "test", "-o", "TAP", "wrong_spec.lua" }, 30 * helpers.scale, { cwd = dir })
      assert.equal(1, code, out)
      assert.matches("not ok 1 %- site.lua is wrong about health checks", out)
    end)

    it("runs thousands of transactions in a process that frees them all (ASan under make check)", function()
      local dir = helpers.tmpdir("mtest")
      helpers.write_file(dir .. "/loop_spec.lua", [[
local t = require "moxy.test"
describe("loop", function()
  it("runs", function()
    local hooks = t.load({
      on_request = function(txn) if txn.req.path == "/local" then return txn:respond(201, "made") end end,
      on_upstream = function(txn) txn.ctx.n = (txn.ctx.n or 0) + 1 end,
      on_response = function(txn) txn.resp.headers:set("X-Tries", txn.ctx.n) end,
      on_body = function(_, chunk) return chunk:upper() end,
    })
    local fails = 0
    local opts = { upstreams = { app = t.upstream(function(req)
      fails = fails + 1
      if fails % 3 == 0 then return nil, "refused" end
      return 200, req.body .. "ok", { ["X-A"] = "1" }
    end) }, chunk_size = 7 }
    for i = 1, 2000 do
      local path = i % 10 == 0 and "/local" or "/p"
      local txn = t.run(hooks, t.txn{ method = "PUT", path = path, body = string.rep("x", i % 300),
                                      headers = { ["X-I"] = tostring(i) } }, opts)
      assert(txn.resp.status == 200 or txn.resp.status == 201, txn.resp.status)
    end
    t.run({ on_request = function() error("last") end }, t.txn{})
  end)
end)
]])
      local code, out = helpers.run_moxy({ "test", "-o", "TAP", "loop_spec.lua" }, 120 * helpers.scale, { cwd = dir })
      assert.equal(0, code, out)
      assert.matches("ok 1 %- loop runs", out)
      assert.is_nil(helpers.sanitizer_report(out), out)
    end)
  end)
end)
