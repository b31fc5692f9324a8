-- The ffi.cdef of lua/moxy/txn.lua must match core/api/ffi.h, or the Lua side
-- would call the C side with the wrong arguments; and the constants both
-- sides copy (phase numbers, txn field numbers, the ABI) must agree.
local check = dofile("tools/check-ffi.lua")

describe("FFI declarations", function()
  it("match between core/api/ffi.h and the Lua modules", function()
    assert.same({}, check.compare("."))
  end)
end)

describe("constants C and Lua share", function()
  it("have the same values on both sides (phases, txn fields, numbers, flags, ABI)", function()
    assert.same({}, check.compare_constants("."))
  end)
end)
