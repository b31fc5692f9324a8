-- moxy.url: parse, build and RFC 3986 reference resolution.
package.path = "lua/?.lua;" .. package.path
local url = require "moxy.url"

local function err_of(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

describe("moxy.url", function()
  describe("parse", function()
    it("splits every part", function()
      assert.same({ scheme = "https", userinfo = "u:p", host = "example.com", port = 8443,
                    path = "/a/b", query = "x=1&y", fragment = "top" },
        url.parse("HTTPS://u:p@example.com:8443/a/b?x=1&y#top"))
    end)

    it("absent and empty query / fragment differ", function()
      local u = url.parse("http://h/p")
      assert.is_nil(u.query)
      assert.is_nil(u.fragment)
      assert.is_nil(u.port)
      u = url.parse("http://h/p?#")
      assert.equals("", u.query)
      assert.equals("", u.fragment)
    end)

    it("no path, empty port, '?' inside the fragment", function()
      assert.same({ scheme = "http", host = "h", path = "" }, url.parse("http://h"))
      assert.same({ scheme = "http", host = "h", path = "/" }, url.parse("http://h:/"))
      assert.same({ scheme = "http", host = "h", path = "", fragment = "a?b" }, url.parse("http://h#a?b"))
    end)

    it("IPv6 hosts lose their brackets", function()
      assert.same({ scheme = "http", host = "::1", port = 8080, path = "/x" }, url.parse("http://[::1]:8080/x"))
      assert.same({ scheme = "http", host = "fe80::1", path = "" }, url.parse("http://[fe80::1]"))
    end)

    it("relative references", function()
      assert.same({ path = "a/b", query = "q" }, url.parse("a/b?q"))
      assert.same({ host = "h", path = "/p" }, url.parse("//h/p"))
      assert.same({ path = "", fragment = "f" }, url.parse("#f"))
      assert.same({ scheme = "mailto", path = "a@b.c" }, url.parse("mailto:a@b.c"))
    end)

    it("returns nil, err on bad input", function()
      for _, s in ipairs({ "http://h:80x/", "http://h:99999/", "http://[::1/", "http://[zz]/",
                           "http://[::1]x/", "http://h/a b", "http://h/\n", 42 }) do
        local u, err = url.parse(s)
        assert.is_nil(u, tostring(s))
        assert.matches("url.parse", err, 1, true)
      end
    end)
  end)

  describe("build", function()
    it("is the inverse of parse", function()
      for _, s in ipairs({ "https://u:p@example.com:8443/a/b?x=1&y#top", "http://h", "http://h/",
                           "http://[::1]:8080/x?", "http://h/p#", "//h/p", "a/b?q", "#f",
                           "mailto:a@b.c", "file:///etc/hosts" }) do
        assert.equals(s, url.build(assert(url.parse(s))))
      end
    end)

    it("defaults the path to /", function()
      assert.equals("http://example.com/", url.build({ scheme = "http", host = "example.com" }))
      assert.equals("http://example.com:81/x?q=1",
        url.build({ scheme = "http", host = "example.com", port = 81, path = "x", query = "q=1" }))
      assert.equals("/?a=1", url.build({ query = "a=1" }))
    end)

    it("raises on wrong field types", function()
      assert.matches("url.build: port", err_of(function() url.build({ host = "h", port = "80" }) end), 1, true)
      assert.matches("url.build: port", err_of(function() url.build({ host = "h", port = 70000 }) end), 1, true)
      assert.matches("url.build: host", err_of(function() url.build({ host = 1 }) end), 1, true)
      assert.matches("url.build", err_of(function() url.build("http://h") end), 1, true)
    end)
  end)

  describe("join", function()
    local base = "http://a/b/c/d;p?q"

    -- RFC 3986 5.4.1
    local normal = {
      { "g:h", "g:h" },
      { "g", "http://a/b/c/g" },
      { "./g", "http://a/b/c/g" },
      { "g/", "http://a/b/c/g/" },
      { "/g", "http://a/g" },
      { "//g", "http://g" },
      { "?y", "http://a/b/c/d;p?y" },
      { "g?y", "http://a/b/c/g?y" },
      { "#s", "http://a/b/c/d;p?q#s" },
      { "g#s", "http://a/b/c/g#s" },
      { "g?y#s", "http://a/b/c/g?y#s" },
      { ";x", "http://a/b/c/;x" },
      { "g;x", "http://a/b/c/g;x" },
      { "g;x?y#s", "http://a/b/c/g;x?y#s" },
      { "", "http://a/b/c/d;p?q" },
      { ".", "http://a/b/c/" },
      { "./", "http://a/b/c/" },
      { "..", "http://a/b/" },
      { "../", "http://a/b/" },
      { "../g", "http://a/b/g" },
      { "../..", "http://a/" },
      { "../../", "http://a/" },
      { "../../g", "http://a/g" },
    }
    -- RFC 3986 5.4.2
    local abnormal = {
      { "../../../g", "http://a/g" },
      { "../../../../g", "http://a/g" },
      { "/./g", "http://a/g" },
      { "/../g", "http://a/g" },
      { "g.", "http://a/b/c/g." },
      { ".g", "http://a/b/c/.g" },
      { "g..", "http://a/b/c/g.." },
      { "..g", "http://a/b/c/..g" },
      { "./../g", "http://a/b/g" },
      { "./g/.", "http://a/b/c/g/" },
      { "g/./h", "http://a/b/c/g/h" },
      { "g/../h", "http://a/b/c/h" },
      { "g;x=1/./y", "http://a/b/c/g;x=1/y" },
      { "g;x=1/../y", "http://a/b/c/y" },
      { "g?y/./x", "http://a/b/c/g?y/./x" },
      { "g?y/../x", "http://a/b/c/g?y/../x" },
      { "g#s/./x", "http://a/b/c/g#s/./x" },
      { "g#s/../x", "http://a/b/c/g#s/../x" },
      { "http:g", "http:g" },
    }

    for _, set in ipairs({ { "normal", normal }, { "abnormal", abnormal } }) do
      it("RFC 3986 5.4 " .. set[1] .. " examples", function()
        for _, c in ipairs(set[2]) do
          assert.equals(c[2], url.join(base, c[1]), c[1])
        end
      end)
    end

    it("keeps the base's authority parts and replaces them with the reference's", function()
      assert.equals("https://u@h:8443/x/z", url.join("https://u@h:8443/x/y?q#f", "z"))
      assert.equals("https://other/p", url.join("https://u@h:8443/x/y", "//other/p"))
      assert.equals("ftp://x/y", url.join("http://a/b", "ftp://x/../y"))
    end)

    it("merges against an empty base path", function()
      assert.equals("http://a/g", url.join("http://a", "g"))
      assert.equals("http://a?y", url.join("http://a", "?y"))
    end)

    it("returns nil, err for a relative base or bad input", function()
      local u, err = url.join("/just/a/path", "g")
      assert.is_nil(u)
      assert.matches("not absolute", err, 1, true)
      u, err = url.join("http://a/", "http://h:x/")
      assert.is_nil(u)
      assert.matches("bad port", err, 1, true)
    end)
  end)

  it("remove_dot_segments (RFC 3986 5.2.4 examples)", function()
    assert.equals("/a/g", url.remove_dot_segments("/a/b/c/./../../g"))
    assert.equals("mid/6", url.remove_dot_segments("mid/content=5/../6"))
  end)

  -- RFC 3986 5.2.4 word for word: the input shortened at each step
  local function model(input)
    local out = {}
    while input ~= "" do
      if input:sub(1, 3) == "../" then input = input:sub(4)
      elseif input:sub(1, 2) == "./" then input = input:sub(3)
      elseif input:sub(1, 3) == "/./" then input = input:sub(3)
      elseif input == "/." then input = "/"
      elseif input:sub(1, 4) == "/../" then input = input:sub(4); table.remove(out)
      elseif input == "/.." then input = "/"; table.remove(out)
      elseif input == "." or input == ".." then input = ""
      else
        local seg = input:match("^/?[^/]*")
        out[#out + 1] = seg
        input = input:sub(#seg + 1)
      end
    end
    return table.concat(out)
  end

  it("remove_dot_segments agrees with the RFC's loop on 20,000 random paths", function()
    local parts = { "/", ".", "..", "a", "b.", ".c", "...", "//", "%2e" }
    local rng = 12345
    local function rand(n) rng = (rng * 1103515245 + 12345) % 2147483648; return rng % n + 1 end
    for _ = 1, 20000 do
      local t = {}
      for k = 1, rand(12) - 1 do t[k] = parts[rand(#parts)] end
      local p = table.concat(t)
      assert.equals(model(p), url.remove_dot_segments(p), p)
    end
    for _, p in ipairs({ "", ".", "..", "/", "/.", "/..", "./", "../", "/./", "/../", "a/..", "/a/..", "/a/.",
                         "a/./b", "/../a", "../../a", ".../a", "/a/b/..c", "/a/..b/c" }) do
      assert.equals(model(p), url.remove_dot_segments(p), p)
    end
  end)

  it("remove_dot_segments is linear in the path (a client's path of 200,000 segments)", function()
    -- the RFC's loop copies the rest of the input per segment: minutes for this
    local p = string.rep("./", 100000) .. string.rep("a/../", 100000) .. "end"
    assert.equals(model(string.rep("./", 3) .. string.rep("a/../", 3) .. "end"), url.remove_dot_segments(p))
    assert.equals("/end", url.remove_dot_segments(p))
    assert.equals("/x/", url.remove_dot_segments("/" .. string.rep("b/", 50000) .. string.rep("../", 50000) .. "x/"))
  end)
end)
