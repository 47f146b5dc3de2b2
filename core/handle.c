/* The handle table (handle.h). A handle value is (generation << 24) |
 * (slot + 1): slots are reused oldest-first, and a slot's generation moves
 * on each time its handle retires, so a stale handle never matches a live
 * slot. Loop thread only, like every host callback that takes a handle. */
#include "handle.h"

#include <stdlib.h>

#include "util.h"

#define SLOT_BITS HANDLE_SLOT_BITS
#define SLOT_MASK HANDLE_SLOT_MASK
#define NO_SLOT UINT32_MAX

typedef handle_slot slot;

/* named for handle_get(), inline in handle.h */
slot *handle_slots;
uint32_t handle_nslots;
static uint32_t g_cap, g_free_head = NO_SLOT, g_free_tail = NO_SLOT;
static size_t g_live;

/* A retired slot waits until this many others are free before it is used
 * again, so a plugin that calls back late is still named in the log. */
#define QUARANTINE 1024
static uint32_t g_nfree;

static uint32_t slot_take(void) {
    if (g_free_head != NO_SLOT && g_nfree > QUARANTINE) {
        g_nfree--;
        uint32_t i = g_free_head;
        g_free_head = handle_slots[i].next_free;
        if (g_free_head == NO_SLOT) g_free_tail = NO_SLOT;
        return i;
    }
    if (handle_nslots == g_cap) {
        g_cap = g_cap ? g_cap * 2 : 256;
        if (g_cap > SLOT_MASK) abort(); /* 16 M live handles: not a real load */
        handle_slots = xrealloc(handle_slots, g_cap * sizeof *handle_slots);
    }
    handle_slots[handle_nslots] = (slot){.gen = 1, .next_free = NO_SLOT};
    return handle_nslots++;
}

void *handle_new(handle_kind kind, void *obj, const tolk_plugin *owner) {
    uint32_t i = slot_take();
    slot *s = &handle_slots[i];
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
    if (idx == 0 || idx > handle_nslots) return NULL;
    *gen = (uint32_t)(v >> SLOT_BITS);
    return &handle_slots[idx - 1];
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
    uint32_t i = (uint32_t)(s - handle_slots);
    s->next_free = NO_SLOT;
    if (g_free_tail != NO_SLOT)
        handle_slots[g_free_tail].next_free = i;
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
    free(handle_slots);
    handle_slots = NULL;
    handle_nslots = g_cap = 0;
    g_free_head = g_free_tail = NO_SLOT;
    g_live = 0;
    g_nfree = 0;
}
