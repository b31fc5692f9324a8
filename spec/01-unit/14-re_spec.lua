-- moxy.re: PCRE2 through the FFI -- match, find, gmatch, sub/gsub, split,
-- flags, init offsets, errors, limits, UTF-8 and the pattern cache.
package.path = "lua/?.lua;" .. package.path
local re = require "moxy.re"

-- the error message of f(), which must raise
local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

local ROUTE = [[^/users/(\d+)/posts/(?<post>\d+)$]]

describe("moxy.re", function()
  it("is moxy.re, with PCRE2's version", function()
    assert.equal(re, moxy.re)
    assert.matches("^10%.%d+", re.version)
    assert.is_boolean(re.jit)
  end)

  describe("match", function()
    it("returns the whole match, numbered and named groups", function()
      local m = re.match("/users/42/posts/7", ROUTE)
      assert.same({ [0] = "/users/42/posts/7", "42", "7", post = "7" }, m)
    end)

    it("returns nil without a match", function()
      local m, err = re.match("/users/x/posts/7", ROUTE)
      assert.is_nil(m)
      assert.is_nil(err)
    end)

    it("gives false for a group that did not take part", function()
      local m = re.match("ac", [[a(b)?(?<cee>c)(d)?]])
      assert.same({ [0] = "ac", false, "c", false, cee = "c" }, m)
      m = re.match("ab", [[a(?<x>z)?b]])
      assert.is_false(m.x)
    end)

    it("with duplicate names (D) gives the name the group that is set", function()
      local p = [[(?<n>\d+)px|(?<n>\d+)em]]
      assert.is_nil(re.match("1px", p))
      assert.matches("two named subpatterns have the same name", select(2, re.match("1px", p)))
      assert.equal("12", re.match("12em", p, "D").n)
      assert.equal("3", re.match("3px", p, "D").n)
    end)

    it("starts at init, 1-based, negative from the end, past the end: no match", function()
      assert.equal("b", re.match("abcabc", "b", nil, 2)[0])
      assert.same({ [0] = "bc", "c" }, re.match("abcabc", "b(c)", nil, 3))
      assert.equal(5, (re.find("abcabc", "b", nil, 3)))
      assert.equal(5, (re.find("abcabc", "b", nil, -2)))
      assert.equal(2, (re.find("abcabc", "b", nil, -100)))
      assert.equal(2, (re.find("abcabc", "b", nil, 0)))
      assert.is_nil(re.find("abc", "c", nil, 4))
      assert.same({ 4, 3 }, { re.find("abc", "$", nil, 4) })
      assert.is_nil(re.find("abc", "", nil, 5))
      -- lookbehind and ^ still see the subject before init
      assert.is_nil(re.match("abc", "^b", nil, 2))
      assert.equal("b", re.match("abc", "(?<=a)b", nil, 2)[0])
    end)

    it("compares bytes, with embedded NULs", function()
      assert.equal("\0b", re.match("a\0b", "\\x00b")[0])
      assert.same({ 2, 3 }, { re.find("a\0b", "\0b") })
    end)
  end)

  describe("flags", function()
    it("i: caseless", function()
      assert.is_nil(re.match("HELLO", "hello"))
      assert.equal("HELLO", re.match("HELLO", "hello", "i")[0])
    end)

    it("m: ^ and $ at line ends", function()
      assert.is_nil(re.match("a\nb", "^b$"))
      assert.equal("b", re.match("a\nb", "^b$", "m")[0])
    end)

    it("s: dot matches newline", function()
      assert.is_nil(re.match("a\nb", "a.b"))
      assert.equal("a\nb", re.match("a\nb", "a.b", "s")[0])
    end)

    it("x: extended syntax", function()
      assert.equal("ab", re.match("ab", "a b  # comment", "x")[0])
      assert.is_nil(re.match("ab", "a b"))
    end)

    it("a: anchored at init", function()
      assert.is_nil(re.match("xab", "ab", "a"))
      assert.equal("ab", re.match("xab", "ab", "a", 2)[0])
      local all = {}
      for m in re.gmatch("ababxab", "ab", "a") do all[#all + 1] = m[0] end
      assert.same({ "ab", "ab" }, all)
    end)

    it("combine, and j/o are accepted for ngx.re habits", function()
      assert.equal("A\nB", re.match("A\nB", "a.b", "isjo")[0])
    end)

    it("raise on an unknown flag or a wrong opts type", function()
      assert.matches('re.match: unknown flag "z"', err_of(function() re.match("a", "a", "iz") end))
      assert.matches("re.find: opts must be a string", err_of(function() re.find("a", "a", 1) end))
    end)
  end)

  describe("UTF-8", function()
    it("u: a dot is a character, and . * see characters", function()
      assert.is_nil(re.match("héllo", "^h.llo$"))
      assert.equal("héllo", re.match("héllo", "^h.llo$", "u")[0])
      assert.same({ 1, 2 }, { re.find("élan", "^.", "u") }) -- "é" is 2 bytes
      assert.equal("ÉLAN", re.match("ÉLAN", "élan", "iu")[0])
    end)

    it("u: invalid UTF-8 in the subject is an error, not a match", function()
      local m, err = re.match("ab\xffc", "c", "u")
      assert.is_nil(m)
      assert.matches("^re: UTF%-8 error", err)
      assert.equal("c", re.match("ab\xffc", "c")[0]) -- bytes without u
    end)

    it("u: gmatch and gsub step over characters on empty matches", function()
      assert.equal("-é-a-", (re.gsub("éa", "", "-", "u")))
      local n = 0
      for _ in re.gmatch("日本語", "", "u") do n = n + 1 end
      assert.equal(4, n)
    end)
  end)

  describe("find", function()
    it("returns 1-based inclusive positions like string.find", function()
      assert.same({ 5, 7 }, { re.find("hello world", "o w") })
      assert.same({ string.find("hello world", "o w") }, { re.find("hello world", "o w") })
      assert.same({ 1, 0 }, { re.find("abc", "x*") })
      assert.is_nil(re.find("abc", "x"))
    end)
  end)

  describe("gmatch", function()
    it("iterates over every match's captures", function()
      local got = {}
      for m in re.gmatch("a=1; b=22; c=", [[(\w+)=(\d*)]]) do got[#got + 1] = m[1] .. ":" .. m[2] end
      assert.same({ "a:1", "b:22", "c:" }, got)
    end)

    it("handles empty matches like Perl", function()
      local got = {}
      for m in re.gmatch("baaa", "a*") do got[#got + 1] = m[0] end
      assert.same({ "", "aaa", "" }, got)
    end)

    it("returns nil, err for a bad pattern", function()
      local it, err = re.gmatch("abc", "(")
      assert.is_nil(it)
      assert.matches("^re: missing closing parenthesis", err)
    end)

    it("survives other matches of the same pattern between steps", function()
      local it = re.gmatch("1 2 3", [[\d]])
      assert.equal("1", it()[0])
      assert.equal("9", re.match("9", [[\d]])[0])
      assert.equal("2", it()[0])
      assert.equal("3", it()[0])
      assert.is_nil(it())
      assert.is_nil(it())
    end)
  end)

  describe("sub and gsub", function()
    it("replace the first or every match and count them", function()
      assert.same({ "X-b-a", 1 }, { re.sub("a-b-a", "a", "X") })
      assert.same({ "X-b-X", 2 }, { re.gsub("a-b-a", "a", "X") })
    end)

    it("return the subject itself and 0 without a match", function()
      local s = "unchanged"
      local r, n = re.gsub(s, "x", "y")
      assert.equal(s, r)
      assert.equal(0, n)
    end)

    it("expand $0, $1..$9, ${10}, ${name}, $$ and unset groups", function()
      assert.equal("world hello ($) [hello world]",
        (re.sub("hello world", [[(\w+) (?<second>\w+)]], "${second} $1 ($$) [$0]")))
      local ten = "(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)"
      assert.equal("j|a0", (re.sub("abcdefghij", ten, "${10}|$10")))
      assert.equal("<>", (re.sub("x", "(y)?x", "<$1>")))
    end)

    it("mask digits with counted repetition", function()
      assert.equal("1234********3456",
        (re.gsub("1234567890123456", [[(\d{4})\d{8}(\d{4})]], "$1********$2")))
    end)

    it("take a function of the captures; nil or false keeps the match", function()
      local r, n = re.gsub("a1b22c333", [[(?<num>\d+)]], function(m)
        if m.num == "22" then return nil end
        return "<" .. m[0] .. ":" .. #m[1] .. ">"
      end)
      assert.equal("a<1:1>b22c<333:3>", r)
      assert.equal(3, n)
      assert.equal("x7y", (re.gsub("x1y", [[\d]], function() return 7 end)))
    end)

    it("let a function use the same pattern again", function()
      local r = re.gsub("a1 b2", [[\w(\d)]], function(m)
        return re.gsub(m[0], [[\w(\d)]], "$1") .. m[1]
      end)
      assert.equal("11 22", r)
    end)

    it("handle empty matches like Perl", function()
      assert.same({ "-b--", 3 }, { re.gsub("baaa", "a*", "-") })
      assert.same({ "-a-b-", 3 }, { re.gsub("ab", "", "-") })
    end)

    it("return nil, err for a bad template or a missing group", function()
      local r, err = re.gsub("x", "(x)", "$2")
      assert.is_nil(r)
      assert.matches("refers to group 2 but the pattern has 1", err)
      r, err = re.gsub("x", "(x)", "${nope}")
      assert.is_nil(r)
      assert.matches('refers to group "nope"', err)
      r, err = re.gsub("x", "x", "$x")
      assert.is_nil(r)
      assert.matches("bad replacement template at offset 1", err)
      r, err = re.gsub("x", "x", "${1")
      assert.is_nil(r)
      assert.matches("bad replacement template", err)
    end)

    it("raise on a wrong repl, or a function returning a table", function()
      assert.matches("re.gsub: repl must be a string or a function, got number",
        err_of(function() re.gsub("x", "x", 5) end))
      assert.matches("re.sub: the replacement function returned a table",
        err_of(function() re.sub("x", "x", function() return {} end) end))
    end)
  end)

  describe("split", function()
    it("splits on a separator pattern", function()
      assert.same({ "10.0.0.1", "10.0.0.2", "10.0.0.3" },
        re.split("10.0.0.1, 10.0.0.2 ,10.0.0.3", [[\s*,\s*]]))
    end)

    it("keeps empty pieces between and at the ends", function()
      assert.same({ "", "a", "", "b", "" }, re.split(",a,,b,", ","))
    end)

    it("splits between characters on empty matches, no empty pieces", function()
      assert.same({ "a", "b", "c" }, re.split("abc", ""))
      assert.same({ "a", "b" }, re.split("a,b", ",?"))
    end)

    it("honours max and gives {} for an empty subject", function()
      assert.same({ "a", "b,c,d" }, re.split("a,b,c,d", ",", nil, 2))
      assert.same({ "a,b" }, re.split("a,b", ",", nil, 1))
      assert.same({ "a", "b" }, re.split("a,b", ",", nil, 0))
      assert.same({ "abc" }, re.split("abc", ","))
      assert.same({}, re.split("", ","))
    end)

    it("takes flags", function()
      assert.same({ "a", "b", "c" }, re.split("aXbxc", "x", "i"))
    end)
  end)

  describe("errors", function()
    it("a bad pattern is nil, err with the offset and the pattern", function()
      local m, err = re.match("abc", "a(b")
      assert.is_nil(m)
      assert.equal("re: missing closing parenthesis at offset 3 in a(b", err)
      assert.same({ nil, "re: quantifier does not follow a repeatable item at offset 0 in *a" },
        { re.find("abc", "*a") })
      assert.is_nil((re.gsub("abc", "[", "")))
      assert.is_nil((re.split("abc", "[")))
    end)

    it("wrong argument types raise, naming the function", function()
      assert.equal("re.match: subject must be a string, got nil",
        err_of(function() re.match(nil, "x") end):match("re%.match.*"))
      assert.matches("re.find: pattern must be a string, got table",
        err_of(function() re.find("x", {}) end))
      assert.matches("re.gmatch: subject must be a string, got number",
        err_of(function() re.gmatch(1, "x") end))
      assert.matches("re.sub: subject must be a string",
        err_of(function() re.sub(nil, "x", "") end))
      assert.matches("re.split: max must be a number or nil, got string",
        err_of(function() re.split("x", "x", nil, "2") end))
      assert.matches("re.match: init must be a number or nil, got string",
        err_of(function() re.match("x", "x", nil, "2") end))
    end)

    it("raise at the caller's line", function()
      local ok, e = pcall(function() re.gsub(nil, "x", "") end)
      assert.is_false(ok)
      assert.matches("14%-re_spec%.lua:%d+: re%.gsub", e)
      ok, e = pcall(function() re.match("x", "x", "Q") end)
      assert.matches("14%-re_spec%.lua:%d+: re%.match", e)
    end)
  end)

  describe("limits", function()
    after_each(function() re.set_limits({ match = 1000000, depth = 10000 }) end)

    it("stop catastrophic backtracking quickly with the match limit", function()
      local subject = ("a"):rep(40) .. "b"
      local t0 = os.clock()
      local m, err = re.match(subject, "(a+)+$")
      local took = os.clock() - t0
      assert.is_nil(m)
      assert.equal("re: match limit exceeded", err)
      assert.is_true(took < 1, "took " .. took .. " s")
      assert.same({ nil, "re: match limit exceeded" }, { re.gsub(subject, "(a+)+$", "") })
      local it = re.gmatch(subject, "(a+)+$")
      assert.same({ nil, "re: match limit exceeded" }, { it() })
    end)

    it("are configurable with set_limits", function()
      local p = [[^(\w+\s?)*$]]
      local subject = ("ab "):rep(3)
      assert.is_table(re.match(subject, p))
      re.set_limits({ match = 5 })
      assert.same({ nil, "re: match limit exceeded" }, { re.match(subject, p) })
      re.set_limits({ match = 1000000 })
      assert.is_table(re.match(subject, p))
    end)

    it("bound the interpreter's depth (the JIT has its own stack)", function()
      local was = re._set_jit(false)
      local ok, m, err = pcall(function()
        local subject, p = ("ab "):rep(200), [[^(?:interp)?(\w+\s?)*$]]
        assert.is_table(re.match(subject, p))
        re.set_limits({ depth = 50 })
        return re.match(subject, p)
      end)
      re._set_jit(was)
      assert.is_true(ok, m)
      assert.is_nil(m)
      assert.equal("re: matching depth limit exceeded", err)
    end)

    it("run the same catastrophic pattern quickly in the interpreter", function()
      local was = re._set_jit(false)
      local t0 = os.clock()
      local m, err = re.match(("a"):rep(40) .. "b", "(?:interp)?(a+)+$")
      local took = os.clock() - t0
      re._set_jit(was)
      assert.is_nil(m)
      assert.equal("re: match limit exceeded", err)
      assert.is_true(took < 1, "took " .. took .. " s")
    end)

    it("raise on bad values", function()
      assert.matches("re.set_limits: limits must be a table", err_of(function() re.set_limits(5) end))
      assert.matches('unknown limit "heap"', err_of(function() re.set_limits({ heap = 1 }) end))
      assert.matches("match must be an integer", err_of(function() re.set_limits({ match = 0 }) end))
      assert.matches("depth must be an integer", err_of(function() re.set_limits({ depth = 1.5 }) end))
    end)
  end)

  describe("cache", function()
    it("compiles a pattern once per flags", function()
      local p = "cache-once-" .. tostring({})
      local before = re._compiled()
      for _ = 1, 100 do
        assert.is_table(re.match(p, p))
        assert.is_number((re.find(p, p)))
      end
      assert.equal(before + 1, re._compiled())
      re.match(p, p, "i")
      assert.equal(before + 2, re._compiled())
    end)

    it("stays bounded and keeps the patterns in use", function()
      local hot = "hot-" .. tostring({})
      re.match(hot, hot)
      local before = re._compiled()
      for k = 1, 3000 do
        re.find("x", "cold-" .. k)
        if k % 100 == 0 then re.find(hot, hot) end
      end
      assert.is_true(re._cache_size() <= 1024, "cache size " .. re._cache_size())
      assert.equal(before + 3000, re._compiled()) -- the hot pattern was never recompiled
      assert.is_table(re.match(hot, hot))
      assert.equal(before + 3000, re._compiled())
    end)

    -- RSS includes PCRE2's compiled and JIT code, freed by ffi.gc on eviction.
    -- ASan's quarantine keeps freed memory, so only the Lua heap is checked there.
    -- Keeping the 30,000 flooded patterns would cost about 67 MiB (each ~2.3 KiB of
    -- compiled and JIT code); the bound is a third of that, so a leak fails while the
    -- allocator's and the kernel's noise (fragmentation, huge pages) does not.
    local function rss_kib()
      local f = assert(io.open("/proc/self/statm"))
      local pages = tonumber(f:read("*a"):match("^%d+ (%d+)"))
      f:close()
      return pages * 4
    end

    it("frees evicted patterns (memory stays flat)", function()
      local function flood(tag, n)
        for k = 1, n do re.find("x", tag .. k .. [[(a|b)+\d{2,5}(?<n>x)]]) end
        collectgarbage()
        collectgarbage()
      end
      flood("warm-", 5000)
      local kb, rss = collectgarbage("count"), rss_kib()
      flood("flood-", 30000)
      assert.is_true(collectgarbage("count") < kb + 1024,
        "Lua heap grew from " .. kb .. " to " .. collectgarbage("count") .. " KiB")
      if not (os.getenv("MOXY_SANITIZED") or os.getenv("ASAN_OPTIONS")) then
        assert.is_true(rss_kib() < rss + 24 * 1024, "RSS grew from " .. rss .. " to " .. rss_kib() .. " KiB")
      end
      assert.is_true(re._cache_size() <= 1024)
    end)
  end)
end)
