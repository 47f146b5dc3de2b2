/* Loader fixtures: one source, built several times with a FIX_* flag, each
 * a plugin that is wrong (or old) in one way. */
#include <stddef.h>
#include <tolk/plugin.h>

static tolk_status fx_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    *self = (void *)host;
    return TOLK_OK;
}
static void fx_destroy(void *self) {}

#if defined(FIX_OLDSIZE)
static tolk_status fx_open(void *self, tolk_stream *s, const tolk_stt_params *p, void **state) {
    *state = self;
    return TOLK_OK;
}
static tolk_status fx_feed(void *state, const int16_t *pcm, size_t n) { return TOLK_OK; }
static void fx_close(void *state) {}
/* A plugin from before `flush` existed: its table ends before it. */
static const tolk_stt desc = {
    .base = {.size = offsetof(tolk_stt, flush), .abi_major = TOLK_ABI_MAJOR, .abi_minor = 0,
             .kind = TOLK_KIND_STT, .build_abi = TOLK_BUILD_ABI, .name = "fx_oldsize",
             .version = "1", .create = fx_create, .destroy = fx_destroy},
    .open = fx_open, .feed = fx_feed, .close = fx_close};
TOLK_PLUGIN_DEFINE(desc)
#else
static tolk_status fx_translate(void *self, tolk_request *r, const char *text, const char *from,
                                const char *to) {
    const tolk_host *host = self;
    host->mt_done(r, TOLK_OK, text);
    return TOLK_OK;
}
static __attribute__((unused)) void fx_cancel(void *self, tolk_request *r) {}

#ifndef FIX_MAJOR
#define FIX_MAJOR TOLK_ABI_MAJOR
#endif
#ifndef FIX_MINOR
#define FIX_MINOR TOLK_ABI_MINOR
#endif
#ifndef FIX_BUILD_ABI
#define FIX_BUILD_ABI TOLK_BUILD_ABI
#endif
#ifdef FIX_NOCANCEL
#define FX_CANCEL NULL
#else
#define FX_CANCEL fx_cancel
#endif

static const tolk_mt desc = {
    .base = {.size = sizeof(tolk_mt), .abi_major = FIX_MAJOR, .abi_minor = FIX_MINOR,
             .kind = TOLK_KIND_MT, .build_abi = FIX_BUILD_ABI, .name = FIX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .translate = fx_translate, .cancel = FX_CANCEL};

#ifdef FIX_NOSYM
/* Exports something, but not the entry point. */
TOLK_EXPORT const tolk_plugin *not_the_entry(void);
TOLK_EXPORT const tolk_plugin *not_the_entry(void) { return &desc.base; }
#else
TOLK_PLUGIN_DEFINE(desc)
#endif
#endif
