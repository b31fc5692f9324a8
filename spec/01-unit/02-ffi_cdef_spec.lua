-- The ffi.cdef of lua/moxy/txn.lua must match core/api/ffi.h, or the Lua side
-- would call the C side with the wrong arguments.
local check = dofile("tools/check-ffi.lua")

describe("FFI declarations", function()
  it("match between core/api/ffi.h and the Lua modules", function()
    assert.same({}, check.compare("."))
  end)
end)
