#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

static void oom(void) {
    fputs("tolk: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom();
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom();
    return p;
}

void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) oom();
    return p;
}

char *xstrdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) oom();
    va_end(ap);
    return s;
}

const char *file_type_name(unsigned mode) {
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO (named pipe)";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    case S_IFLNK: return "a symbolic link";
    }
    return "not a regular file";
}

double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ptr_vec_push(ptr_vec *pv, void *p) {
    if (pv->n == pv->cap) {
        pv->cap = pv->cap ? pv->cap * 2 : 8;
        pv->v = xrealloc(pv->v, pv->cap * sizeof(void *));
    }
    pv->v[pv->n++] = p;
}

int ptr_vec_remove(ptr_vec *pv, void *p) {
    for (size_t i = 0; i < pv->n; i++) {
        if (pv->v[i] == p) {
            memmove(&pv->v[i], &pv->v[i + 1], (pv->n - i - 1) * sizeof(void *));
            pv->n--;
            return 1;
        }
    }
    return 0;
}

void ptr_vec_free(ptr_vec *pv) {
    free(pv->v);
    pv->v = NULL;
    pv->n = pv->cap = 0;
}

static size_t utf8_seq(const unsigned char *p, size_t avail) {
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, min = 0x10000;
    else return 0;
    if (avail < n) return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

char *utf8_clean(const char *s, size_t max_bytes) {
    if (!s) return xstrdup("");
    size_t len = strnlen(s, max_bytes);
    char *out = xmalloc(len * 3 + 1);
    size_t o = 0;
    int space = 1; /* drop leading spaces */
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            space = 0;
            continue;
        }
        if (n == 1 && (p[i] < 0x20 || p[i] == 0x7F || p[i] == ' ')) {
            if (!space) out[o++] = ' ';
            space = 1;
            i++;
            continue;
        }
        memcpy(out + o, p + i, n);
        o += n;
        i += n;
        space = 0;
    }
    while (o > 0 && out[o - 1] == ' ') o--;
    out[o] = 0;
    return out;
}

size_t count_words(const char *s) {
    size_t n = 0;
    int in = 0;
    for (; s && *s; s++) {
        int sp = *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r';
        if (!sp && !in) n++;
        in = !sp;
    }
    return n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void sort_doubles(double *v, size_t n) {
    if (n > 1) qsort(v, n, sizeof *v, cmp_double);
}

double percentile_sorted(const double *v, size_t n, double p) {
    if (n == 0) return NAN;
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[rank ? rank - 1 : 0];
}

/* Every frame of every call is measured for voice (pipeline.c), so this is
 * the core's largest per-frame cost; with SSE2 (every x86-64) it takes a
 * third of the instructions of the compiler's own vectorisation of the
 * scalar loop, which widens each square to 64 bits. */
uint64_t pcm_energy(const int16_t *pcm, size_t n) {
#if defined(__SSE2__) && defined(__x86_64__)
    __m128i acc = _mm_setzero_si128(), zero = _mm_setzero_si128();
    for (size_t i = 0; i < n; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(pcm + i));
        /* each lane a*a + b*b <= 2^31: read as unsigned it is exact */
        __m128i sq = _mm_madd_epi16(v, v);
        acc = _mm_add_epi64(acc, _mm_unpacklo_epi32(sq, zero));
        acc = _mm_add_epi64(acc, _mm_unpackhi_epi32(sq, zero));
    }
    return (uint64_t)_mm_cvtsi128_si64(acc) +
           (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#else
    uint64_t e = 0;
    for (size_t i = 0; i < n; i++) e += (uint64_t)((int32_t)pcm[i] * pcm[i]);
    return e;
#endif
}
