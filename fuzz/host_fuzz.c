/*
 * host_fuzz.c -- Host and absolute-form authority validation
 * (moxy_host_valid), the check that keeps '/', '?', '#', '@' and the like out
 * of r->host, X-Forwarded-Host and the cache key.
 *
 * Invariants: a valid host is not empty; it holds no byte outside RFC
 * 3986's host and port characters; a reg-name's '%' is followed by two hex
 * digits; a port has at most 5 digits; the check never reads past size.
 */
#include "fuzz.h"
#include "base/headers.h"

#include <assert.h>
#include <ctype.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = size ? malloc(size) : NULL; /* exactly size bytes: ASan sees a read past them */
    if (size) memcpy(p, data, size);
    if (moxy_host_valid(p, size)) {
        assert(size > 0);
        int bracket = p[0] == '[';
        size_t end = size;
        if (bracket) {
            const char *e = memchr(p, ']', size);
            assert(e);
            end = (size_t)(e - p) + 1;
        } else {
            const char *colon = memchr(p, ':', size);
            if (colon) end = (size_t)(colon - p);
            assert(end > 0);
            for (size_t i = 0; i < end; i++) {
                unsigned char ch = (unsigned char)p[i];
                assert(ch > 0x20 && ch < 0x7f);
                assert(!strchr("/?#@[]:\"<>\\^`{|} ", ch));
                if (ch == '%') assert(i + 2 < end && isxdigit((unsigned char)p[i + 1]) &&
                                      isxdigit((unsigned char)p[i + 2]));
            }
        }
        if (end < size) {
            assert(p[end] == ':');
            assert(size - end - 1 <= 5);
            for (size_t i = end + 1; i < size; i++) assert(p[i] >= '0' && p[i] <= '9');
        }
    }
    free(p);
    return 0;
}
