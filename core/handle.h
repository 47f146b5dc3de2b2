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
/* The object of a live handle of that kind, else NULL. */
void *handle_get(const void *h, handle_kind kind);
/* The handle ends: handle_get() returns NULL for it from now on. */
void handle_retire(const void *h);
/* The plugin that owned a retired handle, if its slot still remembers. */
const tolk_plugin *handle_last_owner(const void *h);
/* Handles live now (tests, leak checks). */
size_t handle_live_count(void);
void handle_table_free(void);

#endif
