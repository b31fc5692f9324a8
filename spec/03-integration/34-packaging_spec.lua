-- Running moxy in production: systemd readiness (sd_notify over $NOTIFY_SOCKET,
-- a path or an @abstract name, checked by spec/support/notify_socket.py, which
-- also reports the sender's pid from the kernel), `make install` / `make
-- uninstall` with PREFIX and DESTDIR (the installed binary finds the modules it
-- was installed with), the man page (groff warnings; Debian groff-base, and
-- man-db for `man --warnings`), and the systemd unit (systemd-analyze verify,
-- Debian systemd).  Tools that are missing make their test pending.
local helpers = require "spec.helpers"

local S = helpers.scale
local ROOT = helpers.root

local quote, sh = helpers.shell_quote, helpers.sh

local function have(tool)
  local out = sh("command -v " .. tool)
  return out:match("^/%S+") ~= nil
end

local function exists(path)
  local _, code = sh("test -e " .. quote(path))
  return code == 0
end

-- make TARGET VAR=VALUE ... in the source tree, without the calling make's
-- jobserver and flags (`make test` runs this spec)
local function make(target, vars)
  local cmd = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C " .. quote(ROOT) .. " " .. target
  for _, k in ipairs({ "PREFIX", "DESTDIR", "BUILD" }) do
    if vars[k] then cmd = cmd .. " " .. k .. "=" .. quote(vars[k]) end
  end
  return sh(cmd)
end

local function files_under(dir)
  local out = sh("cd " .. quote(dir) .. " && find . -type f | sort")
  local list = {}
  for line in out:gmatch("[^\n]+") do list[#list + 1] = (line:gsub("^%./", "")) end
  return list
end

local function basenames(dir, pattern)
  local out = sh("cd " .. quote(dir) .. " && ls " .. pattern)
  local list = {}
  for line in out:gmatch("[^\n]+") do list[#list + 1] = line end
  assert(#list > 0, "no " .. pattern .. " in " .. dir)
  return list
end

describe("packaging", function()
  lazy_teardown(function() helpers.stop_all() end)

  describe("systemd readiness (sd_notify)", function()
    local origin

    lazy_setup(function()
      origin = helpers.start_origin()
    end)

    -- a stand-in for systemd's notification socket at addr -> proc, messages()
    local function notify_socket(addr)
      local py = os.getenv("PYTHON")
      if not py or py == "" then py = "python3" end
      local p = helpers.spawn({ py, "-u", helpers.support .. "/notify_socket.py", addr }, { kind = "notify" })
      assert(helpers.wait_until(function()
        return p:stdout():find("^ready\n") or not p:alive()
      end, 5 * S) and p:alive(), "notify_socket.py did not start: " .. p:stdout() .. p:stderr())
      local function messages()
        local list = {}
        for line in p:stdout():gmatch("[^\n]+") do
          if line ~= "ready" then list[#list + 1] = helpers.json(line) end
        end
        return list
      end
      return p, messages
    end

    -- "K=V\nK=V" -> { K = V }
    local function fields(data)
      local t = {}
      for k, v in data:gmatch("([%u_]+)=([^\n]*)") do t[k] = v end
      return t
    end

    local function wait_message(messages, key, timeout)
      return helpers.wait_until(function()
        for _, m in ipairs(messages()) do
          if fields(m.data)[key] then return m end
        end
      end, timeout or 5 * S, 0.005)
    end

    -- moxy with a slow init (before the listeners are opened) and a slow
    -- worker_init (after): READY=1 must wait for both
    local INIT_DELAY = 0.4
    local function start(notify_addr)
      local port = helpers.free_port()
      local spin = string.format("local t0 = os.clock() while os.clock() - t0 < %g do end", INIT_DELAY)
      local t0 = helpers.now()
      local m = helpers.start_moxy({
        listen = { "127.0.0.1:" .. port },
        upstreams = { app = { servers = { origin.addr } } },
        scripts = { "slow.lua" },
        lua = { cpu_budget = 0 },
      }, {
        wait = false,
        env = { NOTIFY_SOCKET = notify_addr },
        files = {
          ["slow.lua"] = "return {\n  init = function() " .. spin .. " end,\n"
            .. "  worker_init = function() " .. spin .. " end,\n}\n",
        },
      })
      return m, port, t0
    end

    -- READY=1 (with MAINPID and STATUS) only once the port serves requests;
    -- returns the READY message
    local function assert_ready(m, port, t0, messages)
      local ready = wait_message(messages, "READY", 10 * S)
      local t_ready = helpers.now()
      assert(ready, "no READY=1 from moxy; stderr:\n" .. m:stderr())
      assert.is_true(t_ready - t0 >= 2 * INIT_DELAY,
        string.format("READY=1 came %.2f s after the start, before init and worker_init had run",
          t_ready - t0))
      -- at once: the listener accepts and a worker answers
      local res, err = helpers.request(port, { path = "/echo?after-ready" })
      assert(res, "READY=1 arrived but the port does not serve: " .. tostring(err))
      assert.equal(200, res.status)
      local f = fields(ready.data)
      assert.equal("1", f.READY)
      assert.equal(tostring(m.pid), f.MAINPID)
      assert.equal(m.pid, ready.pid, "READY=1 was not sent by moxy's main process")
      assert.matches("^serving: 1 worker, configuration .*moxy%.lua$", f.STATUS)
      return ready
    end

    it("READY=1 once the listener serves, STOPPING=1 on QUIT (socket path)", function()
      local dir = helpers.tmpdir("notify")
      local sock = dir .. "/notify.sock"
      local _, messages = notify_socket(sock)
      local m, port, t0 = start(sock)
      assert_ready(m, port, t0, messages)
      assert.equal(1, #messages(), "more than READY=1 before any signal")

      m:signal("QUIT")
      local stopping = wait_message(messages, "STOPPING")
      assert(stopping, "no STOPPING=1 on QUIT")
      assert.equal(m.pid, stopping.pid)
      assert.matches("^draining", fields(stopping.data).STATUS)
      local code, how = m:wait_exit(5 * S)
      assert.equal("exited", how)
      assert.equal(0, code)
      local list = messages()
      assert.equal(2, #list, "expected READY=1 then STOPPING=1, got " .. #list .. " messages")
      assert.equal("1", fields(list[1].data).READY)
      assert.equal("1", fields(list[2].data).STOPPING)
    end)

    it("an abstract socket ('@name'); STOPPING=1 on TERM", function()
      local addr = string.format("@moxy-spec-notify-%d-%d", helpers.free_port(), math.random(1e9))
      local _, messages = notify_socket(addr)
      local m, port, t0 = start(addr)
      assert_ready(m, port, t0, messages)
      m:signal("TERM")
      local stopping = wait_message(messages, "STOPPING")
      assert(stopping, "no STOPPING=1 on TERM")
      assert.equal(m.pid, stopping.pid)
      assert.equal("exiting now", fields(stopping.data).STATUS)
      local code, how = m:wait_exit(5 * S)
      assert.equal("exited", how)
      assert.equal(0, code)
    end)

    it("a NOTIFY_SOCKET nobody listens on is logged, and moxy serves anyway", function()
      local dir = helpers.tmpdir("notify")
      local m = helpers.start_moxy({ upstreams = { app = { servers = { origin.addr } } } },
        { env = { NOTIFY_SOCKET = dir .. "/nobody.sock" } })
      assert.equal(200, assert(helpers.request(m.port, { path = "/echo" })).status)
      assert(m:wait_error_log("cannot notify systemd at " .. dir .. "/nobody.sock"),
        "no warning about the notification socket:\n" .. m:stderr())
      m:stop("TERM")
    end)
  end)

  describe("make install", function()
    local tmp, build

    lazy_setup(function()
      tmp = helpers.tmpdir("install")
      build = tmp .. "/build" -- the tree's build/ and ./moxy stay as they are
    end)

    -- the files `make install` puts under prefix (relative paths)
    local function expected_files(prefix_rel)
      local list = {
        "bin/moxy", "bin/moxy-mmdb-build", "share/man/man8/moxy.8",
        "share/moxy/dist/moxy.service", "share/moxy/dist/moxy.logrotate",
      }
      for _, f in ipairs(basenames(ROOT .. "/lua/moxy", "*.lua")) do
        list[#list + 1] = "share/moxy/lua/moxy/" .. f
      end
      for _, f in ipairs(basenames(ROOT .. "/scripts", "*.lua")) do
        list[#list + 1] = "share/moxy/scripts/" .. f
      end
      for i, f in ipairs(list) do list[i] = prefix_rel .. f end
      table.sort(list)
      return list
    end

    -- the installed binary checks the quickstart from an unrelated directory,
    -- with only what the install gave it
    local function check_config(bin)
      local elsewhere = helpers.tmpdir("elsewhere")
      return sh("cd " .. quote(elsewhere) .. " && env -u MOXY_LUA_DIR " .. quote(bin)
        .. " -t -c " .. quote(ROOT .. "/conf/quickstart.lua"))
    end

    it("PREFIX: installs binary, modules, scripts, man page, unit; uninstall removes them", function()
      local prefix = tmp .. "/prefix"
      local out, code = make("install", { PREFIX = prefix, BUILD = build })
      assert.equal(0, code, out)
      assert.same(expected_files(prefix .. "/"), (function()
        local l = files_under(prefix)
        for i, f in ipairs(l) do l[i] = prefix .. "/" .. f end
        return l
      end)())
      assert.equal(helpers.read_file(ROOT .. "/lua/moxy/config.lua"),
        helpers.read_file(prefix .. "/share/moxy/lua/moxy/config.lua"))
      local _, x = sh("test -x " .. quote(prefix .. "/bin/moxy") .. " && test -x "
        .. quote(prefix .. "/bin/moxy-mmdb-build"))
      assert.equal(0, x, "installed programs are not executable")
      local unit = helpers.read_file(prefix .. "/share/moxy/dist/moxy.service")
      assert.matches("\nExecStart=" .. prefix:gsub("%p", "%%%0") .. "/bin/moxy %-c /etc/moxy/moxy%.lua %-p ", unit)
      assert.matches("\nExecReload=" .. prefix:gsub("%p", "%%%0") .. "/bin/moxy reload %-c ", unit)
      assert.matches("\nExecStartPre=" .. prefix:gsub("%p", "%%%0") .. "/bin/moxy %-t %-c ", unit)

      out, code = check_config(prefix .. "/bin/moxy")
      assert.equal(0, code, out)
      assert.matches("configuration .*quickstart%.lua ok", out)

      -- and those modules are the installed ones, not the source tree's
      local lua = prefix .. "/share/moxy/lua"
      assert(os.rename(lua, lua .. ".away"))
      out, code = check_config(prefix .. "/bin/moxy")
      assert(os.rename(lua .. ".away", lua))
      assert.equal(1, code, out)
      assert.matches("cannot load moxy's Lua modules from " .. lua:gsub("%p", "%%%0"), out)

      out, code = make("uninstall", { PREFIX = prefix, BUILD = build })
      assert.equal(0, code, out)
      assert.same({}, files_under(prefix))
      assert.is_false(exists(prefix .. "/share/moxy"), "uninstall left share/moxy behind")
    end)

    it("DESTDIR: stages everything (and install-systemd) under it; the staged binary runs", function()
      local stage = tmp .. "/stage"
      local prefix = "/nonexistent-moxy-spec-prefix"
      assert.is_false(exists(prefix))
      local out, code = make("install", { PREFIX = prefix, DESTDIR = stage, BUILD = build })
      assert.equal(0, code, out)
      out, code = make("install-systemd", { PREFIX = prefix, DESTDIR = stage, BUILD = build })
      assert.equal(0, code, out)
      local want = expected_files(prefix:sub(2) .. "/")
      want[#want + 1] = "etc/logrotate.d/moxy"
      want[#want + 1] = "etc/systemd/system/moxy.service"
      table.sort(want)
      assert.same(want, files_under(stage))
      assert.is_false(exists(prefix), "make install wrote outside DESTDIR")
      local unit = helpers.read_file(stage .. "/etc/systemd/system/moxy.service")
      assert.matches("\nExecStart=" .. prefix:gsub("%p", "%%%0") .. "/bin/moxy %-c ", unit)
      assert.matches("kill %-USR1", helpers.read_file(stage .. "/etc/logrotate.d/moxy"))

      -- built for a LUADIR that does not exist here: it finds the modules
      -- relative to itself (PREFIX/bin/../share/moxy/lua)
      out, code = check_config(stage .. prefix .. "/bin/moxy")
      assert.equal(0, code, out)

      out, code = make("uninstall", { PREFIX = prefix, DESTDIR = stage, BUILD = build })
      assert.equal(0, code, out)
      out, code = make("uninstall-systemd", { PREFIX = prefix, DESTDIR = stage, BUILD = build })
      assert.equal(0, code, out)
      assert.same({}, files_under(stage))
    end)
  end)

  describe("man/moxy.8", function()
    local MAN = ROOT .. "/man/moxy.8"

    it("renders without groff warnings", function()
      if not have("groff") then
        return pending("groff is not installed (Debian package groff-base)")
      end
      local out, code = sh("groff -man -ww -z " .. quote(MAN))
      assert.equal(0, code, out)
      assert.equal("", out)
    end)

    it("renders with man --warnings", function()
      if not have("man") then
        return pending("man is not installed (Debian package man-db)")
      end
      local out, code = sh("MANWIDTH=80 man --warnings -l " .. quote(MAN) .. " >/dev/null")
      assert.equal(0, code, out)
      assert.equal("", out)
    end)

    it("documents every option and signal core/ops/main.c handles", function()
      local main = assert(helpers.read_file(ROOT .. "/core/ops/main.c"))
      local man = assert(helpers.read_file(MAN))
      local opts = assert(main:match('getopt_long%(argc, argv, "([^"]+)"'), "getopt string not found in main.c")
      for o in opts:gmatch("%a") do
        assert(man:find("\n%.B[IR]? \\%-" .. o .. "[%s\n]"), "option -" .. o .. " is not in the man page's OPTIONS")
      end
      local longs = assert(main:match("struct option long_options%[%] = {(.-)\n};"), "long_options not found in main.c")
      for name in longs:gmatch('{"([%w-]+)"') do
        assert(man:find("\\-\\-" .. name, 1, true), "option --" .. name .. " is not in the man page")
      end
      local sigs = assert(main:match("int sigs%[%] = {([^}]+)}"), "signal list not found in main.c")
      local n = 0
      for sig in sigs:gmatch("SIG%u+%d?") do
        n = n + 1
        assert.is_truthy(man:find(sig, 1, true), sig .. " is handled by main.c but not in the man page")
      end
      assert.is_true(n >= 5)
    end)
  end)

  describe("dist/moxy.service", function()
    local UNIT = ROOT .. "/dist/moxy.service"

    it("passes systemd-analyze verify", function()
      if not have("systemd-analyze") then
        return pending("systemd-analyze is not installed (Debian package systemd)")
      end
      -- ExecStart must name an executable that exists: this build's moxy
      local dir = helpers.tmpdir("unit")
      local unit = assert(helpers.read_file(UNIT)):gsub("/usr/local/bin/moxy", helpers.moxy_bin())
      helpers.write_file(dir .. "/moxy.service", unit)
      local out, code = sh("systemd-analyze verify --man=no " .. quote(dir .. "/moxy.service"))
      assert.equal(0, code, out)
      assert.equal("", out, "systemd-analyze verify complained")
    end)

    it("is Type=notify, reloads with moxy reload, stops by draining for longer than timeouts.drain", function()
      local unit = assert(helpers.read_file(UNIT))
      assert.matches("\nType=notify\n", unit)
      assert.matches("\nKillSignal=SIGQUIT\n", unit)
      -- ExecReload waits for the verdict and shares the PID file with ExecStart
      local pid = assert(unit:match("\nExecStart=[^\n]* %-p (%S+)\n"), "ExecStart without -p")
      assert.matches("\nExecReload=%S+/moxy reload %-c %S+ %-p " .. pid:gsub("%p", "%%%0") .. "\n", unit)
      assert.matches("\nRuntimeDirectory=moxy\n", unit)
      assert.equal("/run/moxy/", pid:match("^(.*/)"))
      local stop = assert(tonumber(unit:match("\nTimeoutStopSec=(%d+)s\n")), "TimeoutStopSec in seconds")
      local config = assert(helpers.read_file(ROOT .. "/lua/moxy/config.lua"))
      local drain = assert(tonumber(config:match("[^_]drain = (%d+)[,%s}]")), "default timeouts.drain not found")
      assert.is_true(stop > drain, "TimeoutStopSec " .. stop .. " s does not cover timeouts.drain " .. drain .. " s")
    end)
  end)
end)
