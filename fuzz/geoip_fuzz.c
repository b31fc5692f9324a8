/*
 * geoip_fuzz.c -- a MaxMind database moxy opens (geoip.c) and the
 * conversion of its records into what scripts see: txn.client.geo's fields
 * (moxy_ffi_geo_field: the field table, scalar()) and moxy.geo.lookup's
 * item list (moxy_ffi_geo_lookup), plus the addresses given to them
 * (parse_ip, moxy_ip_pton).
 *
 * Input:
 *   byte 0         n, the length of an address to look up (0: none)
 *   n bytes        that address, as a script would pass it
 *   the rest       the .mmdb file (libmaxminddb opens files only: it is
 *                  written to a file of this process's, then opened by
 *                  moxy_geoip_open as the one database "db")
 * Each address of a fixed list (the test networks of
 * spec/support/geoip/ JSON files, IPv4, IPv6, IPv4-mapped) and the input's are
 * looked up: every txn.client.geo field, and the whole record.
 *
 * Invariants:
 *  - moxy_geoip_open fails with "geoip.db: ..." or opens the database;
 *  - a field is MOXY_OK with a type STRING (len bytes, a pointer when
 *    len > 0), NUMBER or BOOLEAN (0 or 1), or MOXY_DECLINED with type
 *    NONE; an address that is not an IP is always declined;
 *  - a record is MOXY_OK with 1..max items that lua/moxy/geo.lua's decode
 *    walks exactly (map: size key/value pairs, a key one UTF-8 string; array:
 *    size values), a string or bytes item a pointer when its len > 0, MOXY_DECLINED, or MOXY_ERROR with a reason; an address
 *    that is not an IP is "invalid address".
 */
#include "fuzz.h"
#include "api/ffi.h"
#include "api/geoip.h"
#include "base/addr.h"

#include <assert.h>
#include <fcntl.h>
#include <maxminddb.h>
#include <stdio.h>
#include <unistd.h>

#define MAX_ITEMS 4096 /* lua/moxy/geo.lua's */
#define NFIELDS 21     /* geo.lua's FIELDS */

static const char *const ADDRS[] = {
    "81.2.69.142", "2001:218::1", "::ffff:81.2.69.142", "1.2.3.4", "10.1.2.3", "2001:db8::5",
};

static char path[4096];
static moxy_ffi_geo_item_t items[MAX_ITEMS];

/* libmaxminddb 1.7.1 (Debian 12) leaks a data pool when MMDB_open fails
 * on bad metadata (fixed upstream: maxmind/libmaxminddb#356); moxy cannot
 * free it.  The library has no frame pointers, so the fast unwinder stops
 * in it and the suppression names the library: allocations libmaxminddb
 * makes for moxy's own calls (MMDB_get_entry_data_list) are not checked
 * here -- geoip.c frees those lists on every path. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libmaxminddb.so\n";
}

/* main.c's (not linked). */
void moxy_main_worker_exited(void)
{
}

static void init(void)
{
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof(path), "%s/moxy-geoip-fuzz-%ld.mmdb", dir, (long)getpid());
}

/* geo.lua's decode: the item after the value at i, or aborts. */
static int walk(int i, int n, int depth)
{
    assert(i < n && depth < 1024);
    const moxy_ffi_geo_item_t *it = &items[i];
    if (it->type == MMDB_DATA_TYPE_MAP) {
        int j = i + 1;
        for (unsigned k = 0; k < it->size; k++) {
            /* a key: one UTF-8 string item (decode takes ffi.string(s, len)) */
            assert(j < n && items[j].type == MMDB_DATA_TYPE_UTF8_STRING);
            assert(items[j].s || items[j].len == 0);
            j = walk(j + 1, n, depth + 1);
        }
        return j;
    }
    if (it->type == MMDB_DATA_TYPE_ARRAY) {
        int j = i + 1;
        for (unsigned k = 0; k < it->size; k++) j = walk(j, n, depth + 1);
        return j;
    }
    if (it->type == MMDB_DATA_TYPE_UTF8_STRING || it->type == MMDB_DATA_TYPE_BYTES) {
        assert(it->s || it->len == 0);
        if (it->len) {
            volatile char c = it->s[0] ^ it->s[it->len - 1]; /* within the mapped file */
            MOXY_UNUSED(c);
        }
    }
    return i + 1;
}

/* Look the len bytes at ip up (a copy of exactly len bytes). */
static void look_up(const char *text, size_t len)
{
    char *ip = malloc(len ? len : 1);
    memcpy(ip, text, len);
    int family = 0;
    uint8_t addr[16];
    int is_ip = moxy_ip_pton(ip, len, &family, addr) == MOXY_OK;
    for (int f = -1; f <= NFIELDS; f++) { /* -1, NFIELDS: out of range */
        moxy_ffi_geo_value_t v;
        memset(&v, 0x5a, sizeof(v));
        int rc = moxy_ffi_geo_field(ip, len, f, &v);
        if (rc == MOXY_OK) {
            assert(is_ip && f >= 0 && f < NFIELDS);
            assert(v.type == MOXY_FFI_GEO_STRING || v.type == MOXY_FFI_GEO_NUMBER || v.type == MOXY_FFI_GEO_BOOLEAN);
            if (v.type == MOXY_FFI_GEO_STRING) assert(v.s || v.len == 0);
            if (v.type == MOXY_FFI_GEO_BOOLEAN) assert(v.n == 0 || v.n == 1);
        } else {
            assert(rc == MOXY_DECLINED && v.type == MOXY_FFI_GEO_NONE);
        }
    }
    int n = -1;
    char err[256];
    err[0] = '\0';
    int rc = moxy_ffi_geo_lookup(ip, len, 0, items, MAX_ITEMS, &n, err, sizeof(err));
    if (rc == MOXY_OK) {
        assert(is_ip && n >= 1 && n <= MAX_ITEMS);
        int w = walk(0, n, 0);
        if (w != n) {
            fprintf(stderr, "geoip_fuzz: %.*s: decode walks %d of %d items\n", (int)len, ip, w, n);
            for (int x = 0; x < n && x < 60; x++)
                fprintf(stderr, "  [%d] type %d size %u len %zu %.*s\n", x, items[x].type, items[x].size, items[x].len,
                        items[x].type == 2 ? (int)items[x].len : 0, items[x].s ? items[x].s : "");
            abort();
        }
    } else if (rc == MOXY_DECLINED) {
        assert(is_ip && n == 0);
    } else {
        assert(rc == MOXY_ERROR && err[0] && n == 0);
        if (!is_ip) assert(strcmp(err, "invalid address") == 0);
    }
    /* a database that is not there */
    assert(moxy_ffi_geo_lookup(ip, len, 1, items, MAX_ITEMS, &n, err, sizeof(err)) == MOXY_ERROR);
    free(ip);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!path[0]) init();
    size_t iplen = fuzz_take_byte(&data, &size);
    if (iplen > size) iplen = size;
    const char *ip = (const char *)data;
    data += iplen;
    size -= iplen;

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size)) abort();
    close(fd);
    const char *names[] = {"db"}, *paths[] = {path};
    char err[512];
    err[0] = '\0';
    if (moxy_geoip_open(names, paths, 1, err, sizeof(err)) != MOXY_OK) {
        assert(strncmp(err, "geoip.db: ", 10) == 0);
        assert(moxy_ffi_geo_count() == 0);
        unlink(path);
        return 0;
    }
    assert(moxy_ffi_geo_count() == 1 && strcmp(moxy_ffi_geo_name(0), "db") == 0 && !moxy_ffi_geo_name(1));
    for (size_t i = 0; i < MOXY_ARRAY_LEN(ADDRS); i++) look_up(ADDRS[i], strlen(ADDRS[i]));
    if (iplen) look_up(ip, iplen);
    moxy_geoip_close_all();
    unlink(path);
    return 0;
}
