-- moxy.waf: a web application firewall layer for hooks -- rules as data
-- (targets in the request, transformations, an operator), matched over
-- PCRE2 (moxy.re), scored (anomaly scoring) or first-match, in block or
-- detect mode, with each rule's id in the access log and in /metrics.  A
-- default rule set (lua/moxy/waf_rules.lua) catches the obvious probes:
-- path traversal, SQL injection, XSS, shell and code injection, file
-- inclusion, oversized or too many arguments, bad methods, scanners.  A
-- programmable filter, not an OWASP CRS engine.  Reference: docs/waf.md.
--
--   local waf = moxy.waf.new{ mode = "block", body = true, rules = {
--     { id = 9001, msg = "no admin from outside", targets = { "path" },
--       transforms = { "url_decode", "normalize_path" }, op = "prefix", value = "/admin", score = 5 },
--   } }
--   on_request = function(txn) if not waf:enforce(txn) then return end end
local bit = require "bit"
local re = require "moxy.re"
local metrics = require "moxy.metrics"
local query = require "moxy.query"
local url = require "moxy.url"
local default_rules = require "moxy.waf_rules"

local type, tostring, tonumber, error, pairs, ipairs, setmetatable, pcall = type, tostring, tonumber, error, pairs,
  ipairs, setmetatable, pcall
local find, sub, gsub, match, lower, char, byte, format, concat = string.find, string.sub, string.gsub,
  string.match, string.lower, string.char, string.byte, string.format, table.concat
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local M = {}

local Waf = {}
Waf.__index = Waf

local HITS = "moxy_waf_rule_hits_total"
local HITS_HELP = "Requests a WAF rule matched, by WAF and rule id"
local REQUESTS = "moxy_waf_requests_total"
local REQUESTS_HELP = "Requests a WAF inspected, by WAF and result (pass, detected, blocked)"

local function bad(where, msg)
  error("moxy.waf: " .. where .. ": " .. msg, 0)
end

-- Transformations ------------------------------------------------------------
-- Each takes a string and returns one; each returns its input untouched (no
-- copy) when there is nothing to do.

local function hex_byte(h) return char(tonumber(h, 16)) end

-- The UTF-8 of the code point written in hex h (IIS's %uHHHH escape).
local function utf8_of(h)
  local cp = tonumber(h, 16)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F))) end
  return char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

-- Overlong UTF-8 forms of ASCII (C0/C1 xx, E0 80/81 xx) as the ASCII byte
-- a lax decoder would see.
local function overlong2(a, b)
  return char(bor(lshift(band(byte(a), 0x1F), 6), band(byte(b), 0x3F)))
end
local function overlong3(b, c)
  return char(bor(lshift(band(byte(b), 0x3F), 6), band(byte(c), 0x3F)))
end

-- Look-alikes of / \ . that "best fit" conversions (IIS, some Windows
-- APIs) turn into them: U+2215, U+2216, U+2024, U+FF0E, U+FF0F, U+FF3C.
local BEST_FIT = { ["\226\136\149"] = "/", ["\226\136\150"] = "\\", ["\226\128\164"] = ".",
                   ["\239\188\142"] = ".", ["\239\188\143"] = "/", ["\239\188\188"] = "\\" }

local T = {}

local SPACE = { [32] = true, [9] = true, [10] = true, [11] = true, [12] = true, [13] = true }

-- %HH and %uHHHH decoded (once), overlong UTF-8 folded to ASCII, and the
-- look-alikes of / \ . (BEST_FIT) as those.
function T.url_decode(s)
  if find(s, "%", 1, true) then
    s = gsub(s, "%%[uU](%x%x%x%x)", utf8_of)
    s = gsub(s, "%%(%x%x)", hex_byte)
  end
  if re.find(s, "[\\xc0\\xc1\\xe0\\xe2\\xef]") then
    s = gsub(s, "([\192\193])([\128-\191])", overlong2)
    s = gsub(s, "\224([\128\129])([\128-\191])", overlong3)
    s = gsub(s, "[\226\239][\128-\191][\128-\191]", BEST_FIT)
  end
  return s
end

local ENTITIES = { lt = "<", gt = ">", quot = '"', apos = "'", amp = "&", nbsp = " ", colon = ":", tab = "\t",
                   newline = "\n", lpar = "(", rpar = ")", sol = "/", bsol = "\\", semi = ";", comma = ",",
                   equals = "=", grave = "`", lsqb = "[", rsqb = "]", lcub = "{", rcub = "}", excl = "!",
                   num = "#", dollar = "$", percnt = "%", period = ".", plus = "+", quest = "?" }

-- A character reference's text (beyond the BMP: "?", no rule needs it).
local function entity_code(n)
  if n < 0x80 then return char(n) end
  if n < 0x10000 then return utf8_of(format("%04x", n)) end
  return "?"
end
local function entity_num(d) return entity_code(tonumber(d)) end
local function entity_hex(h) return entity_code(tonumber(h, 16)) end
local function entity_named(name)
  return ENTITIES[lower(name)]
end

-- HTML character references: &#60; &#x3c; (leading zeros, no ';'), and
-- the named ones an XSS uses.
function T.html_decode(s)
  if not find(s, "&", 1, true) then return s end
  s = gsub(s, "&#[xX]0*(%x%x?%x?%x?%x?%x?);?", entity_hex)
  s = gsub(s, "&#0*(%d%d?%d?%d?%d?%d?%d?);?", entity_num)
  return (gsub(s, "&(%a+);", entity_named))
end

function T.lowercase(s) return lower(s) end

function T.remove_nulls(s)
  if not find(s, "%z") then return s end
  return (gsub(s, "%z", ""))
end

function T.compress_whitespace(s)
  if not re.find(s, "\\s\\s|[\\t\\n\\r\\x0b\\x0c]") then return s end
  return (gsub(s, "%s+", " "))
end

function T.trim(s)
  if not find(s, "^%s") and not find(s, "%s$") then return s end
  return (gsub(gsub(s, "^%s+", ""), "%s+$", ""))
end

-- SQL and C comments as one space (MySQL's /*!NNNNN ... */ keeps its
-- text, as MySQL runs it).
-- One left-to-right pass of plain searches: a value of many unclosed
-- "/*" costs what its length does (a lazy pattern per "/*" would rescan
-- the rest of the value each time).
function T.remove_comments(s)
  if not find(s, "/*", 1, true) and not find(s, "*/", 1, true) then return s end
  local out, pos, len = {}, 1, #s
  while true do
    local a = find(s, "/*", pos, true)
    if not a then break end
    out[#out + 1] = sub(s, pos, a - 1)
    out[#out + 1] = " "
    if byte(s, a + 2) == 33 then -- "/*!NNNNN": MySQL runs what follows
      pos = a + 3
      while pos <= len and byte(s, pos) >= 48 and byte(s, pos) <= 57 do pos = pos + 1 end
    else
      local e = find(s, "*/", a + 2, true)
      if not e then
        pos = len + 1
        break
      end
      pos = e + 2
    end
  end
  out[#out + 1] = sub(s, pos)
  return (gsub(concat(out), "%*/", " "))
end

-- Backslashes as slashes, repeated slashes as one, "." and ".." segments
-- resolved (RFC 3986 5.2.4).
function T.normalize_path(s)
  if find(s, "\\", 1, true) then s = gsub(s, "\\", "/") end
  if find(s, "//", 1, true) then s = gsub(s, "//+", "/") end
  if find(s, "%./") or find(s, "/%.%.?$") or s == "." or s == ".." then s = url.remove_dot_segments(s) end
  return s
end

-- A shell command line as the shell would run it: the characters a shell
-- drops (\ " ' ^) dropped, $IFS / ${IFS} and $@ / $* as what they expand
-- to, runs of spaces and tabs as one space (line ends stay: they separate
-- commands).  (Rules over it match caselessly.)
function T.cmd_line(s)
  if find(s, "[\\\"'%^]") then s = gsub(s, "[\\\"'%^]", "") end
  if find(s, "$", 1, true) then
    s = gsub(s, "%${IFS}", " ")
    s = gsub(s, "%$IFS", " ")
    s = gsub(s, "%$[@*]", "")
  end
  if find(s, "[ \t\v\f][ \t\v\f]") or find(s, "[\t\v\f]") then s = gsub(s, "[ \t\v\f]+", " ") end
  return s
end

M.transforms = T

-- For each transformation, a PCRE2 pattern that finds something in every
-- value the transformation would change: a value it does not match comes
-- out of the transformation as it went in (spec/01-unit/23-waf_spec.lua
-- checks this on random strings).  The fast path of Waf:inspect rests on it.
local CHANGES = {
  url_decode = [=[%|[\xc0\xc1\xe0\xe2\xef]]=],
  html_decode = [=[&]=],
  lowercase = [=[[A-Z]]=],
  remove_nulls = [=[\x00]=],
  compress_whitespace = [=[\s\s|[\t\n\r\x0b\x0c]]=],
  trim = [=[^\s|\s$]=],
  remove_comments = [=[/\*|\*/]=],
  normalize_path = [=[\\|//|(?:^|/)\.\.?(?:/|$)]=],
  cmd_line = [=[[\\"'^$]|[ \t\x0b\x0c]{2}|[\t\x0b\x0c]]=],
}
M.changes = CHANGES

-- Character classes: bit i of a value's mask says it holds a character of
-- class i.  A rule's `chars` become a mask too; a rule whose mask shares
-- no bit with a value's cannot match it and is not run.  Classes may be
-- shared by several characters (a false "maybe" only costs a search).
local CLS = {}
for b = 0, 255 do CLS[b] = 0 end
do
  local classes = { "'", '"', "`", "<", ">", "(", ")", ";", "|", "&", "$", "{}", "%", "=", "/", "\\", ".", "@",
                    "#", "*", "-", ":", nil, nil, "_", "[]", nil, ",+!?^~" }
  for i = 1, 28 do
    local chars = classes[i]
    if chars then for k = 1, #chars do CLS[byte(chars, k)] = bor(CLS[byte(chars, k)], lshift(1, i - 1)) end end
  end
  local CTL, HIGH, WSB, UPPER = lshift(1, 22), lshift(1, 23), lshift(1, 26), lshift(1, 28)
  for b = 0, 31 do CLS[b] = bor(CLS[b], CTL) end
  CLS[127] = bor(CLS[127], CTL)
  for b = 128, 255 do CLS[b] = bor(CLS[b], HIGH) end
  for _, b in ipairs({ 32, 9, 11, 12 }) do CLS[b] = bor(CLS[b], WSB) end -- CR, LF: CTL only
  for b = 65, 90 do CLS[b] = bor(CLS[b], UPPER) end
end

-- The mask of the classes of the characters of s.
local UPPER_BIT = lshift(1, 28)

local function mask_of(s)
  local m = 0
  for i = 1, #s do m = bor(m, CLS[byte(s, i)]) end
  return m
end
M.mask_of = mask_of

-- The classes each transformation needs to change a value (a first, cheap
-- gate before its CHANGES pattern).
local CHANGE_MASK = {
  url_decode = bor(CLS[37], CLS[192]), html_decode = CLS[38], lowercase = CLS[65], remove_nulls = CLS[0],
  compress_whitespace = bor(CLS[32], CLS[10]), trim = bor(CLS[32], CLS[10]), remove_comments = CLS[42],
  normalize_path = bor(CLS[92], CLS[47], CLS[46]), cmd_line = bor(CLS[92], CLS[34], CLS[39], CLS[94], CLS[36], CLS[32], CLS[10]),
}
M.change_masks = CHANGE_MASK

-- Targets --------------------------------------------------------------------

local SIMPLE_TARGETS = { method = true, path = true, uri = true, query = true, args = true, args_names = true,
                         headers = true, header_names = true, cookies = true, cookie_names = true, body = true,
                         body_error = true }

-- A target string checked: "kind" or "kind:NAME" (args:, header:, cookie:).
local function check_target(t, where)
  if type(t) ~= "string" then bad(where, "a target is a string") end
  if SIMPLE_TARGETS[t] then return t end
  local kind, name = t:match("^(%a+):(.+)$")
  if kind == "args" or kind == "cookie" then return t end
  if kind == "header" then return "header:" .. lower(name) end
  bad(where, "unknown target " .. t .. " (method, path, uri, query, args, args:NAME, args_names, headers, "
    .. "header:NAME, header_names, cookies, cookie:NAME, cookie_names, body, body_error)")
end

-- Values of the request ------------------------------------------------------
-- One inspection's view of the request: a list per target, collected on
-- first use.  A list is one table: n, then name and value of each value at
-- 2i-1 and 2i; a value's target name in the log is the list's prefix and
-- its name (made only when a rule matches it).

local View = {}
View.__index = View

local function push(list, name, value)
  local n = list.n + 1
  list.n = n
  list[2 * n - 1] = name
  list[2 * n] = value
end

local function new_list(prefix, low) return { n = 0, prefix = prefix, low = low } end
local EMPTY = { n = 0 } -- never pushed to

-- The target name of value i of list l ("args:q", "header:user-agent").
local function label(l, i)
  local name = l[2 * i - 1]
  local prefix = l.prefix
  if not prefix then return name end
  return prefix .. (l.low and lower(name) or name)
end

-- Arguments of a parsed query / form: args (values), args_names.
local function add_args(self, parsed)
  local args, names = self.lists.args, self.lists.args_names
  for name, v in pairs(parsed) do
    push(names, name, name)
    if type(v) == "table" then
      for _, x in ipairs(v) do push(args, name, x) end
    else
      push(args, name, v)
    end
  end
end

-- JSON values as arguments: a.b.1.c = leaf, keys as names; bounded depth
-- and count (past them the leaves are not added, the count rule sees max+1).
local function add_json(self, v, prefix, depth, max)
  local args, names = self.lists.args, self.lists.args_names
  if type(v) == "table" then
    if depth > 32 then self.body_error = "JSON nested too deep" return end
    for k, x in pairs(v) do
      if args.n > max then return end
      local ks = tostring(k)
      local path = prefix == "" and ks or prefix .. "." .. ks
      if type(k) == "string" then push(names, path, ks) end
      add_json(self, x, path, depth + 1, max)
    end
  elseif args.n <= max then
    local t = type(v)
    if t == "string" then push(args, prefix, v)
    elseif t == "number" or t == "boolean" then push(args, prefix, tostring(v)) end
  end
end

-- XML values as arguments: element text (args:xml:ELEMENT), attribute
-- values (args:xml:@NAME), CDATA sections (args:xml:cdata), character
-- references decoded; at most max + 1 of them.
-- One left-to-right pass of plain searches: a body of unclosed tags or
-- CDATA sections costs what its length does.
local function add_xml(self, body, max)
  local args = self.lists.args
  local pos, len = 1, #body
  while pos <= len and args.n <= max do
    local lt = find(body, "<", pos, true)
    if not lt then break end
    if sub(body, lt, lt + 8) == "<![CDATA[" then
      local e = find(body, "]]>", lt + 9, true)
      push(args, "xml:cdata", sub(body, lt + 9, (e or len + 1) - 1))
      if not e then break end
      pos = e + 3
    else
      local gt = find(body, ">", lt + 1, true)
      if not gt then break end
      local tag = sub(body, lt + 1, gt - 1)
      local name = match(tag, "^/?([%w_:.-]+)") or ""
      -- attribute values: the quoted runs inside the tag (searched in the
      -- tag alone, so each search ends where the tag does)
      local p = 1
      while args.n <= max do
        local q = find(tag, "[\"']", p)
        if not q then break end
        local e = find(tag, sub(tag, q, q), q + 1, true)
        if not e then break end
        push(args, "xml:@" .. name, T.html_decode(sub(tag, q + 1, e - 1)))
        p = e + 1
      end
      local nxt = find(body, "<", gt + 1, true) or len + 1
      local text = sub(body, gt + 1, nxt - 1)
      if args.n <= max and find(text, "%S") then push(args, "xml:" .. name, T.html_decode(text)) end
      pos = nxt
    end
  end
end

-- s without the white space around it (s itself when there is none).
local function trim(s)
  local a, b = 1, #s
  while a <= b and SPACE[byte(s, a)] do a = a + 1 end
  while b >= a and SPACE[byte(s, b)] do b = b - 1 end
  if a == 1 and b == #s then return s end
  return sub(s, a, b)
end

-- Cookie pairs of every Cookie field, duplicates kept (a WAF must see the
-- second "id" an application might read).
local function add_cookies(self, header)
  local cookies, names = self.lists.cookies, self.lists.cookie_names
  local pos, len = 1, #header
  while pos <= len do
    local semi = find(header, ";", pos, true) or len + 1
    local eq = find(header, "=", pos, true)
    local name, value
    if eq and eq < semi then
      name, value = trim(sub(header, pos, eq - 1)), trim(sub(header, eq + 1, semi - 1))
    else
      name, value = trim(sub(header, pos, semi - 1)), ""
    end
    pos = semi + 1
    if name ~= "" then
      if sub(value, 1, 1) == '"' and sub(value, -1) == '"' and #value >= 2 then value = sub(value, 2, -2) end
      push(cookies, name, value)
      push(names, name, name)
    end
  end
end

local function view_new(waf, txn)
  local req = txn.req
  local lists = { args = new_list("args:"), args_names = new_list("args_names:"), cookies = new_list("cookie:"),
                  cookie_names = new_list("cookie:") }
  local self = setmetatable({ waf = waf, txn = txn, req = req, lists = lists, indexed = {} }, View)
  local qs = req.query
  if qs and qs ~= "" then add_args(self, query.parse(qs, waf.max_args + 1)) end
  for _, c in ipairs(req.headers:get_all("Cookie")) do add_cookies(self, c) end
  return self
end

-- "kind:NAME" targets split, once per target string (the rules' targets:
-- the configuration's, not the client's, so the table stays small).
local PARTS = {}
local function target_parts(t)
  local p = PARTS[t]
  if not p then
    local kind, name = t:match("^(%a+):(.+)$")
    p = { kind, name }
    PARTS[t] = p
  end
  return p[1], p[2]
end

-- The list of target t (a table with n, names, values).
function View:list(t)
  local l = self.lists[t]
  if l then return l end
  local req = self.req
  l = new_list()
  if t == "headers" or t == "header_names" or t:find("^header:") then l.prefix, l.low = "header:", true end
  if t == "method" then push(l, "method", req.method)
  elseif t == "path" then push(l, "path", req.path)
  elseif t == "uri" then push(l, "uri", req.uri)
  elseif t == "query" then if req.query then push(l, "query", req.query) end
  elseif t == "body" then if self.body then push(l, "body", self.body) end
  elseif t == "body_error" then if self.body_error then push(l, "body", self.body_error) end
  elseif t == "headers" or t == "header_names" then
    for name, value in req.headers:each() do push(l, name, t == "headers" and value or name) end
  else
    local kind, name = target_parts(t)
    if kind == "header" then
      for _, v in ipairs(req.headers:get_all(name)) do push(l, name, v) end
    else
      -- args:NAME, cookie:NAME: every named list of the kind made in one
      -- pass, the first time one is asked for
      local from = self.lists[kind == "args" and "args" or "cookies"]
      if not self.indexed[kind] then
        self.indexed[kind] = true
        for i = 1, from.n do
          local n = from.prefix .. from[2 * i - 1]
          local x = self.lists[n]
          if not x then
            x = new_list(from.prefix)
            self.lists[n] = x
          end
          push(x, from[2 * i - 1], from[2 * i])
        end
      end
      l = self.lists[t] or EMPTY
    end
  end
  self.lists[t] = l
  return l
end

-- Body: read it (when configured and of a type inspected) into args /
-- body.  false: moxy answers (too large, malformed coding), stop.
local BODY_TYPES = { form = "^application/x%-www%-form%-urlencoded", json = "^application/[%w.+-]*json",
                     xml = "^[%w]+/[%w.+-]*xml", text = "^text/" }

local function read_body(self)
  local waf, txn, req = self.waf, self.txn, self.req
  local h = req.headers
  local cl = h:get("Content-Length")
  if (cl == nil or cl == "0") and h:get("Transfer-Encoding") == nil then return true end
  local ct = lower(h:get("Content-Type") or "")
  local kind
  for _, k in ipairs(waf.body_types) do
    if find(ct, BODY_TYPES[k]) then kind = k break end
  end
  if not kind then return true end
  local body, err = txn:read_body{ max = waf.body_max, decode = true }
  if body == nil then
    self.body_error = err
    return false
  end
  self.body = body
  if kind == "form" then
    add_args(self, query.parse(body, waf.max_args + 1))
  elseif kind == "json" then
    local json = require("moxy").json
    local doc, jerr = json.decode(body)
    if doc == nil and body ~= "null" then self.body_error = "JSON: " .. tostring(jerr)
    else add_json(self, doc, "", 0, waf.max_args) end
  elseif kind == "xml" then
    add_xml(self, body, waf.max_args)
  else
    push(self.lists.args, "text", body)
  end
  return true
end

-- Rules ----------------------------------------------------------------------

local OPS = { regex = true, exact = true, prefix = true, contains = true, size = true, count = true }

local function string_list(v, where, what)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" or #v == 0 then bad(where, what .. ": a string or a list of strings is needed") end
  for _, x in ipairs(v) do if type(x) ~= "string" then bad(where, what .. ": strings only") end end
  return v
end

-- A regex that may go into a union: no backreferences and no named groups
-- (their numbers and names would change).
local function unionable(p)
  return not find(p, "\\[1-9gkK]") and not find(p, "%(%?P?[<'][%a_]") and not find(p, "%(%?P[=>]")
    and not find(p, "%(%?[%d+-]%d*%)") and not find(p, "%(%?R%)")
end

-- Compile rule r (the i-th) into its checked form.
local function compile(r, i, seen)
  local where = "rule " .. tostring(type(r) == "table" and r.id or i)
  if type(r) ~= "table" then bad(where, "a rule is a table") end
  local id = r.id
  if type(id) ~= "number" and type(id) ~= "string" then bad(where, "id (a number or a string) is required") end
  id = tostring(id)
  if not id:match("^[%w_.:-]+$") or #id > 64 then bad(where, "id: letters, digits and _ . : - (at most 64)") end
  if seen[id] then bad(where, "id used twice") end
  seen[id] = true
  for k in pairs(r) do
    if not (k == "id" or k == "msg" or k == "tag" or k == "targets" or k == "transforms" or k == "op"
            or k == "value" or k == "flags" or k == "negate" or k == "gt" or k == "lt" or k == "score"
            or k == "action" or k == "chars" or k == "needs") then
      bad(where, "unknown key " .. tostring(k))
    end
  end
  local c = { id = id, msg = r.msg or "", tag = r.tag or "", index = i, negate = r.negate and true or false }
  if r.targets == nil then bad(where, "targets is required") end
  c.targets = {}
  for j, t in ipairs(string_list(r.targets, where, "targets")) do c.targets[j] = check_target(t, where) end
  c.transforms = {}
  for j, name in ipairs(r.transforms and string_list(r.transforms, where, "transforms") or {}) do
    if not T[name] then bad(where, "unknown transform " .. name) end
    c.transforms[j] = name
  end
  c.op = r.op or "regex"
  if not OPS[c.op] then bad(where, "op: regex, exact, prefix, contains, size or count") end
  c.flags = r.flags or ""
  if type(c.flags) ~= "string" or c.flags:find("[^imsxuD]") then bad(where, "flags: of i m s x u D") end
  if c.op == "regex" then
    if type(r.value) ~= "string" then bad(where, "value: a regular expression is needed") end
    local ok, err = re.find("", r.value, c.flags)
    if ok == nil and err then bad(where, tostring(err)) end
    c.value = r.value
  elseif c.op == "exact" or c.op == "prefix" or c.op == "contains" then
    c.value = string_list(r.value, where, "value")
    if c.op == "exact" then
      c.set = {}
      for _, v in ipairs(c.value) do c.set[v] = true end
    end
  else
    if r.gt == nil and r.lt == nil then bad(where, c.op .. ": gt or lt is needed") end
    if r.gt ~= nil and type(r.gt) ~= "number" then bad(where, "gt: a number is needed") end
    if r.lt ~= nil and type(r.lt) ~= "number" then bad(where, "lt: a number is needed") end
    c.gt, c.lt = r.gt, r.lt
  end
  c.action = r.action or "score"
  if c.action ~= "score" and c.action ~= "block" and c.action ~= "log" then
    bad(where, 'action: "score", "block" or "log"')
  end
  c.score = r.score or 5
  if type(c.score) ~= "number" or c.score < 0 then bad(where, "score: a number >= 0") end
  if r.chars ~= nil then
    if type(r.chars) ~= "string" or r.chars == "" then bad(where, "chars: a non-empty string of characters") end
    c.mask = mask_of(r.chars)
  end
  if r.needs ~= nil then
    c.needs = {}
    for j, lit in ipairs(string_list(r.needs, where, "needs")) do
      if lit == "" then bad(where, "needs: empty text") end
      c.needs[j] = lower(lit)
    end
  end
  c.ids = {}
  return c
end

-- Does value v pass rule c's operator (before negate)?  regex errors (a
-- match limit hit) count as a match: a subject crafted to exhaust the
-- engine must not slip through.
local function test(c, v)
  local op = c.op
  if op == "regex" then
    local from, err = re.find(v, c.value, c.flags)
    return from ~= nil or err ~= nil
  elseif op == "exact" then
    return c.set[v] == true
  elseif op == "prefix" then
    for _, p in ipairs(c.value) do if sub(v, 1, #p) == p then return true end end
    return false
  elseif op == "contains" then
    for _, p in ipairs(c.value) do if find(v, p, 1, true) then return true end end
    return false
  else -- size
    local n = #v
    return (c.gt ~= nil and n > c.gt) or (c.lt ~= nil and n < c.lt)
  end
end

local MAX_NEED_BITS = 24 -- rules with `needs` per target that the fast path sorts by them

-- Group rules by (transforms, flags) -- a chain -- then by target, and
-- make each target's fast path.  -> chains, the targets to look up, the
-- args:NAME / cookie:NAME targets by name (nil: none).
local function plan(rules)
  local chains, by_key = {}, {}
  for _, c in ipairs(rules) do
    if c.op ~= "count" then
      local key = concat(c.transforms, ",") .. "|" .. c.flags
      local ch = by_key[key]
      if not ch then
        ch = { transforms = c.transforms, flags = c.flags, targets = {}, by_target = {} }
        by_key[key] = ch
        chains[#chains + 1] = ch
      end
      for _, t in ipairs(c.targets) do
        local tg = ch.by_target[t]
        if not tg then
          tg = { target = t, regex = {}, other = {} }
          ch.by_target[t] = tg
          ch.targets[#ch.targets + 1] = tg
        end
        local list = (c.op == "regex" and not c.negate) and tg.regex or tg.other
        list[#list + 1] = c
      end
    end
  end
  -- Per target: its groups in every chain, and the fast path for values
  -- no transformation of those chains changes (most values): the regex
  -- rules of every chain at once, as one search of the union of those the
  -- value's characters allow (flags inline; unions cached by the mask that
  -- chose them), the other rules one by one; a value the union finds
  -- something in goes the slow way, chain by chain.
  local targets, by_target, budget = {}, {}, { n = 0 }
  for _, ch in ipairs(chains) do
    for _, tg in ipairs(ch.targets) do
      local pt = by_target[tg.target]
      if not pt then
        pt = { target = tg.target, groups = {}, union_rules = {}, single = {}, other = {}, changes = {},
               change_mask = 0, bits = 0, always = false, unions = {}, budget = budget, need_rules = {},
               need_bit = {} }
        by_target[tg.target] = pt
        targets[#targets + 1] = pt
      end
      tg.chain = ch
      pt.groups[#pt.groups + 1] = tg
      for _, name in ipairs(ch.transforms) do
        pt.changes[name] = true
        pt.change_mask = bor(pt.change_mask, CHANGE_MASK[name])
      end
      for _, c in ipairs(tg.regex) do
        if unionable(c.value) and not c.flags:find("[uD]") then
          local f = c.flags ~= "" and "(?" .. c.flags .. ":" or "(?:"
          c.part = f .. c.value .. ")"
          pt.union_rules[#pt.union_rules + 1] = c
          if c.mask then pt.bits = bor(pt.bits, c.mask) else pt.always = true end
          if c.needs and #pt.need_rules < MAX_NEED_BITS then
            pt.need_rules[#pt.need_rules + 1] = c
            pt.need_bit[c] = lshift(1, #pt.need_rules - 1)
          end
        else
          pt.single[#pt.single + 1] = c
        end
      end
      for _, c in ipairs(tg.other) do pt.other[#pt.other + 1] = c end
    end
  end
  local plain, named = {}, nil
  for _, pt in ipairs(targets) do
    local trig = {}
    for name in pairs(pt.changes) do trig[#trig + 1] = CHANGES[name] end
    table.sort(trig)
    pt.trigger = #trig > 0 and concat(trig, "|") or nil
    pt.changes = nil
    local parts = {}
    for _, c in ipairs(pt.union_rules) do parts[#parts + 1] = c.part end
    pt.full = #parts > 0 and concat(parts, "|") or false
    if pt.full then
      local ok, err = re.find("", pt.full)
      if ok == nil and err then pt.full = "" end -- "" finds: such values go the slow way
    end
    local kind, name = target_parts(pt.target)
    if (kind == "args" or kind == "cookie") and name then
      named = named or { args = {}, cookies = {} }
      named[kind == "args" and "args" or "cookies"][name] = pt
    else
      plain[#plain + 1] = pt
    end
  end
  return chains, plain, named
end

--- moxy.waf.new(opts) -> a WAF; raises on a mistake (naming the rule).
-- opts: name, mode ("block" | "detect"), scoring ("anomaly" | "first"),
-- threshold (5), status (403), page (the body), default (true: the
-- default rules), rules (a list, after the default ones), disable (ids),
-- exclude ({ { ids, path, targets } }), body (false | true | { max,
-- types }), limits ({ args, arg_name, arg_length }), methods.
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then bad("options", "a table is needed") end
  for k in pairs(opts) do
    if not (k == "name" or k == "mode" or k == "scoring" or k == "threshold" or k == "status" or k == "page"
            or k == "default" or k == "rules" or k == "disable" or k == "exclude" or k == "body"
            or k == "limits" or k == "methods") then
      bad("options", "unknown key " .. tostring(k))
    end
  end
  local self = setmetatable({}, Waf)
  self.name = opts.name or "waf"
  if type(self.name) ~= "string" or not self.name:match("^[%w_.:-]+$") then bad("name", "letters, digits, _ . : -") end
  self.mode = opts.mode or "block"
  if self.mode ~= "block" and self.mode ~= "detect" then bad("mode", '"block" or "detect"') end
  self.scoring = opts.scoring or "anomaly"
  if self.scoring ~= "anomaly" and self.scoring ~= "first" then bad("scoring", '"anomaly" or "first"') end
  self.threshold = opts.threshold or 5
  if type(self.threshold) ~= "number" or self.threshold <= 0 then bad("threshold", "a number > 0") end
  self.status = opts.status or 403
  if type(self.status) ~= "number" or self.status < 400 or self.status > 599 then bad("status", "400 to 599") end
  self.page = opts.page or "Forbidden\n"
  if type(self.page) ~= "string" then bad("page", "a string") end

  local limits = { args = 1000, arg_name = 256, arg_length = 8192 }
  if opts.limits ~= nil then
    if type(opts.limits) ~= "table" then bad("limits", "a table { args, arg_name, arg_length }") end
    for k, v in pairs(opts.limits) do
      if limits[k] == nil then bad("limits", "unknown key " .. tostring(k)) end
      if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then bad("limits." .. k, "a whole number >= 1") end
      limits[k] = v
    end
  end
  self.max_args = limits.args
  local methods = opts.methods and string_list(opts.methods, "methods", "methods")
    or { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

  local body = opts.body
  if body == true then body = {} end
  if body then
    if type(body) ~= "table" then bad("body", "true, false or { max, types }") end
    self.body_max = body.max or 64 * 1024
    if type(self.body_max) ~= "number" or self.body_max < 1 then bad("body.max", "a number of bytes >= 1") end
    self.body_types = body.types or { "form", "json", "xml" }
    for _, k in ipairs(string_list(self.body_types, "body.types", "types")) do
      if not BODY_TYPES[k] then bad("body.types", "form, json, xml or text, not " .. tostring(k)) end
    end
  end

  local list = {}
  if opts.default ~= false then
    for _, r in ipairs(default_rules.build{ limits = limits, methods = methods }) do list[#list + 1] = r end
  end
  if opts.rules ~= nil then
    if type(opts.rules) ~= "table" then bad("rules", "a list of rules") end
    for _, r in ipairs(opts.rules) do list[#list + 1] = r end
  end
  local off = {}
  if opts.disable ~= nil then
    if type(opts.disable) ~= "table" then bad("disable", "a list of rule ids") end
    for _, id in ipairs(opts.disable) do off[tostring(id)] = true end
  end
  local seen, rules = {}, {}
  for i, r in ipairs(list) do
    local c = compile(r, i, seen)
    if not off[c.id] then rules[#rules + 1] = c end
  end
  for id in pairs(off) do
    if not seen[id] then bad("disable", "no rule " .. id) end
  end
  self.rules = rules
  self.counts = {}
  for _, c in ipairs(rules) do if c.op == "count" then self.counts[#self.counts + 1] = c end end
  self.chains, self.targets, self.named = plan(rules)

  self.exclude = {}
  for i, e in ipairs(opts.exclude or {}) do
    local where = "exclude[" .. i .. "]"
    if type(e) ~= "table" then bad(where, "a table { ids, path, targets }") end
    local x = {}
    if e.ids then
      x.ids = {}
      for _, id in ipairs(e.ids) do
        if not seen[tostring(id)] then bad(where, "no rule " .. tostring(id)) end
        x.ids[tostring(id)] = true
      end
    end
    if e.path ~= nil then
      if type(e.path) ~= "string" then bad(where, "path: a regular expression") end
      local ok, err = re.find("", e.path)
      if ok == nil and err then bad(where, "path: " .. tostring(err)) end
      x.path = e.path
    end
    if e.targets then
      x.targets = {}
      for _, t in ipairs(string_list(e.targets, where, "targets")) do
        local kind, name = t:match("^(%a+):(.+)$")
        if kind == "header" then t = "header:" .. lower(name) end
        x.targets[t] = true
      end
    end
    self.exclude[i] = x
  end
  self.request_ids = {}
  return self
end

-- Is the hit of rule c on a value of target name (its own name, e.g.
-- "args:q") excluded for this request?
local function excluded(active, c, tname, target)
  for i = 1, #active do
    local x = active[i]
    if (not x.ids or x.ids[c.id]) and (not x.targets or x.targets[target] or x.targets[tname]) then return true end
  end
  return false
end

-- Record rule c's hit (first per rule).
local function hit(res, c, tname)
  if res.hit[c] then return end
  res.hit[c] = tname
  res.n = res.n + 1
  res.rules[res.n] = c
end

-- The union of pt's rules a value of mask m may match (false: none),
-- cached by the bits of m that matter.  A WAF makes at most MAX_UNIONS of
-- them (each is compiled once): past that, a value gets the union of all
-- of the target's rules -- slower, but a client sending every mix of
-- characters cannot make moxy compile patterns without end.
local MAX_UNIONS = 256

-- Does lv (a value in lower case) hold one of c's needs?
local function has_need(c, lv)
  local needs = c.needs
  for i = 1, #needs do
    if find(lv, needs[i], 1, true) then return true end
  end
  return false
end

local function union_for(pt, m, nb)
  local key = band(m, pt.bits) * 16777216 + nb
  local u = pt.unions[key]
  if u ~= nil then return u end
  local budget = pt.budget
  if budget.n >= MAX_UNIONS then return pt.full end
  budget.n = budget.n + 1
  local parts = {}
  local need_bit = pt.need_bit
  for _, c in ipairs(pt.union_rules) do
    local nbit = need_bit[c]
    if (not c.mask or band(m, c.mask) ~= 0) and (not nbit or band(nb, nbit) ~= 0) then
      parts[#parts + 1] = c.part
    end
  end
  u = #parts > 0 and concat(parts, "|") or false
  if u then
    local ok, err = re.find("", u)
    if ok == nil and err then u = "" end -- cannot be one pattern: "" matches, so the slow way decides
  end
  pt.unions[key] = u
  return u
end

-- Value v of target pt (named name) through every chain of rules that
-- look at pt: transformed, then its union (if any), then the rules.
local function check_value(res, pt, v, l, i, active, nx)
  local target = pt.target
  local d1, d2 -- v url-decoded once and twice: most chains start so
  for _, tg in ipairs(pt.groups) do
    local ch = tg.chain
    local chain, tv, from = ch.transforms, v, 1
    if chain[1] == "url_decode" then
      d1 = d1 or T.url_decode(v)
      tv, from = d1, 2
      if chain[2] == "url_decode" then
        d2 = d2 or T.url_decode(d1)
        tv, from = d2, 3
      end
    end
    for i = from, #chain do tv = T[chain[i]](tv) end
    local regex, other = tg.regex, tg.other
    if #regex > 0 then
      local m = mask_of(tv)
      local ltv
      for k = 1, #regex do
        local c = regex[k]
        local maybe = not res.hit[c] and (not c.mask or band(m, c.mask) ~= 0)
        if maybe and c.needs then
          ltv = ltv or lower(tv)
          maybe = has_need(c, ltv)
        end
        if maybe and test(c, tv) then
          local name = label(l, i)
          if nx == 0 or not excluded(active, c, name, target) then hit(res, c, name) end
        end
      end
    end
    for k = 1, #other do
      local c = other[k]
      if not res.hit[c] and test(c, tv) ~= c.negate then
        local name = label(l, i)
        if nx == 0 or not excluded(active, c, name, target) then hit(res, c, name) end
      end
    end
  end
end

-- Value v (the i-th of list l) of target pt: the fast path when no
-- transformation changes it and the union of the rules its characters
-- allow finds nothing; the slow path (check_value) otherwise.
local function check(res, pt, v, l, i, active, nx)
  local m = mask_of(v)
  local slow = band(m, pt.change_mask) ~= 0 and pt.trigger and re.find(v, pt.trigger)
  if not slow and (pt.always or band(m, pt.bits) ~= 0) then
    local nb, lv = 0, nil
    local need_rules = pt.need_rules
    for k = 1, #need_rules do
      local c = need_rules[k]
      if not c.mask or band(m, c.mask) ~= 0 then
        lv = lv or (band(m, UPPER_BIT) ~= 0 and lower(v) or v)
        if has_need(c, lv) then nb = bor(nb, pt.need_bit[c]) end
      end
    end
    local u = union_for(pt, m, nb)
    if u then
      local from, err = re.find(v, u)
      slow = from ~= nil or err ~= nil
    end
  end
  if slow then return check_value(res, pt, v, l, i, active, nx) end
  local single, other, lv = pt.single, pt.other, nil
  for k = 1, #single do
    local c = single[k]
    local maybe = not res.hit[c] and (not c.mask or band(m, c.mask) ~= 0)
    if maybe and c.needs then
      lv = lv or (band(m, UPPER_BIT) ~= 0 and lower(v) or v)
      maybe = has_need(c, lv)
    end
    if maybe and test(c, v) then
      local name = label(l, i)
      if nx == 0 or not excluded(active, c, name, pt.target) then hit(res, c, name) end
    end
  end
  for k = 1, #other do
    local c = other[k]
    if not res.hit[c] and test(c, v) ~= c.negate then
      local name = label(l, i)
      if nx == 0 or not excluded(active, c, name, pt.target) then hit(res, c, name) end
    end
  end
end

local NAMED_KINDS = { "args", "cookies" }

local function by_index(a, b) return a.index < b.index end

local NO_EXCLUSIONS = {} -- never added to

--- waf:inspect(txn) -> result: { score, blocked (bool), hits = { { id,
-- msg, tag, target, score } ... } in rule order }, or nil, err when the
-- body could not be read (moxy answers: 413, 400 or 415).
function Waf:inspect(txn)
  local view = view_new(self, txn)
  if self.body_max and not read_body(view) then return nil, view.body_error end
  local active = NO_EXCLUSIONS
  if #self.exclude > 0 then
    active = {}
    for _, x in ipairs(self.exclude) do
      if not x.path or re.find(view.req.path, x.path) then active[#active + 1] = x end
    end
  end
  local res = { n = 0, rules = {}, hit = {} }
  local nx = #active
  if view.body_error then res.body_error = view.body_error end

  for _, pt in ipairs(self.targets) do
    local l = view:list(pt.target)
    for i = 1, l.n do check(res, pt, l[2 * i], l, i, active, nx) end
  end
  -- args:NAME and cookie:NAME targets: driven by what the request has
  local named = self.named
  if named then
    for _, kind in ipairs(NAMED_KINDS) do
      local l, by_name = view.lists[kind], named[kind]
      for i = 1, l.n do
        local pt = by_name[l[2 * i - 1]]
        if pt then check(res, pt, l[2 * i], l, i, active, nx) end
      end
    end
  end
  for _, c in ipairs(self.counts) do
    local n = 0
    for _, t in ipairs(c.targets) do n = n + view:list(t).n end
    local over = (c.gt ~= nil and n > c.gt) or (c.lt ~= nil and n < c.lt)
    if over ~= c.negate and (nx == 0 or not excluded(active, c, c.targets[1], c.targets[1])) then
      hit(res, c, c.targets[1])
    end
  end

  -- the verdict: rules in their order
  local rules = res.rules
  table.sort(rules, by_index)
  local score, blocked, hits = 0, false, {}
  for i = 1, res.n do
    local c = rules[i]
    hits[i] = { id = c.id, msg = c.msg, tag = c.tag, target = res.hit[c], score = c.score, action = c.action }
    if c.action == "block" then blocked = true
    elseif c.action == "score" then
      score = score + c.score
      if self.scoring == "first" then blocked = true end
    end
  end
  if self.scoring == "anomaly" and score >= self.threshold then blocked = true end
  return { score = score, blocked = blocked, hits = hits, body_error = res.body_error }
end

local function count(self, key, name, labels, help)
  local id = self.request_ids[key]
  if id == nil then
    id = metrics.own_id(name, labels, help)
    self.request_ids[key] = id
  end
  metrics.add(id, 1)
end

-- A target name fit for a log line: argument and cookie names are the
-- client's, so only a safe alphabet, and short.
local function log_name(s)
  s = gsub(s, "[^%w_.:%-%[%]]", "?")
  if #s > 48 then s = sub(s, 1, 48) .. "~" end
  return s
end

--- waf:enforce(txn) -> true: go on; false: moxy answered (the WAF blocked
-- in block mode: status and page; or the body could not be read) and the
-- hook should return.  Logs waf=blocked|detected, waf_score, waf_rules
-- (id@target, ...) in the access log when a rule matched, and counts in
-- /metrics.
function Waf:enforce(txn)
  local res, err = self:inspect(txn)
  if not res then
    txn:log_field("waf", "body")
    return false
  end
  local hits = res.hits
  if #hits == 0 then
    count(self, "pass", REQUESTS, { waf = self.name, result = "pass" }, REQUESTS_HELP)
    return true
  end
  local parts = {}
  for i, h in ipairs(hits) do
    if i > 8 then parts[#parts + 1] = "+" .. (#hits - 8) break end
    parts[i] = h.id .. "@" .. log_name(h.target)
    count(self, "r" .. h.id, HITS, { waf = self.name, rule = h.id }, HITS_HELP)
  end
  local block = res.blocked and self.mode == "block"
  local result = res.blocked and (block and "blocked" or "detected") or "pass"
  txn:log_field("waf", result)
  txn:log_field("waf_score", res.score)
  txn:log_field("waf_rules", concat(parts, ","))
  count(self, result, REQUESTS, { waf = self.name, result = result }, REQUESTS_HELP)
  if block then
    txn:respond(self.status, self.page, { ["Content-Type"] = "text/plain" })
    return false
  end
  return true
end

--- waf:list() -> the rules in force: { { id, msg, tag, score, action } }.
function Waf:list()
  local out = {}
  for i, c in ipairs(self.rules) do
    out[i] = { id = c.id, msg = c.msg, tag = c.tag, score = c.score, action = c.action }
  end
  return out
end

M.Waf = Waf

return M
