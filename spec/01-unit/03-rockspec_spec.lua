-- rockspec/moxy-scm-1.rockspec lists every module in lua/moxy.
describe("rockspec", function()
  it("lists every Lua module", function()
    local env = {}
    local chunk = assert(loadfile("rockspec/moxy-scm-1.rockspec"))
    setfenv(chunk, env)
    chunk()
    local listed = {}
    for _, path in pairs(env.build.modules) do listed[path] = true end
    local p = io.popen("ls lua/moxy/*.lua")
    for path in p:lines() do
      assert.is_true(listed[path] == true, path .. " is not in the rockspec")
    end
    p:close()
  end)
end)
