-- moxy.shared: the dict API over core/base/shared_dict.c, in `moxy test` (no
-- configuration: dicts come from require("moxy.shared").create).  The
-- sharing between worker threads is in spec/03-integration/19-shared_spec.lua.
local shared = require "moxy.shared"
local socket = require "socket"

-- Dicts live as long as the process and `moxy test` runs every spec file in
-- one process: each test takes a dict of its own.
local n_dicts = 0
local function fresh(size)
  n_dicts = n_dicts + 1
  return shared.create("spec15_" .. n_dicts, size or "64k")
end

describe("moxy.shared", function()
  describe("get and set", function()
    it("round-trip strings, numbers, booleans and tables", function()
      local d = fresh()
      local values = {
        s = "hello", empty = "", bin = "a\0b\255\n", int = 42, neg = -7, float = 0.1,
        big = 2 ^ 53, inf = math.huge, yes = true, no = false,
        t = { 1, 2, 3, name = "x", nested = { deep = { true, "z", 1.5 } } },
      }
      for k, v in pairs(values) do assert.is_true(d:set(k, v), k) end
      for k, v in pairs(values) do
        if type(v) == "table" then
          assert.same(v, d:get(k))
        else
          assert.equal(v, d:get(k), k)
        end
      end
      assert.equal("number", type(d:get("int")))
      assert.equal("boolean", type(d:get("no")))
      assert.is_nil(d:get("absent"))
    end)

    it("return a fresh copy of a table each time", function()
      local d = fresh()
      local t = { list = { 1, 2 } }
      d:set("t", t)
      t.list[1] = 99 -- stored by value: later changes do not reach the dict
      local a, b = d:get("t"), d:get("t")
      assert.same({ list = { 1, 2 } }, a)
      assert.are_not.equal(a, b)
    end)

    it("take binary keys and long values (copied beyond the module's 16 KiB buffer)", function()
      local d = fresh("2m") -- 16 stripes of 128 KiB
      local long = string.rep("0123456789abcdef", 6000) -- 96000 bytes
      assert.is_true(d:set("k\0with\0nuls", long))
      assert.equal(long, d:get("k\0with\0nuls"))
      assert.is_nil(d:get("k"))
      local t = { blob = long, n = 1 }
      assert.is_true(d:set("t", t))
      assert.same(t, d:get("t"))
    end)

    it("replace a value by one of another type and size", function()
      local d = fresh()
      d:set("k", "a string")
      d:set("k", 12)
      assert.equal(12, d:get("k"))
      d:set("k", "a longer string than before")
      assert.equal("a longer string than before", d:get("k"))
      d:set("k", { 1 })
      assert.same({ 1 }, d:get("k"))
      d:set("k", true)
      assert.is_true(d:get("k"))
      assert.equal(1, d:stats().items)
    end)

    it("delete with set(key, nil) and delete(key)", function()
      local d = fresh()
      d:set("a", 1)
      d:set("b", 2)
      assert.is_true(d:set("a", nil))
      assert.is_nil(d:get("a"))
      d:delete("b")
      assert.is_nil(d:get("b"))
      d:delete("never there")
      assert.equal(0, d:stats().items)
    end)
  end)

  describe("add and replace", function()
    it("add only absent keys", function()
      local d = fresh()
      assert.is_true(d:add("k", "first"))
      local ok, err = d:add("k", "second")
      assert.is_nil(ok)
      assert.equal("exists", err)
      assert.equal("first", d:get("k"))
    end)

    it("replace only present keys", function()
      local d = fresh()
      local ok, err = d:replace("k", 1)
      assert.is_nil(ok)
      assert.equal("not found", err)
      assert.is_nil(d:get("k"))
      d:set("k", 1)
      assert.is_true(d:replace("k", 2))
      assert.equal(2, d:get("k"))
    end)

    it("treat an expired key as absent", function()
      local d = fresh()
      d:set("k", "old", 0.05)
      socket.sleep(0.1)
      local ok, err = d:replace("k", "x")
      assert.is_nil(ok)
      assert.equal("not found", err)
      assert.is_true(d:add("k", "new"))
      assert.equal("new", d:get("k"))
    end)
  end)

  describe("incr", function()
    it("adds to a number and returns the sum", function()
      local d = fresh()
      d:set("n", 10)
      assert.equal(11, d:incr("n", 1))
      assert.equal(8.5, d:incr("n", -2.5))
      assert.equal(8.5, d:get("n"))
    end)

    it("creates an absent key from init, else answers not found", function()
      local d = fresh()
      local v, err = d:incr("n", 1)
      assert.is_nil(v)
      assert.equal("not found", err)
      assert.is_nil(d:get("n"))
      assert.equal(5, d:incr("n", 1, 4))
      assert.equal(6, d:incr("n", 1, 100)) -- init is for absent keys only
    end)

    it("refuses a value that is not a number", function()
      local d = fresh()
      d:set("s", "12")
      local v, err = d:incr("s", 1, 0)
      assert.is_nil(v)
      assert.equal("not a number", err)
      assert.equal("12", d:get("s"))
    end)

    it("uses ttl only when it creates the key", function()
      local d = fresh()
      -- a ttl long enough that a loaded machine (make check) does not
      -- expire the key between the two calls
      assert.equal(1, d:incr("n", 1, 0, 0.5))
      assert.equal(2, d:incr("n", 1, 0, 100)) -- keeps the first ttl
      assert.is_true(d:ttl("n") <= 0.5)
      socket.sleep(0.6)
      assert.is_nil(d:get("n"))
      assert.equal(1, d:incr("n", 1, 0)) -- expired: created again, no ttl
      assert.equal(0, d:ttl("n"))
    end)
  end)

  describe("expiry", function()
    it("drops an item after its ttl", function()
      local d = fresh()
      assert.is_true(d:set("short", "v", 0.05))
      assert.is_true(d:set("long", "v", 60))
      assert.is_true(d:set("forever", "v"))
      assert.equal("v", d:get("short"))
      assert.near(60, d:ttl("long"), 0.5)
      assert.equal(0, d:ttl("forever"))
      socket.sleep(0.1)
      assert.is_nil(d:get("short"))
      local ttl, err = d:ttl("short")
      assert.is_nil(ttl)
      assert.equal("not found", err)
      assert.equal("v", d:get("long"))
      assert.same({ "forever", "long" }, (function() local k = d:keys(0) table.sort(k) return k end)())
    end)

    it("changes a ttl with expire", function()
      local d = fresh()
      d:set("k", 1, 0.05)
      assert.is_true(d:expire("k", 0)) -- never
      socket.sleep(0.1)
      assert.equal(1, d:get("k"))
      assert.is_true(d:expire("k", 30))
      assert.near(30, d:ttl("k"), 0.5)
      local ok, err = d:expire("absent", 1)
      assert.is_nil(ok)
      assert.equal("not found", err)
    end)

    it("is reset by a new set", function()
      local d = fresh()
      d:set("k", 1, 0.05)
      d:set("k", 2)
      socket.sleep(0.1)
      assert.equal(2, d:get("k"))
    end)
  end)

  describe("memory", function()
    it("evicts the least recently used items when full, and counts them", function()
      local d = fresh("16k") -- small: one stripe, so one LRU list
      local value = string.rep("v", 50)
      for i = 1, 400 do
        assert.is_true(d:set("k" .. i, value))
        assert.equal(value, d:get("k1")) -- k1 stays recently used
      end
      local st = d:stats()
      assert.is_true(st.evictions > 0, "nothing was evicted")
      assert.is_true(st.used <= st.capacity)
      assert.equal(400 - st.evictions, st.items)
      -- what is left: k1 and the newest keys, without a gap
      assert.equal(value, d:get("k1"))
      assert.is_nil(d:get("k2"))
      assert.equal(value, d:get("k400"))
      local oldest = 400 - st.items + 2 -- the oldest survivor besides k1
      assert.is_nil(d:get("k" .. (oldest - 1)))
      for i = oldest, 400 do assert.equal(value, d:get("k" .. i), "k" .. i) end
    end)

    it("drops expired items before evicting live ones, even more recent ones", function()
      local d = fresh("16k") -- about 125 items like these
      local value = string.rep("v", 50)
      for i = 1, 40 do d:set("live" .. i, value) end -- the least recently used
      for i = 1, 60 do d:set("temp" .. i, value, 0.05) end
      socket.sleep(0.1)
      for i = 1, 60 do d:set("new" .. i, value) end -- fits once the expired are gone
      assert.equal(0, d:stats().evictions)
      assert.equal(100, #d:keys(0)) -- keys leaves expired items out
      for i = 1, 40 do assert.equal(value, d:get("live" .. i), "live" .. i) end
      for i = 1, 60 do assert.equal(value, d:get("new" .. i), "new" .. i) end
    end)

    it("refuses an item bigger than a stripe with no memory, keeping the old value", function()
      local d = fresh("16k")
      d:set("k", "small")
      local ok, err = d:set("k", string.rep("x", 20000))
      assert.is_nil(ok)
      assert.equal("no memory", err)
      assert.equal("small", d:get("k"))
      -- a big dict is split into stripes: an item must fit one of them
      local big = fresh("4m") -- 16 stripes of 256 KiB
      ok, err = big:set("k", string.rep("x", 300 * 1024))
      assert.is_nil(ok)
      assert.equal("no memory", err)
      assert.is_true(big:set("k", string.rep("x", 200 * 1024)))
    end)

    it("counts keys and values in used, and frees them on delete", function()
      local d = fresh()
      local empty = d:stats().used
      assert.equal(0, empty)
      d:set("key", string.rep("x", 1000))
      local used = d:stats().used
      assert.is_true(used > 1003 and used < 1003 + 200, "used " .. used)
      d:delete("key")
      assert.equal(0, d:stats().used)
    end)
  end)

  describe("keys, flush_all and stats", function()
    it("list keys, up to max (default 1024, 0: all)", function()
      local d = fresh("1m")
      for i = 1, 1500 do d:set("k" .. i, i) end
      assert.equal(1024, #d:keys())
      assert.equal(10, #d:keys(10))
      local all = d:keys(0)
      assert.equal(1500, #all)
      local seen = {}
      for _, k in ipairs(all) do seen[k] = true end
      for i = 1, 1500 do assert.is_true(seen["k" .. i], "k" .. i) end
      assert.same({}, fresh():keys())
    end)

    it("flush_all removes everything", function()
      local d = fresh()
      for i = 1, 10 do d:set("k" .. i, i) end
      d:flush_all()
      assert.is_nil(d:get("k1"))
      assert.same({}, d:keys())
      local st = d:stats()
      assert.equal(0, st.items)
      assert.equal(0, st.used)
      assert.is_true(d:set("k1", 1)) -- usable again
    end)

    it("stats count hits and misses of get", function()
      local d = fresh("64k")
      d:set("a", 1)
      d:get("a")
      d:get("a")
      d:get("b")
      local st = d:stats()
      assert.same({ capacity = 65536, used = st.used, items = 1, evictions = 0, hits = 2, misses = 1 }, st)
    end)
  end)

  describe("the module", function()
    it("creates a dict once by name and finds it as moxy.shared.NAME", function()
      local a = shared.create("spec15_named", 65536)
      a:set("k", "v")
      local again = shared.create("spec15_named", "1m") -- the existing one, as it is
      assert.equal("v", again:get("k"))
      assert.equal(65536, again:stats().capacity)
      assert.equal("v", moxy.shared.spec15_named:get("k"))
      assert.equal(moxy.shared.spec15_named, moxy.shared.spec15_named) -- made once
    end)

    it("names an unknown dict and how to declare it", function()
      assert.has_error(function() return moxy.shared.nope end,
        'moxy.shared.nope: no shared dict "nope" (declare it in the config: shared = { nope = "10m" })')
      assert.has_error(function() moxy.shared.x = 1 end)
    end)

    it("checks create's arguments", function()
      assert.has_error(function() shared.create("bad name", 1024) end)
      assert.has_error(function() shared.create(1, 1024) end)
      assert.has_error(function() shared.create("ok", 0) end)
      assert.has_error(function() shared.create("ok", "lots") end)
    end)
  end)

  describe("misuse", function()
    local d
    setup(function() d = shared.create("spec15_misuse", "2m") end) -- stripes of 128 KiB: room for a 64 KiB key

    local function fails(fn, msg)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.matches(msg, tostring(err), 1, true)
    end

    it("raises for keys that are not non-empty strings", function()
      fails(function() d:set(1, "v") end, "shared.spec15_misuse:set: key must be a string, got number")
      fails(function() d:get(nil) end, "shared.spec15_misuse:get: key must be a string, got nil")
      fails(function() d:incr({}, 1) end, "shared.spec15_misuse:incr: key must be a string, got table")
      fails(function() d:delete("") end, "shared.spec15_misuse:delete: key must not be empty")
      fails(function() d:ttl(string.rep("k", 65536)) end, "shared.spec15_misuse:ttl: key is longer than 65535 bytes")
      assert.is_true(d:set(string.rep("k", 65535), 1)) -- the longest key
    end)

    it("raises for values it cannot store", function()
      fails(function() d:set("k", print) end,
        "shared.spec15_misuse:set: value must be a string, number, boolean or table (nil deletes), got function")
      fails(function() d:add("k", nil) end, "shared.spec15_misuse:add: value must be a string, number, boolean or table, got nil")
      fails(function() d:replace("k", io.stdout) end, "shared.spec15_misuse:replace: value must be")
      fails(function() d:set("k", { f = print }) end, "shared.spec15_misuse:set: cannot store this table")
    end)

    it("raises for bad ttl, by, init and max", function()
      fails(function() d:set("k", 1, -1) end, "shared.spec15_misuse:set: ttl must be a number of seconds >= 0")
      fails(function() d:set("k", 1, "10") end, "shared.spec15_misuse:set: ttl must be")
      fails(function() d:set("k", 1, 0 / 0) end, "shared.spec15_misuse:set: ttl must be")
      fails(function() d:incr("k", "1") end, "shared.spec15_misuse:incr: by must be a number, got string")
      fails(function() d:incr("k", 1, "0") end, "shared.spec15_misuse:incr: init must be a number or nil, got string")
      fails(function() d:expire("k") end, "shared.spec15_misuse:expire: ttl must be")
      fails(function() d:keys(-1) end, "shared.spec15_misuse:keys: max must be a whole number >= 0")
      fails(function() d:keys(1.5) end, "shared.spec15_misuse:keys: max must be")
    end)

    it("points at the caller's line and explains a call with '.'", function()
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(function() d:set(false, 1) end)
      assert.is_false(ok)
      assert.matches("15-shared_spec.lua:" .. line .. ": ", err, 1, true)
      fails(function() d.get("k") end, "moxy.shared: call dict methods with ':' (dict:get(...))")
    end)
  end)
end)
