/*
 * prefix_set.h -- sets of IPv4 and IPv6 address blocks (CIDR), each with a
 * small integer value, searched by longest prefix match: what access control
 * lists are made of.
 *
 * A set is made in two steps: a builder takes prefixes (parsed blocks, text,
 * or list files), then moxy_prefix_set_build makes the set, which is never
 * changed afterwards: any number of threads may look up in it at once, with
 * no lock.  A new list (a reload) is a new set.
 *
 * Values: each prefix carries a value of 0..MOXY_PREFIX_VALUE_MAX, whatever
 * the caller means by it (allow = 1 / deny = 0, the index of a rule).  A
 * lookup gives the value of the longest prefix holding the address, or
 * MOXY_PREFIX_NONE.  Overlapping prefixes are normal (longest wins); the
 * same prefix added twice keeps its first value (first one wins, as a list
 * read top down would), and the later adds are counted as duplicates.
 *
 * IPv4-mapped IPv6: a block ::ffff:a.b.c.d/96 and longer is stored as the
 * IPv4 block it maps (moxy_cidr_init), and an address ::ffff:a.b.c.d is
 * looked up as the IPv4 address a.b.c.d, so that a client of a dual-stack
 * socket meets the IPv4 lists.  Such an address never matches an IPv6
 * block, not even ::/0; IPv6 blocks shorter than /96 that cover
 * ::ffff:0:0/96 stay IPv6 blocks.  moxy_cidr_match does the same.
 *
 * The structure, and why: each family is cut into the ranges of addresses
 * whose longest match is the same -- N prefixes make at most 2N + 1
 * ranges, and neighbours with the same value merge -- stored as a sorted
 * array of range starts (uint32 for IPv4, two uint64 for IPv6) beside an
 * array of values.  A lookup takes the address's top k bits (2^k about the
 * number of ranges, k <= 20) to an index that narrows the search to the
 * ranges of that slice of the address space, then halves that window with
 * no branch on the comparisons.  bench/acl_lookup.c, 100,000 random
 * prefixes per family (nearly half nested in others), a 2-core VM: a lookup
 * made one at a time costs 30-65 ns (IPv4) and 35-120 ns (IPv6), back to
 * back 10-25 and 15-55 ns; the plain binary search without the index cost
 * 100-200 ns.  The set takes 1.7 MB (IPv4) and 4.1 MB (IPv6), about 19 and
 * 44 bytes a prefix, and builds in 35-50 ms (a sort and two sweeps).
 * Against tries: a multibit trie (stride 8 or 16) is as fast but needs a
 * node of 256 or 65536 entries per level a prefix goes through below the
 * levels it shares: some 7 KiB a prefix for IPv6 prefixes of random
 * lengths, ~700 MB for 100,000 (estimated, not built); a path-compressed binary
 * trie walks up to 128 nodes, a cache miss each; an LC-trie or a poptrie
 * would match the speed with more code and a harder build.  The ranges'
 * memory is bounded and known before the build (<= 2N + 1 entries), the
 * build is a sort and a walk with a stack of at most 129 open prefixes, and
 * nothing an input holds makes anything deeper.
 *
 * Bounds: a builder takes at most its limit of adds (duplicates count; at
 * most MOXY_PREFIX_SET_MAX, 10 million); one more is an error, as are bad
 * text and a value out of range.  A list file's line is read up to
 * MOXY_PREFIX_LINE_MAX bytes.  Errors are written to the caller's buffer.
 */
#ifndef MOXY_PREFIX_SET_H
#define MOXY_PREFIX_SET_H

#include <stdio.h>

#include "base/addr.h"

typedef struct moxy_prefix_set_s moxy_prefix_set_t;
typedef struct moxy_prefix_set_builder_s moxy_prefix_set_builder_t;

#define MOXY_PREFIX_NONE (-1)            /* a lookup that matched no prefix */
#define MOXY_PREFIX_VALUE_MAX 0x7fffffff /* values are 0..this */
#define MOXY_PREFIX_SET_MAX 10000000     /* adds per builder (so prefixes per set), at most */
#define MOXY_PREFIX_LINE_MAX 1024        /* bytes of a list file's line before its comment */

/* What moxy_prefix_set_stats fills in. */
typedef struct {
    size_t prefixes[2]; /* distinct prefixes: [0] IPv4, [1] IPv6 */
    size_t duplicates;  /* adds of a prefix added before, dropped (first one wins) */
    size_t ranges[2];   /* address ranges a lookup searches: [0] IPv4, [1] IPv6 */
    size_t bytes;       /* memory the set holds, all of it */
} moxy_prefix_set_stats_t;

/* A new, empty builder that takes at most limit adds, duplicates counted
 * (0 or more than MOXY_PREFIX_SET_MAX: MOXY_PREFIX_SET_MAX).  NULL when out
 * of memory.  The caller frees it with moxy_prefix_set_builder_free. */
moxy_prefix_set_builder_t *moxy_prefix_set_builder_new(size_t limit);

/* Free b and what it holds (sets built from it are not touched).  NULL is
 * fine. */
void moxy_prefix_set_builder_free(moxy_prefix_set_builder_t *b);

/* Add the block m (family 4 or 6, bits within the family; the bits past
 * the prefix are cleared and a mapped block becomes IPv4, as moxy_cidr_init
 * does) with value (0..MOXY_PREFIX_VALUE_MAX).  MOXY_OK, or MOXY_ERROR with
 * why in err (errlen bytes, NUL-terminated): too many prefixes, a value or
 * block out of range, out of memory. */
int moxy_prefix_set_add(moxy_prefix_set_builder_t *b, const moxy_cidr_t *m, int value, char *err,
                        size_t errlen);

/* Add the block written as the n bytes at p ("10.0.0.0/8", "2001:db8::1";
 * moxy_cidr_parse says what is taken) with value.  MOXY_OK, or MOXY_ERROR
 * with why in err, the text quoted: `bad address in "10.0.0.300/8"`. */
int moxy_prefix_set_add_text(moxy_prefix_set_builder_t *b, const char *p, size_t n, int value,
                             char *err, size_t errlen);

/* Add every block of the list file at path, each with value.  A line (to a
 * '\n') holds one block as moxy_prefix_set_add_text takes it, or nothing;
 * '#' starts a comment to the end of the line; spaces, tabs and CRs around
 * the block are ignored; a line longer than MOXY_PREFIX_LINE_MAX bytes is an
 * error unless a '#' comes within them.  A bare address is its /32 or
 * /128, an IPv4-mapped one its IPv4 block.  MOXY_OK, or MOXY_ERROR with err
 * naming the file and the line: `lists/deny.txt:12: bad address in
 * "10.0.0.300/8"` (a file that cannot be read: `lists/deny.txt: No such
 * file or directory`).  On an error the blocks of the lines before it stay
 * added: a caller that loads a configuration drops the builder. */
int moxy_prefix_set_load(moxy_prefix_set_builder_t *b, const char *path, int value, char *err,
                         size_t errlen);

/* moxy_prefix_set_load's reading of the open stream f, named name in
 * errors (f is read to its end or to the first error, not closed). */
int moxy_prefix_set_read(moxy_prefix_set_builder_t *b, FILE *f, const char *name, int value,
                         char *err, size_t errlen);

/* The set of the prefixes b holds now (b sorts them in place, and may take
 * more and build again).  NULL when out of memory, with why in err.  The
 * caller frees the set with moxy_prefix_set_free; it is never written
 * again, and any thread may use it. */
moxy_prefix_set_t *moxy_prefix_set_build(moxy_prefix_set_builder_t *b, char *err, size_t errlen);

/* The value of the longest prefix of s holding the address (family 4: 4
 * bytes at addr, 6: 16 bytes, network order; an IPv4-mapped IPv6 address is
 * looked up as IPv4), or MOXY_PREFIX_NONE (also for another family).
 * Thread-safe: it only reads s. */
int moxy_prefix_set_lookup(const moxy_prefix_set_t *s, int family, const uint8_t *addr);

/* Fill in st with s's counts and memory. */
void moxy_prefix_set_stats(const moxy_prefix_set_t *s, moxy_prefix_set_stats_t *st);

/* Free s (NULL is fine).  No thread may use s afterwards. */
void moxy_prefix_set_free(moxy_prefix_set_t *s);

#endif
