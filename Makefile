# moxy -- Lua-scriptable edge proxy.
#
#   make run     install what is missing, build, start on the quickstart config
#   make test    install what is missing, build, run every spec
#   make ctest   the C tests of core functions (spec/02-core/*_test.c)
#   make check   the same specs against an ASan+UBSan build
#   make bench   moxy vs nginx side by side (wrk on loopback)
#   make bench-acl   what a lookup in an ACL's prefix set costs (bench/acl_lookup.c)
#   make fuzz    every libFuzzer harness in fuzz/ for FUZZ_S seconds (default 60)
#   make soak    moxy for SOAK_S seconds (default 600) under mixed load, reloads and
#                origin restarts; checks crashes, fds, memory, errors (tools/soak.py)
#   make install [PREFIX=/usr/local] [DESTDIR=]   binary, Lua modules, scripts, man page,
#                the systemd unit and logrotate file as examples under share/moxy/dist
#   make install-systemd   the unit to /etc/systemd/system, logrotate to /etc/logrotate.d
#   make uninstall, make uninstall-systemd

PREFIX    ?= /usr/local
LUADIR    ?= $(PREFIX)/share/moxy/lua
DATADIR   ?= $(PREFIX)/share/moxy
MANDIR    ?= $(PREFIX)/share/man
UNITDIR   ?= /etc/systemd/system
LOGROTATEDIR ?= /etc/logrotate.d
CC        ?= cc
LLHTTP_SRC = /usr/share/llhttp
LLHTTP_INC = /usr/share/include/llhttp

PKGS      := luajit libevent_core libevent_extra libssl libcrypto zlib libmaxminddb libpcre2-8 libnghttp2
CFLAGS    ?= -O2 -g
MOXY_CFLAGS = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fno-strict-aliasing \
             -I$(LLHTTP_INC) -Icore -DMOXY_LUADIR='"$(LUADIR)"' -DLLHTTP_STRICT_MODE=1 \
             $(shell pkg-config --cflags luajit)
LDLIBS    += -lluajit-5.1 -levent_extra -levent_core -lssl -lcrypto -lz -lbrotlienc -lbrotlidec -lzstd -lmaxminddb -lpcre2-8 -lnghttp2 -lhiredis -lcrypt -lpthread -lm -ldl
MOXY_LDFLAGS = -Wl,-E

BUILD     ?= build
# core/ is in layers, lowest first: a folder uses only itself and the folders
# before it (docs/architecture.md; `make lint` checks it on the objects).
LAYERS    := base codec net http http2 http1 proxy cache api ops
COMMA     := ,
SPACE     := $(subst x, ,x)
SRCS      := $(foreach l,$(LAYERS),$(wildcard core/$(l)/*.c))
HDRS      := $(foreach l,$(LAYERS),$(wildcard core/$(l)/*.h))
LLHTTP_OBJS = $(BUILD)/base/llhttp.o $(BUILD)/base/llhttp_api.o $(BUILD)/base/llhttp_http.o
OBJS      := $(SRCS:core/%.c=$(BUILD)/%.o) $(LLHTTP_OBJS)
# Specs run inside moxy's own runtime (`moxy test` = busted with moxy's modules).

.PHONY: all deps run test ctest check tsan bench bench-acl fuzz fuzz-build soak install install-systemd \
        uninstall uninstall-systemd fmt lint clean FORCE

all: moxy

deps:
	@tools/deps.sh

moxy: $(BUILD)/moxy
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/moxy: $(OBJS)
	$(CC) $(CFLAGS) $(MOXY_CFLAGS) $(LDFLAGS) $(MOXY_LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: core/%.c $(HDRS) | $(BUILD)
	@mkdir -p $(@D)
	@echo "  CC $<"
	@$(CC) $(CFLAGS) $(MOXY_CFLAGS) -c -o $@ $<

# The status page's files are embedded by admin_page.c's .incbin (paths from the root).
$(BUILD)/ops/admin_page.o: $(wildcard admin/*)

# llhttp is third-party C from Debian's node-llhttp; build it without our -Werror.
# It sits in the lowest layer: it uses nothing of moxy.
$(BUILD)/base/llhttp.o: $(LLHTTP_SRC)/llhttp.c | $(BUILD)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<
$(BUILD)/base/llhttp_api.o: $(LLHTTP_SRC)/api.c | $(BUILD)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<
$(BUILD)/base/llhttp_http.o: $(LLHTTP_SRC)/http.c | $(BUILD)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<

$(BUILD):
	mkdir -p $@

# LUADIR is compiled in (core/base/lua_vm.c's fallback after ./lua): lua_vm.o is rebuilt
# whenever it changes, so `make install PREFIX=/opt/moxy` installs a binary that finds
# the modules it installs.
$(BUILD)/luadir: FORCE | $(BUILD)
	@echo '$(LUADIR)' | cmp -s - $@ || echo '$(LUADIR)' > $@
$(BUILD)/base/lua_vm.o: $(BUILD)/luadir
FORCE:

run: deps moxy
	./moxy -c conf/quickstart.lua

test: deps moxy lint ctest
	MOXY_BIN=$(CURDIR)/moxy ./moxy test spec
	$(MAKE) fuzz FUZZ_S=$(FUZZ_TEST_S)

check: deps moxy
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	        LDFLAGS="-fsanitize=address,undefined" build-asan/moxy
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  MOXY_BIN=$(CURDIR)/build-asan/moxy MOXY_SANITIZED=1 ./moxy test spec

# ThreadSanitizer on the specs whose moxy runs several workers over shared state (the
# cache's store and flights, shared dicts, reloads, timers and moxy.http): the others
# would time out under its slowdown, and single-threaded code has nothing to race.
TSAN_SPECS = spec/03-integration/39-cache_spec.lua spec/03-integration/19-shared_spec.lua \
             spec/03-integration/36-reload_spec.lua spec/03-integration/12-yield_spec.lua \
             spec/03-integration/21-http_client_spec.lua spec/03-integration/25-health_check_spec.lua

tsan: deps moxy
	$(MAKE) BUILD=build-tsan CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" \
	        LDFLAGS="-fsanitize=thread" build-tsan/moxy
	TSAN_OPTIONS=halt_on_error=0:report_signal_unsafe=0 \
	  MOXY_BIN=$(CURDIR)/build-tsan/moxy MOXY_SANITIZED=1 ./moxy test $(TSAN_SPECS)

# libFuzzer harnesses: fuzz/NAME_fuzz.c, each with its seed corpus fuzz/corpus/NAME/
# (and fuzz/NAME.dict when there is one), linked against every core object but
# main.o, all built by clang with ASan and UBSan.  `make fuzz` runs each for
# FUZZ_S seconds (tools/fuzz.sh); `make test` for FUZZ_TEST_S, so that CI keeps
# them building and their seeds passing.
FUZZ_S      ?= 60
FUZZ_TEST_S ?= 3
FUZZ_CC     ?= clang
FUZZ_CFLAGS  = -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=undefined
FUZZ_NAMES  := $(patsubst fuzz/%_fuzz.c,%,$(wildcard fuzz/*_fuzz.c))

fuzz: fuzz-build
	FUZZ_S=$(FUZZ_S) tools/fuzz.sh $(FUZZ_NAMES)

fuzz-build: deps
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) CFLAGS="$(FUZZ_CFLAGS)" \
	        $(FUZZ_NAMES:%=build-fuzz/%_fuzz)

$(BUILD)/libmoxy.a: $(filter-out $(BUILD)/ops/main.o,$(OBJS))
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%_fuzz: fuzz/%_fuzz.c fuzz/fuzz.h $(BUILD)/libmoxy.a
	$(CC) $(CFLAGS) $(MOXY_CFLAGS) -Ifuzz -fsanitize=fuzzer $(MOXY_LDFLAGS) -o $@ $< \
	      $(BUILD)/libmoxy.a $(LDLIBS)

# A bounded soak (tools/soak.py, docs/testing.md "Soak"): HTTP/1.1, TLS and HTTP/2
# clients, cache hits and misses, slow and resetting clients, a reload every 5 s, the
# origins killed and restarted; exits 1 on a crash, an fd leak, RSS past its bound or
# an unexplained error. Then tools/hostile.py at full size (docs/testing.md "Hostile
# clients": 10,000 slowloris connections, slow readers, resets, idle TLS, with a
# probe's p99 against quiet), and tools/reloads.py (docs/testing.md "Reloads under
# load": RELOADS reloads, then 3 binary upgrades, under load: 0 failed requests, flat
# memory, no fd leak). Not part of `make test` (it takes SOAK_S seconds and
# some minutes). MOXY_BIN picks another binary (e.g. build-asan/moxy after `make check`).
SOAK_S ?= 600
RELOADS ?= 1000

soak: deps moxy
	SOAK_S=$(SOAK_S) /usr/bin/python3 tools/soak.py
	/usr/bin/python3 tools/hostile.py
	/usr/bin/python3 tools/reloads.py --reloads $(RELOADS) --upgrade 3

# C tests of the core's functions: spec/02-core/NAME_test.c, each a program linked
# against the core's objects that prints what failed and exits non-zero when
# anything did.  `make ctest` builds and runs them all (`make test` does too).
CTEST_NAMES := $(patsubst spec/02-core/%_test.c,%,$(wildcard spec/02-core/*_test.c))

ctest: $(CTEST_NAMES:%=$(BUILD)/%_test)
	@for t in $^; do $$t || exit 1; done

$(BUILD)/%_test: spec/02-core/%_test.c $(BUILD)/libmoxy.a
	$(CC) $(CFLAGS) $(MOXY_CFLAGS) $(LDFLAGS) $(MOXY_LDFLAGS) -o $@ $< $(BUILD)/libmoxy.a $(LDLIBS)

# What a lookup in an ACL's prefix set costs (bench/acl_lookup.c): build time,
# memory, ns per lookup for 100,000 prefixes per family.
bench-acl: $(BUILD)/acl_lookup
	$(BUILD)/acl_lookup

$(BUILD)/acl_lookup: bench/acl_lookup.c $(BUILD)/libmoxy.a
	$(CC) $(CFLAGS) $(MOXY_CFLAGS) $(LDFLAGS) $(MOXY_LDFLAGS) -o $@ $< $(BUILD)/libmoxy.a $(LDLIBS)

# The performance figures (docs/performance.md): moxy against nginx and
# nginx-lua with wrk (every peer of HOOKS=1, the 1 MiB case too), the txn
# API per call, and callgrind's instructions per request.
bench: moxy
	@tools/deps.sh bench
	HOOKS=1 LARGE_CONNS=50 bench/run.sh
	bench/txn_api.sh
	VARIANTS="nohook moxy reads jit cache" bench/callgrind.sh

# The unit's ExecStart and ExecStartPre name $(PREFIX)/bin/moxy.
UNIT_SED = sed 's|/usr/local/bin/moxy|$(PREFIX)/bin/moxy|g'

# Installs $(BUILD)/moxy, built for this LUADIR (see $(BUILD)/luadir above).
install: $(BUILD)/moxy
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LUADIR)/moxy
	install -m 755 $(BUILD)/moxy $(DESTDIR)$(PREFIX)/bin/moxy
	install -m 644 lua/moxy/*.lua $(DESTDIR)$(LUADIR)/moxy/
	install -d $(DESTDIR)$(DATADIR)/scripts
	install -m 644 scripts/*.lua $(DESTDIR)$(DATADIR)/scripts/
	install -m 755 geoip/mmdb-build $(DESTDIR)$(PREFIX)/bin/moxy-mmdb-build
	install -d $(DESTDIR)$(MANDIR)/man8
	install -m 644 man/moxy.8 $(DESTDIR)$(MANDIR)/man8/moxy.8
	install -d $(DESTDIR)$(DATADIR)/dist
	$(UNIT_SED) dist/moxy.service > $(DESTDIR)$(DATADIR)/dist/moxy.service
	chmod 644 $(DESTDIR)$(DATADIR)/dist/moxy.service
	install -m 644 dist/moxy.logrotate $(DESTDIR)$(DATADIR)/dist/moxy.logrotate

# Into the system's directories: only on request (docs/operations.md, "systemd").
install-systemd:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(LOGROTATEDIR)
	$(UNIT_SED) dist/moxy.service > $(DESTDIR)$(UNITDIR)/moxy.service
	chmod 644 $(DESTDIR)$(UNITDIR)/moxy.service
	install -m 644 dist/moxy.logrotate $(DESTDIR)$(LOGROTATEDIR)/moxy
	@echo "installed $(DESTDIR)$(UNITDIR)/moxy.service; next: systemctl daemon-reload"

# Removes what install put there (directories only when left empty).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/moxy $(DESTDIR)$(PREFIX)/bin/moxy-mmdb-build
	rm -f $(addprefix $(DESTDIR)$(LUADIR)/moxy/,$(notdir $(wildcard lua/moxy/*.lua)))
	rm -f $(addprefix $(DESTDIR)$(DATADIR)/scripts/,$(notdir $(wildcard scripts/*.lua)))
	rm -f $(DESTDIR)$(DATADIR)/dist/moxy.service $(DESTDIR)$(DATADIR)/dist/moxy.logrotate
	rm -f $(DESTDIR)$(MANDIR)/man8/moxy.8
	@for d in $(DESTDIR)$(LUADIR)/moxy $(DESTDIR)$(LUADIR) $(DESTDIR)$(DATADIR)/scripts \
	          $(DESTDIR)$(DATADIR)/dist $(DESTDIR)$(DATADIR); do rmdir "$$d" 2>/dev/null || true; done

uninstall-systemd:
	rm -f $(DESTDIR)$(UNITDIR)/moxy.service $(DESTDIR)$(LOGROTATEDIR)/moxy

fmt:
	clang-format -i $(SRCS) $(HDRS)

# The layers' rule (tools/layers.lua on the objects' symbols), the FFI cdefs
# against core/api/ffi.h, and no spec left with #only.
lint: $(OBJS)
	@! grep -rn '#only' spec || (echo "lint: a spec is left with #only" && false)
	luajit tools/check-ffi.lua
	luajit tools/check-tailcalls.lua
	@luajit tools/layers.lua -s core $(subst $(SPACE),$(COMMA),$(LAYERS)) $(OBJS) \
	    > $(BUILD)/layers.txt || { grep -v '^known:' $(BUILD)/layers.txt; false; }
	@tail -n 2 $(BUILD)/layers.txt

clean:
	rm -rf build build-asan build-tsan build-fuzz moxy
