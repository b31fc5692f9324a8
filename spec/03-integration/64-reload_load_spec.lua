-- Reloads and binary upgrades under load, the short run of tools/reloads.py: 60
-- reloads (SIGHUP and POST /reload in turn, each a new script and configuration)
-- then 2 upgrades (SIGUSR2) while HTTP/1.1, TLS, HTTP/2 and h2c clients send
-- GETs and POSTs without pause.  Not one request may fail, every reload counts
-- ok, fds come back to their count, RSS stays flat; docs/testing.md "Reloads
-- under load" (the long run: 1000 reloads).
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local PY = "/usr/bin/python3"

local function have_h2()
  local _, code = helpers.sh(PY .. " -c 'import h2.connection'")
  return code == 0
end

describe("reloads and upgrades under load (tools/reloads.py)", function()
  it("60 reloads then 2 upgrades: no failed request, no fd or memory growth", function()
    if not have_h2() then
      pending("python3-h2 is missing: tools/deps.sh installs it")
      return
    end
    local out = helpers.tmpdir("reloads")
    -- RSS sampled every 10 reloads (the first after 10, under load: the warm-up); the
    -- bound is the harness's (+16 MiB or +20 %), which catches ~300 KiB per reload here.
    -- A sanitizer build's allocator keeps freed memory in quarantine: a larger slack.
    local env = string.format("RSS_EVERY=10 RATE=25 MOXY_BIN=%s%s",
      helpers.shell_quote(helpers.moxy_bin()), helpers.sanitized and " RSS_SLACK_MIB=512" or "")
    local text, code = helpers.sh(string.format("cd %s && %s timeout %d %s tools/reloads.py --reloads 60 --upgrade 2 "
      .. "--out %s", helpers.shell_quote(helpers.root), env, 150 * helpers.scale, PY, helpers.shell_quote(out)))
    local doc = cjson.decode(helpers.read_file(out .. "/summary.json") or "")
    assert(doc, "no summary.json (exit " .. tostring(code) .. "):\n" .. text)
    -- the harness's own verdict, then the figures it rests on, so that a failure says which
    assert.equal(0, code, text)
    assert.is_true(doc.pass, text)
    assert.equal(0, doc.requests_failed, text)
    assert.is_true(doc.requests_ok > 300, text)
    assert.equal(60, doc.reloads_ok, text)
    assert.equal(0, doc.reloads_failed, text)
    assert.equal(2, #doc.upgrades, text)
    for _, u in ipairs(doc.upgrades) do
      assert.equal(0, u.old_exit, text)
      assert.not_equal(u.old, u.new, text)
    end
    assert.is_true(doc.fd_after <= doc.fd_before + 4, text)
    assert.matches("reloads: PASS", text, 1, true)
    print(("\n    %d requests, 0 failed; 60 reloads ok (p50 %.0f ms, p99 %.0f ms); 2 upgrades; fds %d -> %d; "
      .. "RSS %.1f -> %.1f MiB"):format(doc.requests_ok, doc.reload_ms.p50, doc.reload_ms.p99, doc.fd_before,
      doc.fd_after, doc.rss_mib[1][2], doc.rss_mib[#doc.rss_mib][2]))
  end)
end)
