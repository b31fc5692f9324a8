/*
 * json.h -- the one JSON string writer: every JSON moxy writes by hand (the
 * access log's JSON lines, the admin listener's /status and /history, the
 * reload answers) quotes its strings through it, so every line and answer
 * stays valid JSON whatever bytes a client or a script put in a value.
 */
#ifndef MOXY_JSON_H
#define MOXY_JSON_H

#include <event2/buffer.h>
#include <stddef.h>

/* Escape the n bytes at s as the inside of a JSON string (no quotes) into
 * out, at most room bytes: '"' and '\' backslashed, control bytes and DEL
 * as \u00XX, valid UTF-8 kept as it is, every byte that is not part of a
 * valid UTF-8 sequence (stray continuation, overlong form, surrogate, above
 * U+10FFFF, cut short) as \ufffd.  Stops before a character whose escape or
 * sequence would not fit: never half of one.  *used (NULL: not wanted) gets
 * the bytes of s consumed.  Returns the bytes written. */
size_t moxy_json_escape(char *out, size_t room, const char *s, size_t n, size_t *used);

/* Append the n bytes at s to b as a quoted JSON string (moxy_json_escape's
 * rules).  MOXY_OK, or MOXY_ERROR when b ran out of memory (what was
 * appended before stays). */
int moxy_json_str_n(struct evbuffer *b, const char *s, size_t n);

/* The same for the NUL-terminated s. */
int moxy_json_str(struct evbuffer *b, const char *s);

#endif
