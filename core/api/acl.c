/*
 * acl.c -- moxy.acl's prefix sets and password checks; see acl.h.
 *
 * A password check (check_t) is owned by two: the offload job and the task
 * waiting for it.  Whichever lets go last frees it: the job's done wakes
 * the task (unless it was dropped, or the worker stops) and lets go; the
 * task's cancel (its client left) marks it and lets go.  The password's
 * copy is wiped as soon as the check ran.
 */
#include "api/acl.h"
#include "base/addr.h"
#include "base/prefix_set.h"
#include "http/lua_bridge.h"
#include "http/offload.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define ACL_PASS_MAX 1024

EXPORT moxy_prefix_set_t *moxy_ffi_pset_new(const char **cidrs, const size_t *lens, int n, const char **files,
                                            int nfiles, char *err, size_t errlen)
{
    moxy_prefix_set_builder_t *b = moxy_prefix_set_builder_new(0);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    moxy_prefix_set_t *s = NULL;
    for (int i = 0; i < n; i++)
        if (moxy_prefix_set_add_text(b, cidrs[i], lens[i], 1, err, errlen) != MOXY_OK) goto out;
    for (int i = 0; i < nfiles; i++)
        if (moxy_prefix_set_load(b, files[i], 1, err, errlen) != MOXY_OK) goto out;
    s = moxy_prefix_set_build(b, err, errlen);
out:
    moxy_prefix_set_builder_free(b);
    return s;
}

EXPORT void moxy_ffi_pset_free(moxy_prefix_set_t *s)
{
    moxy_prefix_set_free(s);
}

EXPORT int moxy_ffi_pset_match(const moxy_prefix_set_t *s, const char *ip, size_t len)
{
    int family = 0;
    uint8_t addr[16];
    if (moxy_ip_pton(ip, len, &family, addr) != MOXY_OK) return -1;
    return moxy_prefix_set_lookup(s, family, addr) != MOXY_PREFIX_NONE;
}

EXPORT void moxy_ffi_pset_info(const moxy_prefix_set_t *s, size_t *prefixes, size_t *bytes)
{
    moxy_prefix_set_stats_t st;
    moxy_prefix_set_stats(s, &st);
    *prefixes = st.prefixes[0] + st.prefixes[1];
    *bytes = st.bytes;
}

EXPORT int moxy_ffi_crypt_supported(const char *hash)
{
    int rc = crypt_checksalt(hash);
    if (rc == CRYPT_SALT_OK) return 1;
    if (rc == CRYPT_SALT_METHOD_LEGACY) return -1;
    return 0;
}

typedef struct {
    moxy_lua_task_t *task;
    int refs;      /* the job and the task */
    int cancelled; /* the task was dropped */
    int match;
    size_t plen;
    char *hash;
    char pass[];
} check_t;

static void check_unref(check_t *c)
{
    if (--c->refs > 0) return;
    free(c->hash);
    free(c);
}

/* On an offload thread: only c's own bytes. */
static void check_work(void *arg)
{
    check_t *c = arg;
    struct crypt_data *data = calloc(1, sizeof(*data));
    c->match = 0;
    if (data) {
        char pass[ACL_PASS_MAX + 1];
        memcpy(pass, c->pass, c->plen);
        pass[c->plen] = '\0';
        const char *out = crypt_rn(pass, c->hash, data, (int)sizeof(*data));
        if (out && out[0] != '*') {
            size_t a = strlen(out), b = strlen(c->hash);
            unsigned char diff = (unsigned char)(a != b);
            for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned char)(out[i] ^ c->hash[i]);
            c->match = diff == 0;
        }
        explicit_bzero(pass, sizeof(pass));
        explicit_bzero(data, sizeof(*data));
        free(data);
    }
    explicit_bzero(c->pass, c->plen);
}

static void check_done(void *arg, int stopping)
{
    check_t *c = arg;
    if (!c->cancelled && !stopping) {
        moxy_lua_task_t *t = c->task;
        int match = c->match;
        c->cancelled = 1; /* its cancel will not come now: the task is woken */
        c->refs--;        /* the task's reference */
        check_unref(c);   /* the job's */
        lua_State *co = moxy_lua_task_thread(t);
        lua_checkstack(co, 1);
        lua_pushboolean(co, match);
        moxy_lua_task_wake(t, 1);
        return;
    }
    check_unref(c);
}

static void check_cancel(void *arg)
{
    check_t *c = arg;
    c->cancelled = 1;
    check_unref(c);
}

EXPORT int moxy_ffi_crypt_check(const char *pass, size_t plen, const char *hash, char *err, size_t errlen)
{
    moxy_lua_task_t *t = moxy_lua_current_task();
    if (!t) return MOXY_DECLINED;
    if (plen > ACL_PASS_MAX) plen = ACL_PASS_MAX + 1; /* cannot match: longer than any accepted */
    check_t *c = calloc(1, sizeof(*c) + plen + 1);
    if (!c || !(c->hash = strdup(hash))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return MOXY_ERROR;
    }
    if (plen > ACL_PASS_MAX) {
        c->plen = 0;
        free(c->hash);
        c->hash = strdup("*"); /* crypt fails on it: no match, same path */
        if (!c->hash) {
            free(c);
            snprintf(err, errlen, "out of memory");
            return MOXY_ERROR;
        }
    } else {
        memcpy(c->pass, pass, plen);
        c->plen = plen;
    }
    c->task = t;
    c->refs = 2;
    if (moxy_offload(moxy_lua_task_worker(t), check_work, check_done, c) != MOXY_OK) {
        explicit_bzero(c->pass, c->plen);
        free(c->hash);
        free(c);
        snprintf(err, errlen, "too many password checks waiting");
        return MOXY_ERROR;
    }
    moxy_lua_task_wait(t, c, check_cancel);
    return MOXY_OK;
}
