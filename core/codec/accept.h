/*
 * accept.h -- Accept-Encoding (RFC 9110 12.5.3): what a client accepts,
 * and which of the codings moxy can make it gets.
 */
#ifndef MOXY_ACCEPT_H
#define MOXY_ACCEPT_H

#include "codec/coder.h"

#include <stddef.h>
#include <stdint.h>

/* A request's Accept-Encoding, all its field lines together.  Weights are
 * qvalues times 1000 (0..1000); -1: not named. */
typedef struct {
    int16_t q[MOXY_ENC_COUNT]; /* per coding moxy knows (identity included) */
    int16_t star;              /* "*": any coding not named */
    uint8_t present;           /* the request has the field (an empty value counts) */
} moxy_accept_t;

/* An empty a (as for a request without the field). */
void moxy_accept_init(moxy_accept_t *a);

/* Add one field line's value (n bytes at v) to a.  Elements that do not
 * parse (a bad token or qvalue) are skipped; a coding named twice keeps
 * its highest weight. */
void moxy_accept_add(moxy_accept_t *a, const char *v, size_t n);

/* 1 when a accepts enc: weight > 0, named or through "*"; a request
 * without the field accepts everything.  identity is accepted unless
 * refused (identity;q=0, or *;q=0 without naming it). */
int moxy_accept_allows(const moxy_accept_t *a, int enc);

/* The coding r should get among the ones in offer (bit 1 << enc for each
 * of gzip, br, zstd moxy may make), order breaking ties (the server's
 * preference, most preferred first, n entries): the one with the highest
 * weight; identity (MOXY_ENC_IDENTITY) when none is accepted, when the
 * field is absent (a client that does not say gets no coding), or when
 * identity is named with a higher weight than the best of them. */
int moxy_accept_choose(const moxy_accept_t *a, unsigned offer, const uint8_t *order, int n);

#endif
