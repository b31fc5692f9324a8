-- bench/geo-lookup-hook.lua -- the init hook of bench/geo-lookup.lua.
local N = tonumber(os.getenv("N") or "200000")
local ROUNDS = tonumber(os.getenv("ROUNDS") or "5")
local IPS = {}
for ip in (os.getenv("GEOIP_IPS")
  or "81.2.69.142 89.160.20.112 216.160.83.56 175.16.199.1 2001:218::1 1.1.1.1 8.8.8.8 2001:db8::1"):gmatch("%S+") do
  IPS[#IPS + 1] = ip
end

-- median ns per call of fn(ip) over ROUNDS rounds of n calls
local function measure(n, fn)
  local times = {}
  for r = 1, ROUNDS do
    local k = #IPS
    local t0 = os.clock()
    for i = 1, n do fn(IPS[i % k + 1]) end
    times[r] = (os.clock() - t0) / n * 1e9
  end
  table.sort(times)
  return times[math.ceil(ROUNDS / 2)], times[1], times[ROUNDS]
end

local function report(what, n, fn)
  local med, lo, hi = measure(n, fn)
  io.stdout:write(string.format("%-48s %8.0f ns  (min %.0f, max %.0f; %d rounds of %d)\n", what, med, lo, hi,
    ROUNDS, n))
end

return {
  init = function()
    local get, lookup = moxy.geo.get, moxy.geo.lookup
    local found = 0
    for _, ip in ipairs(IPS) do
      if get(ip, "country") then found = found + 1 end
    end
    io.stdout:write(string.format("addresses: %d (%d found in the database)\n", #IPS, found))
    report("moxy.geo.get(ip, \"country\")  (first field)", N, function(ip) return get(ip, "country") end)
    report("moxy.geo.get(ip, \"country\") + \"city\"", N, function(ip)
      return get(ip, "country"), get(ip, "city")
    end)
    report("moxy.geo.lookup(ip)  (whole record, a table)", math.floor(N / 10), function(ip) return lookup(ip) end)
  end,
}
