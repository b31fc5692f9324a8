-- `moxy test`: busted inside moxy's runtime, with moxy's modules and the
-- `moxy` global, busted's exit status and output.
local helpers = require "spec.helpers"

describe("moxy test", function()
  lazy_teardown(function() helpers.stop_all() end)

  local function spec_file(src)
    local dir = helpers.tmpdir("mtest")
    local path = dir .. "/user_spec.lua"
    helpers.write_file(path, src)
    return path
  end

  it("runs a user's spec with moxy's modules and exits 0", function()
    local path = spec_file([[
local router = require "moxy.router"
describe("my routes", function()
  it("match", function()
    local r = router.new():get("/u/:id", function() end)
    local h, p = r:match("GET", nil, "/u/7")
    assert.is_function(h)
    assert.equal("7", p.id)
    assert.equal("table", type(moxy.log))
    assert.has_error(function() moxy.sleep(1) end, nil)
  end)
end)
]])
    local code, out = helpers.run_moxy({ "test", "-o", "TAP", path })
    assert.equal(0, code, out)
    assert.matches("ok 1 %- my routes match", out)
  end)

  it("exits 1 with busted's report when a spec fails", function()
    local path = spec_file('describe("x", function() it("fails", function() assert.equal(1, 2) end) end)\n')
    local code, out = helpers.run_moxy({ "test", "-o", "TAP", path })
    assert.equal(1, code, out)
    assert.matches("not ok 1 %- x fails", out)
  end)
end)
