/*
 * origin_codec_fuzz.c -- the response parser every origin client shares
 * (http1/origin_codec.c: moxy_h1_resp_head, moxy_h1_resp_body), run as
 * moxy.http and health checks run it: every field, interim head, body byte
 * and trailer collected.
 *
 * Input:
 *   byte 0    bit 0: the request was HEAD; bits 1-7 seed the sizes of the
 *             reads of the second run
 *   the rest  what the origin sends, then closes
 * Each input is parsed twice: once read whole, once in reads of 1 to 16
 * bytes, the parser driven after every read as the clients drive it.
 *
 * Invariants:
 *  - both runs end the same: refused or not, and when not the same status,
 *    framing, keep-alive, fields (in order), interim heads, trailers and
 *    body, byte for byte (names and values split across reads are joined);
 *  - every head (and the trailers) within bounds: at most MAX_FIELDS
 *    fields, whose names and values with 4 bytes each fit MAX_HEAD; names non-empty, values
 *    without CR, LF or NUL and without leading or trailing SP/HTAB;
 *  - at most MOXY_MAX_INTERIM interim heads, each 1xx but 101;
 *  - the framing: a Content-Length body is exactly that long; HEAD, 1xx,
 *    204 and 304 have none; a body delimited by the close is not kept
 *    alive;
 *  - the final status is 101 or 200-999.
 * A violation aborts.
 */
#include "fuzz.h"
#include "base/pool.h"
#include "http1/origin_codec.h"

#include <event2/buffer.h>
#include <stdio.h>

#define MAX_HEAD 512
#define MAX_FIELDS 16
#define MAX_KEPT 4096 /* bytes of fields and body kept per run */

typedef struct {
    int refused;
    int status, body_kind, keepalive;
    int interims, interim_status[MOXY_MAX_INTERIM + 1];
    int nfields, ntrailers;
    char fields[MAX_KEPT]; /* "name\0value\0" of the final head, then of the trailers */
    size_t flen;
    char body[MAX_KEPT];
    size_t blen, body_total;
    uint64_t declared;  /* Content-Length */
} run_t;

static void keep(char *to, size_t *len, const char *at, size_t n)
{
    size_t room = MAX_KEPT - *len;
    if (n > room) n = room;
    memcpy(to + *len, at, n);
    *len += n;
}

/* Check a head's (or the trailers') fields against the invariants, and
 * keep them in run->fields for the comparison of the two runs. */
static void check_fields(run_t *run, const moxy_headers_t *hs)
{
    size_t bytes = 0;
    if (hs->n > MAX_FIELDS) abort();
    for (uint32_t i = 0; i < hs->n; i++) {
        const moxy_header_t *h = &hs->h[i];
        const char *value = h->value;
        size_t vlen = h->value_len;
        if (h->name_len == 0) abort();
        for (size_t k = 0; k < vlen; k++)
            if (value[k] == '\r' || value[k] == '\n' || value[k] == '\0') abort();
        if (vlen && (value[0] == ' ' || value[0] == '\t' || value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
            abort();
        bytes += h->name_len + vlen + 4;
        keep(run->fields, &run->flen, h->name, h->name_len);
        keep(run->fields, &run->flen, "", 1);
        keep(run->fields, &run->flen, value, vlen);
        keep(run->fields, &run->flen, "", 1);
    }
    if (bytes > MAX_HEAD) abort();
}

static const char *on_interim(moxy_h1_resp_t *rs, int status)
{
    run_t *run = rs->data;
    if (status < 100 || status > 199 || status == 101) abort();
    if (run->interims >= MOXY_MAX_INTERIM) abort();
    run->interim_status[run->interims++] = status;
    check_fields(run, rs->fields);
    return NULL;
}

static const char *on_body(moxy_h1_resp_t *rs, const char *at, size_t n)
{
    run_t *run = rs->data;
    keep(run->body, &run->blen, at, n);
    run->body_total += n;
    return NULL;
}

static const moxy_h1_resp_ops_t ops = {.interim = on_interim, .body = on_body};

/* Drive rs after a read: 1 when it is over (done or refused). */
static int drive(moxy_h1_resp_t *rs, run_t *run, struct evbuffer *in, int eof)
{
    int rc = MOXY_OK;
    if (!rs->head_done) {
        rc = moxy_h1_resp_head(rs, in);
        if (rc == MOXY_OK) run->declared = rs->body_left;
    }
    if (rc == MOXY_OK && rs->status != 101) {
        size_t take;
        rc = moxy_h1_resp_body(rs, in, eof, &take);
        char buf[512];
        while (take > 0) {
            size_t n = take < sizeof(buf) ? take : sizeof(buf);
            evbuffer_remove(in, buf, n);
            keep(run->body, &run->blen, buf, n);
            run->body_total += n;
            take -= n;
        }
    }
    if (rc == MOXY_ERROR) {
        if (!rs->why) abort();
        run->refused = 1;
    }
    return rc != MOXY_AGAIN || eof;
}

static void run_once(const uint8_t *data, size_t size, int head, unsigned seed, run_t *run)
{
    moxy_pool_t mem;
    moxy_pool_init(&mem);
    struct evbuffer *in = evbuffer_new();
    moxy_h1_resp_t rs;
    moxy_headers_t fields = {0}, trailers = {0};
    memset(run, 0, sizeof(*run));
    moxy_h1_resp_init(&rs, &ops, run, &mem, &fields, &trailers, head, MAX_HEAD, MAX_FIELDS);
    size_t at = 0;
    int over = 0;
    while (!over && at < size) {
        size_t n = size - at;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t piece = 1 + (seed >> 16) % 16;
            if (piece < n) n = piece;
        }
        evbuffer_add(in, data + at, n);
        at += n;
        over = drive(&rs, run, in, 0);
    }
    if (!over) drive(&rs, run, in, 1);
    if (!run->refused && rs.done) {
        run->status = rs.status;
        run->body_kind = rs.body_kind;
        run->keepalive = rs.keepalive;
        if (rs.status != 101 && (rs.status < 200 || rs.status > 999)) abort();
        run->nfields = (int)fields.n;
        run->ntrailers = (int)trailers.n;
        check_fields(run, &fields);
        check_fields(run, &trailers);
        if ((head || rs.status == 204 || rs.status == 304 || rs.status == 101) && rs.body_kind != MOXY_BODY_NONE)
            abort();
        if (rs.body_kind == MOXY_BODY_NONE && run->body_total) abort();
        if (rs.body_kind == MOXY_BODY_EOF && rs.keepalive) abort();
        if (rs.body_kind == MOXY_BODY_LENGTH && run->body_total != run->declared) abort();
    } else if (!run->refused) {
        run->status = -1; /* cut short by the close */
    }
    evbuffer_free(in);
    moxy_pool_reset(&mem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned flags = fuzz_take_byte(&data, &size);
    static run_t whole, pieces;
    run_once(data, size, flags & 1, 0, &whole);
    run_once(data, size, flags & 1, (flags >> 1) | 1, &pieces);
    if (whole.refused != pieces.refused || whole.status != pieces.status) abort();
    if (whole.refused || whole.status < 0) return 0;
    if (whole.body_kind != pieces.body_kind || whole.keepalive != pieces.keepalive ||
        whole.interims != pieces.interims || whole.nfields != pieces.nfields ||
        whole.ntrailers != pieces.ntrailers || whole.flen != pieces.flen ||
        memcmp(whole.fields, pieces.fields, whole.flen) != 0 || whole.body_total != pieces.body_total ||
        whole.blen != pieces.blen || memcmp(whole.body, pieces.body, whole.blen) != 0 ||
        memcmp(whole.interim_status, pieces.interim_status, sizeof(whole.interim_status)) != 0)
        abort();
    return 0;
}
