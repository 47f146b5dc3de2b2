/* Small helpers shared by the core. Private: never installed. */
#ifndef TOLK_CORE_UTIL_H
#define TOLK_CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Out of memory in the core is not recoverable in any useful way for a
 * real-time process; abort loudly instead of limping on. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "a directory", "a FIFO (named pipe)", ...: for refusals of files that
 * are not regular. */
const char *file_type_name(unsigned mode);

/* Monotonic seconds. */
double mono_now(void);
/* Wall clock seconds since the epoch. */
double wall_now(void);

/* Growable array of pointers. */
typedef struct ptr_vec {
    void **v;
    size_t n, cap;
} ptr_vec;
void ptr_vec_push(ptr_vec *pv, void *p);
int ptr_vec_remove(ptr_vec *pv, void *p); /* 1 if found; order kept */
void ptr_vec_free(ptr_vec *pv);

/* A copy of s that is valid UTF-8 without control characters: invalid
 * bytes become U+FFFD, controls become spaces, runs of space collapse, ends
 * trimmed. Text from the network goes through this before anything uses it. */
char *utf8_clean(const char *s, size_t max_bytes);
/* Whitespace-separated words. */
size_t count_words(const char *s);

/* Sorts v ascending, in place. */
void sort_doubles(double *v, size_t n);
/* Nearest-rank percentile (p in 0..100) of v sorted ascending; NAN if n is 0. */
double percentile_sorted(const double *v, size_t n, double p);

/* Sum of the squares of n samples (n a multiple of 8), exact. */
uint64_t pcm_energy(const int16_t *pcm, size_t n);

#endif
