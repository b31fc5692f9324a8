-- bench/bench-reads-hook.lua -- the "reads" variant (bench/callgrind.sh): a
-- hook that reads five txn fields and sets two headers, then picks the pool
-- as bench-hook.lua does.  Guarded (interpreted), as a script is by default.
return {
  on_request = function(txn)
    local req = txn.req
    local method, path, host = req.method, req.path, req.host
    local ip, agent = txn.client.ip, req.headers:get("user-agent")
    req.headers:set("X-Edge-Proxy", "moxy")
    req.headers:set("X-Edge-Client", ip)
    if not (method and path and host and agent) then txn.ctx.partial = true end
    txn.upstream:pick("origin")
  end,
}
