/*
 * A growable NUL-terminated string for plugins that build text (MT
 * plugins assembling requests and answers). Out of memory is sticky: the
 * buffer stops growing, `oom` is set, and the caller checks once at the
 * end. Header-only (static inline functions): a plugin stays one .so.
 */
#ifndef TOLK_PLUGINS_SBUF_H
#define TOLK_PLUGINS_SBUF_H

#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static inline void sb_add(sbuf *b, const char *p, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static inline void sb_chr(sbuf *b, char c) { sb_add(b, &c, 1); }
static inline void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* The string (the caller frees it), or NULL and nothing allocated if
 * memory ran out. */
static inline char *sb_take(sbuf *b)
{
    if (!b->oom && !b->s) sb_add(b, "", 0);
    if (b->oom) {
        free(b->s);
        return NULL;
    }
    return b->s;
}

static inline void sb_free(sbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

#endif
