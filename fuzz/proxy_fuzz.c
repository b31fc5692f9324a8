/*
 * proxy_fuzz.c -- the PROXY protocol header parser (moxy_proxy_parse), fed as
 * a client connection feeds it: the bytes that came so far, then more.
 *
 * Invariants: the parser never reads past n; MOXY_OK says how many bytes the
 * header took (within what was given, v1 at most MOXY_PROXY_V1_MAX); a family
 * is 0, 4 or 6; MOXY_AGAIN asks for more than was given; an error has a why.
 */
#include "fuzz.h"
#include "net/proxy_protocol.h"

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exactly size bytes: ASan catches a read past them */
    uint8_t *p = size ? malloc(size) : NULL;
    if (size) memcpy(p, data, size);
    /* the whole input, and prefixes of it, as a header arriving in pieces is seen */
    size_t cuts[] = {size, 0, size / 3, size / 2, size > 16 ? 16 : size};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        size_t n = cuts[i];
        moxy_proxy_hdr_t h;
        memset(&h, 0, sizeof(h));
        int rc = moxy_proxy_parse(p, n, &h);
        if (rc == MOXY_OK) {
            assert(h.len > 0 && h.len <= n);
            assert(h.version == 1 || h.version == 2);
            assert(h.family == 0 || h.family == 4 || h.family == 6);
            if (h.version == 1) assert(h.len <= MOXY_PROXY_V1_MAX);
        } else if (rc == MOXY_AGAIN) {
            assert(h.len > n || n == 0);
        } else {
            assert(rc == MOXY_ERROR && h.why);
        }
    }
    free(p);
    return 0;
}
