/*
 * socket_scan_fuzz.c -- what a peer sends to a moxy.socket, piece by piece,
 * and what a receive answers (api/socket.c's moxy_sock_scan).
 *
 * An input: a mode byte (line, n bytes, all, any, until with or without a
 * size, inclusive or not), n, a pattern length and the pattern, the piece
 * size, then the peer's bytes.  The bytes arrive in pieces; after each the
 * scan runs with the offset it keeps (as a waiting receive does); each
 * answer is consumed and the next receive starts, as a script reading a
 * stream would.  Invariants, against a model that searches the flat bytes
 * from scratch: the same answer at the same moment; a line without its LF
 * (and a CR before it); the bytes before the pattern (with it when
 * inclusive); a part never holds the pattern's start; len <= consume <=
 * what is buffered; never more than max bytes gathered without an answer.
 */
#include "fuzz.h"
#include "api/socket.h"
#include "base/moxy.h"

#include <assert.h>
#include <event2/buffer.h>

#define MAX 4096

static const void *find(const char *h, size_t hn, const char *n, size_t nn)
{
    return memmem(h, hn, n, nn);
}

/* The model's answer for buf (have bytes). */
static int model(const char *buf, size_t have, int mode, size_t n, const char *pat, size_t plen, int eof, size_t *len,
                 size_t *consume)
{
    const char *at;
    switch (mode) {
    case MOXY_SOCK_BYTES:
        if (have >= n) {
            *len = *consume = n;
            return MOXY_OK;
        }
        return n > MAX ? MOXY_ERROR : MOXY_AGAIN;
    case MOXY_SOCK_ANY:
        if (have) {
            *len = *consume = have < n ? have : n;
            return MOXY_OK;
        }
        return MOXY_AGAIN;
    case MOXY_SOCK_LINE:
        if ((at = memchr(buf, '\n', have))) {
            size_t i = (size_t)(at - buf);
            *consume = i + 1;
            *len = i > 0 && buf[i - 1] == '\r' ? i - 1 : i;
            return MOXY_OK;
        }
        break;
    case MOXY_SOCK_ALL:
        if (eof) {
            *len = *consume = have;
            return MOXY_OK;
        }
        break;
    case MOXY_SOCK_UNTIL: {
        size_t size = n >> 1;
        if ((at = find(buf, have, pat, plen))) {
            size_t i = (size_t)(at - buf);
            if (size && i > size) {
                *len = *consume = size;
                return MOXY_DONE;
            }
            *len = (n & 1) ? i + plen : i;
            *consume = i + plen;
            return MOXY_OK;
        }
        if (size && have >= plen && have - (plen - 1) >= size) {
            *len = *consume = size;
            return MOXY_DONE;
        }
        break;
    }
    }
    return have >= MAX ? MOXY_ERROR : MOXY_AGAIN;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5) return 0;
    int mode = data[0] % 5;
    size_t n = (size_t)data[1] * 37 % (MAX + 64); /* sometimes past max */
    size_t plen = 1 + data[2] % 8;
    size_t piece = 1 + data[3] % 64;
    data += 4;
    size -= 4;
    if (size < plen) return 0;
    char pat[8];
    memcpy(pat, data, plen);
    data += plen;
    size -= plen;
    if (mode == MOXY_SOCK_ANY && n == 0) n = 1;
    /* until: n low bit inclusive, the rest a size (0: none) */

    struct evbuffer *in = evbuffer_new();
    char *flat = malloc(size + 1);
    if (!in || !flat) abort();
    size_t have = 0, scanned = 0, fed = 0;
    while (fed < size) {
        size_t k = size - fed < piece ? size - fed : piece;
        evbuffer_add(in, data + fed, k);
        memcpy(flat + have, data + fed, k);
        have += k;
        fed += k;
        int eof = fed == size;
        for (int answers = 0; answers < 64; answers++) {
            size_t len = 0, consume = 0, mlen = 0, mconsume = 0;
            int rc = moxy_sock_scan(in, mode, n, pat, plen, MAX, eof, &scanned, &len, &consume);
            int mrc = model(flat, have, mode, n, pat, plen, eof, &mlen, &mconsume);
            assert(rc == mrc);
            assert(evbuffer_get_length(in) == have);
            if (rc != MOXY_OK && rc != MOXY_DONE) break;
            assert(len == mlen && consume == mconsume);
            assert(len <= consume || (mode == MOXY_SOCK_UNTIL && (n & 1) && len == consume));
            assert(consume <= have);
            if (rc == MOXY_DONE) assert(!find(flat, len, pat, plen));
            if (mode == MOXY_SOCK_LINE) assert(!memchr(flat, '\n', len));
            /* the script reads it and starts the next receive */
            evbuffer_drain(in, consume);
            memmove(flat, flat + consume, have - consume);
            have -= consume;
            scanned = 0;
            if (consume == 0) break;
        }
        if (have >= MAX) break; /* the socket would say "buffer full" */
    }
    evbuffer_free(in);
    free(flat);
    return 0;
}
