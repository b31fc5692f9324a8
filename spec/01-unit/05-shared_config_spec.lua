-- moxy.config: the `shared` key (moxy.shared dicts: name = size), pure Lua.
package.path = "lua/?.lua;" .. package.path
local config = require "moxy.config"

-- Load `src` from a temporary file -> conf, errs, path.
local function load(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(src)
  f:close()
  local c, errs = config.load(path)
  os.remove(path)
  return c, errs, path
end

local function with_shared(shared_src)
  return "return {\n"
    .. '  listen = { "127.0.0.1:8080" },\n'
    .. '  upstreams = { app = { servers = { "127.0.0.1:9001" } } },\n'
    .. "  shared = " .. shared_src .. ",\n"
    .. "}\n"
end

local function escape(s)
  return (s:gsub("%p", "%%%0"))
end

describe("moxy.config shared", function()
  it("is an empty list when absent", function()
    local c, errs = load('return { listen = { "127.0.0.1:8080" } }\n')
    assert.is_nil(errs)
    assert.same({}, c.shared)
  end)

  it("normalises name = size into a list sorted by name, sizes in bytes", function()
    local c, errs = load(with_shared('{ sessions = "64m", limits = "10m", tiny = 8192, _x1 = "16k" }'))
    assert.is_nil(errs)
    assert.same({
      { name = "_x1", size = 16384 },
      { name = "limits", size = 10 * 1024 * 1024 },
      { name = "sessions", size = 64 * 1024 * 1024 },
      { name = "tiny", size = 8192 },
    }, c.shared)
  end)

  it("names file, line and key path of a bad size", function()
    local c, errs, path = load(with_shared('{\n    limits = "10m",\n    x = "huge",\n  }'))
    assert.is_nil(c)
    assert.equal(1, #errs)
    assert.matches("^" .. escape(path) .. ":6: shared%.x: bad size \"huge\"", errs[1])
  end)

  it("refuses names that are not Lua identifiers", function()
    for _, bad in ipairs({ '["bad name"]', '["1st"]', '["a-b"]', '["end"]', '[""]' }) do
      local c, errs = load(with_shared("{\n    " .. bad .. ' = "1m",\n  }'))
      assert.is_nil(c, bad)
      assert.equal(1, #errs, bad)
      local name = bad:match('^%["(.*)"%]$')
      assert.matches(":5: shared%." .. escape(name) .. ": dict names are Lua identifiers", errs[1])
    end
    local c, errs = load(with_shared('{ "1m" }'))
    assert.is_nil(c)
    assert.matches("shared%[1%]: dict names are Lua identifiers", errs[1])
  end)

  it("refuses sizes that are too small, too big or not sizes", function()
    local cases = {
      { "100", "a shared dict needs at least 8k, got 100" },
      { '"4k"', "a shared dict needs at least 8k, got 4k" },
      { '"2048g"', "a shared dict can be at most 1024g" },
      { "1.5", "expected a whole number of bytes" },
      { "true", "expected a size" },
    }
    for _, case in ipairs(cases) do
      local c, errs = load(with_shared("{ limits = " .. case[1] .. " }"))
      assert.is_nil(c, case[1])
      assert.matches("shared%.limits: " .. escape(case[2]), errs[1])
    end
  end)

  it("wants a table", function()
    local c, errs = load(with_shared('"10m"'))
    assert.is_nil(c)
    assert.matches(":4: shared: expected a table of dict sizes", errs[1])
  end)
end)
