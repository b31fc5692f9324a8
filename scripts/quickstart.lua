-- quickstart.lua: tags every request on its way through moxy, and plays the
-- demo origin on the "demo-origin" listener, so the quickstart needs nothing
-- else running.  Replace the demo origin with your servers in upstreams.
return {
  on_request = function(txn)
    if txn.listener == "demo-origin" then
      local body = string.format(
        "Hello from moxy's demo origin.\n\n" ..
        "request          %s %s\n" ..
        "X-Edge-Proxy     %s\n" ..
        "X-Forwarded-For  %s\n" ..
        "request id       %s\n\n" ..
        "X-Edge-Proxy was set by scripts/quickstart.lua on the way through the proxy.\n",
        txn.req.method, txn.req.uri, txn.req.headers:get("X-Edge-Proxy") or "-",
        txn.req.headers:get("X-Forwarded-For") or "-", txn.id)
      return txn:respond(200, body, { ["Content-Type"] = "text/plain; charset=utf-8" })
    end
    -- the proxy side: mark the request and let it go to the default pool
    txn.req.headers:set("X-Edge-Proxy", "moxy")
  end,
}
