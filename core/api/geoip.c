/*
 * geoip.c -- MaxMind databases shared by the workers and swapped when their
 * files change (see geoip.h), and the lookups Lua makes: txn.client.geo's
 * fields and moxy.geo.lookup's whole records.
 *
 * The client's fields (country, city, asn, is_anonymous, ...) are read one
 * at a time with MMDB_aget_value from the request's lookup result, which is
 * made once per database and request (cached in the request), so a script
 * that reads txn.client.geo.country pays one tree walk and one map walk.
 * A field is taken from the first database (in name order) that has it,
 * whatever its type: City, Country, ASN, Anonymous-IP or a custom one.
 */
#include "http/lifecycle.h"
#include "api/geoip.h"
#include "api/ffi.h"
#include "http/http.h"
#include "base/log.h"
#include "http/lua_bridge.h"
#include "base/addr.h"
#include "http/worker.h"

#include <errno.h>
#include <inttypes.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#define EXPORT __attribute__((visibility("default")))

/* One open file. */
typedef struct geo_version_s {
    MMDB_s mmdb;
    unsigned long long id;   /* unique for the process: a request's cached lookup names its version by it */
    unsigned kinds;          /* GEO_K_* of the fields its records may hold (from its database_type) */
    atomic_int refs;         /* the registry's (while current) + each worker's */
    atomic_int error_logged; /* a lookup error was logged for this version */
} geo_version_t;

/* One database of the configuration. */
typedef struct {
    char *name, *path;
    pthread_mutex_t lock;             /* taking a reference to current; swapping it */
    _Atomic(geo_version_t *) current;
    struct stat st;                   /* of the current version's file (main thread) */
    struct stat rejected;             /* of the last file that failed to open, to log it once */
} geo_db_t;

static geo_db_t *dbs;
static int ndbs;
static unsigned registry_gen; /* changes when the set of databases does */
static struct event *watch_ev;

/* The versions a worker holds, one per database of registry generation gen. */
typedef struct {
    unsigned gen;
    int n;
    geo_version_t *v[];
} geo_slots_t;

/* What a request looked up in one database. */
typedef struct {
    unsigned long long id; /* the version looked up in (0: not yet); an id, not a
                            * pointer: a freed version's address may come back */
    MMDB_lookup_result_s res;
    int status;       /* MOXY_OK: found, MOXY_DECLINED: not found, MOXY_ERROR */
} geo_lookup_t;

/* The groups of txn.client.geo's fields, to skip databases that cannot
 * have a field (an ASN database has no country): a field costs one tree
 * walk, not one per database. */
enum { GEO_K_LOCATION = 1, GEO_K_ASN = 2, GEO_K_ANON = 4, GEO_K_ALL = 7 };

/* The field groups a database of type t (its metadata's database_type)
 * holds: MaxMind's types by name, any other type all of them. */
static unsigned kinds_of(const char *t)
{
    if (!t) return GEO_K_ALL;
    if (strstr(t, "Anonymous")) return GEO_K_ANON;
    if (strstr(t, "ASN")) return GEO_K_ASN;
    if ((strstr(t, "GeoIP2") || strstr(t, "GeoLite2") || strstr(t, "DBIP")) &&
        (strstr(t, "City") || strstr(t, "Country")))
        return GEO_K_LOCATION;
    return GEO_K_ALL;
}

/* --- versions --- */

static geo_version_t *version_open(const char *path, char *err, size_t errlen)
{
    geo_version_t *v = calloc(1, sizeof(*v));
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &v->mmdb);
    if (rc != MMDB_SUCCESS) {
        snprintf(err, errlen, "%s%s%s", MMDB_strerror(rc), rc == MMDB_IO_ERROR ? ": " : "",
                 rc == MMDB_IO_ERROR ? strerror(errno) : "");
        free(v);
        return NULL;
    }
    v->kinds = kinds_of(v->mmdb.metadata.database_type);
    static atomic_ullong last_id;
    v->id = atomic_fetch_add(&last_id, 1) + 1;
    atomic_store(&v->refs, 1);
    return v;
}

static void version_release(geo_version_t *v)
{
    if (v && atomic_fetch_sub(&v->refs, 1) == 1) {
        MMDB_close(&v->mmdb);
        free(v);
    }
}

static void slots_free(geo_slots_t *sl)
{
    for (int i = 0; sl && i < sl->n; i++) version_release(sl->v[i]);
    free(sl);
}

/* The current version of database i for w (NULL: the main thread, which
 * owns the swaps and may read current directly). */
static geo_version_t *version_get(moxy_worker_t *w, int i)
{
    geo_db_t *db = &dbs[i];
    geo_version_t *cur = atomic_load_explicit(&db->current, memory_order_acquire);
    if (!w) return cur;
    geo_slots_t *sl = *moxy_worker_slot(w, &moxy_geoip_module);
    if (!sl || sl->gen != registry_gen) { /* first lookup, or another set of databases */
        slots_free(sl);
        *moxy_worker_slot(w, &moxy_geoip_module) = sl = calloc(1, sizeof(*sl) + (size_t)ndbs * sizeof(sl->v[0]));
        if (!sl) return NULL;
        sl->gen = registry_gen;
        sl->n = ndbs;
    }
    geo_version_t **slot = &sl->v[i];
    if (*slot == cur) return cur;
    pthread_mutex_lock(&db->lock);
    cur = atomic_load(&db->current);
    atomic_fetch_add(&cur->refs, 1);
    pthread_mutex_unlock(&db->lock);
    version_release(*slot);
    *slot = cur;
    return cur;
}

void moxy_geoip_worker_refresh(moxy_worker_t *w)
{
    geo_slots_t *sl = *moxy_worker_slot(w, &moxy_geoip_module);
    if (!sl || sl->gen != registry_gen) return;
    for (int i = 0; i < sl->n; i++) {
        if (sl->v[i] && sl->v[i] != atomic_load(&dbs[i].current)) {
            version_release(sl->v[i]);
            sl->v[i] = NULL;
        }
    }
}

void moxy_geoip_worker_free(moxy_worker_t *w)
{
    slots_free(*moxy_worker_slot(w, &moxy_geoip_module));
    *moxy_worker_slot(w, &moxy_geoip_module) = NULL;
}

/* --- the registry --- */

/* Open the database name at path as the next of dbs (room for it made by
 * the caller).  MOXY_OK, or MOXY_ERROR with the reason in err. */
static int open_one(const char *name, const char *path, char *err, size_t errlen)
{
    geo_db_t *db = &dbs[ndbs];
    memset(db, 0, sizeof(*db));
    if (stat(path, &db->st) != 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return MOXY_ERROR;
    }
    char why[200];
    geo_version_t *v = version_open(path, why, sizeof(why));
    if (!v) {
        snprintf(err, errlen, "cannot open %s: %s", path, why);
        return MOXY_ERROR;
    }
    db->name = strdup(name);
    db->path = strdup(path);
    pthread_mutex_init(&db->lock, NULL);
    atomic_store(&db->current, v);
    ndbs++;
    if (!db->name || !db->path) {
        snprintf(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    return MOXY_OK;
}

/* Close the registry's databases and make room for n new ones (a new
 * registry generation: workers let go of their versions at their next
 * lookup).  MOXY_OK, or MOXY_ERROR: out of memory. */
static int registry_reset(int n)
{
    moxy_geoip_close_all();
    registry_gen++;
    dbs = calloc((size_t)n + 1, sizeof(*dbs)); /* + 1: never calloc(0) */
    return dbs ? MOXY_OK : MOXY_ERROR;
}

int moxy_geoip_open(const char *const *names, const char *const *paths, int n, char *err, size_t errlen)
{
    if (registry_reset(n) != MOXY_OK) {
        snprintf(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    for (int i = 0; i < n; i++) {
        char why[300];
        if (open_one(names[i], paths[i], why, sizeof(why)) != MOXY_OK) {
            snprintf(err, errlen, "geoip.%s: %s", names[i], why);
            moxy_geoip_close_all();
            return MOXY_ERROR;
        }
    }
    return MOXY_OK;
}

int moxy_geoip_open_all(const moxy_conf_t *conf, FILE *out)
{
    if (registry_reset(conf->ngeoip) != MOXY_OK) return MOXY_ERROR;
    int rc = MOXY_OK;
    for (int i = 0; i < conf->ngeoip; i++) { /* every one that fails is reported */
        const moxy_geoip_conf_t *gc = &conf->geoip[i];
        char err[300];
        if (open_one(gc->name, gc->path, err, sizeof(err)) != MOXY_OK) {
            fprintf(out, "%s:%d: geoip.%s: %s\n", conf->path, gc->line, gc->name, err);
            rc = MOXY_ERROR;
        }
    }
    return rc;
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* The main thread's look at the files: open what changed, swap it in. */
static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    MOXY_UNUSED(fd);
    MOXY_UNUSED(what);
    MOXY_UNUSED(arg);
    for (int i = 0; i < ndbs; i++) {
        geo_db_t *db = &dbs[i];
        struct stat st;
        if (stat(db->path, &st) != 0 || same_file(&st, &db->st) || same_file(&st, &db->rejected)) continue;
        char err[256];
        geo_version_t *v = version_open(db->path, err, sizeof(err));
        if (!v) {
            db->rejected = st;
            moxy_log(MOXY_LOG_ERR, NULL, "geoip %s: %s changed but cannot be opened (%s); the old one stays in use",
                     db->name, db->path, err);
            continue;
        }
        pthread_mutex_lock(&db->lock);
        geo_version_t *old = atomic_load(&db->current);
        atomic_store_explicit(&db->current, v, memory_order_release);
        pthread_mutex_unlock(&db->lock);
        version_release(old);
        db->st = st;
        memset(&db->rejected, 0, sizeof(db->rejected));
        moxy_log(MOXY_LOG_INFO, NULL, "geoip %s: reopened %s (%s, built %" PRIu64 ")", db->name, db->path,
                 v->mmdb.metadata.database_type, v->mmdb.metadata.build_epoch);
    }
}

int moxy_geoip_watch_start(struct event_base *base)
{
    if (ndbs == 0) return MOXY_OK;
    watch_ev = event_new(base, -1, EV_PERSIST, watch_cb, NULL);
    struct timeval sec = {1, 0};
    if (!watch_ev || event_add(watch_ev, &sec) != 0) return MOXY_ERROR;
    return MOXY_OK;
}

void moxy_geoip_close_all(void)
{
    if (watch_ev) event_free(watch_ev);
    watch_ev = NULL;
    for (int i = 0; i < ndbs; i++) {
        version_release(atomic_load(&dbs[i].current));
        pthread_mutex_destroy(&dbs[i].lock);
        free(dbs[i].name);
        free(dbs[i].path);
    }
    free(dbs);
    dbs = NULL;
    ndbs = 0;
}

/* --- lookups --- */

/* Parse an IP literal (len bytes) into sa; an IPv4-mapped IPv6 address
 * becomes IPv4 (found in any database, also those without the mapped
 * subtree).  MOXY_OK or MOXY_ERROR. */
static int parse_ip(const char *ip, size_t len, struct sockaddr_storage *sa)
{
    int family = 0;
    uint8_t addr[16];
    if (moxy_ip_pton(ip, len, &family, addr) != MOXY_OK) return MOXY_ERROR;
    memset(sa, 0, sizeof(*sa));
    if (family == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, addr, 16);
    }
    return MOXY_OK;
}

/* Look sa up in version v of database i into *out; errors are logged once
 * per version. */
static void lookup(int i, geo_version_t *v, const struct sockaddr_storage *sa, geo_lookup_t *out)
{
    int mmdb_err = MMDB_SUCCESS;
    out->id = v->id;
    out->res = MMDB_lookup_sockaddr(&v->mmdb, (const struct sockaddr *)sa, &mmdb_err);
    if (mmdb_err == MMDB_SUCCESS) {
        out->status = out->res.found_entry ? MOXY_OK : MOXY_DECLINED;
        return;
    }
    out->status = mmdb_err == MMDB_IPV6_LOOKUP_IN_IPV4_DATABASE_ERROR ? MOXY_DECLINED : MOXY_ERROR;
    if (out->status == MOXY_ERROR && !atomic_exchange(&v->error_logged, 1))
        moxy_log(MOXY_LOG_ERR, NULL, "geoip %s: lookup failed: %s", dbs[i].name, MMDB_strerror(mmdb_err));
}

/* txn.client.geo's fields, in lua/moxy/geo.lua's FIELDS order: the group
 * of each (GEO_K_*) and its path in MaxMind's record layout. */
static const struct {
    unsigned char kind;
    const char *const path[5];
} client_fields[] = {
    {GEO_K_LOCATION, {"country", "iso_code"}},              /* country */
    {GEO_K_LOCATION, {"country", "names", "en"}},           /* country_name */
    {GEO_K_LOCATION, {"continent", "code"}},                /* continent */
    {GEO_K_LOCATION, {"continent", "names", "en"}},         /* continent_name */
    {GEO_K_LOCATION, {"city", "names", "en"}},              /* city */
    {GEO_K_LOCATION, {"subdivisions", "0", "iso_code"}},    /* subdivision */
    {GEO_K_LOCATION, {"subdivisions", "0", "names", "en"}}, /* subdivision_name */
    {GEO_K_LOCATION, {"postal", "code"}},                   /* postal */
    {GEO_K_LOCATION, {"location", "latitude"}},             /* lat */
    {GEO_K_LOCATION, {"location", "longitude"}},            /* lon */
    {GEO_K_LOCATION, {"location", "accuracy_radius"}},      /* accuracy_radius */
    {GEO_K_LOCATION, {"location", "time_zone"}},            /* time_zone */
    {GEO_K_LOCATION, {"registered_country", "iso_code"}},   /* registered_country */
    {GEO_K_ASN, {"autonomous_system_number"}},              /* asn */
    {GEO_K_ASN, {"autonomous_system_organization"}},        /* as_org */
    {GEO_K_ANON, {"is_anonymous"}},
    {GEO_K_ANON, {"is_anonymous_vpn"}},
    {GEO_K_ANON, {"is_hosting_provider"}},
    {GEO_K_ANON, {"is_public_proxy"}},
    {GEO_K_ANON, {"is_tor_exit_node"}},
    {GEO_K_ANON, {"is_residential_proxy"}},
};

/* A scalar entry as a moxy_ffi_geo_value_t.  MOXY_OK, or MOXY_DECLINED for
 * a type a field does not hold (map, array, bytes...). */
static int scalar(const MMDB_entry_data_s *d, moxy_ffi_geo_value_t *out)
{
    switch (d->type) {
    case MMDB_DATA_TYPE_UTF8_STRING:
        out->type = MOXY_FFI_GEO_STRING;
        out->s = d->utf8_string;
        out->len = d->data_size;
        return MOXY_OK;
    case MMDB_DATA_TYPE_DOUBLE: out->n = d->double_value; break;
    case MMDB_DATA_TYPE_FLOAT: out->n = d->float_value; break;
    case MMDB_DATA_TYPE_UINT16: out->n = d->uint16; break;
    case MMDB_DATA_TYPE_UINT32: out->n = d->uint32; break;
    case MMDB_DATA_TYPE_INT32: out->n = d->int32; break;
    case MMDB_DATA_TYPE_UINT64: out->n = (double)d->uint64; break;
    case MMDB_DATA_TYPE_BOOLEAN:
        out->type = MOXY_FFI_GEO_BOOLEAN;
        out->n = d->boolean;
        return MOXY_OK;
    default: return MOXY_DECLINED;
    }
    out->type = MOXY_FFI_GEO_NUMBER;
    return MOXY_OK;
}

/* Field `field` of ip (len bytes) from the first database that has it, for
 * w (NULL: the main thread); lk: ndbs lookups, made here when they are not
 * of the current versions (a request's cache, or scratch).  MOXY_OK;
 * MOXY_DECLINED (out->type NONE): no database has it (or none is open, or
 * ip is not an address); MOXY_ERROR: out of memory. */
static int field_of(moxy_worker_t *w, const char *ip, size_t len, geo_lookup_t *lk, int field,
                    moxy_ffi_geo_value_t *out)
{
    out->type = MOXY_FFI_GEO_NONE;
    if (field < 0 || field >= (int)MOXY_ARRAY_LEN(client_fields)) return MOXY_DECLINED;
    struct sockaddr_storage sa;
    int parsed = 0;
    for (int i = 0; i < ndbs; i++) {
        geo_version_t *v = version_get(w, i);
        if (!v) return MOXY_ERROR;
        if (!(v->kinds & client_fields[field].kind)) continue;
        if (lk[i].id != v->id) { /* first look at this database, or it was swapped since */
            if (!parsed && parse_ip(ip, len, &sa) != MOXY_OK) return MOXY_DECLINED;
            parsed = 1;
            lookup(i, v, &sa, &lk[i]);
        }
        if (lk[i].status != MOXY_OK) continue;
        MMDB_entry_data_s d;
        if (MMDB_aget_value(&lk[i].res.entry, &d, client_fields[field].path) == MMDB_SUCCESS && d.has_data &&
            scalar(&d, out) == MOXY_OK)
            return MOXY_OK;
    }
    return MOXY_DECLINED;
}

EXPORT int moxy_ffi_geo_client(moxy_req_t *r, int field, moxy_ffi_geo_value_t *out)
{
    if (ndbs == 0) return MOXY_DECLINED; /* no cache to make (a palloc of 0) */
    geo_lookup_t *lk = r->geo;
    if (!lk) {
        lk = moxy_palloc(&r->mem, (size_t)ndbs * sizeof(*lk));
        if (!lk) return MOXY_ERROR;
        memset(lk, 0, (size_t)ndbs * sizeof(*lk));
        r->geo = lk;
    }
    const char *ip = moxy_req_client_ip(r);
    return field_of(r->w, ip, strlen(ip), lk, field, out);
}

EXPORT int moxy_ffi_geo_field(const char *ip, size_t iplen, int field, moxy_ffi_geo_value_t *out)
{
    geo_lookup_t scratch[8] = {0}, *lk = scratch; /* no cache to keep: lookups of this call only */
    if (ndbs > (int)MOXY_ARRAY_LEN(scratch) && !(lk = calloc((size_t)ndbs, sizeof(*lk)))) return MOXY_ERROR;
    int rc = field_of(moxy_lua_worker(), ip, iplen, lk, field, out);
    if (lk != scratch) free(lk);
    return rc;
}

EXPORT int moxy_ffi_geo_count(void)
{
    return ndbs;
}

EXPORT const char *moxy_ffi_geo_name(int i)
{
    return i >= 0 && i < ndbs ? dbs[i].name : NULL;
}

/* The item after the value at items[i] (of n), walked as lua/moxy/geo.lua's
 * decode walks it (a map: size pairs of a key item and a value; an array:
 * size values), or -1 when the list does not have that shape.
 * libmaxminddb takes any value as a map key and lists a map or array key
 * with its contents: decode, which reads a key as one string item, would
 * then misread the rest of the record (found by fuzz/geoip_fuzz.c). */
static int item_end(const moxy_ffi_geo_item_t *items, int i, int n)
{
    if (i >= n) return -1;
    const moxy_ffi_geo_item_t *it = &items[i++];
    if (it->type == MMDB_DATA_TYPE_MAP) {
        for (unsigned k = 0; k < it->size && i >= 0; k++) {
            if (i >= n || items[i].type != MMDB_DATA_TYPE_UTF8_STRING) return -1;
            i = item_end(items, i + 1, n);
        }
    } else if (it->type == MMDB_DATA_TYPE_ARRAY) {
        for (unsigned k = 0; k < it->size && i >= 0; k++) i = item_end(items, i, n);
    }
    return i;
}

EXPORT int moxy_ffi_geo_lookup(const char *ip, size_t iplen, int db, moxy_ffi_geo_item_t *items, int max, int *n,
                               char *err, size_t errlen)
{
    *n = 0;
    if (db < 0 || db >= ndbs) {
        snprintf(err, errlen, "no such database");
        return MOXY_ERROR;
    }
    struct sockaddr_storage sa;
    if (parse_ip(ip, iplen, &sa) != MOXY_OK) {
        snprintf(err, errlen, "invalid address");
        return MOXY_ERROR;
    }
    geo_version_t *v = version_get(moxy_lua_worker(), db);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    geo_lookup_t lk;
    lookup(db, v, &sa, &lk);
    if (lk.status == MOXY_DECLINED) return MOXY_DECLINED;
    if (lk.status == MOXY_ERROR) {
        snprintf(err, errlen, "database error");
        return MOXY_ERROR;
    }
    MMDB_entry_data_list_s *list = NULL;
    int rc = MMDB_get_entry_data_list(&lk.res.entry, &list);
    if (rc != MMDB_SUCCESS) {
        MMDB_free_entry_data_list(list);
        snprintf(err, errlen, "database error: %s", MMDB_strerror(rc));
        return MOXY_ERROR;
    }
    int count = 0;
    for (MMDB_entry_data_list_s *e = list; e; e = e->next) {
        if (count == max) {
            MMDB_free_entry_data_list(list);
            snprintf(err, errlen, "record too large (more than %d items)", max);
            return MOXY_ERROR;
        }
        const MMDB_entry_data_s *d = &e->entry_data;
        moxy_ffi_geo_item_t *it = &items[count++];
        memset(it, 0, sizeof(*it));
        it->type = (int)d->type;
        moxy_ffi_geo_value_t v = {0};
        switch (d->type) {
        case MMDB_DATA_TYPE_MAP:
        case MMDB_DATA_TYPE_ARRAY: it->size = d->data_size; break;
        case MMDB_DATA_TYPE_BYTES:
            it->s = (const char *)d->bytes;
            it->len = d->data_size;
            break;
        case MMDB_DATA_TYPE_UINT64: it->u = d->uint64; break; /* exact, not as a double */
        case MMDB_DATA_TYPE_UINT128:
#if MMDB_UINT128_IS_BYTE_ARRAY
            for (int b = 0; b < 8; b++) {
                it->u_hi = it->u_hi << 8 | d->uint128[b];
                it->u = it->u << 8 | d->uint128[b + 8];
            }
#else
            it->u_hi = (unsigned long long)(d->uint128 >> 64);
            it->u = (unsigned long long)d->uint128;
#endif
            break;
        default: /* string, numbers, boolean: as a field's value */
            if (scalar(d, &v) == MOXY_OK) {
                it->s = v.s;
                it->len = v.len;
                it->n = v.n;
            }
        }
    }
    MMDB_free_entry_data_list(list);
    if (item_end(items, 0, count) != count) {
        snprintf(err, errlen, "database error: %s", MMDB_strerror(MMDB_INVALID_DATA_ERROR));
        return MOXY_ERROR;
    }
    *n = count;
    return MOXY_OK;
}

moxy_module_t moxy_geoip_module = {
    .name = "geoip",
    .worker_tick = moxy_geoip_worker_refresh,
    .worker_free = moxy_geoip_worker_free,
};
