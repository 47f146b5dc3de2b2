/* The translation cache of one MT provider (LRU). Loop thread only. */
#ifndef TOLK_CORE_MTCACHE_H
#define TOLK_CORE_MTCACHE_H

#include <stddef.h>

typedef struct mtcache mtcache;

mtcache *mtcache_new(void);
void mtcache_free(mtcache *mc);
/* The translation of text from -> to, or NULL. Valid until the next put.
 * Every call is a lookup counted in the hit rate. */
const char *mtcache_get(mtcache *mc, const char *from, const char *to, const char *text);
/* Share of the last MTCACHE_WINDOW lookups that hit (0 before any). */
#define MTCACHE_WINDOW 100
double mtcache_hit_rate(const mtcache *mc);
/* Remember a translation, keeping at most cap entries (0: forget all). */
void mtcache_put(mtcache *mc, size_t cap, const char *from, const char *to, const char *text,
                 const char *translation);

#endif
