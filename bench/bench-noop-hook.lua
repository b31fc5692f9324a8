-- bench/bench-noop-hook.lua -- the "moxy-noop" peer's hook (HOOKS=1 bench/run.sh).
--
-- An empty on_request: what it costs moxy to enter Lua once per request (the
-- guarded call, txn set-up) with no work in it.  Compare its CPU us/req with
-- "moxy-nohook" (no scripts) and "moxy" (bench-hook.lua: one header + pick).
return {
  on_request = function(txn) end,
}
