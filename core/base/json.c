/*
 * json.c -- the JSON string writer (see json.h).
 */
#include "base/json.h"
#include "base/moxy.h"

#include <string.h>

/* The length of the valid UTF-8 sequence of 2 to 4 bytes at s (n bytes
 * left, s[0] >= 0x80), or 0 when it is not one (RFC 3629's table: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return len;
}

size_t moxy_json_escape(char *out, size_t room, const char *s, size_t n, size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < n) {
        unsigned char ch = u[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            if (o + 1 > room) break;
            out[o++] = (char)ch;
            i++;
        } else if (ch == '"' || ch == '\\') {
            if (o + 2 > room) break;
            out[o++] = '\\';
            out[o++] = (char)ch;
            i++;
        } else if (ch < 0x80) { /* control bytes and DEL */
            if (o + 6 > room) break;
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[ch >> 4];
            out[o + 5] = hex[ch & 15];
            o += 6;
            i++;
        } else {
            size_t len = utf8_seq(u + i, n - i);
            if (len) {
                if (o + len > room) break;
                memcpy(out + o, u + i, len);
                o += len;
                i += len;
            } else {
                if (o + 6 > room) break;
                memcpy(out + o, "\\ufffd", 6);
                o += 6;
                i++;
            }
        }
    }
    if (used) *used = i;
    return o;
}

int moxy_json_str_n(struct evbuffer *b, const char *s, size_t n)
{
    char chunk[1024];
    int err = evbuffer_add(b, "\"", 1) != 0;
    while (n > 0 && !err) {
        size_t used;
        size_t len = moxy_json_escape(chunk, sizeof(chunk), s, n, &used);
        err |= evbuffer_add(b, chunk, len) != 0;
        s += used;
        n -= used;
    }
    err |= evbuffer_add(b, "\"", 1) != 0;
    return err ? MOXY_ERROR : MOXY_OK;
}

int moxy_json_str(struct evbuffer *b, const char *s)
{
    return moxy_json_str_n(b, s, strlen(s));
}
