-- moxy.query: query string parsing, encoding and percent-coding.
package.path = "lua/?.lua;" .. package.path
local query = require "moxy.query"

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("moxy.query", function()
  describe("escape / unescape", function()
    it("escape keeps only unreserved characters", function()
      assert.equals("AZaz09-._~", query.escape("AZaz09-._~"))
      assert.equals("a%20b%2Bc%26d%3De%2Ff%3Fg%23h%25i", query.escape("a b+c&d=e/f?g#h%i"))
      assert.equals("%C3%A9%E2%82%AC", query.escape("é€"))
      assert.equals("%00%0A%7F%FF", query.escape("\0\n\127\255"))
      assert.equals("12", query.escape(12))
      assert.equals("", query.escape(""))
    end)

    it("unescape decodes %XX in any case and + as space", function()
      assert.equals("a b+c", query.unescape("a+b%2Bc"))
      assert.equals("é/é", query.unescape("%c3%a9%2f%C3%A9"))
      assert.equals("\0", query.unescape("%00"))
      assert.equals("plain", query.unescape("plain"))
    end)

    it("unescape leaves bad escapes alone", function()
      assert.equals("100%", query.unescape("100%"))
      assert.equals("%zz%4", query.unescape("%zz%4"))
      assert.equals("%A", query.unescape("%%41"))
      assert.equals("%41", query.unescape("%2541"))
    end)

    it("round-trips every byte", function()
      local all = {}
      for b = 0, 255 do all[#all + 1] = string.char(b) end
      local s = table.concat(all)
      assert.equals(s, query.unescape(query.escape(s)))
    end)

    it("raise on non-strings", function()
      assert.matches("query.escape", err_of(function() query.escape({}) end), 1, true)
      assert.matches("query.unescape", err_of(function() query.unescape(nil) end), 1, true)
    end)
  end)

  describe("parse", function()
    it("decodes names and values", function()
      assert.same({ a = "1", ["b c"] = "x y&z", ["é"] = "€" },
        query.parse("a=1&b+c=x+y%26z&%C3%A9=%E2%82%AC"))
    end)

    it("repeated names give a list in order", function()
      local q = query.parse("t=1&x=a&t=2&t=3")
      assert.same({ "1", "2", "3" }, q.t)
      assert.equals("a", q.x)
    end)

    it("a name without '=' maps to an empty string", function()
      assert.same({ flag = "", a = "1", e = "" }, query.parse("flag&a=1&e="))
      assert.same({ f = { "", "1" } }, query.parse("f&f=1"))
    end)

    it("keeps '=' in values, skips empty pairs and names", function()
      assert.same({ a = "b=c", d = "" }, query.parse("&&a=b=c&&=x&d&"))
    end)

    it("empty, nil and bad input", function()
      assert.same({}, query.parse(""))
      assert.same({}, query.parse(nil))
      local q, err = query.parse(5)
      assert.is_nil(q)
      assert.matches("query.parse", err, 1, true)
    end)

    it("max caps the pairs read", function()
      assert.same({ a = "1", b = "2" }, query.parse("a=1&b=2&c=3&d=4", 2))
    end)
  end)

  describe("encode", function()
    it("sorts keys and repeats lists", function()
      assert.equals("a=1&b=x&t=2&t=1", query.encode({ t = { "2", "1" }, b = "x", a = 1 }))
    end)

    it("percent-encodes names and values", function()
      assert.equals("a%20b%26c=%C3%A9%3D%3F%2F%20%2B", query.encode({ ["a b&c"] = "é=?/ +" }))
    end)

    it("true is a bare key, false and empty lists are left out", function()
      assert.equals("f&z=1&z", query.encode({ f = true, g = false, e = {}, z = { 1, true, false } }))
      assert.equals("", query.encode({}))
    end)

    it("raises on bad values", function()
      assert.matches("query.encode: bad value for \"a\"",
        err_of(function() query.encode({ a = function() end }) end), 1, true)
      assert.matches("query.encode: bad value for \"a\"",
        err_of(function() query.encode({ a = { {} } }) end), 1, true)
      assert.matches("query.encode", err_of(function() query.encode("a=1") end), 1, true)
    end)

    it("round-trips reserved characters and UTF-8 through parse", function()
      local t = {
        ["key with spaces"] = "value&with=reserved?#/;:@+$,%[]",
        ["ключ"] = "значение ✓",
        ["emoji"] = "😀",
        list = { "a&b", "c=d", "", "+" },
        empty = "",
      }
      local s = query.encode(t)
      assert.is_nil(s:find("[^%w%-%._~%%=&]"))
      assert.same(t, query.parse(s))
      assert.equals(s, query.encode(query.parse(s)))
    end)
  end)
end)
