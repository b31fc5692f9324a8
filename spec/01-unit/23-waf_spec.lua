-- moxy.waf's engine: its transformations on known vectors; the patterns
-- and character masks that say "this transformation cannot change this
-- value" (the fast path rests on them) never wrong on random strings; and
-- the optimised inspection (character masks, unions, the fast path, named
-- targets) finding exactly the rules a naive evaluation of every rule on
-- every value finds, on thousands of random requests.
package.path = "lua/?.lua;" .. package.path
local waf_mod = require "moxy.waf"
local re = require "moxy.re"
local query = require "moxy.query"

local T = waf_mod.transforms
local bit = require "bit"

-- A fake request: method, path, query, headers (get, get_all, each).
local function request(method, path, qs, headers)
  local h = {}
  function h.get_all(_, n)
    local out = {}
    for _, kv in ipairs(headers) do if kv[1]:lower() == n:lower() then out[#out + 1] = kv[2] end end
    return out
  end
  function h.get(self, n) return self:get_all(n)[1] end
  function h.each()
    local i = 0
    return function()
      i = i + 1
      local kv = headers[i]
      if kv then return kv[1], kv[2] end
    end
  end
  return { req = { method = method, path = path, query = qs, uri = path .. (qs and "?" .. qs or ""), headers = h } }
end

describe("moxy.waf engine", function()
  it("transforms known vectors", function()
    assert.equal("../etc", T.url_decode("%2e%2E%u002fetc"))
    assert.equal("../", T.url_decode("%c0%ae%c0%ae%c0%af"))                        -- overlong UTF-8
    assert.equal("../..\\", T.url_decode("%u002e%u002e%u2215..%u2216"))            -- IIS %u, look-alikes
    assert.equal("%2e", T.url_decode("%252e"))
    assert.equal("%zz%4", T.url_decode("%zz%4"))
    assert.equal("<script>", T.html_decode("&lt;script&#62;"))
    assert.equal("<a:", T.html_decode("&#x3C;a&colon;"))
    assert.equal("<:", T.html_decode("&#x003C&#00058;"))
    assert.equal("a b", T.compress_whitespace("a \t\n b"))
    assert.equal("union select", T.remove_comments("union/**/select"))
    assert.equal(" select ", T.remove_comments("/*!50000select*/"))
    assert.equal("/etc/passwd", T.normalize_path("/a/..\\..//etc/./passwd"))
    assert.equal("cat /etc/passwd", T.cmd_line("c'a't${IFS}/e\"tc\"/pa\\ss^wd"))
    assert.equal("a\nid", T.cmd_line("a\nid"))                                      -- line ends stay
    assert.equal("ab", T.remove_nulls("a\0b"))
  end)

  it("never changes a value its change pattern or mask says it cannot", function()
    local alphabet = { "%", "2", "e", "E", "f", "u", "0", "a", "x", "X", "&", "#", ";", "l", "t", "\0", " ", "  ", "\t",
                       "\n", "\r", "\v", "\f", "/", "\\", ".", "..", "*", "/*", "*/", "'", '"', "^", "$", "{IFS}", "IFS",
                       "@", "A", "Z", "\192", "\193", "\224", "\226", "\239", "\128", "\136", "\149", "\174", "\188",
                       "\143", "!", "-", "=" }
    math.randomseed(20261206)
    local masks = waf_mod.change_masks
    for name, fn in pairs(T) do
      local pat = waf_mod.changes[name]
      assert.truthy(pat, name)
      for _ = 1, 20000 do
        local parts = {}
        for k = 1, math.random(0, 10) do parts[k] = alphabet[math.random(#alphabet)] end
        local s = table.concat(parts)
        local out = fn(s)
        if out ~= s then
          assert.truthy(re.find(s, pat), name .. " changed " .. ("%q"):format(s) .. " its pattern says it cannot")
          assert.is_true(bit.band(waf_mod.mask_of(s), masks[name]) ~= 0,
            name .. " changed " .. ("%q"):format(s) .. " its mask says it cannot")
        end
      end
    end
  end)

  it("finds exactly what a naive evaluation of every rule on every value finds", function()
    local w = waf_mod.new{ rules = {
      { id = "n1", targets = { "args:q" }, op = "contains", value = "zz", score = 1 },
      { id = "n2", targets = { "cookie:s" }, op = "regex", value = "^a+$", negate = true, score = 1 },
      { id = "n3", targets = { "headers" }, op = "size", gt = 40, score = 1 },
      { id = "n4", targets = { "args" }, transforms = { "lowercase" }, op = "prefix", value = { "on", "x" }, score = 1 },
    } }
    local fragments = { "'", '"', "`", " or ", " and ", "1=1", "1", "2", "(", ")", " union ", "select ", " from ", "users",
      "<script>", "<svg", " onload=", "onerror=", "alert(1)", "javascript:", "%27", "%2e%2e/", "%252e", "../", "..\\",
      ";", "|", "&", " id", " cat /etc/passwd", "$(", "${IFS}", "${jndi:", "java.lang.Runtime", "&#60;", "&lt;",
      "/*", "*/", "/*!", "--", "#", "\n", "\t", "  ", "%00", "%0d%0a", "A", "b", "zz", "x", "on", "case when ", " then ",
      " end", "sleep(5)", "http://1.2.3.4/x?", "{{7*7}}", "<?php", "/bin/sh", "child_process", "%u002e", "%c0%ae",
      "information_schema.tables", " order by 3--", "\226\136\149", "a", "aaa", "price_asc", "summer linen", "_ga" }
    local function value(max)
      local parts = {}
      for k = 1, math.random(0, max) do parts[k] = fragments[math.random(#fragments)] end
      return table.concat(parts)
    end
    local function naive(txn)
      local req = txn.req
      local lists = {}
      local qargs = query.parse(req.query or "", 2000)
      local function add(t, v) lists[t] = lists[t] or {} table.insert(lists[t], v) end
      for n, v in pairs(qargs) do
        add("args_names", n)
        for _, x in ipairs(type(v) == "table" and v or { v }) do add("args", x) add("args:" .. n, x) end
      end
      for _, c in ipairs(req.headers:get_all("Cookie")) do
        for pair in c:gmatch("[^;]+") do
          local n, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
          if not n then n, v = pair:match("^%s*(.-)%s*$"), "" end
          if n ~= "" then
            if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
            add("cookies", v) add("cookie:" .. n, v) add("cookie_names", n)
          end
        end
      end
      for n, v in req.headers:each() do
        add("headers", v) add("header_names", n) add("header:" .. n:lower(), v)
      end
      add("method", req.method) add("path", req.path) add("uri", req.uri)
      if req.query then add("query", req.query) end
      local found = {}
      for _, c in ipairs(w.rules) do
        if c.op == "count" then
          local n = 0
          for _, t in ipairs(c.targets) do n = n + #(lists[t] or {}) end
          if (c.gt and n > c.gt) or (c.lt and n < c.lt) then found[c.id] = true end
        else
          for _, t in ipairs(c.targets) do
            for _, v in ipairs(lists[t] or {}) do
              local tv = v
              for _, name in ipairs(c.transforms) do tv = T[name](tv) end
              local m
              if c.op == "regex" then
                local from, err = re.find(tv, c.value, c.flags)
                m = from ~= nil or err ~= nil
              elseif c.op == "exact" then m = c.set[tv] == true
              elseif c.op == "prefix" then
                m = false
                for _, p in ipairs(c.value) do if tv:sub(1, #p) == p then m = true end end
              elseif c.op == "contains" then
                m = false
                for _, p in ipairs(c.value) do if tv:find(p, 1, true) then m = true end end
              elseif c.op == "size" then m = (c.gt and #tv > c.gt) or (c.lt and #tv < c.lt) or false end
              if m ~= c.negate then found[c.id] = true end
            end
          end
        end
      end
      return found
    end

    math.randomseed(7)
    local names = { "q", "page", "file", "callback", "id", "x", "template", "sort" }
    local disagreements, hits = {}, 0
    for i = 1, 3000 do
      local qs = {}
      for k = 1, math.random(0, 4) do
        qs[k] = query.escape(names[math.random(#names)]) .. "=" .. query.escape(value(5))
      end
      local headers = { { "Host", "example.com" } }
      if math.random() < 0.7 then headers[#headers + 1] = { "User-Agent", "Mozilla/5.0 " .. value(3) } end
      if math.random() < 0.5 then headers[#headers + 1] = { "Referer", "https://example.com/?" .. value(3) } end
      if math.random() < 0.6 then
        headers[#headers + 1] = { "Cookie", "s=" .. value(2):gsub("[;%s]", "") .. "; theme=" .. value(2):gsub("[;]", "") }
      end
      local path = "/" .. value(3):gsub("[%s?#]", "")
      local txn = request(math.random() < 0.9 and "GET" or "TRACE", path, #qs > 0 and table.concat(qs, "&") or nil, headers)
      local res = assert(w:inspect(txn))
      local got = {}
      for _, h in ipairs(res.hits) do got[h.id] = true hits = hits + 1 end
      local want = naive(txn)
      for id in pairs(want) do
        if not got[id] then disagreements[#disagreements + 1] = i .. ": missed " .. id .. " in " .. path .. "?" .. tostring(txn.req.query) end
      end
      for id in pairs(got) do
        if not want[id] then disagreements[#disagreements + 1] = i .. ": extra " .. id end
      end
      if #disagreements > 10 then break end
    end
    assert.same({}, disagreements)
    assert.is_true(hits > 1000, "the random requests matched rules " .. hits .. " times")
  end)
end)
