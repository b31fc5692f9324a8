-- moxy.waf: the default rules block a corpus of attack requests and pass a
-- corpus of ordinary ones without a false positive (spec/support/waf/,
-- sources in its README); rules as data (targets, transformations,
-- operators, negation, actions), anomaly scoring and first match, block and
-- detect, exclusions, bodies (form, JSON, coded), limits, a regex that hits
-- PCRE2's match limit, the access log and /metrics, the configuration form
-- and its mistakes.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local S = helpers.scale

local SITE = [[
local waf = moxy.waf.new{ name = "site", body = { max = 16384 } }
local detect = moxy.waf.new{ name = "watch", mode = "detect" }
local first = moxy.waf.new{ name = "first", scoring = "first" }
local custom = moxy.waf.new{ name = "custom", default = false, rules = {
  { id = "exact", targets = { "args:mode" }, op = "exact", value = { "debug", "trace" }, score = 5 },
  { id = "prefix", targets = { "path" }, transforms = { "url_decode", "normalize_path", "lowercase" },
    op = "prefix", value = "/private/", score = 5 },
  { id = "contains", targets = { "header:X-Note" }, op = "contains", value = "forbidden-word", score = 5 },
  { id = "size", targets = { "cookie:big" }, op = "size", gt = 10, score = 5 },
  { id = "count", targets = { "cookies" }, op = "count", gt = 3, score = 5 },
  { id = "need-ua", targets = { "header:User-Agent" }, op = "regex", value = "\\S", negate = true, score = 0,
    action = "log" },
  { id = "weak-a", targets = { "args" }, op = "contains", value = "aaa", score = 2 },
  { id = "weak-b", targets = { "args" }, op = "contains", value = "bbb", score = 2 },
  { id = "hard", targets = { "args:h" }, op = "contains", value = "x", action = "block", score = 0 },
  { id = "names", targets = { "args_names", "cookie_names", "header_names" }, op = "regex", value = "^evil", flags = "i" },
  { id = "slow", targets = { "args:re" }, op = "regex", value = "^(a+)+$", score = 5 },
}, threshold = 4, exclude = {
  { ids = { "exact" }, path = "^/debug-ok/" },
  { targets = { "args:free" } },
} }
local by_path = { ["/detect"] = detect, ["/first"] = first, ["/custom"] = custom }
return {
  on_request = function(txn)
    if txn.listener == "inspect" then
      local res, err = waf:inspect(txn)
      return txn:respond(200, moxy.json.encode(res or { error = err }))
    end
    local w = by_path[txn.req.path:match("^/[%w]+")] or waf
    if txn.req.path:match("^/debug%-ok/") then w = custom end
    if not w:enforce(txn) then return end
    txn.req.path = "/echo" .. txn.req.path -- the origin's echo
  end,
}
]]

local function header_list(h)
  local list = {}
  for k, v in pairs(h or {}) do list[#list + 1] = { k, v } end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return list
end

describe("moxy.waf", function()
  local m, origin, inspect_port

  local function go(port, req)
    req.timeout = req.timeout or 10 * S
    local res, err = helpers.request(port, req)
    assert(res, tostring(err))
    return res
  end

  -- what the WAF made of req (its rules' hits), for failure messages
  local function why(req)
    local r = go(inspect_port, { method = req.method, path = req.path, headers = req.headers, body = req.body })
    return r.body
  end

  lazy_setup(function()
    origin = helpers.start_origin()
    local main
    main, inspect_port = helpers.free_port(), helpers.free_port()
    m = helpers.start_moxy({
      workers = 2,
      listen = { { addr = "127.0.0.1:" .. main, name = "main" }, { addr = "127.0.0.1:" .. inspect_port, name = "inspect" } },
      upstreams = { o = { servers = { origin.addr } } },
      scripts = { "site.lua" },
      admin = {},
      lua = { cpu_budget = 0 },
      log = { access = "access.log", format = "json" },
    }, { ports = { main, inspect_port }, files = { ["site.lua"] = SITE } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function replay(file)
    local corpus = dofile(helpers.support .. "/waf/" .. file)
    local out = {}
    for _, c in ipairs(corpus) do
      local req = { method = c.method, path = c.target, headers = header_list(c.headers), body = c.body }
      local r = go(m.port, req)
      out[#out + 1] = { case = c, req = req, status = r.status, body = r.body, ctype = r:header("content-type") }
    end
    return out, #corpus
  end

  it("blocks every request of the attack corpus", function()
    local results, n = replay("attacks.lua")
    assert.is_true(n >= 100, "the corpus has " .. n .. " requests")
    -- the WAF's 403, or moxy's own refusal before it (an unknown method: 400;
    -- a target or body over the limits: 414, 413) -- never the origin
    local missed, refused = {}, {}
    for _, r in ipairs(results) do
      if r.status == 400 or r.status == 413 or r.status == 414 or r.status == 431 then
        refused[#refused + 1] = r.case.id
        assert.are_not.equal("application/json", r.ctype, r.case.id) -- moxy's page, not the origin's echo
      elseif r.status ~= 403 then
        missed[#missed + 1] = r.case.id .. " (" .. r.status .. "): " .. why(r.req)
      end
    end
    assert.same({}, missed)
    assert.is_true(#refused < n / 10, "refused by moxy before the WAF: " .. table.concat(refused, " "))
  end)

  it("passes every request of the normal corpus to the origin", function()
    local results, n = replay("normal.lua")
    assert.is_true(n >= 200, "the corpus has " .. n .. " requests")
    local blocked = {}
    for _, r in ipairs(results) do
      -- the origin answers (its echo, JSON; compressed when the client asks), not moxy's WAF
      if r.status ~= 200 or r.ctype ~= "application/json" then
        blocked[#blocked + 1] = r.case.id .. " (" .. r.status .. "): " .. why(r.req)
      end
    end
    assert.same({}, blocked)
  end)

  it("logs the rules, score and result, and counts them in /metrics", function()
    assert.equal(200, go(m.port, { path = "/search?q=hello" }).status)
    local r = go(m.port, { path = "/search?q=1%27%20or%20%271%27%3D%271&x=ok" })
    assert.equal(403, r.status)
    assert.equal("Forbidden\n", r.body)
    local line = m:wait_log('"waf_rules":"501@args:q', 3 * S)
    assert.truthy(line, "no access-log line with the rules")
    local doc = cjson.decode(line)
    assert.equal("blocked", doc.waf)
    assert.is_true(tonumber(doc.waf_score) >= 5)
    assert.truthy(helpers.wait_until(function()
      local n = helpers.metric(m.admin_port, "moxy_waf_rule_hits_total", { waf = "site", rule = "501" })
      return n and n >= 1
    end, 3 * S))
    assert.is_true(helpers.metric(m.admin_port, "moxy_waf_requests_total", { waf = "site", result = "blocked" }) >= 1)
    assert.is_true(helpers.metric(m.admin_port, "moxy_waf_requests_total", { waf = "site", result = "pass" }) >= 1)
  end)

  it("detect mode logs and passes; first-match blocks on a weak rule that scoring lets through", function()
    local r = go(m.port, { path = "/detect?q=%3Cscript%3Ealert(1)%3C/script%3E" })
    assert.equal(200, r.status)
    local line = assert(m:wait_log('"waf":"detected"', 3 * S))
    assert.truthy(line:find("600@args:q", 1, true))
    assert.is_true(helpers.metric(m.admin_port, "moxy_waf_requests_total", { waf = "watch", result = "detected" }) >= 1)
    -- 508 alone (score 3): below the threshold with scoring, blocking with first match
    local weak = "/x?q=" .. helpers.query_escape("it's' -- done")
    assert.equal(200, go(m.port, { path = weak }).status)
    assert.equal(403, go(m.port, { path = "/first" .. weak:sub(3) }).status)
  end)

  it("runs rules as data: targets, operators, negation, actions, scores, names, exclusions", function()
    local function custom(path, headers) return go(m.port, { path = "/custom" .. path, headers = header_list(headers) }).status end
    assert.equal(403, custom("?mode=debug"))
    assert.equal(200, custom("?mode=debugging"))
    assert.equal(200, go(m.port, { path = "/debug-ok/?mode=debug" }).status) -- excluded on that path
    assert.equal(403, custom("/../private/%2E%2E/private/x"))                   -- normalised, decoded, lowercased
    assert.equal(403, custom("/../%50rivate/x"))
    assert.equal(200, custom("/privatex"))
    assert.equal(403, custom("", { ["X-Note"] = "a forbidden-word here" }))
    assert.equal(403, custom("", { Cookie = "big=01234567890" }))
    assert.equal(200, custom("", { Cookie = "big=0123456789" }))
    assert.equal(403, custom("", { Cookie = "a=1; b=2", ["cookie"] = "c=3; a=4" }))   -- 4 pairs, duplicates counted
    assert.equal(200, custom("", { Cookie = "a=1; b=2; c=3" }))
    assert.equal(200, custom("?a=aaa"))                                        -- 2 < 4
    assert.equal(403, custom("?a=aaa&b=bbb"))                                  -- 2 + 2 >= 4
    assert.equal(200, custom("?free=aaa&b=bbb"))                               -- args:free excluded
    assert.equal(403, custom("?h=x"))                                          -- action block, score 0
    assert.equal(403, custom("?EVIL_name=1"))
    assert.equal(403, custom("", { Cookie = "evilcookie=1" }))
    assert.equal(403, custom("", { ["Evil-Header"] = "1" }))
    -- action log: recorded, never blocks
    local r = go(m.port, { path = "/custom/no-ua", headers = { { "User-Agent", "" } } })
    assert.equal(200, r.status)
    assert.truthy(m:wait_log("need-ua@header:user-agent", 3 * S))
  end)

  it("survives what its decoders are fed: overlong and broken UTF-8, stray escapes, every mix of characters", function()
    for _, q in ipairs({ "%e0%9f%bf", "%e0%80%ae%e0%80%ae/", "%c0", "%u", "%uZZZZ", "%ud800", "&#99999999;", "&#x110000;",
                         "%ff%fe", "%e2%88" }) do
      local r = go(inspect_port, { path = "/x?q=" .. q }) -- the WAF's judgement, not the origin's
      assert.equal(200, r.status, q)
    end
    -- 600 values, each a different mix of characters: the unions the WAF
    -- builds are bounded, every answer still right
    local chars = "'\"`<>();|&${}%=/\\.@#*-:_[],+!?^~ "
    for i = 1, 60 do
      local qs = {}
      for k = 1, 10 do
        local v, n = {}, (i * 10 + k)
        for b = 1, #chars do
          if n % (b + 1) == 0 then v[#v + 1] = chars:sub(b, b) end
        end
        qs[k] = "v" .. k .. "=a" .. helpers.query_escape(table.concat(v)) .. "b"
      end
      local r = go(m.port, { path = "/x?" .. table.concat(qs, "&") })
      assert.is_true(r.status == 200 or r.status == 403, tostring(r.status))
    end
    assert.equal(200, go(m.port, { path = "/x?q=summer+shirts" }).status)
    assert.equal(403, go(m.port, { path = "/x?q=%27%20or%201%3D1--" }).status)
  end)

  it("fails closed when a regex hits PCRE2's match limit", function()
    local evil = string.rep("a", 40) .. "b"
    assert.equal(403, go(m.port, { path = "/custom?re=" .. evil }).status)
    assert.equal(200, go(m.port, { path = "/custom?re=aaaa" .. "b" }).status)
  end)

  it("inspects form and JSON bodies, decodes coded ones, refuses bodies over its limit", function()
    local function post(body, ctype, extra)
      local h = { { "Content-Type", ctype } }
      for _, kv in ipairs(extra or {}) do h[#h + 1] = kv end
      return go(m.port, { method = "POST", path = "/submit", headers = h, body = body })
    end
    assert.equal(403, post("name=x&comment=" .. helpers.query_escape("1' UNION SELECT password FROM users--"),
      "application/x-www-form-urlencoded").status)
    assert.equal(200, post("name=Bob&comment=" .. helpers.query_escape("Union Square, then select a table"),
      "application/x-www-form-urlencoded").status)
    assert.equal(403, post('{"user":{"tags":["ok",{"bio":"<svg onload=alert(1)>"}]}}', "application/json").status)
    assert.equal(200, post('{"user":{"tags":["ok",{"bio":"I <3 svg & css"}]}}', "application/json").status)
    assert.equal(403, post('{"a":[[[[[[[{"b":"; cat /etc/passwd"}]]]]]]]}', "application/vnd.api+json").status)
    assert.equal(403, post('{"a": "unterminated', "application/json").status)            -- 204: does not parse
    assert.equal(403, post(string.rep("[", 40) .. string.rep("]", 40), "application/json").status) -- nests past 32
    -- a gzip-coded JSON body is inspected decoded
    local gz = assert(io.popen("printf '%s' '{\"q\":\"../../../../etc/passwd\"}' | gzip -c", "r")):read("*a")
    assert.equal(403, post(gz, "application/json", { { "Content-Encoding", "gzip" } }).status)
    -- a body type not inspected passes whole; one over body.max is refused (413)
    assert.equal(200, post("<script>alert(1)</script>", "application/octet-stream").status)
    assert.equal(413, post("a=" .. string.rep("b", 20000), "application/x-www-form-urlencoded").status)
    -- bodies built to make a pattern rescan them (unclosed tags, CDATA
    -- sections, comments): answered at once, each costs what its length does
    for _, b in ipairs({ { string.rep("<a", 8000), "application/xml" },
                         { string.rep("<![CDATA[", 1700), "text/xml" },
                         { '<a b="' .. string.rep("'", 15000) .. '">', "application/xml" },
                         { '{"q":"' .. string.rep("/*", 7000) .. '"}', "application/json" } }) do
      local t = helpers.now()
      local r = post(b[1], b[2])
      assert.is_true(r.status == 200 or r.status == 403, b[2] .. ": " .. r.status)
      assert.is_true(helpers.now() - t < 1 * S, b[2] .. ": " .. (helpers.now() - t) .. " s")
    end
    -- a malformed chunked body: 400 from moxy, not the origin
    local c = assert(helpers.connection(m.port))
    c:send("POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    local r = assert(c:read_response())
    assert.equal(400, r.status)
    c:close()
  end)

  it("holds its limits: arguments counted, names and values measured", function()
    local many = {}
    for i = 1, 1001 do many[#many + 1] = "a" .. i .. "=1" end
    assert.equal(403, go(m.port, { path = "/?" .. table.concat(many, "&") }).status)
    table.remove(many)
    assert.equal(200, go(m.port, { path = "/?" .. table.concat(many, "&") }).status)
    assert.equal(403, go(m.port, { path = "/?" .. string.rep("n", 257) .. "=1" }).status)
    assert.equal(200, go(m.port, { path = "/?" .. string.rep("n", 256) .. "=1" }).status)
    -- JSON values count as arguments: 1,000 pass, 1,001 do not
    local function json_of(n)
      local t = {}
      for i = 1, n do t[i] = tostring(i) end
      return "[" .. table.concat(t, ",") .. "]"
    end
    local function post_json(body)
      return go(m.port, { method = "POST", path = "/", body = body, headers = { { "Content-Type", "application/json" } } }).status
    end
    assert.equal(200, post_json(json_of(1000)))
    assert.equal(403, post_json(json_of(1001)))
    local function form(body)
      return go(m.port, { method = "POST", path = "/", body = body,
                          headers = { { "Content-Type", "application/x-www-form-urlencoded" } } }).status
    end
    assert.equal(403, form("v=" .. string.rep("x", 8193)))
    assert.equal(200, form("v=" .. string.rep("x", 8192)))
  end)

  it("names the rule of a mistake and keeps serving on a reload with one", function()
    local function check(src)
      local code, out = helpers.run_moxy_check(src)
      return code == 0, out
    end
    local ok, out = check("return { workers = 1, listen = { '127.0.0.1:18199' }, access = { waf = { rules = {\n"
      .. "  { id = 9001, targets = { 'args' }, op = 'regex', value = 'a(' } } } } }\n")
    assert.is_false(ok)
    assert.truthy(out:find("access.waf: moxy.waf: rule 9001: re: missing closing parenthesis", 1, true), out)
    ok, out = check("return { workers = 1, listen = { '127.0.0.1:18199' }, access = { waf = { mode = 'watch' } } }\n")
    assert.is_false(ok)
    assert.truthy(out:find('access.waf: moxy.waf: mode: "block" or "detect"', 1, true), out)
    ok, out = check("return { workers = 1, listen = { '127.0.0.1:18199' }, access = { waf = 1 } }\n")
    assert.is_false(ok)
    assert.truthy(out:find("access.waf", 1, true) and out:find(":1:", 1, true), out)
    ok, out = check("return { workers = 1, listen = { '127.0.0.1:18199' }, access = { waf = { rules = {\n"
      .. "  { id = 1, targets = { 'argz' } } } } } }\n")
    assert.is_false(ok)
    assert.truthy(out:find("rule 1: unknown target argz", 1, true), out)
  end)

  it("works from the configuration: access.waf, a listener's own, access = false", function()
    local a, b, c = helpers.free_port(), helpers.free_port(), helpers.free_port()
    local conf = {
      workers = 1,
      listen = { { addr = "127.0.0.1:" .. a, name = "a" },
                 { addr = "127.0.0.1:" .. b, name = "b", access = false },
                 { addr = "127.0.0.1:" .. c, name = "c", access = { waf = { mode = "detect" } } } },
      upstreams = { o = { servers = { origin.addr } } },
      access = { waf = { rules = { { id = "no-x", targets = { "header:X-Bad" }, op = "exact", value = "1" } } } },
      log = { access = "access.log", format = "json" },
    }
    local n = helpers.start_moxy(conf, { ports = { a, b, c } })
    local attack = "/echo?q=" .. helpers.query_escape("<script>alert(1)</script>")
    assert.equal(403, go(a, { path = attack }).status)
    assert.equal(403, go(a, { path = "/echo", headers = { { "X-Bad", "1" } } }).status)
    assert.equal(200, go(a, { path = "/echo?q=hello" }).status)
    assert.equal(200, go(b, { path = attack }).status)
    assert.equal(200, go(c, { path = attack }).status)
    assert.truthy(n:wait_log('"waf":"detected"', 3 * S))
    -- a reload with a broken rule keeps the old configuration serving
    local src = helpers.read_file(n.conf_path)
    helpers.write_file(n.conf_path, src:gsub('"no%-x"', '"no x"'))
    n:signal("HUP")
    assert.truthy(n:wait_error_log("rule no x: id", 5 * S))
    assert.equal(403, go(a, { path = attack }).status)
    assert.equal(200, go(a, { path = "/echo?q=hello" }).status)
    n:stop()
  end)
end)
