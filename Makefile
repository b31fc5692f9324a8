# moxy -- Lua-scriptable edge proxy.
#
#   make run     install what is missing, build, start on the quickstart config
#   make test    install what is missing, build, run every spec
#   make check   the same specs against an ASan+UBSan build
#   make bench   moxy vs nginx side by side (wrk on loopback)

PREFIX    ?= /usr/local
LUADIR    ?= $(PREFIX)/share/moxy/lua
CC        ?= cc
LLHTTP_SRC = /usr/share/llhttp
LLHTTP_INC = /usr/share/include/llhttp

PKGS      := luajit libevent_core libevent_extra libssl libcrypto zlib libmaxminddb libpcre2-8
CFLAGS    ?= -O2 -g
MOXY_CFLAGS = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fno-strict-aliasing \
             -I$(LLHTTP_INC) -Icore -DMOXY_LUADIR='"$(LUADIR)"' -DLLHTTP_STRICT_MODE=1 \
             $(shell pkg-config --cflags luajit)
LDLIBS    += -lluajit-5.1 -levent_extra -levent_core -lssl -lcrypto -lz -lmaxminddb -lpcre2-8 -lpthread -lm -ldl
MOXY_LDFLAGS = -Wl,-E

BUILD     ?= build
SRCS      := $(wildcard core/*.c)
OBJS      := $(SRCS:core/%.c=$(BUILD)/%.o) $(BUILD)/llhttp.o $(BUILD)/llhttp_api.o $(BUILD)/llhttp_http.o
# Specs run inside moxy's own runtime (`moxy test` = busted with moxy's modules).

.PHONY: all deps run test check bench install fmt lint clean

all: moxy

deps:
	@tools/deps.sh

moxy: $(BUILD)/moxy
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/moxy: $(OBJS)
	$(CC) $(CFLAGS) $(MOXY_CFLAGS) $(LDFLAGS) $(MOXY_LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: core/%.c $(wildcard core/*.h) | $(BUILD)
	@echo "  CC $<"
	@$(CC) $(CFLAGS) $(MOXY_CFLAGS) -c -o $@ $<

# llhttp is third-party C from Debian's node-llhttp; build it without our -Werror.
$(BUILD)/llhttp.o: $(LLHTTP_SRC)/llhttp.c | $(BUILD)
	$(CC) -O2 -g -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<
$(BUILD)/llhttp_api.o: $(LLHTTP_SRC)/api.c | $(BUILD)
	$(CC) -O2 -g -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<
$(BUILD)/llhttp_http.o: $(LLHTTP_SRC)/http.c | $(BUILD)
	$(CC) -O2 -g -fPIC -DLLHTTP_STRICT_MODE=1 -I$(LLHTTP_INC) -c -o $@ $<

$(BUILD):
	mkdir -p $@

run: deps moxy
	./moxy -c conf/quickstart.lua

test: deps moxy
	MOXY_BIN=$(CURDIR)/moxy ./moxy test spec

check: deps moxy
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	        LDFLAGS="-fsanitize=address,undefined" build-asan/moxy
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  MOXY_BIN=$(CURDIR)/build-asan/moxy MOXY_SANITIZED=1 ./moxy test spec

bench: moxy
	@tools/deps.sh bench
	bench/run.sh

install: moxy
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LUADIR)/moxy
	install -m 755 moxy $(DESTDIR)$(PREFIX)/bin/moxy
	install -m 644 lua/moxy/*.lua $(DESTDIR)$(LUADIR)/moxy/
	install -d $(DESTDIR)$(PREFIX)/share/moxy/scripts
	install -m 644 scripts/*.lua $(DESTDIR)$(PREFIX)/share/moxy/scripts/
	install -m 755 geoip/mmdb-build $(DESTDIR)$(PREFIX)/bin/moxy-mmdb-build

fmt:
	clang-format -i core/*.c core/*.h

lint:
	@! grep -rn '#only' spec || (echo "lint: a spec is left with #only" && false)
	luajit tools/check-ffi.lua

clean:
	rm -rf build build-asan moxy
