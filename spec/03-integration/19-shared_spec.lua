-- moxy.shared in a running moxy: one dict seen by every worker thread,
-- atomic incr under concurrent requests, data set by init hooks, and the
-- configuration errors of the `shared` key.
local helpers = require "spec.helpers"

local SITE = [[
-- made when this worker's VM loads the script: tells the workers apart
local VM = tostring({}):match("0x%x+") or tostring({})

local counters = moxy.shared.counters

return {
  init = function()
    moxy.shared.counters:set("from_init", "set by init")
  end,

  on_request = function(txn)
    txn.resp.headers:set("X-VM", VM)
    local path = txn.req.path
    if path == "/hit" then
      local n, err = counters:incr("hits", 1, 0)
      return txn:respond(200, tostring(n or err))
    elseif path == "/count" then
      return txn:respond(200, tostring(counters:get("hits")))
    elseif path == "/set" then
      counters:set("note", txn.req.query)
      return txn:respond(200, "stored")
    elseif path == "/get" then
      return txn:respond(200, tostring(counters:get("note")))
    elseif path == "/table" then
      moxy.shared.sessions:set("t", { user = "ann", roles = { "admin", "dev" } }, 60)
      local t = moxy.shared.sessions:get("t")
      return txn:respond(200, t.user .. ":" .. table.concat(t.roles, ","))
    elseif path == "/init" then
      return txn:respond(200, tostring(counters:get("from_init")))
    elseif path == "/unknown" then
      return txn:respond(200, tostring(moxy.shared.nope:get("k")))
    end
    return txn:respond(404, "no such test\n")
  end,
}
]]

local CONNS, PER_CONN = 8, 250

describe("moxy.shared", function()
  local moxy

  lazy_setup(function()
    moxy = helpers.start_moxy({
      workers = 4,
      shared = { counters = "1m", sessions = "64k" },
      scripts = { "site.lua" },
    }, { files = { ["site.lua"] = SITE } })
    -- start_moxy returns once one worker listens; the others open their
    -- sockets after it (slowly under ASan): wait until all four answer
    local vms, n = {}, 0
    local all = helpers.wait_until(function()
      local res = helpers.request(moxy.port, { path = "/count" }) -- a new connection each time
      local vm = res and res:header("x-vm")
      if vm and not vms[vm] then vms[vm], n = true, n + 1 end
      return n == 4
    end, 10 * helpers.scale, 0.01)
    assert(all, "only " .. n .. " of 4 workers answered")
  end)

  lazy_teardown(function() helpers.stop_all() end)

  local function get(path)
    local res = assert(helpers.request(moxy.port, { path = path }))
    assert.equal(200, res.status, res.body)
    return res.body, res:header("x-vm")
  end

  it("counts concurrent requests on every worker exactly once", function()
    local conns = {}
    for i = 1, CONNS do conns[i] = assert(helpers.connection(moxy.port)) end
    local seen, vms, answered = {}, {}, 0
    local deadline = helpers.now() + 60 * helpers.scale
    for _ = 1, PER_CONN do
      -- one request in flight on each connection at a time: CONNS at once
      for i = 1, CONNS do assert(conns[i]:send(helpers.build_request({ path = "/hit" }))) end
      for i = 1, CONNS do
        local res = assert(conns[i]:read_response())
        assert.equal(200, res.status, res.body)
        local n = tonumber(res.body)
        assert(n and n == math.floor(n), "not a count: " .. res.body)
        assert(not seen[n], "two requests got " .. n)
        seen[n] = true
        vms[res:header("x-vm")] = true
        answered = answered + 1
      end
      assert(helpers.now() < deadline, "too slow: " .. answered .. " answers")
    end
    for i = 1, CONNS do conns[i]:close() end
    local total = CONNS * PER_CONN
    for n = 1, total do assert(seen[n], "no request got " .. n) end
    assert.equal(tostring(total), (get("/count")))
    local nvm = 0
    for _ in pairs(vms) do nvm = nvm + 1 end
    assert.is_true(nvm >= 2, "every connection went to one worker")
  end)

  it("shows a value set by one request to the next, whichever worker serves it", function()
    local crossed = 0
    for i = 1, 40 do
      local _, vm_set = get("/set?" .. i) -- a new connection each time
      local value, vm_get = get("/get")
      assert.equal(tostring(i), value)
      if vm_set ~= vm_get then crossed = crossed + 1 end
    end
    assert.is_true(crossed > 0, "set and get never ran on different workers")
  end)

  it("stores tables and keeps what init hooks stored before the workers started", function()
    assert.equal("ann:admin,dev", (get("/table")))
    assert.equal("set by init", (get("/init")))
  end)

  it("answers 500 and logs the name of an undeclared dict", function()
    local res = assert(helpers.request(moxy.port, { path = "/unknown" }))
    assert.equal(500, res.status)
    assert(moxy:wait_log('moxy.shared.nope: no shared dict "nope" (declare it in the config: shared = { nope = "10m" })',
      3, moxy.error_log))
  end)
end)

describe("moxy.shared configuration", function()
  lazy_teardown(function() helpers.stop_all() end)

  local function check(shared_line)
    local src = table.concat({
      "return {",
      '  listen = { "127.0.0.1:18080" },',
      "  shared = {",
      '    limits = "10m",',
      shared_line,
      "  },",
      "}",
    }, "\n") .. "\n"
    local code, out, path = helpers.run_moxy_check(src)
    return code, out, path
  end

  it("accepts dicts with sizes as strings or numbers", function()
    local code, out = check("    sessions = 65536,")
    assert.equal(0, code, out)
  end)

  it("names file, line and key of a name that is not a Lua identifier", function()
    local code, out, path = check('    ["bad name"] = "1m",')
    assert.equal(1, code, out)
    assert.matches(path .. ":5: shared.bad name: dict names are Lua identifiers", out, 1, true)
  end)

  it("names file, line and key of a bad size", function()
    local code, out, path = check('    x = "huge",')
    assert.equal(1, code, out)
    assert.matches(path .. ':5: shared.x: bad size "huge"', out, 1, true)
  end)
end)
