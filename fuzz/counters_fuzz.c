/*
 * counters_fuzz.c -- the named counters of /metrics (base/counters.c): a
 * metric name and a label text as a script's FFI call may give them.
 *
 * An input is a name, a NUL, then the label text.  Invariants: a counter is
 * made only for a name of [a-zA-Z_:][a-zA-Z0-9_:]* and labels that an
 * independent model of Prometheus' text format accepts (k="v" pairs, the
 * values' escapes \\ \" \n only, no control characters), so every line
 * /metrics prints is well-formed; asking again gives the same id; adds
 * add; nothing reads past the input.
 */
#include "fuzz.h"
#include "base/counters.h"

#include <assert.h>

static int model_name(const char *s, size_t n)
{
    if (n == 0 || n > 200) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                 (i > 0 && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

/* k="v"(,k="v")* with label names as metric names without ':'. */
static int model_labels(const char *s, size_t n)
{
    size_t i = 0;
    if (n == 0) return 1;
    for (;;) {
        size_t k = i;
        while (i < n && s[i] != '=') i++;
        if (i == n || !model_name(s + k, i - k) || memchr(s + k, ':', i - k)) return 0;
        i++;
        if (i == n || s[i] != '"') return 0;
        i++;
        for (;;) {
            if (i == n) return 0;
            unsigned char c = (unsigned char)s[i];
            if (c == '"') break;
            if (c < 0x20 || c == 0x7f) return 0;
            if (c == '\\') {
                if (i + 1 == n || !strchr("\\\"n", s[i + 1]) || s[i + 1] == '\0') return 0;
                i++;
            }
            i++;
        }
        i++;
        if (i == n) return 1;
        if (s[i] != ',' || i + 1 == n) return 0;
        i++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    size_t nlen = (size_t)(nul - data), llen = size - nlen - 1;
    char *name = fuzz_dup(data, nlen);
    char *labels = fuzz_dup(nul + 1, llen);
    int id = moxy_ffi_counter(name, nlen, labels, llen, "fuzz");
    int valid = nlen + llen + 1 <= MOXY_COUNTER_TEXT_MAX && model_name(name, nlen) && model_labels(labels, llen);
    if (id >= 0) {
        assert(valid);
        assert(moxy_ffi_counter(name, nlen, labels, llen, NULL) == id);
        double before = moxy_ffi_counter_get(id);
        moxy_ffi_counter_add(id, 2);
        assert(moxy_ffi_counter_get(id) == before + 2);
    } else {
        /* refused: not valid, or the table is full */
        assert(!valid || moxy_counters_refused() > 0);
    }
    free(name);
    free(labels);
    return 0;
}
