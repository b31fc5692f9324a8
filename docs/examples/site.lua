-- site.lua: an example site script, tested without a server by site_spec.lua
-- (docs/testing.md):
--
--   moxy test docs/examples/site_spec.lua
--
-- It answers health checks itself, keeps /admin/ behind a token, sends /api/
-- to the api pool without the prefix, hides the origin's Server header and
-- answers JSON when the api cannot be reached.
local TOKEN = "Bearer s3cret"

return {
  on_request = function(txn)
    local path = txn.req.path
    if path == "/healthz" then return txn:respond(200, "ok\n") end
    if path:find("^/admin/") and txn.req.headers:get("Authorization") ~= TOKEN then
      moxy.log.warn("admin: no token from", txn.client.ip)
      return txn:respond(401, "unauthorized\n", { ["WWW-Authenticate"] = "Bearer" })
    end
    if path:find("^/api/") then
      txn.ctx.api = true
      txn.upstream:pick("api")
      txn.req.path = path:sub(5) -- "/api/users" -> "/users"
      txn.req.headers:remove("Cookie") -- the api does not need the site's cookies
    end
  end,

  on_response = function(txn)
    txn.resp.headers:remove("Server")
    if txn.ctx.api then txn.resp.headers:set("Cache-Control", "no-store") end
  end,

  on_error = function(txn)
    if txn.ctx.api then
      return txn:respond(503, '{"error":"api unavailable"}\n', { ["Content-Type"] = "application/json" })
    end
  end,
}
