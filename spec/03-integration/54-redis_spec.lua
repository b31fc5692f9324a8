-- moxy.redis: Redis from hooks and timer callbacks over the worker's own
-- connections.  Replies of every type (nil as moxy.redis.null), binary and
-- large values, error replies, pipelines and MULTI/EXEC, eval_script,
-- commands a shared connection refuses, AUTH and SELECT, TLS, Redis down,
-- killed, stuck or slow, clients that leave, many calls at once, two
-- workers, timers, and misuse as clear errors.
--
-- Real redis-servers on loopback (helpers.start_redis): `main` for most
-- cases, `fragile` for the ones that pause or kill it, `locked` with a
-- password, and `tls` (started here: helpers.start_redis speaks plain TCP).
--
-- The hook runs the scenario named in X-Mode with a client made from the
-- JSON options in X-Opts (default: main's port) and answers with what the
-- script got, as JSON: { res = reply, err = err, type = type(reply), ... }
-- (a nil reply is absent, moxy.redis.null is JSON null).
local helpers = require "spec.helpers"
local cjson = require "cjson"
local socket = require "socket"

local S = helpers.scale
local now, sleep = helpers.now, helpers.sleep

local SITE = [==[
local ffi = require "ffi"
local json = moxy.json
local redis = moxy.redis
local null = redis.null
local PORT = MAIN_PORT
local TIMER = TIMER_ON

pcall(ffi.cdef, [[
unsigned long pthread_self(void);
typedef struct { long sec; long usec; } redis_spec_tv_t;
int gettimeofday(redis_spec_tv_t *tv, void *tz);
]])
local tv = ffi.new("redis_spec_tv_t")
local function clock()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.sec) + tonumber(tv.usec) / 1e6
end

local timer = { n = 0, last = "none" }

local function client(h)
  local o = h:get("X-Opts")
  return redis.new(o and json.decode(o) or { port = PORT })
end

local function list(h, name)
  return json.decode(h:get(name) or "[]")
end

local function describe_reply(res, err)
  return {
    res = res, err = err, type = type(res),
    is_null = res == null, is_json_null = res == json.null,
    len = type(res) == "table" and #res or nil,
  }
end

local function reply(txn, t)
  t.worker = string.format("%.0f", tonumber(ffi.C.pthread_self())) -- workers are threads
  local body, err = json.encode(t)
  if not body then return txn:respond(500, "json: " .. tostring(err)) end
  return txn:respond(200, body, { ["Content-Type"] = "application/json" })
end

-- 256 bytes of every value, repeated
local function pattern(n)
  local b = {}
  for i = 0, 255 do b[#b + 1] = string.char(i) end
  local chunk = table.concat(b)
  return (string.rep(chunk, math.ceil(n / 256))):sub(1, n)
end

return {
  worker_init = function()
    if TIMER and moxy.timer then
      moxy.timer.every(0.1, function()
        local red = redis.new({ port = PORT })
        local v, e = red:incr("timer:hits")
        red:sadd("timer:workers", string.format("%.0f", tonumber(ffi.C.pthread_self())))
        timer.n = timer.n + 1
        timer.last = v and tostring(v) or tostring(e)
      end)
    end
  end,

  on_request = function(txn)
    local h = txn.req.headers
    local mode = h:get("X-Mode")
    if mode == "call" then
      local red = client(h)
      local args = list(h, "X-Args")
      local t0 = clock()
      local d = describe_reply(red:call(unpack(args)))
      d.took = clock() - t0
      return reply(txn, d)

    elseif mode == "method" then
      -- red:<name>(...) as lua-resty-redis users write it
      local red = client(h)
      local args = list(h, "X-Args")
      local name = table.remove(args, 1)
      return reply(txn, describe_reply(red[name](red, unpack(args))))

    elseif mode == "sequence" then
      -- several calls one after the other on one client
      local red = client(h)
      local out = {}
      for i, cmd in ipairs(list(h, "X-Cmds")) do
        local t0 = clock()
        local d = describe_reply(red:call(unpack(cmd)))
        d.took = clock() - t0
        out[i] = d
      end
      return reply(txn, { results = out })

    elseif mode == "pipeline" then
      local red = client(h)
      local cmds = list(h, "X-Cmds")
      local method = h:get("X-Style") == "method"
      for i = 1, tonumber(h:get("X-Repeat") or "0") do cmds[i] = cmds[1] end
      local d = describe_reply(red:pipeline(function(p)
        for _, c in ipairs(cmds) do
          if method then p[c[1]](p, unpack(c, 2)) else p:call(unpack(c)) end
        end
      end))
      return reply(txn, d)

    elseif mode == "initpipe" then
      local red = client(h)
      local queued = {}
      red:init_pipeline()
      for i, c in ipairs(list(h, "X-Cmds")) do
        queued[i] = select("#", red[c[1]](red, unpack(c, 2)))
      end
      local d = describe_reply(red:commit_pipeline())
      d.queued = queued
      local again, aerr = red:commit_pipeline()
      d.again, d.again_err = again, aerr
      red:init_pipeline()
      red:set("cancelled:key", "x")
      red:cancel_pipeline()
      d.after_cancel = describe_reply(red:exists("cancelled:key"))
      return reply(txn, d)

    elseif mode == "eval" then
      local red = client(h)
      local src = h:get("X-Src")
      local out = {}
      for i = 1, tonumber(h:get("X-Times") or "1") do
        out[i] = describe_reply(red:eval_script(src, list(h, "X-Keys"), list(h, "X-Argv")))
      end
      return reply(txn, { results = out, sha = moxy.crypto.hex(moxy.crypto.sha1(src)) })

    elseif mode == "binary" then
      local red = client(h)
      local key = "bin\0key\r\n"
      local val = "a\0b\r\nc\r\n\0" .. string.char(255, 0, 13, 10) .. "*1\r\n$3\r\n"
      local ok, err = red:set(key, val)
      local got, gerr = red:get(key)
      local n = red:strlen(key)
      local _, kerr = red:set("bin:plain", val)
      return txn:respond(200, got or ("error: " .. tostring(gerr)), {
        ["X-Set"] = tostring(ok or err), ["X-Same"] = tostring(got == val), ["X-Strlen"] = tostring(n),
        ["X-Err"] = tostring(kerr),
      })

    elseif mode == "big" then
      -- SET a value of X-Size bytes with the default client, GET it back
      -- with the client of X-Opts
      local size = tonumber(h:get("X-Size"))
      local key = h:get("X-Key")
      local val = pattern(size)
      local setter = redis.new({ port = PORT, timeout = 5 })
      local ok, err = setter:set(key, val)
      local t0 = clock()
      local got, gerr = client(h):get(key)
      return reply(txn, { set = ok or err, len = got and #got, same = got == val, err = gerr,
                          took = clock() - t0 })

    elseif mode == "misuse" then
      local out = {}
      local function try(f, ...)
        local ok, err = pcall(f, ...)
        out[#out + 1] = { ok = ok, err = not ok and tostring(err) or nil }
      end
      local function new(o) return function() local c = redis.new(o); return c end end
      try(new({ port = 0 }))
      try(new({ port = 70000 }))
      try(new({ port = "x" }))
      try(new({ hots = "127.0.0.1" }))
      try(new({ user = "app" }))
      try(new({ db = -1 }))
      try(new({ timeout = 0 }))
      try(new({ max_reply = "lots" }))
      try(new({ pool_size = 0 }))
      try(new("127.0.0.1:6379"))
      local red = redis.new({ port = PORT })
      try(function() return red:call() end)
      try(function() return red:set("k", { "a", "b" }) end)
      try(function() return red:pipeline("not a function") end)
      try(function() return red:eval_script(42) end)
      return reply(txn, { results = out })

    elseif mode == "compat" then
      -- a script written for lua-resty-redis: its connection calls do nothing
      local red = redis.new({ port = PORT })
      local out = {}
      out.connect = red:connect("127.0.0.1", PORT)
      out.timeout = red:set_timeout(1000)
      out.hmset = red:hmset("compat:h", { a = "1", b = 2 })
      out.h = red:hgetall("compat:h")
      out.bool = red:set("compat:b", true)
      out.b = red:get("compat:b")
      red:init_pipeline()
      red:call("SET", "compat:p", "x") -- queued, as red:set would be
      red:get("compat:p")
      out.pipe = red:commit_pipeline()
      out.keepalive = red:set_keepalive(10000, 100)
      out.close = red:close()
      return reply(txn, out)

    elseif mode == "log" then
      txn.ctx.log_key = h:get("X-Key")
      return txn:respond(200, "{}")

    elseif mode == "settings" then
      -- clients of many distinct settings: each worker keeps at most 64
      local first_err, at
      for i = 1, tonumber(h:get("X-N")) do
        local v, err = redis.new({ port = PORT, timeout = 1 + i / 1000 }):ping()
        if not v then first_err, at = err, i break end
      end
      local v, err = redis.new({ port = PORT }):ping()
      return reply(txn, { err = first_err, at = at, after = v or err })

    elseif mode == "timer" then
      return reply(txn, { n = timer.n, last = timer.last })
    end
    return txn:respond(400, "unknown mode\n")
  end,

  on_log = function(txn)
    if txn.ctx.log_key then redis.new({ port = PORT }):incr(txn.ctx.log_key) end
  end,
}
]==]

describe("moxy.redis", function()
  local main, fragile, locked, tls
  local m -- one worker
  local m2 -- two workers, with a timer each

  local function site(timer_on)
    return (SITE:gsub("MAIN_PORT", tostring(main.port)):gsub("TIMER_ON", tostring(timer_on)))
  end

  -- one HTTP request to moxy px running mode; headers' table values go as JSON
  local function hook(px, mode, headers, timeout)
    local list = { { "X-Mode", mode } }
    for k, v in pairs(headers or {}) do
      list[#list + 1] = { k, type(v) == "table" and cjson.encode(v) or tostring(v) }
    end
    local t0 = now()
    local res, err = helpers.request(px.port, { path = "/", headers = list, timeout = timeout or 5 * S })
    local took = now() - t0
    assert(res, "no response from moxy: " .. tostring(err) .. " after " .. took .. " s")
    assert.equal(200, res.status, res.body)
    return helpers.json(res.body), took, res
  end

  -- red:call(...) with the client opts -> what the hook got, how long the HTTP request took
  local function call(opts, ...)
    return hook(m, "call", { ["X-Opts"] = opts, ["X-Args"] = { ... } })
  end

  local function seq(opts, cmds)
    return hook(m, "sequence", { ["X-Opts"] = opts, ["X-Cmds"] = cmds }).results
  end

  local function pipeline(opts, cmds, style)
    return hook(m, "pipeline", { ["X-Opts"] = opts, ["X-Cmds"] = cmds, ["X-Style"] = style or "call" })
  end

  local function stat(r, name)
    local info = assert(r:cmd("INFO", "commandstats"))
    return tonumber(info:match("cmdstat_" .. name:gsub("%p", "%%%0") .. ":calls=(%d+)")) or 0
  end

  local function config(extra)
    local c = {
      upstreams = { app = { servers = { "127.0.0.1:9" } } },
      scripts = { "site.lua" },
      lua = { cpu_budget = 0 },
    }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  lazy_setup(function()
    main = helpers.start_redis()
    fragile = helpers.start_redis()
    locked = helpers.start_redis({ password = "s3cret pass" })
    m = helpers.start_moxy(config(), { files = { ["site.lua"] = site(false) } })
  end)

  lazy_teardown(function() helpers.stop_all() end)

  describe("replies", function()
    it("gives strings, status replies and integers as Lua strings and numbers", function()
      local d = call(nil, "SET", "greeting", "hello")
      assert.equal("OK", d.res)
      assert.equal("string", d.type)
      d = call(nil, "GET", "greeting")
      assert.same({ "hello", "string" }, { d.res, d.type })
      d = call(nil, "INCRBY", "counter", 41)
      d = call(nil, "INCR", "counter")
      assert.same({ 42, "number" }, { d.res, d.type })
      d = call(nil, "INCRBY", "counter", -100)
      assert.equal(-58, d.res)
      d = call(nil, "INCRBYFLOAT", "float", 1.5)
      assert.equal("1.5", d.res)
      d = call(nil, "PING")
      assert.equal("PONG", d.res)
      assert.equal("hello", main:cmd("GET", "greeting"))
    end)

    it("connects by name (host = \"localhost\")", function()
      local d = call({ host = "localhost", port = main.port }, "GET", "greeting")
      assert.equal("hello", d.res, d.err)
    end)

    it("gives a nil reply as moxy.redis.null, equal to moxy.json.null, also inside arrays", function()
      local d = call(nil, "GET", "no:such:key")
      assert.is_nil(d.err)
      assert.equal("userdata", d.type)
      assert.is_true(d.is_null)
      assert.is_true(d.is_json_null)
      assert.equal(cjson.null, d.res)
      call(nil, "SET", "present", "here")
      d = call(nil, "MGET", "present", "no:such:key", "present")
      assert.same({ "here", cjson.null, "here" }, d.res)
      assert.equal(3, d.len)
    end)

    it("gives arrays, nested arrays (EVAL) and empty arrays as tables", function()
      call(nil, "DEL", "letters")
      call(nil, "RPUSH", "letters", "a", "b", "c")
      local d = call(nil, "LRANGE", "letters", 0, -1)
      assert.same({ "a", "b", "c" }, d.res)
      d = call(nil, "LRANGE", "no:such:list", 0, -1)
      assert.equal("table", d.type)
      assert.equal(0, d.len)
      d = call(nil, "EVAL", "return { 1, 'two', { 3, { 'four', {} } }, {}, redis.status_reply('FINE') }", 0)
      assert.is_nil(d.err)
      assert.same({ 1, "two", { 3, { "four", {} } }, {}, "FINE" }, d.res)
      assert.equal(5, d.len)
      -- an error inside an array reply
      d = call(nil, "EVAL", "return { 1, redis.error_reply('MYERR inner') }", 0)
      assert.same({ 1, { false, "MYERR inner" } }, d.res)
    end)

    it("takes 7 levels of nesting; deeper fails that connection (hiredis's limit), then calls work again",
      function()
        local one = { port = main.port, pool_size = 1 }
        local d = call(one, "EVAL", "return {1,{2,{3,{4,{5,{6,{7}}}}}}}", 0)
        assert.same({ 1, { 2, { 3, { 4, { 5, { 6, { 7 } } } } } } }, d.res)
        d = call(one, "EVAL", "return {1,{2,{3,{4,{5,{6,{7,{8,{9,{10}}}}}}}}}}", 0)
        assert.is_nil(d.res)
        assert.matches("nested", d.err)
        local t0 = now()
        assert(helpers.wait_until(function() return call(one, "PING").res == "PONG" end, 2 * S, 0.02))
        assert.is_true(now() - t0 < 0.5 * S)
      end)

    it("round-trips binary keys and values with \\0 and \\r\\n inside", function()
      local res = assert(helpers.request(m.port, { path = "/", headers = { { "X-Mode", "binary" } } }))
      assert.equal(200, res.status)
      local val = "a\0b\r\nc\r\n\0" .. string.char(255, 0, 13, 10) .. "*1\r\n$3\r\n"
      assert.equal("OK", res:header("x-set"))
      assert.equal("true", res:header("x-same"))
      assert.equal(tostring(#val), res:header("x-strlen"))
      assert.equal(val, res.body)
      assert.equal(val, main:cmd("GET", "bin:plain"))
    end)

    it("round-trips an 8 MiB value", function()
      local size = 8 * 1024 * 1024
      local d = hook(m, "big", { ["X-Size"] = size, ["X-Key"] = "big8", ["X-Opts"] = { port = main.port, timeout = 5 } })
      assert.equal("OK", d.set)
      assert.is_nil(d.err)
      assert.equal(size, d.len)
      assert.is_true(d.same)
      assert.equal(tostring(size), main:cmd("STRLEN", "big8"))
      assert.equal(string.char(232, 233, 234, 235), main:cmd("GETRANGE", "big8", 1000, 1003))
    end)

    it("answers an error reply with false, err and keeps the connection working", function()
      call(nil, "DEL", "alist")
      call(nil, "RPUSH", "alist", "x")
      local one = { port = main.port, pool_size = 1 }
      local r = seq(one, { { "CLIENT", "ID" }, { "GET", "alist" }, { "NOSUCHCOMMAND", "x" },
                           { "INCR", "greeting" }, { "CLIENT", "ID" }, { "GET", "greeting" } })
      assert.is_false(r[2].res)
      assert.matches("^WRONGTYPE Operation against a key holding the wrong kind of value", r[2].err)
      assert.is_false(r[3].res)
      assert.matches("^ERR unknown command 'NOSUCHCOMMAND'", r[3].err)
      assert.is_false(r[4].res)
      assert.matches("^ERR value is not an integer", r[4].err)
      assert.equal("number", r[1].type)
      assert.equal(r[1].res, r[5].res, "the connection changed after an error reply")
      assert.equal("hello", r[6].res)
    end)
  end)

  describe("pipelines", function()
    it("returns the replies in order, an error reply as { false, err }", function()
      call(nil, "DEL", "p:n")
      local d = pipeline(nil, { { "SET", "p:s", "v" }, { "INCR", "p:n" }, { "INCR", "p:n" }, { "GET", "p:s" },
                                { "BOGUS" }, { "INCR", "p:s" }, { "GET", "p:missing" }, { "LRANGE", "p:none", 0, -1 },
                                { "GET", "p:s" } })
      assert.is_nil(d.err)
      assert.equal(9, d.len)
      assert.equal("OK", d.res[1])
      assert.equal(1, d.res[2])
      assert.equal(2, d.res[3])
      assert.equal("v", d.res[4])
      assert.is_false(d.res[5][1])
      assert.matches("^ERR unknown command 'BOGUS'", d.res[5][2])
      assert.is_false(d.res[6][1])
      assert.matches("^ERR value is not an integer", d.res[6][2])
      assert.equal(cjson.null, d.res[7])
      assert.same({}, d.res[8])
      assert.equal("v", d.res[9])
    end)

    it("queues commands by method name (p:incr(...)) too", function()
      call(nil, "DEL", "p:m")
      local d = pipeline(nil, { { "incr", "p:m" }, { "expire", "p:m", 60 }, { "ttl", "p:m" }, { "get", "p:m" } },
                         "method")
      assert.equal(4, d.len)
      assert.same({ 1, 1 }, { d.res[1], d.res[2] })
      assert.is_true(d.res[3] > 0 and d.res[3] <= 60)
      assert.equal("1", d.res[4])
    end)

    it("runs MULTI ... EXEC whole inside one pipeline, atomically", function()
      call(nil, "DEL", "tx:n")
      local d = pipeline(nil, { { "MULTI" }, { "INCR", "tx:n" }, { "INCR", "tx:n" }, { "GET", "tx:n" }, { "EXEC" } })
      assert.is_nil(d.err)
      assert.same({ "OK", "QUEUED", "QUEUED", "QUEUED", { 1, 2, "2" } }, d.res)
      -- a command that fails at run time: the others still ran, its error in EXEC's array
      d = pipeline(nil, { { "MULTI" }, { "SET", "tx:s", "text" }, { "INCR", "tx:s" }, { "EXEC" } })
      assert.equal("OK", d.res[4][1])
      assert.is_false(d.res[4][2][1])
      assert.matches("^ERR value is not an integer", d.res[4][2][2])
      -- a command refused while queueing: EXEC aborts, nothing ran
      d = pipeline(nil, { { "MULTI" }, { "SET", "tx:never", "x" }, { "NOPE" }, { "EXEC" } })
      assert.is_false(d.res[3][1])
      assert.is_false(d.res[4][1])
      assert.matches("^EXECABORT", d.res[4][2])
      assert.is_nil(main:cmd("GET", "tx:never"))
      -- WATCH ... MULTI ... EXEC and DISCARD
      d = pipeline(nil, { { "WATCH", "tx:n" }, { "MULTI" }, { "INCR", "tx:n" }, { "EXEC" } })
      assert.same({ "OK", "OK", "QUEUED", { 3 } }, d.res)
      d = pipeline(nil, { { "MULTI" }, { "INCR", "tx:n" }, { "DISCARD" } })
      assert.same({ "OK", "QUEUED", "OK" }, d.res)
      assert.equal("3", main:cmd("GET", "tx:n"))
    end)

    it("keeps a MULTI ... EXEC pipeline whole while other requests share its connection", function()
      call(nil, "DEL", "tx:shared")
      local one = cjson.encode({ port = main.port, pool_size = 1 })
      local conns = {}
      for i = 1, 40 do
        local headers = { { "X-Opts", one } }
        if i % 2 == 0 then
          headers[#headers + 1] = { "X-Mode", "pipeline" }
          headers[#headers + 1] = { "X-Cmds", cjson.encode({ { "MULTI" }, { "INCR", "tx:shared" }, { "INCR", "tx:shared" },
                                                             { "EXEC" } }) }
        else
          headers[#headers + 1] = { "X-Mode", "call" }
          headers[#headers + 1] = { "X-Args", cjson.encode({ "INCR", "tx:shared" }) }
        end
        conns[i] = assert(helpers.connection(m.port))
        assert(conns[i]:send(helpers.build_request({ path = "/", headers = headers })))
      end
      for i = 1, 40 do
        local res = assert(conns[i]:read_response({ deadline = 5 * S }))
        conns[i]:close()
        local d = helpers.json(res.body)
        if i % 2 == 0 then
          local exec = d.res[4]
          assert.equal("table", type(exec), res.body)
          assert.equal(exec[1] + 1, exec[2], "another INCR got between MULTI's: " .. res.body)
        else
          assert.equal("number", d.type, res.body)
        end
      end
      assert.equal("60", main:cmd("GET", "tx:shared"))
    end)

    it("supports init_pipeline / commit_pipeline / cancel_pipeline", function()
      call(nil, "DEL", "ip:n", "cancelled:key")
      local d = hook(m, "initpipe", { ["X-Cmds"] = { { "set", "ip:s", "v" }, { "incr", "ip:n" }, { "incr", "ip:n" },
                                                    { "get", "ip:s" }, { "hget", "ip:s", "f" } } })
      assert.is_nil(d.err)
      assert.equal(5, d.len)
      assert.equal("OK", d.res[1])
      assert.equal(1, d.res[2])
      assert.equal(2, d.res[3])
      assert.equal("v", d.res[4])
      assert.is_false(d.res[5][1])
      assert.matches("^WRONGTYPE", d.res[5][2])
      assert.is_nil(d.again)
      assert.equal("no pipeline started", d.again_err)
      assert.equal(0, d.after_cancel.res)
      assert.is_nil(main:cmd("GET", "cancelled:key"))
    end)

    it("sends a pipeline of 5,000 commands", function()
      call(nil, "DEL", "long:n")
      local d = hook(m, "pipeline", { ["X-Cmds"] = { { "INCR", "long:n" } }, ["X-Repeat"] = 5000 })
      assert.equal(5000, d.len)
      for i = 1, 5000 do assert.equal(i, d.res[i]) end
    end)

    it("gives {} for an empty pipeline", function()
      local d = pipeline(nil, {})
      assert.equal("table", d.type)
      assert.equal(0, d.len)
    end)
  end)

  describe("eval_script", function()
    local SRC = "return { KEYS[1], ARGV[1], redis.call('INCR', KEYS[1]) }"

    it("runs a script by its SHA1, loading it once, and again after SCRIPT FLUSH", function()
      call(nil, "DEL", "ev:n")
      assert.equal("OK", main:cmd("SCRIPT", "FLUSH"))
      assert.equal("OK", main:cmd("CONFIG", "RESETSTAT"))
      local d = hook(m, "eval", { ["X-Src"] = SRC, ["X-Keys"] = { "ev:n" }, ["X-Argv"] = { "arg1" }, ["X-Times"] = 5 })
      for i = 1, 5 do
        assert.is_nil(d.results[i].err)
        assert.same({ "ev:n", "arg1", i }, d.results[i].res)
      end
      assert.equal(1, stat(main, "script|load"))
      assert.equal(6, stat(main, "evalsha")) -- the first was NOSCRIPT
      assert.equal(0, stat(main, "eval"))
      assert.same({ "1" }, main:cmd("SCRIPT", "EXISTS", d.sha))

      assert.equal("OK", main:cmd("SCRIPT", "FLUSH"))
      assert.same({ "0" }, main:cmd("SCRIPT", "EXISTS", d.sha))
      d = hook(m, "eval", { ["X-Src"] = SRC, ["X-Keys"] = { "ev:n" }, ["X-Argv"] = { "arg2" }, ["X-Times"] = 2 })
      assert.same({ "ev:n", "arg2", 6 }, d.results[1].res)
      assert.same({ "ev:n", "arg2", 7 }, d.results[2].res)
      assert.equal(2, stat(main, "script|load"))
      assert.same({ "1" }, main:cmd("SCRIPT", "EXISTS", d.sha))
    end)

    it("gives a script's error as false, err", function()
      local d = hook(m, "eval", { ["X-Src"] = "return redis.call('INCR', 'greeting')" })
      assert.is_false(d.results[1].res)
      assert.matches("ERR", d.results[1].err)
      d = hook(m, "eval", { ["X-Src"] = "this is not lua" })
      assert.is_false(d.results[1].res)
      assert.matches("^ERR", d.results[1].err)
    end)
  end)

  describe("refused commands", function()
    it("refuses connection-changing and blocking commands with a clear error, sending nothing", function()
      assert.equal("OK", main:cmd("CONFIG", "RESETSTAT"))
      local one = { port = main.port, pool_size = 1 }
      local cmds = {
        { "CLIENT", "ID" },
        { "SUBSCRIBE", "news" }, { "psubscribe", "n*" }, { "SELECT", 2 }, { "BLPOP", "q", 0 },
        { "MULTI" }, { "EXEC" }, { "WATCH", "k" }, { "XREAD", "BLOCK", 0, "STREAMS", "s", "$" },
        { "CLIENT", "REPLY", "OFF" }, { "MONITOR" }, { "AUTH", "x" }, { "QUIT" },
        { "PING" }, { "CLIENT", "ID" },
      }
      local r = seq(one, cmds)
      for i = 2, #cmds - 2 do
        assert.is_nil(r[i].res, cmds[i][1])
        assert.is_string(r[i].err, cmds[i][1])
        assert.is_true(r[i].took < 0.05 * S, cmds[i][1] .. " took " .. r[i].took)
      end
      assert.matches("SUBSCRIBE is not allowed on moxy's shared Redis connections", r[2].err, 1, true)
      assert.matches("use the db option", r[4].err, 1, true)
      assert.matches("not allowed", r[4].err)
      assert.matches("not allowed", r[5].err)
      assert.matches("MULTI", r[6].err)
      assert.matches("EXEC", r[7].err)
      assert.matches("WATCH", r[8].err)
      assert.matches("XREAD", r[9].err)
      assert.equal("PONG", r[14].res)
      assert.equal(r[1].res, r[15].res, "the connection changed")
      -- Redis never saw them
      local info = main:cmd("INFO", "commandstats")
      for _, name in ipairs({ "subscribe", "psubscribe", "select", "blpop", "multi", "exec", "watch", "xread",
                              "monitor", "auth", "quit" }) do
        assert.is_nil(info:find("cmdstat_" .. name .. ":", 1, true), name .. " reached Redis")
      end
      assert.is_nil(info:find("cmdstat_client|reply", 1, true))
      -- by method name, as lua-resty-redis users call them
      local d = hook(m, "method", { ["X-Args"] = { "subscribe", "news" } })
      assert.is_nil(d.res)
      assert.matches("not allowed", d.err)
      -- a non-blocking XREAD is fine
      d = call(nil, "XREAD", "COUNT", 1, "STREAMS", "no:stream", "0")
      assert.is_nil(d.err)
    end)

    it("does not take a stream named \"block\" for XREAD's BLOCK", function()
      assert.is_string(main:cmd("XADD", "block", "*", "f", "v"))
      local d = call(nil, "XREAD", "COUNT", 1, "STREAMS", "block", "0")
      assert.is_nil(d.err)
      assert.equal("block", d.res[1][1])
    end)

    it("refuses MULTI or WATCH left open in a pipeline, and SELECT inside one", function()
      local d = pipeline(nil, { { "MULTI" }, { "SET", "half", "x" } })
      assert.is_nil(d.res)
      assert.matches("MULTI without EXEC", d.err)
      d = pipeline(nil, { { "WATCH", "k" } })
      assert.is_nil(d.res)
      assert.matches("WATCH without MULTI", d.err)
      d = pipeline(nil, { { "SELECT", 2 }, { "SET", "half", "x" } })
      assert.is_nil(d.res)
      assert.matches("not allowed", d.err)
      d = pipeline(nil, { { "MULTI" }, { "MULTI" }, { "EXEC" } })
      assert.matches("MULTI inside MULTI", d.err)
      assert.is_nil(main:cmd("GET", "half"))
      assert.equal("PONG", call(nil, "PING").res)
    end)
  end)

  describe("AUTH and SELECT", function()
    it("authenticates with the right password (and an ACL user), refuses a wrong one naming AUTH", function()
      local d = call({ port = locked.port, password = "s3cret pass" }, "SET", "auth:k", "v")
      assert.equal("OK", d.res, d.err)
      d = call({ port = locked.port, password = "s3cret pass", user = "default" }, "GET", "auth:k")
      assert.equal("v", d.res, d.err)
      d = call({ port = locked.port, password = "s3cret pass", db = 2 }, "SET", "auth:db2", "two")
      assert.equal("OK", d.res, d.err)
      assert.is_nil(locked:cmd("GET", "auth:db2"))

      d = call({ port = locked.port, password = "wrong" }, "GET", "auth:k")
      assert.is_nil(d.res)
      assert.matches("AUTH", d.err)
      assert.matches("WRONGPASS", d.err)
      -- the next calls (other connections, then the backoff) say so too
      for _ = 1, 5 do
        d = call({ port = locked.port, password = "wrong" }, "GET", "auth:k")
        assert.is_nil(d.res)
        assert.matches("AUTH", d.err)
      end
      d = call({ port = locked.port }, "GET", "auth:k")
      assert.is_false(d.res)
      assert.matches("^NOAUTH", d.err)
    end)

    it("writes to db 3 with db = 3", function()
      local db3 = { port = main.port, db = 3 }
      assert.equal("OK", call(db3, "SET", "where", "three").res)
      assert.equal("three", call(db3, "GET", "where").res)
      assert.equal(cjson.null, call(nil, "GET", "where").res)
      assert.is_nil(main:cmd("GET", "where"))
      local out = helpers.sh("redis-cli -h 127.0.0.1 -p " .. main.port .. " -n 3 GET where")
      assert.equal("three", (out:gsub("%s+$", "")))
      -- a db Redis does not have: the error names SELECT
      local bad = call({ port = main.port, db = 99 }, "GET", "where")
      assert.is_nil(bad.res)
      assert.matches("SELECT", bad.err)
      assert.matches("out of range", bad.err)
      -- and a pipeline with MULTI/EXEC stays in db 3
      local d = pipeline(db3, { { "MULTI" }, { "INCR", "db3:n" }, { "EXEC" } })
      assert.same({ 1 }, d.res[3])
      assert.is_nil(main:cmd("GET", "db3:n"))
    end)
  end)

  describe("failures", function()
    it("fails fast with 'redis unavailable: ...' when Redis is not running", function()
      local opts = { port = helpers.free_port(), timeout = 1 }
      for i = 1, 6 do
        local d, took = call(opts, "GET", "k")
        assert.is_nil(d.res)
        assert.matches("^redis unavailable: ", d.err)
        assert.is_true(d.took < 0.2 and took < 0.5, "call " .. i .. " took " .. d.took .. " s")
      end
    end)

    it("fails the calls in flight when Redis is killed, fails fast while it is down, recovers after restart",
      function()
        local opts = { port = fragile.port, timeout = 5 * S }
        assert.equal("OK", call(opts, "SET", "k", "v").res)
        assert.equal("OK", fragile:cmd("CLIENT", "PAUSE", "4000", "ALL"))
        local conns = {}
        for i = 1, 8 do
          conns[i] = assert(helpers.connection(m.port))
          assert(conns[i]:send(helpers.build_request({ path = "/", headers = {
            { "X-Mode", "call" }, { "X-Opts", cjson.encode(opts) }, { "X-Args", cjson.encode({ "GET", "k" }) } } })))
        end
        sleep(0.3)
        local t0 = now()
        fragile:stop("KILL")
        for i = 1, 8 do
          local res = assert(conns[i]:read_response({ deadline = 4 * S }))
          conns[i]:close()
          local d = helpers.json(res.body)
          assert.is_nil(d.res, "call " .. i .. " got a reply")
          assert.is_string(d.err)
        end
        assert.is_true(now() - t0 < 1.5 * S, "the calls in flight took " .. (now() - t0) .. " s to fail")

        -- down: every call fails at once
        for i = 1, 8 do
          local d = call(opts, "GET", "k")
          assert.is_nil(d.res)
          assert.matches("^redis unavailable: ", d.err)
          assert.is_true(d.took < 0.2, "call " .. i .. " took " .. d.took .. " s")
          sleep(0.1)
        end

        fragile:start()
        local t1 = now()
        local last
        local ok = helpers.wait_until(function()
          local d = call(opts, "PING")
          last = d.err
          return d.res == "PONG"
        end, 4 * S, 0.05)
        assert(ok, "no recovery after restart: " .. tostring(last))
        assert.is_true(now() - t1 < 2.5 * S, "recovered after " .. (now() - t1) .. " s")
        -- and every connection of the pool works again
        local r = seq(opts, { { "PING" }, { "PING" }, { "PING" }, { "PING" }, { "PING" } })
        for i = 1, 5 do assert.equal("PONG", r[i].res, r[i].err) end
      end)

    it("answers nil, 'timeout' when the reply is late, and the next call after works", function()
      local opts = { port = fragile.port, timeout = 0.3 }
      assert.equal("OK", call(opts, "SET", "k", "v").res)
      local tp = now()
      assert.equal("OK", fragile:cmd("CLIENT", "PAUSE", "1500", "ALL"))
      local d, took = call(opts, "GET", "k")
      assert.is_nil(d.res)
      assert.equal("timeout", d.err)
      assert.is_true(d.took >= 0.28 and d.took < 0.8 * S, "timed out after " .. d.took .. " s")
      assert.is_true(took < 1 * S)
      sleep(math.max(0, tp + 1.6 - now()))
      d = call(opts, "GET", "k")
      assert.equal("v", d.res, d.err)
      assert.equal("v", call(opts, "GET", "k").res)
    end)

    -- a listener that accepts (the kernel does) and never answers
    local function silent(opts)
      local srv = assert(socket.bind("127.0.0.1", 0))
      local _, port = srv:getsockname()
      opts.port = tonumber(port)
      local ok, d = pcall(hook, m, "call", { ["X-Opts"] = opts, ["X-Args"] = { "PING" } }, 3 * S)
      srv:close()
      assert(ok, d)
      return d
    end

    it("times out a call on a connection whose server never answers", function()
      local d = silent({ timeout = 0.3 })
      assert.equal("timeout", d.err)
      assert.is_true(d.took < 0.8 * S, "took " .. d.took)
    end)

    it("times out a new connection's SELECT like any call", function()
      local d = silent({ timeout = 0.3, db = 1 })
      assert.equal("timeout", d.err)
      assert.is_true(d.took < 0.8 * S, "took " .. d.took)
    end)

    it("times out a new connection's AUTH like any call", function()
      local d = silent({ timeout = 0.3, password = "x" })
      assert.equal("timeout", d.err)
      assert.is_true(d.took < 0.8 * S, "took " .. d.took)
    end)

    it("keeps timing out, not hanging, while Redis is stuck (SIGSTOP), with db = 1", function()
      local opts = { port = fragile.port, db = 1, timeout = 0.3, pool_size = 1 }
      assert.equal("OK", call(opts, "SET", "stuck", "v").res)
      assert(fragile.proc:signal("STOP"))
      local ok, err = pcall(function()
        for i = 1, 3 do
          -- the first times out on the open connection; the later ones open
          -- a new one (after the backoff) whose SELECT gets no answer either
          local fine, d = pcall(hook, m, "call", { ["X-Opts"] = opts, ["X-Args"] = { "GET", "stuck" } }, 3 * S)
          assert(fine, "call " .. i .. ": " .. tostring(d))
          assert.is_nil(d.res)
          assert.is_true(d.took < 0.8 * S, "call " .. i .. " took " .. d.took .. " s")
          sleep(0.25)
        end
      end)
      fragile.proc:signal("CONT")
      assert(ok, err)
      assert(helpers.wait_until(function() return call(opts, "GET", "stuck").res == "v" end, 3 * S))
    end)

    it("keeps serving when clients leave while their hooks wait on Redis", function()
      local one = { port = fragile.port, pool_size = 1, timeout = 3 * S }
      for i = 1, 5 do assert.equal("OK", call(one, "SET", "gone:" .. i, "stale-" .. i).res) end
      local tp = now()
      assert.equal("OK", fragile:cmd("CLIENT", "PAUSE", "1000", "ALL"))
      for i = 1, 5 do
        local c = assert(helpers.connection(m.port))
        assert(c:send(helpers.build_request({ path = "/", headers = {
          { "X-Mode", "call" }, { "X-Opts", cjson.encode(one) }, { "X-Args", cjson.encode({ "GET", "gone:" .. i }) } } })))
        sleep(0.05)
        c:close()
      end
      sleep(0.2)
      assert.is_true(m:alive())
      sleep(math.max(0, tp + 1.1 - now()))
      -- the replies of the calls whose clients left are dropped, not handed to the next
      local r = seq(one, { { "ECHO", "fresh-1" }, { "GET", "gone:3" }, { "ECHO", "fresh-2" } })
      assert.equal("fresh-1", r[1].res, r[1].err)
      assert.equal("stale-3", r[2].res, r[2].err)
      assert.equal("fresh-2", r[3].res, r[3].err)
      assert.is_true(m:alive())
    end)
  end)

  describe("connections", function()
    it("reconnects when Redis closes idle connections", function()
      local opts = { port = fragile.port, pool_size = 2 }
      assert.equal("OK", fragile:cmd("CONFIG", "SET", "timeout", "1"))
      local ok, err = pcall(function()
        local r = seq(opts, { { "CLIENT", "ID" }, { "CLIENT", "ID" } })
        assert.is_number(r[1].res)
        -- Redis closes them after 1 s idle (checked on its cron)
        sleep(2.2)
        local r2 = seq(opts, { { "CLIENT", "ID" }, { "CLIENT", "ID" }, { "PING" }, { "PING" } })
        for i = 1, 4 do assert.is_nil(r2[i].err, r2[i].err) end
        assert.is_true(r2[1].res > r[2].res and r2[2].res > r[2].res, "the closed connections were used again")
      end)
      fragile:cmd("CONFIG", "SET", "timeout", "0")
      assert(ok, err)
    end)

    it("finishes a call in flight across a reload (SIGHUP), and calls work after it", function()
      local opts = { port = fragile.port, timeout = 3 * S }
      assert.equal("OK", call(opts, "SET", "reload:k", "before").res)
      local tp = now()
      assert.equal("OK", fragile:cmd("CLIENT", "PAUSE", "800", "ALL"))
      local c = assert(helpers.connection(m.port))
      assert(c:send(helpers.build_request({ path = "/", headers = {
        { "X-Mode", "call" }, { "X-Opts", cjson.encode(opts) }, { "X-Args", cjson.encode({ "GET", "reload:k" }) } } })))
      sleep(0.1)
      assert(m:signal("HUP"))
      local res = assert(c:read_response({ deadline = 4 * S }))
      c:close()
      assert.equal(200, res.status, res.body)
      assert.equal("before", helpers.json(res.body).res)
      assert.is_true(now() - tp >= 0.7)
      local d = call(opts, "GET", "reload:k")
      assert.equal("before", d.res, d.err)
      assert.is_true(m:alive())
    end)
  end)

  describe("limits", function()
    it("refuses a reply over max_reply with an error, and the next call works", function()
      local small = { port = main.port, max_reply = "1m" }
      local d = hook(m, "big", { ["X-Size"] = 2 * 1024 * 1024, ["X-Key"] = "big2", ["X-Opts"] = small })
      assert.equal("OK", d.set)
      assert.is_nil(d.len)
      assert.is_string(d.err)
      assert.matches("too large", d.err)
      assert.is_true(m:alive())
      assert.equal("hello", call(small, "GET", "greeting").res)
      -- under the limit
      d = hook(m, "big", { ["X-Size"] = 512 * 1024, ["X-Key"] = "big05", ["X-Opts"] = small })
      assert.is_true(d.same)
    end)

    it("bounds an array reply by max_reply too (\"the largest reply accepted\")", function()
      -- 3,000 elements of 1 KiB: a 3 MiB reply
      main:cmd("DEL", "biglist")
      main:cmd("EVAL", "for i = 1, 3000 do redis.call('RPUSH', KEYS[1], string.rep('x', 1024)) end", 1, "biglist")
      assert.equal("3000", main:cmd("LLEN", "biglist"))
      local small = { port = main.port, max_reply = "1m" }
      local d = call(small, "LRANGE", "biglist", 0, -1)
      assert.is_nil(d.len, "a 3 MiB array came through max_reply = 1m")
      assert.matches("too large", d.err)
    end)

    it("takes a lua-resty-redis script: connection calls do nothing, HMSET takes a table", function()
    local d = hook(m, "compat")
    assert.is_true(d.connect)
    assert.is_true(d.timeout)
    assert.equal("OK", d.hmset)
    table.sort(d.h)
    assert.same({ "1", "2", "a", "b" }, d.h)
    assert.equal("OK", d.bool)
    assert.equal("true", d.b)
    assert.same({ "OK", "x" }, d.pipe)
    assert.is_true(d.keepalive)
    assert.is_true(d.close)
  end)

  it("raises clear errors for bad options and bad arguments", function()
      local r = hook(m, "misuse").results
      local want = {
        "moxy.redis.new: port must be 1 to 65535",
        "moxy.redis.new: port must be 1 to 65535",
        "moxy.redis.new: port must be 1 to 65535",
        "moxy.redis.new: unknown option hots",
        "moxy.redis.new: user needs a password",
        "moxy.redis.new: db must be a whole number >= 0",
        "moxy.redis.new: timeout must be seconds > 0",
        "moxy.redis.new: max_reply must be a size",
        "moxy.redis.new: pool_size must be 1 to 64",
        "moxy.redis.new: opts must be a table",
        "moxy.redis: call: a command name is needed",
        "moxy.redis: argument 3 must be a string or a number, got table",
        "moxy.redis: pipeline: a function is needed",
        "moxy.redis: eval_script: src must be a string",
      }
      for i, w in ipairs(want) do
        assert.is_false(r[i].ok, w)
        assert.matches(w, r[i].err, 1, true)
      end
      -- option errors point at the script's line
      for i = 1, 10 do assert.matches("site%.lua:%d+: moxy%.redis%.new", r[i].err) end
    end)

    it("raises when called while the script loads (moxy does not start)", function()
      local src = ([[
return {
  workers = 1,
  listen = { "127.0.0.1:%d" },
  upstreams = { app = { servers = { "127.0.0.1:9" } } },
  scripts = { "bad.lua" },
}
]]):format(helpers.free_port())
      local bad = "local v, err = moxy.redis.new({ port = " .. main.port .. " }):get('k')\nreturn {}\n"
      local code, out = helpers.run_moxy_check(src, { files = { ["bad.lua"] = bad } })
      assert.equal(1, code, out)
      assert.matches("bad%.lua:1: moxy%.redis: only hooks and timer callbacks may call Redis", out)
    end)
  end)

  describe("two workers", function()
    lazy_setup(function()
      main:cmd("DEL", "timer:hits", "timer:workers", "conc")
      m2 = helpers.start_moxy(config({ workers = 2 }), { files = { ["site.lua"] = site(true) } })
    end)

    it("runs 200 INCRs from 200 requests at once, each a distinct number", function()
      local n = 200
      local conns = {}
      local t0 = now()
      for i = 1, n do
        conns[i] = assert(helpers.connection(m2.port))
        assert(conns[i]:send(helpers.build_request({ path = "/", headers = {
          { "X-Mode", "call" }, { "X-Args", cjson.encode({ "INCR", "conc" }) } } })))
      end
      local seen, workers = {}, {}
      for i = 1, n do
        local res = assert(conns[i]:read_response({ deadline = 10 * S }))
        conns[i]:close()
        assert.equal(200, res.status, res.body)
        local d = helpers.json(res.body)
        assert.equal("number", d.type, res.body)
        assert.is_nil(seen[d.res], "twice: " .. tostring(d.res))
        seen[d.res] = true
        workers[d.worker] = (workers[d.worker] or 0) + 1
      end
      for i = 1, n do assert.is_true(seen[i], "missing " .. i) end
      assert.equal(tostring(n), main:cmd("GET", "conc"))
      local nworkers = 0
      for _ in pairs(workers) do nworkers = nworkers + 1 end
      assert.equal(2, nworkers, "the requests did not reach both workers")
      assert.is_true(now() - t0 < 10 * S)
    end)

    it("calls Redis from moxy.timer callbacks started in worker_init, in both workers", function()
      local got = helpers.wait_until(function()
        local d = hook(m2, "timer")
        return tonumber(d.last) and d
      end, 3 * S, 0.1)
      assert(got, "the timer's call never succeeded")
      assert(helpers.wait_until(function() return tonumber(main:cmd("GET", "timer:hits") or "0") >= 4 end, 3 * S))
      assert(helpers.wait_until(function() return main:cmd("SCARD", "timer:workers") == "2" end, 3 * S),
        "not both workers' timers reached Redis")
    end)

    it("says so when a worker has clients of more than 64 distinct settings", function()
      local d = hook(m2, "settings", { ["X-N"] = 70 })
      assert.is_number(d.at)
      assert.is_true(d.at <= 64)
      assert.equal("too many Redis servers or settings in one worker (64)", d.err)
      assert.equal("PONG", d.after)
    end)
  end)

  it("calls Redis from on_log, after the response went", function()
    main:cmd("DEL", "logged")
    local res = assert(helpers.request(m.port, { path = "/", headers = { { "X-Mode", "log" }, { "X-Key", "logged" } } }))
    assert.equal(200, res.status)
    assert(helpers.wait_until(function() return main:cmd("GET", "logged") == "1" end, 2 * S), "on_log's INCR never came")
  end)

  it("stops cleanly with calls in flight", function()
    local slow = ([[
local red = moxy.redis.new({ port = PORT, timeout = 5 })
return {
  worker_init = function()
    moxy.timer.at(0, function() red:get("k") end)
  end,
  on_request = function(txn)
    local v, err = red:call("GET", "k")
    return txn:respond(200, tostring(v or err))
  end,
}
]]):gsub("PORT", tostring(fragile.port))
    assert.equal("PONG", fragile:cmd("PING"))
    local px = helpers.start_moxy(config({ scripts = { "slow.lua" } }), { files = { ["slow.lua"] = slow } })
    assert.equal(200, assert(helpers.request(px.port, { path = "/" })).status)
    local tp = now()
    assert.equal("OK", fragile:cmd("CLIENT", "PAUSE", "1500", "ALL"))
    local c = assert(helpers.connection(px.port))
    assert(c:send(helpers.build_request({ path = "/" })))
    sleep(0.2)
    local code = px:stop("TERM")
    c:close()
    assert.equal(0, code)
    assert.is_nil(helpers.sanitizer_report(px:stderr()))
    sleep(math.max(0, tp + 1.6 - now()))
  end)

  describe("TLS", function()
    local port, proc

    lazy_setup(function()
      local dir = helpers.tmpdir("redis-tls")
      helpers.make_cert(dir, "srv", "rsa", "localhost", { "localhost", "IP:127.0.0.1" })
      port = helpers.free_port()
      proc = helpers.spawn({ "redis-server", "--port", "0", "--tls-port", tostring(port), "--bind", "127.0.0.1",
        "--tls-cert-file", dir .. "/srv.pem", "--tls-key-file", dir .. "/srv.key",
        "--tls-ca-cert-file", dir .. "/srv.pem", "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir }, { dir = dir, kind = "redis" })
      tls = helpers.wait_until(function()
        if not proc:alive() then return "exited" end
        local out = helpers.sh("redis-cli --tls --insecure -h 127.0.0.1 -p " .. port .. " PING")
        return out:match("PONG") and "up"
      end, 10 * S, 0.05)
    end)

    it("talks TLS with verify = false, and fails clearly when the certificate is not trusted", function()
      if tls ~= "up" then
        pending("redis-server with TLS did not start: " .. proc:stdout() .. proc:stderr())
        return
      end
      local d = call({ port = port, tls = true, verify = false }, "SET", "tls:k", "over tls")
      assert.equal("OK", d.res, d.err)
      d = call({ port = port, tls = true, verify = false }, "GET", "tls:k")
      assert.equal("over tls", d.res, d.err)
      d = call({ port = port, tls = true }, "GET", "tls:k")
      assert.is_nil(d.res)
      assert.matches("^redis unavailable: TLS handshake failed: .*certificate", d.err)
      d = call({ port = port, tls = true, server_name = "localhost" }, "GET", "tls:k")
      assert.is_nil(d.res)
      assert.matches("TLS handshake failed", d.err)
      -- plain TCP to the TLS port: an error, not a hang
      d = call({ port = port, timeout = 0.5 }, "GET", "tls:k")
      assert.is_nil(d.res)
      assert.is_string(d.err)
    end)
  end)
end)
