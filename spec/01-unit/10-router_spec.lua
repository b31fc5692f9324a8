-- moxy.router: pattern compilation, matching order, captures, hosts, methods.
package.path = "lua/?.lua;" .. package.path
local router = require "moxy.router"

local function h(name) return function() return name end end

-- the error message of f(), which must raise
local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("moxy.router", function()
  describe("exact patterns", function()
    it("match the whole path only", function()
      local r = router.new()
      local a = h("a")
      r:get("/a/b", a)
      local handler, params = r:match("GET", nil, "/a/b")
      assert.equals(a, handler)
      assert.same({}, params)
      assert.is_nil(r:match("GET", nil, "/a/b/c"))
      assert.is_nil(r:match("GET", nil, "/a"))
      assert.is_nil(r:match("GET", nil, "/A/B"))
    end)

    it("treat Lua pattern characters literally", function()
      local r = router.new()
      r:get("/a.b/%d+", h("x"))
      assert.is_nil(r:match("GET", nil, "/aXb/%d+"))
      assert.is_nil(r:match("GET", nil, "/a.b/5"))
      assert.is_not_nil(r:match("GET", nil, "/a.b/%d+"))
    end)

    it("match the root", function()
      local r = router.new()
      local root = h("root")
      r:get("/", root)
      assert.equals(root, (r:match("GET", nil, "/")))
      assert.is_nil(r:match("GET", nil, "/x"))
    end)
  end)

  describe("order", function()
    it("first added route wins", function()
      local r = router.new()
      local first, second = h(1), h(2)
      r:get("/users/:id", first)
      r:get("/users/me", second)
      assert.equals(first, (r:match("GET", nil, "/users/me")))

      local r2 = router.new()
      r2:get("/users/me", second)
      r2:get("/users/:id", first)
      assert.equals(second, (r2:match("GET", nil, "/users/me")))
      assert.equals(first, (r2:match("GET", nil, "/users/42")))
    end)

    it("skips routes whose method does not match", function()
      local r = router.new()
      local post, get = h("post"), h("get")
      r:post("/x", post)
      r:get("/x", get)
      assert.equals(get, (r:match("GET", nil, "/x")))
      assert.equals(post, (r:match("POST", nil, "/x")))
      assert.is_nil(r:match("PUT", nil, "/x"))
    end)
  end)

  describe("named segments", function()
    it("capture one non-empty segment each", function()
      local r = router.new()
      local f = h("f")
      r:get("/users/:id/posts/:post_id", f)
      local handler, params = r:match("GET", nil, "/users/42/posts/abc-1")
      assert.equals(f, handler)
      assert.same({ id = "42", post_id = "abc-1" }, params)
      assert.is_nil(r:match("GET", nil, "/users//posts/1"))
      assert.is_nil(r:match("GET", nil, "/users/1/2/posts/1"))
      assert.is_nil(r:match("GET", nil, "/users/1/posts/"))
    end)

    it("capture more than four parameters", function()
      local r = router.new()
      r:get("/:a/:b/:c/:d/:e/:f", h("many"))
      local _, p = r:match("GET", nil, "/1/2/3/4/5/6")
      assert.same({ a = "1", b = "2", c = "3", d = "4", e = "5", f = "6" }, p)
    end)

    it("give a fresh params table per match", function()
      local r = router.new()
      r:get("/u/:id", h("u"))
      local _, p1 = r:match("GET", nil, "/u/1")
      local _, p2 = r:match("GET", nil, "/u/2")
      assert.are_not.equal(p1, p2)
      assert.equals("1", p1.id)
      assert.equals("2", p2.id)
    end)
  end)

  describe("splat", function()
    it("captures the rest of the path as params.splat", function()
      local r = router.new()
      local s = h("static")
      r:get("/static/*", s)
      local handler, p = r:match("GET", nil, "/static/css/site.css")
      assert.equals(s, handler)
      assert.same({ splat = "css/site.css" }, p)
      assert.same({ splat = "" }, select(2, r:match("GET", nil, "/static/")))
      assert.is_nil(r:match("GET", nil, "/static"))
      assert.is_nil(r:match("GET", nil, "/staticx/a"))
    end)

    it("combines with named segments", function()
      local r = router.new()
      r:get("/u/:id/files/*", h("files"))
      assert.same({ id = "7", splat = "a/b" }, select(2, r:match("GET", nil, "/u/7/files/a/b")))
      assert.is_nil(r:match("GET", nil, "/u/7/filesX/a"))
      assert.is_nil(r:match("GET", nil, "/u/7/files"))
    end)

    it("/* matches everything", function()
      local r = router.new()
      r:any("/*", h("all"))
      assert.same({ splat = "a/b?c" }, select(2, r:match("DELETE", nil, "/a/b?c")))
    end)
  end)

  describe("trailing slash", function()
    it("is significant by default", function()
      local r = router.new()
      local noslash, slash = h("noslash"), h("slash")
      r:get("/a", noslash)
      r:get("/b/", slash)
      r:get("/u/:id", noslash)
      assert.equals(noslash, (r:match("GET", nil, "/a")))
      assert.is_nil(r:match("GET", nil, "/a/"))
      assert.equals(slash, (r:match("GET", nil, "/b/")))
      assert.is_nil(r:match("GET", nil, "/b"))
      assert.is_nil(r:match("GET", nil, "/u/1/"))
    end)

    it("is ignored with strict_slash = false", function()
      local r = router.new()
      local opts = { strict_slash = false }
      r:get("/a", h("a"), opts)
      r:get("/b/", h("b"), opts)
      r:get("/u/:id", h("u"), opts)
      r:get("/v/:id/", h("v"), opts)
      r:get("/s/*", h("s"), opts)
      r:get("/w/:id/*", h("w"), opts)
      for _, path in ipairs({ "/a", "/a/", "/b", "/b/" }) do
        assert.is_not_nil(r:match("GET", nil, path), path)
      end
      assert.same({ id = "1" }, select(2, r:match("GET", nil, "/u/1/")))
      assert.same({ id = "1" }, select(2, r:match("GET", nil, "/u/1")))
      assert.same({ id = "2" }, select(2, r:match("GET", nil, "/v/2")))
      assert.same({ id = "2" }, select(2, r:match("GET", nil, "/v/2/")))
      assert.same({ splat = "" }, select(2, r:match("GET", nil, "/s")))
      assert.same({ id = "3", splat = "" }, select(2, r:match("GET", nil, "/w/3")))
      assert.same({ id = "3", splat = "x" }, select(2, r:match("GET", nil, "/w/3/x")))
      assert.is_nil(r:match("GET", nil, "/a//"))
      assert.is_nil(r:match("GET", nil, "/sx"))
      assert.is_nil(r:match("GET", nil, "/u/1//"))
    end)
  end)

  describe("hosts", function()
    it("match exactly, case-insensitively, without the port", function()
      local r = router.new()
      local ex = h("ex")
      r:get("/", ex, { host = "Example.com" })
      assert.equals(ex, (r:match("GET", "example.com", "/")))
      assert.equals(ex, (r:match("GET", "EXAMPLE.COM:8080", "/")))
      assert.is_nil(r:match("GET", "www.example.com", "/"))
      assert.is_nil(r:match("GET", "example.org", "/"))
      assert.is_nil(r:match("GET", nil, "/"))
    end)

    it("*.domain matches subdomains, not the domain itself", function()
      local r = router.new()
      local wild, fallback = h("wild"), h("fallback")
      r:get("/", wild, { host = "*.example.com" })
      r:get("/", fallback)
      assert.equals(wild, (r:match("GET", "a.example.com", "/")))
      assert.equals(wild, (r:match("GET", "A.B.Example.COM:443", "/")))
      assert.equals(fallback, (r:match("GET", "example.com", "/")))
      assert.equals(fallback, (r:match("GET", "badexample.com", "/")))
      assert.equals(fallback, (r:match("GET", nil, "/")))
    end)
  end)

  describe("methods", function()
    it("accept a list, '*' and lower-case names", function()
      local r = router.new()
      local rw, any = h("rw"), h("any")
      r:add({ "GET", "post" }, "/rw", rw)
      r:add("*", "/any", any)
      assert.equals(rw, (r:match("GET", nil, "/rw")))
      assert.equals(rw, (r:match("POST", nil, "/rw")))
      assert.is_nil(r:match("PUT", nil, "/rw"))
      assert.equals(any, (r:match("PROPFIND", nil, "/any")))
      assert.equals(any, (r:match("GET", nil, "/any")))
    end)

    it("shortcuts register their method", function()
      local r = router.new()
      local names = { "get", "post", "put", "delete", "patch", "head", "options" }
      for _, m in ipairs(names) do r[m](r, "/" .. m, h(m)) end
      for _, m in ipairs(names) do
        local M = m:upper()
        assert.is_not_nil(r:match(M, nil, "/" .. m), M)
        assert.is_nil(r:match(M == "GET" and "POST" or "GET", nil, "/" .. m), M)
      end
    end)
  end)

  describe("bad definitions raise", function()
    local r = router.new()
    local f = h("f")
    local cases = {
      { "no leading slash", function() r:get("users", f) end, "must start with" },
      { "bad name", function() r:get("/u/:bad-name", f) end, "bad parameter name" },
      { "empty name", function() r:get("/u/:", f) end, "bad parameter name" },
      { "duplicate name", function() r:get("/:id/:id", f) end, "used twice" },
      { "splat not last", function() r:get("/a/*/b", f) end, "last segment" },
      { "splat in a segment", function() r:get("/a*", f) end, "whole segment" },
      { "empty segment", function() r:get("/a//b", f) end, "empty segment" },
      { "non-string pattern", function() r:get(42, f) end, "pattern must be a string" },
      { "non-function handler", function() r:get("/x", "nope") end, "handler must be a function" },
      { "unknown option", function() r:get("/x", f, { strict_slashes = false }) end, "unknown option" },
      { "bad host", function() r:get("/x", f, { host = 42 }) end, "opts.host" },
      { "bad method", function() r:add(42, "/x", f) end, "method" },
      { "empty method list", function() r:add({}, "/x", f) end, "empty method list" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local e = err_of(c[2])
        assert.matches(c[3], e, 1, true)
        assert.matches("router:", e, 1, true)
      end)
    end

    it("name the function and the caller's line", function()
      local e = err_of(function() r:add("GET", "nope", f) end)
      assert.matches("^.-10%-router_spec%.lua:%d+: router:add: ", e)
    end)

    it("leave the router unchanged", function()
      assert.is_nil(r:match("GET", nil, "/x"))
      assert.equals(0, r.n)
    end)
  end)

  it("match returns nil, err on a non-string path", function()
    local r = router.new()
    r:any("/*", h("all"))
    local handler, err = r:match("GET", nil, nil)
    assert.is_nil(handler)
    assert.matches("path must be a string", err)
  end)

  describe("dispatch", function()
    it("calls the handler with txn and params and returns true", function()
      local r = router.new()
      local got_txn, got_params
      r:get("/users/:id", function(txn, params) got_txn, got_params = txn, params end,
        { host = "api.example.com" })
      local txn = { req = { method = "GET", host = "api.example.com", path = "/users/9" } }
      assert.is_true(r:dispatch(txn))
      assert.equals(txn, got_txn)
      assert.same({ id = "9" }, got_params)
    end)

    it("returns false when nothing matches, host nil included", function()
      local r = router.new()
      local called = false
      r:get("/users/:id", function() called = true end, { host = "api.example.com" })
      assert.is_false(r:dispatch({ req = { method = "GET", path = "/users/9" } }))
      assert.is_false(r:dispatch({ req = { method = "POST", host = "api.example.com", path = "/users/9" } }))
      assert.is_false(called)
    end)
  end)
end)
