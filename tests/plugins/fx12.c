/* ABI 1.2 fixtures: one source, built once per FX_* flag.
 *
 *   FX_LATE_STT, FX_LATE_MT, FX_LATE_TTS, FX_LATE_TRANSPORT
 *       plugins that work, and then call back on every handle they were
 *       given after the core ended it (a "late callback" on every host
 *       function that takes a stream, request or channel handle). Each late
 *       call is made from a timer, 30 ms after the close/cancel/hangup or
 *       completion, as a plugin with a stale pointer in a socket callback
 *       would.
 *   FX_MT12     an MT plugin on translate_req/mt_result: it reads the
 *       context, glossary and formality and writes them into the
 *       translation; a text containing "retry" fails once with a retry-after
 *       of 0.3 s; a text containing "nocache" is answered with
 *       TOLK_MT_NO_CACHE.
 *   FX_COMPAT   a plugin "built against ABI 1.<TOLK_ABI_MINOR + 1>" that can
 *       run on hosts back to 1.1 (TOLK_PLUGIN_DEFINE_COMPAT).
 *   FX_SMALL_STT a recogniser whose results carry a tolk_transcript.size
 *       smaller than ABI 1.0's struct.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tolk/plugin.h>

#ifdef FX_COMPAT
/* Pretend to be built against the next minor. */
#undef TOLK_ABI_MINOR
#define TOLK_ABI_MINOR 3
#endif

typedef struct fx {
    const tolk_host *host;
    tolk_instance *inst;
    tolk_timer *timers[64];
    size_t ntimers;
    tolk_channel *chan; /* FX_LATE_TRANSPORT: the call, kept past its hangup */
} fx;

static tolk_status fx_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    fx *f = calloc(1, sizeof *f);
    if (!f) return TOLK_E_NOMEM;
    f->host = host;
    f->inst = inst;
    *self = f;
    return TOLK_OK;
}

/* A late call pending on a timer. */
typedef struct late {
    fx *f;
    void *handle;
    size_t slot;
} late;

static void late_fire(void *ud);

static __attribute__((unused)) void late_after(fx *f, void *handle, double after) {
    if (f->ntimers >= 64) return;
    late *l = calloc(1, sizeof *l);
    if (!l) return;
    l->f = f;
    l->handle = handle;
    l->slot = f->ntimers;
    f->timers[f->ntimers++] = f->host->timer_start(f->inst, after, 0, late_fire, l);
}

static void fx_destroy(void *self) {
    fx *f = self;
    /* timers that have not fired: their late structs leak otherwise */
    for (size_t i = 0; i < f->ntimers; i++)
        if (f->timers[i]) f->host->timer_stop(f->timers[i]);
    free(f);
}

#if defined(FX_LATE_STT)
typedef struct sst {
    fx *f;
    tolk_stream *s;
    uint64_t pos;
} sst;

static tolk_status st_open(void *self, tolk_stream *s, const tolk_stt_params *p, void **state) {
    sst *st = calloc(1, sizeof *st);
    if (!st) return TOLK_E_NOMEM;
    st->f = self;
    st->s = s;
    *state = st;
    return TOLK_OK;
}
static tolk_status st_feed(void *state, const int16_t *pcm, size_t n) {
    ((sst *)state)->pos += n;
    return TOLK_OK;
}
static tolk_status st_flush(void *state) {
    sst *st = state;
    tolk_transcript t = {.size = sizeof t, .text = "late words", .is_final = 1,
                         .confidence = 1, .start_sample = 0, .end_sample = st->pos,
                         .stability = 1};
    st->f->host->stt_result(st->s, &t);
    return TOLK_OK;
}
static void st_close(void *state) {
    sst *st = state;
    late_after(st->f, st->s, 0.03);
    free(st);
}
static void late_fire(void *ud) {
    late *l = ud;
    fx *f = l->f;
    f->timers[l->slot] = NULL;
    tolk_transcript t = {.size = sizeof t, .text = "too late", .is_final = 1, .confidence = 1};
    f->host->stt_result(l->handle, &t);
    f->host->stt_failed(l->handle, TOLK_E_BACKEND, TOLK_SEV_HIGH, "too late");
    f->host->stt_flushed(l->handle);
    f->host->stt_ready(l->handle);
    free(l);
}
static const tolk_stt desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT), .name = FX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .open = st_open, .feed = st_feed, .close = st_close, .flush = st_flush};

#elif defined(FX_SMALL_STT)
typedef struct sst {
    fx *f;
    tolk_stream *s;
    uint64_t pos;
} sst;
static tolk_status st_open(void *self, tolk_stream *s, const tolk_stt_params *p, void **state) {
    sst *st = calloc(1, sizeof *st);
    if (!st) return TOLK_E_NOMEM;
    st->f = self;
    st->s = s;
    *state = st;
    return TOLK_OK;
}
static tolk_status st_feed(void *state, const int16_t *pcm, size_t n) {
    ((sst *)state)->pos += n;
    return TOLK_OK;
}
static tolk_status st_flush(void *state) {
    sst *st = state;
    /* a struct from no ABI at all: only the size member */
    tolk_transcript t = {.size = sizeof(uint32_t), .text = "never seen", .is_final = 1,
                         .end_sample = st->pos};
    st->f->host->stt_result(st->s, &t);
    return TOLK_OK;
}
static void st_close(void *state) { free(state); }
static void late_fire(void *ud) { free(ud); }
static const tolk_stt desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT), .name = FX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .open = st_open, .feed = st_feed, .close = st_close, .flush = st_flush};

#elif defined(FX_LATE_MT)
static tolk_status mt_translate(void *self, tolk_request *r, const char *text, const char *from,
                                const char *to) {
    fx *f = self;
    char out[256];
    snprintf(out, sizeof out, "late:%s", text);
    f->host->mt_done(r, TOLK_OK, out);
    late_after(f, r, 0.03);
    return TOLK_OK;
}
static void mt_cancel(void *self, tolk_request *r) {}
static void late_fire(void *ud) {
    late *l = ud;
    fx *f = l->f;
    f->timers[l->slot] = NULL;
    f->host->mt_done(l->handle, TOLK_OK, "again");
    tolk_mt_result res = {.size = sizeof res, .status = TOLK_OK, .text = "and again"};
    f->host->mt_result(l->handle, &res);
    free(l);
}
static const tolk_mt desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT), .name = FX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .translate = mt_translate, .cancel = mt_cancel};

#elif defined(FX_LATE_TTS)
static tolk_status tts_speak(void *self, tolk_request *r, const char *text, const char *language,
                             const char *voice) {
    fx *f = self;
    int16_t pcm[TOLK_FRAME_SAMPLES * 5];
    for (size_t i = 0; i < sizeof pcm / sizeof pcm[0]; i++) pcm[i] = (int16_t)((i % 40) * 200 - 4000);
    f->host->tts_audio(r, pcm, sizeof pcm / sizeof pcm[0]);
    f->host->tts_done(r, TOLK_OK);
    late_after(f, r, 0.03);
    return TOLK_OK;
}
static void tts_cancel(void *self, tolk_request *r) {}
static void late_fire(void *ud) {
    late *l = ud;
    fx *f = l->f;
    f->timers[l->slot] = NULL;
    int16_t pcm[TOLK_FRAME_SAMPLES] = {0};
    f->host->tts_audio(l->handle, pcm, TOLK_FRAME_SAMPLES);
    f->host->tts_done(l->handle, TOLK_OK);
    free(l);
}
static const tolk_tts desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_tts, TOLK_KIND_TTS), .name = FX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .speak = tts_speak, .cancel = tts_cancel};

#elif defined(FX_LATE_TRANSPORT)
/* One call: 1 s of tone, 0.6 s of silence, end of input. */
static int g_token;
static tolk_status tr_start(void *self) {
    fx *f = self;
    tolk_channel_info info = {.size = sizeof info, .id = "late-call",
                              .mode = TOLK_MODE_UNIDIRECTIONAL};
    tolk_status why;
    tolk_channel *ch = f->host->channel_open(f->inst, &info, &g_token, &why);
    if (!ch) return why;
    int16_t pcm[TOLK_FRAME_SAMPLES];
    for (int k = 0; k < 80; k++) {
        for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++)
            pcm[i] = k < 50 ? (int16_t)((i % 32) < 16 ? 6000 : -6000) : 0;
        f->host->channel_audio(ch, TOLK_LEG_A, pcm, TOLK_FRAME_SAMPLES);
    }
    f->host->channel_input_end(ch, TOLK_LEG_A);
    f->chan = ch; /* kept to call back with after hangup */
    return TOLK_OK;
}
static void tr_stop(void *self) {}
static tolk_status tr_play(void *self, void *cs, tolk_leg leg, const int16_t *pcm, size_t n) {
    return TOLK_OK;
}
static void tr_hangup(void *self, void *cs) {
    fx *f = self;
    late_after(f, f->chan, 0.03);
}
static void late_fire(void *ud) {
    late *l = ud;
    fx *f = l->f;
    f->timers[l->slot] = NULL;
    int16_t pcm[TOLK_FRAME_SAMPLES] = {0};
    f->host->channel_audio(l->handle, TOLK_LEG_A, pcm, TOLK_FRAME_SAMPLES);
    f->host->channel_input_end(l->handle, TOLK_LEG_A);
    f->host->channel_close(l->handle);
    (void)f->host->channel_id(l->handle);
    free(l);
}
static const tolk_transport desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT), .name = FX_NAME,
             .version = "1", .create = fx_create, .destroy = fx_destroy},
    .start = tr_start, .stop = tr_stop, .play = tr_play, .hangup = tr_hangup};

#elif defined(FX_MT12)
/* Process hooks: create() refuses to run before load(), and health() tells
 * how often load() ran (once per process, however many instances). */
static int g_loads;
static tolk_status mt12_load(const tolk_host *host) {
    g_loads++;
    return TOLK_OK;
}
static void mt12_unload(void) { g_loads = 0; }
static const tolk_process_hooks mt12_hooks = {.size = sizeof mt12_hooks, .load = mt12_load,
                                              .unload = mt12_unload};
static tolk_status mt12_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                               void **self) {
    return g_loads == 1 ? fx_create(host, inst, cfg, self) : TOLK_E_FATAL;
}
typedef struct pend {
    fx *f;
    tolk_request *r;
    tolk_timer *t;
} pend;
static int g_retried; /* per process: the first "retry" text fails once */
static void mt_later(void *ud) {
    pend *p = ud;
    tolk_mt_result res = {.size = sizeof res, .status = TOLK_E_AGAIN, .retry_after = 0.3};
    p->f->host->mt_result(p->r, &res);
    free(p);
}
static tolk_status mt_req(void *self, tolk_request *r, const tolk_mt_request *q) {
    fx *f = self;
    if (strstr(q->text, "retry") && !g_retried) {
        g_retried = 1;
        pend *p = calloc(1, sizeof *p);
        if (!p) return TOLK_E_NOMEM;
        p->f = f;
        p->r = r;
        p->t = f->host->timer_start(f->inst, 0.01, 0, mt_later, p);
        return TOLK_PENDING;
    }
    char out[1024];
    int n = snprintf(out, sizeof out, "[ctx %zu|%s|%s", q->ncontext, q->glossary ? q->glossary : "-",
                     q->formality ? q->formality : "-");
    for (size_t i = 0; i < q->ncontext && n < (int)sizeof out - 64; i++)
        n += snprintf(out + n, sizeof out - (size_t)n, "|%s", q->context[i]);
    snprintf(out + n, sizeof out - (size_t)n, "] %s", q->text);
    tolk_mt_result res = {.size = sizeof res, .status = TOLK_OK, .text = out,
                          .flags = strstr(q->text, "nocache") ? TOLK_MT_NO_CACHE : 0};
    f->host->mt_result(r, &res);
    return TOLK_OK;
}
static tolk_status mt_translate(void *self, tolk_request *r, const char *text, const char *from,
                                const char *to) {
    return TOLK_E_INVAL; /* the core prefers translate_req */
}
static void mt_cancel(void *self, tolk_request *r) {}
static void late_fire(void *ud) { free(ud); }
static const tolk_mt desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT), .name = FX_NAME, .version = "1",
             .create = mt12_create, .destroy = fx_destroy},
    .translate = mt_translate, .cancel = mt_cancel, .process = &mt12_hooks,
    .translate_req = mt_req, .mt_flags = TOLK_MT_USES_CONTEXT};

#elif defined(FX_COMPAT)
static tolk_status mt_translate(void *self, tolk_request *r, const char *text, const char *from,
                                const char *to) {
    fx *f = self;
    f->host->mt_done(r, TOLK_OK, text);
    return TOLK_OK;
}
static void mt_cancel(void *self, tolk_request *r) {}
static void late_fire(void *ud) { free(ud); }
static const tolk_mt desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT), .name = FX_NAME, .version = "1",
             .create = fx_create, .destroy = fx_destroy},
    .translate = mt_translate, .cancel = mt_cancel};
#endif

#ifdef FX_COMPAT
TOLK_PLUGIN_DEFINE_COMPAT(tolk_mt, desc, 1)
#else
TOLK_PLUGIN_DEFINE(desc)
#endif
