-- Partner networks -> partner name and rate-limit tier, as a Lua file: handy
-- when the list is generated.  Build:
--   geoip/mmdb-build geoip/examples/partners.lua partners.mmdb
-- Numbers that are whole become uint32 (negative: int32); other numbers become
-- double.  Key-name hints (types) force a type wherever the key appears.
local partners = {
  { name = "Acme Logistics", tier = "gold",   nets = { "198.51.100.0/25", "2001:db8:ac::/48" } },
  { name = "Globex",         tier = "silver", nets = { "203.0.113.64/26" } },
  { name = "Initech",        tier = "bronze", nets = { "192.0.2.128/25" } },
}

local RPS = { gold = 500, silver = 100, bronze = 20 }

local networks = {}
for _, p in ipairs(partners) do
  networks[#networks + 1] = {
    networks = p.nets,
    data = { partner = p.name, tier = p.tier, rps = RPS[p.tier] },
  }
end

return {
  database_type = "Moxy-Partners",
  ip_version = 6,
  record_size = 24,
  description = { en = "Partner networks and their rate-limit tier" },
  languages = { "en" },
  types = { rps = "uint16" },
  networks = networks,
}
