/*
 * fuzz.h -- what every libFuzzer harness in fuzz/ shares.
 *
 * A harness is fuzz/NAME_fuzz.c, defines LLVMFuzzerTestOneInput, and is
 * linked against every core object but main.o (Makefile, fuzz-build).  Its
 * seeds are fuzz/corpus/NAME/; tools/fuzz.sh runs it.
 */
#ifndef MOXY_FUZZ_H
#define MOXY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A copy of the input in its own allocation, exactly size bytes plus a NUL
 * that the code under test must not need: ASan then sees any read past the
 * input's end.  The caller frees it. */
static inline char *fuzz_dup(const uint8_t *data, size_t size)
{
    char *p = malloc(size + 1);
    if (!p) abort();
    memcpy(p, data, size);
    p[size] = '\0';
    return p;
}

/* Take the first byte of the input as a selector (0 when empty) and advance. */
static inline unsigned fuzz_take_byte(const uint8_t **data, size_t *size)
{
    if (*size == 0) return 0;
    unsigned b = **data;
    (*data)++;
    (*size)--;
    return b;
}

#endif
