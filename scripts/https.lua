-- https.lua: send plain-HTTP clients to HTTPS, and tell browsers to come
-- back over HTTPS only (HSTS, RFC 6797).
--
-- Use it on a configuration with a plain listener and a TLS one (`tls` on a
-- listener); the script knows them apart by txn.req.scheme.
--
-- Configure: edit the CONFIG block below.
--   redirect    true: a plain-HTTP request gets a redirect to the same host
--               and target over HTTPS (the origin is not asked)
--   status      308 (the client repeats the method and body: a POST stays a
--               POST) or 301 (browsers turn a redirected POST into a GET)
--   https_port  the HTTPS port the Location names (443: none written)
--   except      path prefixes served over plain HTTP as they are (ACME's
--               HTTP-01 challenges must be)
--   hsts        on every HTTPS response: { max_age = seconds,
--               include_subdomains = bool, preload = bool }, or false (none).
--               An origin's own Strict-Transport-Security is kept.
--
-- A plain-HTTP request without a Host gets 400: there is nowhere to send it.

-- CONFIG BEGIN
local CONFIG = {
  redirect = true,
  status = 308,
  https_port = 443,
  except = { "/.well-known/acme-challenge/" },
  hsts = { max_age = 31536000, include_subdomains = false, preload = false },
}
-- CONFIG END

local STATUS = CONFIG.status or 308
if STATUS ~= 301 and STATUS ~= 308 and STATUS ~= 302 and STATUS ~= 307 then
  error("CONFIG.status: 301, 302, 307 or 308")
end
local PORT = CONFIG.https_port or 443
if type(PORT) ~= "number" or PORT < 1 or PORT > 65535 or PORT % 1 ~= 0 then
  error("CONFIG.https_port: a port number")
end
local EXCEPT = CONFIG.except or {}
for i, p in ipairs(EXCEPT) do
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" then error("CONFIG.except[" .. i .. "]: a path prefix (\"/...\")") end
end

local HSTS
if CONFIG.hsts then
  local h = CONFIG.hsts
  local age = h.max_age or 31536000
  if type(age) ~= "number" or age < 0 or age % 1 ~= 0 then error("CONFIG.hsts.max_age: whole seconds") end
  if h.preload and (age < 31536000 or not h.include_subdomains) then
    error("CONFIG.hsts.preload: the preload list asks for max_age >= 31536000 and include_subdomains")
  end
  HSTS = "max-age=" .. age .. (h.include_subdomains and "; includeSubDomains" or "") .. (h.preload and "; preload" or "")
end

local function excepted(path)
  for i = 1, #EXCEPT do
    if path:sub(1, #EXCEPT[i]) == EXCEPT[i] then return true end
  end
  return false
end

return {
  on_request = function(txn)
    if not CONFIG.redirect or txn.req.scheme == "https" or excepted(txn.req.path) then return end
    local host = txn.req.host
    if not host or host == "" then return txn:respond(400, "a Host is required\n") end
    -- the host without its port ("[v6]:80" keeps its brackets)
    host = host:match("^(%[[^%]]*%])") or host:match("^([^:]*)")
    if PORT ~= 443 then host = host .. ":" .. PORT end
    return txn:redirect("https://" .. host .. txn.req.uri, STATUS)
  end,

  on_response = function(txn)
    if HSTS and txn.req.scheme == "https" and not txn.resp.headers:get("Strict-Transport-Security") then
      txn.resp.headers:set("Strict-Transport-Security", HSTS)
    end
  end,
}
