/* The translation cache: the last N distinct (pair, text) -> translation of
 * one MT provider, least recently used out first. Calls repeat themselves
 * ("yes", "thank you", "can you hear me?"), and a cloud MT bills and waits
 * for every one. Loop thread only. */
#include "mtcache.h"

#include <stdint.h>
#include <string.h>

#include "util.h"

/* Long phrases rarely come again word for word: they are not kept. */
#define MTCACHE_MAX_KEY 1024

typedef struct entry {
    struct entry *hnext;       /* in its hash bucket */
    struct entry *prev, *next; /* recency: head is the most recent */
    uint64_t hash;
    size_t klen;
    char *key; /* "from\0to\0text" */
    char *value;
} entry;

struct mtcache {
    entry **bucket;
    size_t nbucket, n;
    entry *head, *tail;
    uint8_t recent[MTCACHE_WINDOW]; /* outcome of the last lookups, 1: hit */
    uint64_t lookups;
    unsigned recent_hits;
};

static void count_lookup(mtcache *mc, int hit) {
    size_t k = (size_t)(mc->lookups % MTCACHE_WINDOW);
    if (mc->lookups >= MTCACHE_WINDOW) mc->recent_hits -= mc->recent[k];
    mc->recent[k] = (uint8_t)hit;
    mc->recent_hits += (unsigned)hit;
    mc->lookups++;
}

static uint64_t fnv1a(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* Builds the key in buf; 0 if it is too long to keep. */
static size_t make_key(char *buf, const char *from, const char *to, const char *text) {
    size_t a = strlen(from), b = strlen(to), c = strlen(text);
    if (a + b + c + 2 > MTCACHE_MAX_KEY) return 0;
    memcpy(buf, from, a + 1);
    memcpy(buf + a + 1, to, b + 1);
    memcpy(buf + a + b + 2, text, c);
    return a + b + c + 2;
}

mtcache *mtcache_new(void) {
    mtcache *mc = xcalloc(1, sizeof *mc);
    mc->nbucket = 64;
    mc->bucket = xcalloc(mc->nbucket, sizeof *mc->bucket);
    return mc;
}

static void unlink_lru(mtcache *mc, entry *e) {
    if (e->prev) e->prev->next = e->next; else mc->head = e->next;
    if (e->next) e->next->prev = e->prev; else mc->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(mtcache *mc, entry *e) {
    e->prev = NULL;
    e->next = mc->head;
    if (mc->head) mc->head->prev = e; else mc->tail = e;
    mc->head = e;
}

static entry **slot_of(mtcache *mc, uint64_t h, const char *key, size_t klen) {
    entry **pp = &mc->bucket[h & (mc->nbucket - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->klen == klen && !memcmp((*pp)->key, key, klen)))
        pp = &(*pp)->hnext;
    return pp;
}

static void drop(mtcache *mc, entry *e) {
    entry **pp = slot_of(mc, e->hash, e->key, e->klen);
    *pp = e->hnext;
    unlink_lru(mc, e);
    free(e->key);
    free(e->value);
    free(e);
    mc->n--;
}

static void grow(mtcache *mc) {
    size_t nb = mc->nbucket * 2;
    entry **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < mc->nbucket; i++)
        for (entry *e = mc->bucket[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    free(mc->bucket);
    mc->bucket = b;
    mc->nbucket = nb;
}

const char *mtcache_get(mtcache *mc, const char *from, const char *to, const char *text) {
    char key[MTCACHE_MAX_KEY];
    size_t klen = make_key(key, from, to, text);
    entry *e = klen ? *slot_of(mc, fnv1a(key, klen), key, klen) : NULL;
    count_lookup(mc, e != NULL);
    if (!e) return NULL;
    unlink_lru(mc, e);
    push_front(mc, e);
    return e->value;
}

void mtcache_put(mtcache *mc, size_t cap, const char *from, const char *to, const char *text,
                 const char *translation) {
    char key[MTCACHE_MAX_KEY];
    size_t klen = make_key(key, from, to, text);
    if (!mc) return;
    uint64_t h = klen ? fnv1a(key, klen) : 0;
    entry *old = klen && cap ? *slot_of(mc, h, key, klen) : NULL;
    if (old) { /* the provider may word it differently now: keep the newest */
        free(old->value);
        old->value = xstrdup(translation);
        unlink_lru(mc, old);
        push_front(mc, old);
        return;
    }
    /* a smaller size after a reload takes effect here */
    while (mc->n > 0 && mc->n >= cap) drop(mc, mc->tail);
    if (!klen || cap == 0) return;
    entry **pp = slot_of(mc, h, key, klen);
    entry *e = xcalloc(1, sizeof *e);
    e->hash = h;
    e->klen = klen;
    e->key = xmalloc(klen);
    memcpy(e->key, key, klen);
    e->value = xstrdup(translation);
    e->hnext = *pp;
    *pp = e;
    push_front(mc, e);
    mc->n++;
    if (mc->n > mc->nbucket) grow(mc);
}

double mtcache_hit_rate(const mtcache *mc) {
    size_t n = mc->lookups < MTCACHE_WINDOW ? (size_t)mc->lookups : MTCACHE_WINDOW;
    return n ? (double)mc->recent_hits / (double)n : 0;
}

void mtcache_free(mtcache *mc) {
    if (!mc) return;
    for (entry *e = mc->head, *next; e; e = next) {
        next = e->next;
        free(e->key);
        free(e->value);
        free(e);
    }
    free(mc->bucket);
    free(mc);
}
