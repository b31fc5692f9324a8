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

/* ASCII case-insensitive equality of a[0..an) and b[0..bn), written apart
 * from core's moxy_strieq so that a model does not share the code it checks. */
static inline int fuzz_ieq(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) return 0;
    for (size_t i = 0; i < an; i++) {
        int x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return 0;
    }
    return 1;
}

#endif
