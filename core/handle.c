/* The handle table (handle.h). A handle value is (generation << 24) |
 * (slot + 1): slots are reused oldest-first, and a slot's generation moves
 * on each time its handle retires, so a stale handle never matches a live
 * slot. Loop thread only, like every host callback that takes a handle. */
#include "handle.h"

#include <stdlib.h>

#include "util.h"

#define SLOT_BITS 24
#define SLOT_MASK ((uintptr_t)((1u << SLOT_BITS) - 1))
#define NO_SLOT UINT32_MAX

typedef struct slot {
    void *obj;
    const tolk_plugin *owner;
    const tolk_plugin *retired_owner; /* owner of the incarnation before gen */
    uint32_t gen;
    uint32_t next_free;
    uint8_t kind;
    uint8_t live;
} slot;

static slot *g_slots;
static uint32_t g_nslots, g_cap, g_free_head = NO_SLOT, g_free_tail = NO_SLOT;
static size_t g_live;

/* A retired slot waits until this many others are free before it is used
 * again, so a plugin that calls back late is still named in the log. */
#define QUARANTINE 1024
static uint32_t g_nfree;

static uint32_t slot_take(void) {
    if (g_free_head != NO_SLOT && g_nfree > QUARANTINE) {
        g_nfree--;
        uint32_t i = g_free_head;
        g_free_head = g_slots[i].next_free;
        if (g_free_head == NO_SLOT) g_free_tail = NO_SLOT;
        return i;
    }
    if (g_nslots == g_cap) {
        g_cap = g_cap ? g_cap * 2 : 256;
        if (g_cap > SLOT_MASK) abort(); /* 16 M live handles: not a real load */
        g_slots = xrealloc(g_slots, g_cap * sizeof *g_slots);
    }
    g_slots[g_nslots] = (slot){.gen = 1, .next_free = NO_SLOT};
    return g_nslots++;
}

void *handle_new(handle_kind kind, void *obj, const tolk_plugin *owner) {
    uint32_t i = slot_take();
    slot *s = &g_slots[i];
    s->obj = obj;
    s->owner = owner;
    s->kind = (uint8_t)kind;
    s->live = 1;
    g_live++;
    return (void *)(((uintptr_t)s->gen << SLOT_BITS) | (uintptr_t)(i + 1));
}

static slot *slot_of(const void *h, uint32_t *gen) {
    uintptr_t v = (uintptr_t)h;
    uintptr_t idx = v & SLOT_MASK;
    if (idx == 0 || idx > g_nslots) return NULL;
    *gen = (uint32_t)(v >> SLOT_BITS);
    return &g_slots[idx - 1];
}

void *handle_get(const void *h, handle_kind kind) {
    uint32_t gen;
    slot *s = slot_of(h, &gen);
    if (!s || !s->live || s->gen != gen || s->kind != kind) return NULL;
    return s->obj;
}

void handle_retire(const void *h) {
    uint32_t gen;
    slot *s = slot_of(h, &gen);
    if (!s || !s->live || s->gen != gen) return;
    s->live = 0;
    s->obj = NULL;
    s->retired_owner = s->owner;
    s->gen++;
    g_live--;
    uint32_t i = (uint32_t)(s - g_slots);
    s->next_free = NO_SLOT;
    if (g_free_tail != NO_SLOT)
        g_slots[g_free_tail].next_free = i;
    else
        g_free_head = i;
    g_free_tail = i;
    g_nfree++;
}

const tolk_plugin *handle_last_owner(const void *h) {
    uint32_t gen;
    slot *s = slot_of(h, &gen);
    if (!s) return NULL;
    if (s->live && s->gen == gen) return s->owner;
    return s->gen == gen + 1 ? s->retired_owner : NULL;
}

size_t handle_live_count(void) { return g_live; }

void handle_table_free(void) {
    free(g_slots);
    g_slots = NULL;
    g_nslots = g_cap = 0;
    g_free_head = g_free_tail = NO_SLOT;
    g_live = 0;
    g_nfree = 0;
}
