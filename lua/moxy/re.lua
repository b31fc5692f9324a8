-- moxy.re: regular expressions for scripts (`moxy.re`, or require "moxy.re"),
-- on PCRE2 with its JIT, through LuaJIT's FFI.  Like OpenResty's ngx.re, simpler.
--
--   local re = moxy.re
--   local m = re.match(txn.req.path, [[^/users/(\d+)/posts/(?<post>\d+)$]])
--   if m then ... m[0] (whole match), m[1], m.post ... end
--   local from, to = re.find(s, "b+", "i")
--   for m in re.gmatch(s, [[(\w+)=(\w+)]]) do ... end
--   local s2, n = re.gsub(s, [[(\w+)@(\w+)]], "$2 at ${1}")
--   local parts = re.split(hdr, [[\s*,\s*]])
--
-- Conventions (docs/re.md has the whole story):
-- * Subjects are byte strings; offsets (init, find's from/to) are 1-based byte
--   positions, like string.find.  A negative init counts from the end.
-- * Errors at run time -- a bad pattern, a bad template, a match or depth
--   limit hit, invalid UTF-8 under "u" -- return nil, "re: <message>".  No
--   match is a plain nil.  Wrong argument types and unknown flags raise, with
--   the function's name ("re.match: subject must be a string, got nil").
-- * opts: a string of flags, each one character:
--     i caseless    m multiline (^ $ at line ends)    s dotall (. matches \n)
--     x extended (whitespace and #comments ignored)    u UTF-8 (subject checked)
--     a anchored (match only at init)    D duplicate group names allowed
--     j o  accepted and ignored (ngx.re's "jit" and "compile once": moxy.re
--          always JIT-compiles and always caches)
-- * Every compiled pattern is cached per VM, keyed by pattern and flags, in a
--   two-generation cache of at most 1024 entries: new entries go into the
--   young half; when it holds 512 the old half is dropped and the young one
--   becomes old; a hit in the old half moves the entry back into the young
--   one.  So the patterns in use survive, a flood of one-off patterns cannot
--   grow memory, and a hit costs two table lookups.  Dropped compiled code and
--   match data are freed by ffi.gc.
-- * Matching is bounded: a match limit (default 1e6) and a depth limit
--   (default 1e4) on the PCRE2 interpreter, a 512 KiB stack for the JIT; see
--   re.set_limits.  A hook's CPU budget cannot interrupt C code, these can.
-- * One match data (ovector) per compiled pattern is reused: re.find and a
--   miss allocate nothing; re.match allocates its captures table.
local ffi = require "ffi"
local bit = require "bit"

-- The cdef is of libpcre2-8 (Debian libpcre2-dev, /usr/include/pcre2.h), not
-- of moxy's exports, so core/api/ffi.h does not list it.  Pointers to code units
-- (PCRE2_SPTR8 = const uint8_t *) are declared const char * here so that Lua
-- strings pass without a copy; the ABI is the same.
ffi.cdef [[
typedef struct pcre2_real_code_8 pcre2_code_8;
typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
typedef struct pcre2_real_match_context_8 pcre2_match_context_8;
typedef struct pcre2_real_compile_context_8 pcre2_compile_context_8;
typedef struct pcre2_real_general_context_8 pcre2_general_context_8;
typedef struct pcre2_real_jit_stack_8 pcre2_jit_stack_8;
typedef pcre2_jit_stack_8 *(*pcre2_jit_callback_8)(void *);

int pcre2_config_8(uint32_t what, void *where);
pcre2_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
                              int *errorcode, size_t *erroroffset, pcre2_compile_context_8 *ccontext);
void pcre2_code_free_8(pcre2_code_8 *code);
int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
int pcre2_pattern_info_8(const pcre2_code_8 *code, uint32_t what, void *where);
int pcre2_get_error_message_8(int errorcode, char *buffer, size_t bufflen);
pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code,
                                                           pcre2_general_context_8 *gcontext);
void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
size_t *pcre2_get_ovector_pointer_8(pcre2_match_data_8 *match_data);
int pcre2_match_8(const pcre2_code_8 *code, const char *subject, size_t length, size_t startoffset,
                  uint32_t options, pcre2_match_data_8 *match_data, pcre2_match_context_8 *mcontext);
pcre2_match_context_8 *pcre2_match_context_create_8(pcre2_general_context_8 *gcontext);
void pcre2_match_context_free_8(pcre2_match_context_8 *mcontext);
int pcre2_set_match_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);
int pcre2_set_depth_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);
pcre2_jit_stack_8 *pcre2_jit_stack_create_8(size_t startsize, size_t maxsize,
                                            pcre2_general_context_8 *gcontext);
void pcre2_jit_stack_assign_8(pcre2_match_context_8 *mcontext, pcre2_jit_callback_8 callback,
                              void *callback_data);
void pcre2_jit_stack_free_8(pcre2_jit_stack_8 *jit_stack);
]]

-- Inside moxy the library is linked into the binary (core/ops/main.c prints its
-- version), so ffi.C finds it; under a plain luajit (tools, benchmarks) load it.
local function library()
  if pcall(function() return ffi.C.pcre2_match_8 end) then return ffi.C end
  for _, name in ipairs({ "pcre2-8", "libpcre2-8.so.0" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then return lib end
  end
  error("moxy.re: libpcre2-8 not found (Debian package libpcre2-8-0)", 0)
end
local P = library()

local type, tostring, tonumber, error, pairs, floor = type, tostring, tonumber, error, pairs, math.floor
local sub, byte, find, match = string.sub, string.byte, string.find, string.match
local concat = table.concat
local bor, band = bit.bor, bit.band
local ffi_string, ffi_gc, ffi_cast = ffi.string, ffi.gc, ffi.cast
local new_tab = require "table.new"

-- pcre2.h, 10.42
local ANCHORED, NO_UTF_CHECK = 0x80000000, 0x40000000
local CASELESS, DOTALL, DUPNAMES, EXTENDED = 0x8, 0x20, 0x40, 0x80
local MULTILINE, UTF, NEVER_BACKSLASH_C = 0x400, 0x80000, 0x100000
local NOTEMPTY_ATSTART = 0x8
local JIT_COMPLETE = 0x1
local INFO_CAPTURECOUNT, INFO_NAMECOUNT, INFO_NAMEENTRYSIZE, INFO_NAMETABLE = 4, 17, 18, 19
local CONFIG_JIT, CONFIG_VERSION = 1, 11
local ERROR_NOMATCH = -1

-- "u" also forbids \C (one code unit), which could stop a match inside a
-- character and make the next search of gmatch/gsub start there.
local FLAGS = {
  i = CASELESS, m = MULTILINE, s = DOTALL, x = EXTENDED, u = bor(UTF, NEVER_BACKSLASH_C),
  a = ANCHORED, D = DUPNAMES, j = 0, o = 0,
}

local M = {}

local u32 = ffi.new("uint32_t[1]")
local errcode = ffi.new("int[1]")
local erroff = ffi.new("size_t[1]")
local msgbuf = ffi.new("char[256]")

local verbuf = ffi.new("char[64]")
P.pcre2_config_8(CONFIG_VERSION, verbuf)
--- re.version: the PCRE2 version, e.g. "10.42 2022-12-11".
M.version = ffi_string(verbuf)
P.pcre2_config_8(CONFIG_JIT, u32)
--- re.jit: true when PCRE2 has its JIT (patterns are then JIT-compiled; when
-- the JIT is missing or refuses a pattern, PCRE2's interpreter runs it).
M.jit = u32[0] == 1

local function pcre2_message(code)
  local n = P.pcre2_get_error_message_8(code, msgbuf, 256)
  if n < 0 then return "PCRE2 error " .. code end
  local msg = ffi_string(msgbuf, n)
  return msg
end

-- One match context per VM: the limits, and a JIT stack bigger than PCRE2's
-- 32 KiB default (reserved, not committed, until a pattern needs it).  The
-- context's finalizer holds the stack, so the stack lives as long as the
-- context that points to it.
local DEFAULT_MATCH, DEFAULT_DEPTH = 1000000, 10000
local jit_stack = P.pcre2_jit_stack_create_8(32 * 1024, 512 * 1024, nil)
local mctx = P.pcre2_match_context_create_8(nil)
if mctx == nil then error("moxy.re: out of memory", 0) end
mctx = ffi_gc(mctx, function(c)
  P.pcre2_match_context_free_8(c)
  if jit_stack ~= nil then P.pcre2_jit_stack_free_8(jit_stack) end
end)
if jit_stack ~= nil then P.pcre2_jit_stack_assign_8(mctx, nil, jit_stack) end
P.pcre2_set_match_limit_8(mctx, DEFAULT_MATCH)
P.pcre2_set_depth_limit_8(mctx, DEFAULT_DEPTH)

-- The ovector is size_t pairs; reading size_t through the FFI boxes a 64-bit
-- cdata per read (outside JIT-compiled traces).  Lua strings are shorter than
-- 2^31, so every offset fits in the low 32 bits: read those as uint32_t.  An
-- unset group (PCRE2_UNSET = ~0) reads as 0xffffffff.
local STRIDE = ffi.sizeof("size_t") / 4  -- uint32_t per size_t: 2 (or 1)
local LOW = (STRIDE == 2 and ffi.abi("be")) and 1 or 0
local UNSET = 0xffffffff

-- Compiling --------------------------------------------------------------

local CACHE_HALF = 512
local use_jit = M.jit
local young, old, nyoung = {}, {}, 0 -- [flags][pattern] -> entry
local ncompiled = 0

-- Option bits of a flags string, or nil and the first unknown flag.
local function parse_flags(flags)
  local bits = 0
  for k = 1, #flags do
    local b = FLAGS[sub(flags, k, k)]
    if not b then return nil, sub(flags, k, k) end
    bits = bor(bits, b)
  end
  return bits
end

-- Flags strings seen so far -> option bits (cleared when it holds 64).
local flagbits, nflagbits = { [""] = 0 }, 1

local function info(code, what)
  P.pcre2_pattern_info_8(code, what, u32)
  return u32[0]
end

-- Compile `pattern` with `flags` (checked already); an entry or nil, err.
local function compile(pattern, flags)
  local bits = flagbits[flags] or parse_flags(flags)
  local code = P.pcre2_compile_8(pattern, #pattern, bits, errcode, erroff, nil)
  if code == nil then
    return nil, "re: " .. pcre2_message(errcode[0]) .. " at offset " .. tonumber(erroff[0])
      .. " in " .. pattern
  end
  code = ffi_gc(code, P.pcre2_code_free_8)
  if use_jit then P.pcre2_jit_compile_8(code, JIT_COMPLETE) end -- failure: the interpreter runs it
  local md = P.pcre2_match_data_create_from_pattern_8(code, nil)
  if md == nil then return nil, "re: out of memory compiling " .. pattern end
  md = ffi_gc(md, P.pcre2_match_data_free_8)
  local e = {
    code = code, md = md,
    ov = ffi_cast("uint32_t *", P.pcre2_get_ovector_pointer_8(md)),
    ncap = info(code, INFO_CAPTURECOUNT),
    utf = band(bits, UTF) ~= 0,
    nocheck = band(bits, UTF) ~= 0 and NO_UTF_CHECK or 0,
    names = false,  -- { name1, group1, name2, group2, ... } in PCRE2's (name) order
    byname = false, -- name -> { group, ... }
  }
  local nnames = info(code, INFO_NAMECOUNT)
  if nnames > 0 then
    local size = info(code, INFO_NAMEENTRYSIZE)
    local tp = ffi.new("const uint8_t *[1]")
    P.pcre2_pattern_info_8(code, INFO_NAMETABLE, tp)
    local names, byname = {}, {}
    for k = 0, nnames - 1 do
      local ent = tp[0] + k * size -- 2 bytes group number (big-endian), name, NUL
      local group, name = ent[0] * 256 + ent[1], ffi_string(ent + 2)
      names[#names + 1] = name
      names[#names + 1] = group
      local list = byname[name] or {}
      list[#list + 1] = group
      byname[name] = list
    end
    e.names, e.byname = names, byname
  end
  ncompiled = ncompiled + 1
  return e
end

-- The cached entry of `pattern` with `flags`, compiled on a miss.
local function get(pattern, flags)
  local t = young[flags]
  local e = t and t[pattern]
  if e then return e end
  t = old[flags]
  e = t and t[pattern]
  if not e then
    local err
    e, err = compile(pattern, flags)
    if not e then return nil, err end
  end
  if nyoung >= CACHE_HALF then
    old, young, nyoung = young, {}, 0
  end
  t = young[flags]
  if not t then
    t = {}
    young[flags] = t
  end
  t[pattern] = e
  nyoung = nyoung + 1
  return e
end

-- Argument checks shared by every function; `level` is the error level of
-- the user's call as seen from here.  Returns the flags string ("" for nil).
local function check(fname, subject, pattern, opts, level)
  if type(subject) ~= "string" then
    error(fname .. ": subject must be a string, got " .. type(subject), level)
  end
  if type(pattern) ~= "string" then
    error(fname .. ": pattern must be a string, got " .. type(pattern), level)
  end
  if opts == nil then return "" end
  if flagbits[opts] then return opts end
  if type(opts) ~= "string" then
    error(fname .. ": opts must be a string of flags or nil, got " .. type(opts), level)
  end
  local bits, bad = parse_flags(opts)
  if not bits then
    error(fname .. ": unknown flag \"" .. bad .. "\" in opts \"" .. opts .. "\" (known: i m s x u a D j o)",
      level)
  end
  if nflagbits >= 64 then flagbits, nflagbits = { [""] = 0 }, 1 end
  flagbits[opts] = bits
  nflagbits = nflagbits + 1
  return opts
end

-- 0-based start offset of a 1-based `init` (string.find's rules), or nil
-- when init is past the end (nothing can match).
local function start_offset(fname, init, len)
  if init == nil then return 0 end
  if type(init) ~= "number" then
    error(fname .. ": init must be a number or nil, got " .. type(init), 4)
  end
  init = floor(init)
  if init < 0 then
    init = len + init + 1
    if init < 1 then init = 1 end
  elseif init == 0 then
    init = 1
  end
  if init > len + 1 then return nil end
  return init - 1
end

local function match_error(rc)
  return "re: " .. pcre2_message(rc)
end

-- Matching ---------------------------------------------------------------

-- The captures table of the match in e's ovector: [0] the whole match,
-- [1..n] the groups (false when unset), named groups also by name (with
-- duplicate names, the first of them that is set).
local function captures(e, subject, rc)
  local ov, ncap, names = e.ov, e.ncap, e.names
  local caps = new_tab(ncap + 1, names and #names / 2 or 0)
  for i = 0, ncap do
    local s = i < rc and ov[2 * i * STRIDE + LOW] or UNSET
    if s == UNSET then
      caps[i] = false
    else
      caps[i] = sub(subject, s + 1, ov[(2 * i + 1) * STRIDE + LOW])
    end
  end
  if names then
    for k = 1, #names, 2 do
      local name = names[k]
      if not caps[name] then caps[name] = caps[names[k + 1]] end
    end
  end
  return caps
end

local function ov_start(e) return e.ov[LOW] end
local function ov_end(e) return e.ov[STRIDE + LOW] end

-- The next match at or after byte offset `pos` (0-based).  After an empty
-- match at pos (`empty`), first a non-empty match at pos is tried, then the
-- search goes on from the next character (PCRE2's pcre2demo loop, Perl's
-- semantics).  Returns pcre2_match's code; the ovector holds the match.
local function next_match(e, subject, len, pos, empty, mopts)
  if empty then
    local rc = P.pcre2_match_8(e.code, subject, len, pos, bor(mopts, NOTEMPTY_ATSTART, ANCHORED),
                               e.md, mctx)
    if rc ~= ERROR_NOMATCH then return rc end
    if pos >= len then return ERROR_NOMATCH end
    pos = pos + 1
    if e.utf then -- skip UTF-8 continuation bytes
      while pos < len and band(byte(subject, pos + 1), 0xc0) == 0x80 do pos = pos + 1 end
    end
  end
  return P.pcre2_match_8(e.code, subject, len, pos, mopts, e.md, mctx)
end

-- re.match's and re.find's one search: e, rc (>= 0), or nil (no match),
-- or nil, err.  Argument errors name fname and its caller's line.
local function search_once(fname, subject, pattern, opts, init)
  local flags = check(fname, subject, pattern, opts, 4)
  local e, err = get(pattern, flags)
  if not e then return nil, err end
  local len = #subject
  local pos = start_offset(fname, init, len)
  if not pos then return nil end
  local rc = P.pcre2_match_8(e.code, subject, len, pos, 0, e.md, mctx)
  if rc < 0 then
    if rc == ERROR_NOMATCH then return nil end
    return nil, match_error(rc)
  end
  return e, rc
end

--- re.match(subject, pattern [, opts [, init]]) -> captures, or nil (no
-- match), or nil, err.  captures[0] is the whole match, captures[1..n] the
-- groups (false for a group that did not take part), named groups also under
-- their names.  init: 1-based byte position where the search starts (default
-- 1; negative: from the end); lookbehinds and \b still see what precedes it.
--   local m = re.match(path, [[^/users/(\d+)$]]) -- m[1] == "42" for /users/42
function M.match(subject, pattern, opts, init)
  local e, rc = search_once("re.match", subject, pattern, opts, init)
  if not e then return nil, rc end
  return captures(e, subject, rc)
end

--- re.find(subject, pattern [, opts [, init]]) -> from, to (1-based,
-- inclusive, as string.find: an empty match at p gives p, p - 1), or nil (no
-- match), or nil, err.  Allocates nothing.
--   if re.find(ua, "bot|crawler|spider", "i") then ... end
function M.find(subject, pattern, opts, init)
  local e, err = search_once("re.find", subject, pattern, opts, init)
  if not e then return nil, err end
  return ov_start(e) + 1, ov_end(e)
end

--- re.gmatch(subject, pattern [, opts]) -> iterator, or nil, err (bad
-- pattern).  Each call of the iterator returns the captures table of the next
-- match (as re.match), nil after the last, or nil, err (a limit hit; a `for`
-- loop then just ends -- call the iterator yourself to see err).  Empty
-- matches follow Perl: "a*" over "baaa" matches "", "aaa", "".
--   for m in re.gmatch(cookie, [[(\w+)=([^;]*)]]) do t[m[1]] = m[2] end
function M.gmatch(subject, pattern, opts)
  local flags = check("re.gmatch", subject, pattern, opts, 3)
  local e, err = get(pattern, flags)
  if not e then return nil, err end
  local len, pos, empty, mopts, done = #subject, 0, false, 0, false
  return function()
    if done then return nil end
    local rc = next_match(e, subject, len, pos, empty, mopts)
    if rc < 0 then
      done = true
      if rc == ERROR_NOMATCH then return nil end
      return nil, match_error(rc)
    end
    mopts = e.nocheck -- the subject's UTF-8 is checked once
    local s, t = ov_start(e), ov_end(e)
    pos, empty = t, s == t
    return captures(e, subject, rc)
  end
end

-- Replacement templates ----------------------------------------------------

-- A template parses into a list of parts: a string (literal), a number
-- (group) or a table { name }.  Parsed templates are cached (cleared when full).
local templates, ntemplates = {}, 0

local function parse_template(repl)
  local parts, n, i, lit = {}, 0, 1, {}
  local function flush()
    if #lit > 0 then
      n = n + 1
      parts[n] = concat(lit)
      lit = {}
    end
  end
  while true do
    local d = find(repl, "$", i, true)
    if not d then
      lit[#lit + 1] = sub(repl, i)
      break
    end
    lit[#lit + 1] = sub(repl, i, d - 1)
    local c = sub(repl, d + 1, d + 1)
    if c == "$" then
      lit[#lit + 1] = "$"
      i = d + 2
    elseif match(c, "^%d$") then
      flush()
      n = n + 1
      parts[n] = tonumber(c)
      i = d + 2
    elseif c == "{" then
      local close = find(repl, "}", d + 2, true)
      local ref = close and sub(repl, d + 2, close - 1)
      if ref and match(ref, "^%d+$") then
        flush()
        n = n + 1
        parts[n] = tonumber(ref)
      elseif ref and match(ref, "^[%a_][%w_]*$") then
        flush()
        n = n + 1
        parts[n] = { ref }
      else
        return nil, "re: bad replacement template at offset " .. d
          .. ": \"${\" needs a group number or name and \"}\" in " .. repl
      end
      i = close + 1
    else
      return nil, "re: bad replacement template at offset " .. d
        .. ": \"$\" must be followed by a digit, \"{\" or \"$\" in " .. repl
    end
  end
  flush()
  return parts
end

local function template(repl)
  local parts = templates[repl]
  if parts then return parts end
  local err
  parts, err = parse_template(repl)
  if not parts then return nil, err end
  if ntemplates >= 256 then templates, ntemplates = {}, 0 end
  templates[repl] = parts
  ntemplates = ntemplates + 1
  return parts
end

-- Whether every group the template names exists in e's pattern.
local function template_fits(parts, e, repl)
  for k = 1, #parts do
    local p = parts[k]
    if type(p) == "number" then
      if p > e.ncap then
        return nil, "re: replacement template refers to group " .. p .. " but the pattern has "
          .. e.ncap .. " in " .. repl
      end
    elseif type(p) == "table" then
      if not (e.byname and e.byname[p[1]]) then
        return nil, "re: replacement template refers to group \"" .. p[1]
          .. "\" that the pattern does not name in " .. repl
      end
    end
  end
  return true
end

-- Text of group g of the match in e's ovector, "" when unset.
local function group_text(e, subject, rc, g)
  if g >= rc then return "" end
  local ov = e.ov
  local s = ov[2 * g * STRIDE + LOW]
  if s == UNSET then return "" end
  return sub(subject, s + 1, ov[(2 * g + 1) * STRIDE + LOW])
end

local function expand(parts, e, subject, rc, out, n)
  for k = 1, #parts do
    local p = parts[k]
    local tp = type(p)
    n = n + 1
    if tp == "string" then
      out[n] = p
    elseif tp == "number" then
      out[n] = group_text(e, subject, rc, p)
    else
      local text = ""
      local groups = e.byname[p[1]]
      for j = 1, #groups do
        local g = groups[j]
        if g < rc and e.ov[2 * g * STRIDE + LOW] ~= UNSET then
          text = group_text(e, subject, rc, g)
          break
        end
      end
      out[n] = text
    end
  end
  return n
end

local function substitute(fname, subject, pattern, repl, opts, limit)
  local flags = check(fname, subject, pattern, opts, 4)
  local trepl = type(repl)
  if trepl ~= "string" and trepl ~= "function" then
    error(fname .. ": repl must be a string or a function, got " .. trepl, 3)
  end
  local e, err = get(pattern, flags)
  if not e then return nil, err end
  local parts
  if trepl == "string" then
    parts, err = template(repl)
    if not parts then return nil, err end
    local ok, ferr = template_fits(parts, e, repl)
    if not ok then return nil, ferr end
  end
  local len, pos, empty, mopts = #subject, 0, false, 0
  local out, n, count, copied = nil, 0, 0, 0 -- copied: bytes of subject already in out
  while true do
    local rc = next_match(e, subject, len, pos, empty, mopts)
    if rc < 0 then
      if rc == ERROR_NOMATCH then break end
      return nil, match_error(rc)
    end
    mopts = e.nocheck
    -- read the match before running user code: a function repl may use the
    -- same pattern again, which reuses its ovector
    local s, t = ov_start(e), ov_end(e)
    if not out then out = {} end
    n = n + 1
    out[n] = sub(subject, copied + 1, s)
    if parts then
      n = expand(parts, e, subject, rc, out, n)
    else
      local r = repl(captures(e, subject, rc))
      local tr = type(r)
      n = n + 1
      if tr == "string" then
        out[n] = r
      elseif tr == "number" then
        out[n] = tostring(r)
      elseif r == nil or r == false then -- as string.gsub: keep the match
        out[n] = sub(subject, s + 1, t)
      else
        error(fname .. ": the replacement function returned a " .. tr
          .. " (a string, a number, nil or false expected)", 3)
      end
    end
    copied = t
    count = count + 1
    if count == limit then break end
    pos, empty = t, s == t
  end
  if count == 0 then return subject, 0 end
  n = n + 1
  out[n] = sub(subject, copied + 1)
  return concat(out, "", 1, n), count
end

--- re.sub(subject, pattern, repl [, opts]) -> new string, count (0 or 1), or
-- nil, err.  Replaces the first match.  repl is a template string -- $0 the
-- whole match, $1..$9 a group (one digit: "$10" is group 1 then "0"),
-- ${10} or ${name} a group by number or name, $$ a "$"; an unset group gives
-- "" -- or a function(captures) returning the replacement (a string or a
-- number; nil or false keeps the match, as string.gsub does).
--   local path = re.sub(txn.req.path, [[^/v1/]], "/api/v1/")
function M.sub(subject, pattern, repl, opts)
  local r, n = substitute("re.sub", subject, pattern, repl, opts, 1) -- no tail call: error levels
  return r, n
end

--- re.gsub(subject, pattern, repl [, opts]) -> new string, count, or nil,
-- err.  As re.sub, for every match (empty matches as re.gmatch).  Without a
-- match the subject itself comes back (no copy).
--   local masked = re.gsub(s, [[(\d{4})\d{8}(\d{4})]], "$1********$2")
function M.gsub(subject, pattern, repl, opts)
  local r, n = substitute("re.gsub", subject, pattern, repl, opts, -1)
  return r, n
end

--- re.split(subject, pattern [, opts [, max]]) -> list of strings, or nil,
-- err.  The pieces between the matches of `pattern` (the separator; its groups
-- are not returned).  A separator that matches the empty string splits
-- between characters but never yields an empty piece; a non-empty one at
-- either end gives an empty first/last piece (re.split(",a,", ",") ->
-- {"", "a", ""}).  An empty subject gives {}.  max > 0: at most max pieces,
-- the last one holding the rest of the subject.
--   local hops = re.split(xff, [[\s*,\s*]])
function M.split(subject, pattern, opts, max)
  local flags = check("re.split", subject, pattern, opts, 3)
  if max ~= nil and type(max) ~= "number" then
    error("re.split: max must be a number or nil, got " .. type(max), 2)
  end
  local e, err = get(pattern, flags)
  if not e then return nil, err end
  local list, n = {}, 0
  local len = #subject
  if len == 0 then return list end
  local cuts = (max and max > 0) and floor(max) - 1 or -1
  local pos, empty, mopts, copied = 0, false, 0, 0
  while cuts ~= 0 do
    local rc = next_match(e, subject, len, pos, empty, mopts)
    if rc < 0 then
      if rc == ERROR_NOMATCH then break end
      return nil, match_error(rc)
    end
    mopts = e.nocheck
    local s, t = ov_start(e), ov_end(e)
    if not (s == t and (s == copied or s == len)) then
      n = n + 1
      list[n] = sub(subject, copied + 1, s)
      copied = t
      cuts = cuts - 1
    end
    pos, empty = t, s == t
  end
  list[n + 1] = sub(subject, copied + 1)
  return list
end

--- re.set_limits{ match = n, depth = n }: bounds for every later match in
-- this VM (each worker has its own; call it from a script's top level or
-- worker_init).  match (default 1e6): how many times PCRE2 may call its
-- internal match function, which bounds backtracking; depth (default 1e4):
-- how deep its backtracking may nest (the interpreter only: JIT-compiled
-- patterns have a 512 KiB stack instead).  A match that hits a limit returns
-- nil, "re: match limit exceeded" (or the depth/JIT stack message).
-- Omitted fields keep their value.  Raises on anything but integers >= 1.
function M.set_limits(limits)
  if type(limits) ~= "table" then
    error("re.set_limits: limits must be a table, got " .. type(limits), 2)
  end
  for k, v in pairs(limits) do
    if k ~= "match" and k ~= "depth" then
      error("re.set_limits: unknown limit \"" .. tostring(k) .. "\" (known: match, depth)", 2)
    end
    if type(v) ~= "number" or v < 1 or v > 0xffffffff or v ~= floor(v) then
      error("re.set_limits: " .. k .. " must be an integer from 1 to 2^32-1, got " .. tostring(v), 2)
    end
  end
  if limits.match then P.pcre2_set_match_limit_8(mctx, limits.match) end
  if limits.depth then P.pcre2_set_depth_limit_8(mctx, limits.depth) end
end

-- For specs: the number of cached patterns, and of compilations so far.
function M._cache_size()
  local seen, n = {}, 0
  for _, gen in ipairs({ young, old }) do
    for _, t in pairs(gen) do
      for _, e in pairs(t) do
        if not seen[e] then seen[e], n = true, n + 1 end
      end
    end
  end
  return n
end

function M._compiled() return ncompiled end

-- For specs and bench/re-bench.lua: JIT-compile patterns compiled from now on
-- (on = true, the default when PCRE2 has a JIT) or leave them to PCRE2's
-- interpreter.  Returns the previous setting.
function M._set_jit(on)
  local was = use_jit
  use_jit = on and M.jit
  return was
end

return M
