/*
 * siphash.h -- SipHash-1-3 (Aumasson & Bernstein) under a key random per
 * process, for every hash table whose keys a client, an origin or a script
 * chooses: the cache's index, its coalescing flights and ghost table
 * (cache_store.c), moxy.shared dictionaries (shared_dict.c).  With an
 * unkeyed hash anyone can compute, offline, thousands of keys that land in
 * one bucket and make every lookup there walk them under a stripe lock;
 * without the key nobody can.  One to three rounds are what Python, Rust and
 * Linux use for tables: a table needs unpredictability, not a MAC.
 *
 * Not for what must hash alike in every process and on every node:
 * consistent hashing keeps its own unkeyed moxy_hash64 (balancer.c).
 */
#ifndef MOXY_SIPHASH_H
#define MOXY_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* SipHash-1-3 of the len bytes at p under key (k0 = key[0], k1 = key[1],
 * each the little-endian reading of 8 key bytes, as in the reference). */
uint64_t moxy_siphash13(const uint64_t key[2], const void *p, size_t len);

/* SipHash-1-3 of the len bytes at p under the process's key, drawn once
 * from the kernel (getrandom; OpenSSL's RAND_bytes if that fails) before
 * main() runs, so before any worker thread: every table and every worker
 * of one process agrees, two processes do not. */
uint64_t moxy_hash_keyed(const void *p, size_t len);

#endif
