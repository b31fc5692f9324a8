-- maintenance.lua: answer 503 "down for maintenance" instead of the origins.
--
-- While `enabled` is true every request is answered by moxy with a 503, a
-- small HTML page (JSON for clients that send Accept: application/json) and
-- Retry-After, except requests from `allow_ips` (your own team) and requests
-- for `allow_paths` (health checks, a status page), which go through as usual.
--
-- Configure: edit the CONFIG block below, then restart moxy.
--   enabled      true: maintenance on; false: the script lets everything through
--   retry_after  seconds, sent as Retry-After (nil: no such header)
--   title        the page's title and heading
--   message      the page's text (plain text: it is HTML-escaped)
--   allow_ips    exact client addresses that still reach the origins, e.g.
--                { "203.0.113.7", "::1" } (txn.client.ip: the peer moxy sees)
--   allow_paths  path prefixes that still reach the origins, matched on whole
--                segments: "/healthz" matches "/healthz" and "/healthz/db",
--                not "/healthzz"

-- CONFIG BEGIN
local CONFIG = {
  enabled = true,
  retry_after = 600,
  title = "Down for maintenance",
  message = "We are improving the site and will be back in a few minutes.",
  allow_ips = {},
  allow_paths = { "/healthz" },
}
-- CONFIG END

if not CONFIG.enabled then return {} end -- no hooks at all: no cost per request

local function html_escape(s)
  return (tostring(s):gsub("[&<>\"']", {
    ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;",
  }))
end

-- built once, at load
local title, message = html_escape(CONFIG.title), html_escape(CONFIG.message)
local HTML = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" .. title ..
  "</title></head>\n<body><h1>" .. title .. "</h1>\n<p>" .. message .. "</p></body></html>\n"
local JSON = moxy.json.encode({ error = CONFIG.title, message = CONFIG.message }) .. "\n"
local function headers(content_type)
  local h = { ["Content-Type"] = content_type, ["Cache-Control"] = "no-store" }
  if CONFIG.retry_after then h["Retry-After"] = tostring(CONFIG.retry_after) end
  return h
end
local HTML_HEADERS = headers("text/html; charset=utf-8")
local JSON_HEADERS = headers("application/json")

local ALLOW_IPS = {}
for _, ip in ipairs(CONFIG.allow_ips or {}) do ALLOW_IPS[ip] = true end
local ALLOW_PATHS = {}
for _, p in ipairs(CONFIG.allow_paths or {}) do
  ALLOW_PATHS[#ALLOW_PATHS + 1] = (p:gsub("/+$", "")) -- "/status/" -> "/status", "/" -> ""
end
local SLASH = string.byte("/")

local function allowed_path(path)
  for i = 1, #ALLOW_PATHS do
    local p = ALLOW_PATHS[i]
    local n = #p
    if path:sub(1, n) == p and (#path == n or path:byte(n + 1) == SLASH) then return true end
  end
  return false
end

return {
  on_request = function(txn)
    if ALLOW_IPS[txn.client.ip] or allowed_path(txn.req.path) then return end
    local accept = txn.req.headers:get("Accept")
    if accept and accept:find("application/json", 1, true) then
      return txn:respond(503, JSON, JSON_HEADERS)
    end
    return txn:respond(503, HTML, HTML_HEADERS)
  end,
}
