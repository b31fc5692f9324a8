-- bench/bench-hook.lua -- the per-request work moxy does in the benchmark.
--
-- The quickstart-like hook: tag the request and choose the pool.  nginx does
-- the same work with `proxy_set_header X-Edge-Proxy nginx` + proxy_pass.
-- The origin echoes X-Edge-Proxy back as X-Edge-Seen, and bench/run.sh checks
-- for "X-Edge-Seen: moxy" before measuring, so a hook that did not run is noticed.
return {
  on_request = function(txn)
    txn.req.headers:set("X-Edge-Proxy", "moxy")
    txn.upstream:pick("origin")
  end,
}
