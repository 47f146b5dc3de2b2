/* Handles the core gives plugins for calls, recogniser streams and MT/TTS
 * requests. They are not pointers: a handle names a slot and the slot's
 * generation, so a plugin that calls back after its close()/cancel() (a
 * "late callback") is recognised without touching freed memory. */
#ifndef TOLK_CORE_HANDLE_H
#define TOLK_CORE_HANDLE_H

#include <stdint.h>
#include <tolk/plugin.h>

typedef enum handle_kind { H_CHANNEL = 1, H_STREAM, H_REQUEST } handle_kind;

/* A new handle for obj, owned (called back) by the plugin desc. */
void *handle_new(handle_kind kind, void *obj, const tolk_plugin *owner);
/* handle_get(h, kind): the object of a live handle of that kind, else
 * NULL; inline below. */
/* The handle ends: handle_get() returns NULL for it from now on. */
void handle_retire(const void *h);
/* The plugin that owned a retired handle, if its slot still remembers. */
const tolk_plugin *handle_last_owner(const void *h);
/* Handles live now (tests, leak checks). */
size_t handle_live_count(void);
void handle_table_free(void);

/* ---- the table, for handle_get() alone; handle.c owns it. Inline
 * because every frame a transport hands in passes through one (host.c). */
#define HANDLE_SLOT_BITS 24
#define HANDLE_SLOT_MASK ((uintptr_t)((1u << HANDLE_SLOT_BITS) - 1))

typedef struct handle_slot {
    void *obj;
    const tolk_plugin *owner;
    const tolk_plugin *retired_owner; /* owner of the incarnation before gen */
    uint32_t gen;
    uint32_t next_free;
    uint8_t kind;
    uint8_t live;
} handle_slot;

extern handle_slot *handle_slots;
extern uint32_t handle_nslots;

static inline void *handle_get(const void *h, handle_kind kind) {
    uintptr_t v = (uintptr_t)h, idx = v & HANDLE_SLOT_MASK;
    if (idx == 0 || idx > handle_nslots) return NULL;
    const handle_slot *s = &handle_slots[idx - 1];
    if (!s->live || s->gen != (uint32_t)(v >> HANDLE_SLOT_BITS) || s->kind != kind) return NULL;
    return s->obj;
}

#endif
