-- moxy.cookie: Cookie header parsing and Set-Cookie building.
package.path = "lua/?.lua;" .. package.path
local cookie = require "moxy.cookie"

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

-- a txn whose request has the Cookie headers `list`
local function txn_with(list)
  local headers = {}
  function headers:get_all(name)
    assert.equals("Cookie", name)
    local out = {}
    for i, v in ipairs(list) do out[i] = v end
    return out
  end
  function headers:get(name)
    assert.equals("Cookie", name)
    return list[1]
  end
  return { req = { headers = headers } }
end

describe("moxy.cookie", function()
  describe("parse", function()
    it("splits pairs and trims spaces", function()
      assert.same({ a = "1", b = "2", c = "x y" }, cookie.parse("a=1; b=2;c= x y ;"))
      assert.same({ a = "1", b = "2" }, cookie.parse("  a = 1 ;\tb=2  "))
    end)

    it("keeps the first of duplicate names", function()
      assert.same({ sid = "first", x = "1" }, cookie.parse("sid=first; x=1; sid=second"))
    end)

    it("strips the double quotes of a quoted value only", function()
      local c = cookie.parse('q="a b"; e=""; one="; half=x"; in=a"b"c')
      assert.equals("a b", c.q)
      assert.equals("", c.e)
      assert.equals('"', c.one)
      assert.equals('x"', c.half)
      assert.equals('a"b"c', c["in"])
    end)

    it("keeps '=' inside values", function()
      assert.same({ tok = "YWJj==", k = "a=b" }, cookie.parse("tok=YWJj==; k=a=b"))
    end)

    it("ignores malformed pairs", function()
      assert.same({ ok = "1", empty = "" }, cookie.parse("junk; =3; ok=1;; ; empty=; =; novalue"))
    end)

    it("empty, nil and bad input", function()
      assert.same({}, cookie.parse(""))
      assert.same({}, cookie.parse(nil))
      local c, err = cookie.parse(42)
      assert.is_nil(c)
      assert.matches("cookie.parse", err, 1, true)
    end)
  end)

  describe("get", function()
    it("reads the value of one cookie", function()
      local txn = txn_with({ "a=1; sid=abc; b=2" })
      assert.equals("abc", cookie.get(txn, "sid"))
      assert.equals("2", cookie.get(txn, "b"))
      assert.is_nil(cookie.get(txn, "nope"))
      assert.is_nil(cookie.get(txn, "si"))
    end)

    it("looks through every Cookie header, the first one wins", function()
      local txn = txn_with({ "a=1", 'sid="q"; a=2', "sid=later; c=3" })
      assert.equals("1", cookie.get(txn, "a"))
      assert.equals("q", cookie.get(txn, "sid"))
      assert.equals("3", cookie.get(txn, "c"))
    end)

    it("no Cookie header", function()
      assert.is_nil(cookie.get(txn_with({}), "a"))
    end)

    it("raises on a non-string name", function()
      assert.matches("cookie.get", err_of(function() cookie.get(txn_with({}), 1) end), 1, true)
    end)
  end)

  describe("build", function()
    it("name=value without options", function()
      assert.equals("sid=abc", cookie.build("sid", "abc"))
      assert.equals("n=42", cookie.build("n", 42))
      assert.equals("e=", cookie.build("e", ""))
      assert.equals('q="abc"', cookie.build("q", '"abc"'))
    end)

    it("every attribute, in a fixed order", function()
      local v = cookie.build("sid", "abc", {
        path = "/app", domain = "example.com", max_age = 3600, expires = 784111777,
        secure = true, http_only = true, same_site = "Lax",
      })
      assert.equals("sid=abc; Path=/app; Domain=example.com; Max-Age=3600; "
        .. "Expires=Sun, 06 Nov 1994 08:49:37 GMT; Secure; HttpOnly; SameSite=Lax", v)
    end)

    it("false booleans and zero max_age", function()
      assert.equals("a=b; Max-Age=0", cookie.build("a", "b", { max_age = 0, secure = false, http_only = false }))
      assert.equals("a=b; Max-Age=10", cookie.build("a", "b", { max_age = 10.7 }))
    end)

    it("expires is an IMF-fixdate in GMT", function()
      assert.equals("a=b; Expires=Thu, 01 Jan 1970 00:00:00 GMT", cookie.build("a", "b", { expires = 0 }))
      assert.equals("a=b; Expires=Tue, 19 Jan 2038 03:14:08 GMT",
        cookie.build("a", "b", { expires = 2147483648 }))
      assert.equals(os.date("!%a, %d %b %Y %H:%M:%S GMT", 1700000000), cookie.http_date(1700000000))
    end)

    it("same_site canonical case, None needs Secure", function()
      assert.equals("a=b; SameSite=Strict", cookie.build("a", "b", { same_site = "strict" }))
      assert.equals("a=b; Secure; SameSite=None", cookie.build("a", "b", { same_site = "None", secure = true }))
      assert.matches("needs secure", err_of(function() cookie.build("a", "b", { same_site = "None" }) end))
      assert.matches("same_site", err_of(function() cookie.build("a", "b", { same_site = "Sometimes" }) end))
    end)

    it("raises on a name that is not a token", function()
      for _, name in ipairs({ "", "a b", "a=b", "a;b", "a,b", "a\"b", "a(b)", "é", 42 }) do
        local e = err_of(function() cookie.build(name, "v") end)
        assert.matches("cookie.build: cookie name must be a token", e, 1, true)
      end
      assert.equals("a!#$%&'*+-.^_`|~1=v", cookie.build("a!#$%&'*+-.^_`|~1", "v"))
    end)

    it("raises on a value with other than cookie-octets", function()
      for _, value in ipairs({ "a b", "a;b", "a,b", "a\\b", 'a"b', '"a', "a\n", "\0", "é", '"a b"' }) do
        local e = err_of(function() cookie.build("n", value) end)
        assert.matches("cookie.build: cookie value", e, 1, true)
      end
      assert.matches("cookie.build: cookie value must be a string",
        err_of(function() cookie.build("n", {}) end), 1, true)
      assert.equals("n=!#$%&'()*+-./:<=>?@[]^_`{|}~", cookie.build("n", "!#$%&'()*+-./:<=>?@[]^_`{|}~"))
    end)

    it("raises on bad options", function()
      local bad = {
        { { path = "/a;b" }, "opts.path" },
        { { domain = "" }, "opts.domain" },
        { { max_age = "60" }, "opts.max_age" },
        { { expires = "tomorrow" }, "opts.expires" },
        { { secure = "yes" }, "opts.secure" },
        { { http_only = 1 }, "opts.http_only" },
        { { maxage = 1 }, "unknown option" },
      }
      for _, c in ipairs(bad) do
        local e = err_of(function() cookie.build("a", "b", c[1]) end)
        assert.matches(c[2], e, 1, true)
        assert.matches("^.-11%-cookie_spec%.lua:%d+: cookie%.build: ", e)
      end
    end)

    it("what it builds parses back", function()
      local value = "v1.x-_~!"
      local header = cookie.build("sid", value, { path = "/", http_only = true })
      local pair = header:match("^[^;]*")
      assert.equals(value, cookie.parse(pair).sid)
    end)
  end)
end)
