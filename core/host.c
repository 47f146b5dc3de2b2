/* The host-services table lent to plugins, and the core's own metrics. */
#include <jansson.h>
#include <speex/speex_resampler.h>
#include <stdarg.h>
#include <string.h>

#include "core.h"
#include "handle.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "ws.h"

/* One core per process: signals and the default loop are process-wide. */
static core *g_core;

static void h_log(tolk_instance *inst, tolk_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, inst ? inst->who : "plugin", fmt, ap);
    va_end(ap);
}

static int h_log_enabled(tolk_instance *inst, tolk_log_level level) { return log_enabled(level); }
static const char *h_instance_name(tolk_instance *inst) { return inst ? inst->name : ""; }
static double h_now(void) { return mono_now(); }

static tolk_timer *h_timer_start(tolk_instance *inst, double after, double repeat, tolk_cb cb,
                                 void *ud) {
    return loop_timer_start(g_core->loop, after, repeat, cb, ud);
}

static tolk_workq *h_workq_new(tolk_instance *inst) { return workq_new(g_core->workers); }
static tolk_status h_submit(tolk_workq *q, tolk_cb work, tolk_cb done, void *ud) {
    return workq_submit(g_core->workers, q, work, done, ud);
}
static tolk_async *h_async_new(tolk_instance *inst, tolk_cb cb, void *ud) {
    return loop_async_new(g_core->loop, cb, ud);
}

static tolk_resampler *h_resampler_new(unsigned in_rate, unsigned out_rate, int quality) {
    int err = 0;
    if (quality < 0) quality = 0;
    if (quality > 10) quality = 10;
    SpeexResamplerState *st = speex_resampler_init(1, in_rate, out_rate, quality, &err);
    if (st) speex_resampler_skip_zeros(st);
    return (tolk_resampler *)st;
}

static size_t h_resample(tolk_resampler *r, const int16_t *in, size_t n, int16_t *out,
                         size_t out_cap) {
    if (!r) return 0;
    spx_uint32_t in_len = (spx_uint32_t)n, out_len = (spx_uint32_t)out_cap;
    speex_resampler_process_int((SpeexResamplerState *)r, 0, in, &in_len, out, &out_len);
    return out_len;
}

static void h_resampler_free(tolk_resampler *r) {
    if (r) speex_resampler_destroy((SpeexResamplerState *)r);
}

static json_t *cfg_get(const json_t *cfg, const char *key) {
    return cfg && key ? json_object_get(cfg, key) : NULL;
}
static int64_t h_cfg_int(const json_t *cfg, const char *key) {
    json_t *v = cfg_get(cfg, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : (int64_t)json_number_value(v);
}
static double h_cfg_double(const json_t *cfg, const char *key) {
    return json_number_value(cfg_get(cfg, key));
}
static int h_cfg_bool(const json_t *cfg, const char *key) { return json_is_true(cfg_get(cfg, key)); }
static const char *h_cfg_string(const json_t *cfg, const char *key) {
    return json_string_value(cfg_get(cfg, key));
}
static size_t h_cfg_list_size(const json_t *cfg, const char *key) {
    return json_array_size(cfg_get(cfg, key));
}
static const char *h_cfg_list_string(const json_t *cfg, const char *key, size_t i) {
    return json_string_value(json_array_get(cfg_get(cfg, key), i));
}
static const char *h_cfg_map_string(const json_t *cfg, const char *key, const char *name) {
    return json_string_value(json_object_get(cfg_get(cfg, key), name));
}

static void h_report(tolk_instance *inst, tolk_status st, tolk_severity sev, const char *why) {
    if (inst) instance_report(inst->core, inst, st, sev, why);
}

static void h_reset_done(tolk_instance *inst, tolk_status st) { instance_reset_done(inst, st); }

/* ---- handles: every host function that takes a channel, stream or
 * request handle looks it up first (handle.h); a retired one is a late
 * callback, caught here before anything is touched. ---- */

static ptr_vec g_late_warned; /* plugins already logged, by descriptor */

void late_callback(const char *what, const void *h) {
    const tolk_plugin *p = handle_last_owner(h);
    const char *name = p ? p->name : "unknown plugin";
    count_error(g_core, name, "late_callback", TOLK_SEV_HIGH);
    int warned = 0;
    for (size_t i = 0; i < g_late_warned.n; i++)
        if (g_late_warned.v[i] == p) warned = 1;
    if (!warned) {
        ptr_vec_push(&g_late_warned, (void *)p);
        log_msg(TOLK_LOG_ERR, name,
                "%s for a call, stream or request that had already ended: ignored (a bug in "
                "plugin %s; later ones are only counted in errors_total)",
                what, name);
    }
#ifdef TOLK_DEBUG
    log_msg(TOLK_LOG_FATAL, "core", "debug build: aborting on a late callback from %s", name);
    abort();
#endif
}

#define LIVE(var, type, kind, h, what, ...)                                                \
    type *var = handle_get((h), (kind));                                                   \
    if (!var) {                                                                            \
        late_callback((what), (h));                                                        \
        return __VA_ARGS__;                                                                \
    }

static tolk_channel *h_channel_open(tolk_instance *transport, const tolk_channel_info *info,
                                    void *tstate, tolk_status *why) {
    if (!transport || transport->desc->kind != TOLK_KIND_TRANSPORT) {
        if (why) *why = TOLK_E_INVAL;
        return NULL;
    }
    tolk_channel *ch = channel_open(transport->core, transport, info, tstate, why);
    if (!ch) return NULL;
    ch->handle = handle_new(H_CHANNEL, ch, transport->desc);
    return ch->handle;
}

static tolk_status h_channel_audio(tolk_channel *h, tolk_leg leg, const int16_t *pcm, size_t n) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_audio", TOLK_E_INVAL)
    return channel_audio(ch, leg, pcm, n);
}

static void h_channel_input_end(tolk_channel *h, tolk_leg leg) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_input_end")
    channel_input_end(ch, leg);
}

static void h_channel_event(tolk_channel *h, const char *name, const json_t *data) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_event")
    if (!name || !*name) return;
    channel_publish(ch, -1, name, data);
}

static tolk_status h_channel_audio_at(tolk_channel *h, tolk_leg leg, const int16_t *pcm, size_t n,
                                      double captured_at) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_audio_at", TOLK_E_INVAL)
    return channel_audio_at(ch, leg, pcm, n, captured_at);
}

static void h_channel_dtmf(tolk_channel *h, tolk_leg leg, char digit, unsigned duration_ms) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_dtmf")
    channel_dtmf(ch, leg, digit, duration_ms);
}

static void h_channel_progress(tolk_channel *h, tolk_progress p, tolk_leg leg) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_progress")
    channel_progress(ch, p, leg);
}

static void h_channel_played(tolk_channel *h, tolk_leg leg, uint64_t frames) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_played")
    channel_played(ch, leg, frames);
}

static tolk_io *h_io_start(tolk_instance *inst, int fd, unsigned events,
                           void (*cb)(void *ud, int fd, unsigned revents), void *ud) {
    return loop_io_start(g_core->loop, inst ? &inst->ios : NULL, fd, events, cb, ud);
}

static void h_channel_close(tolk_channel *h) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_close")
    channel_close(ch);
}

static const char *h_channel_id(tolk_channel *h) {
    LIVE(ch, tolk_channel, H_CHANNEL, h, "channel_id", "")
    return ch->id;
}

static void h_stt_result(tolk_stream *h, const tolk_transcript *t) {
    LIVE(s, tolk_stream, H_STREAM, h, "stt_result")
    stream_result(s, t);
}

static void h_stt_failed(tolk_stream *h, tolk_status st, tolk_severity sev, const char *why) {
    LIVE(s, tolk_stream, H_STREAM, h, "stt_failed")
    stream_failed(s, st, sev, why);
}

static void h_stt_flushed(tolk_stream *h) {
    LIVE(s, tolk_stream, H_STREAM, h, "stt_flushed")
    stream_flushed(s);
}

static void h_stt_ready(tolk_stream *h) {
    LIVE(s, tolk_stream, H_STREAM, h, "stt_ready")
    stream_ready(s);
}

static void h_mt_done(tolk_request *h, tolk_status st, const char *text) {
    LIVE(r, tolk_request, H_REQUEST, h, "mt_done")
    request_mt_done(r, st, text);
}

static void h_mt_result(tolk_request *h, const tolk_mt_result *res) {
    LIVE(r, tolk_request, H_REQUEST, h, "mt_result")
    if (!res || res->size < offsetof(tolk_mt_result, flags) + sizeof res->flags) {
        log_msg(TOLK_LOG_ERR, r->inst->who, "mt_result with a tolk_mt_result of size %u: treated as a failure",
                res ? res->size : 0);
        request_mt_done(r, TOLK_E_INVAL, NULL);
        return;
    }
    request_mt_result(r, res);
}

static void h_tts_audio(tolk_request *h, const int16_t *pcm, size_t n) {
    LIVE(r, tolk_request, H_REQUEST, h, "tts_audio")
    request_tts_audio(r, pcm, n);
}

static void h_tts_done(tolk_request *h, tolk_status st) {
    LIVE(r, tolk_request, H_REQUEST, h, "tts_done")
    request_tts_done(r, st);
}

void host_free(void) {
    ptr_vec_free(&g_late_warned);
    handle_table_free();
}

void host_init(core *c, tolk_host *h) {
    g_core = c;
    ws_attach(c);
    *h = (tolk_host){
        .size = sizeof(tolk_host),
        .abi_major = TOLK_ABI_MAJOR,
        .abi_minor = TOLK_ABI_MINOR,
        .loop = c->loop,
        .log = h_log,
        .log_enabled = h_log_enabled,
        .instance_name = h_instance_name,
        .now = h_now,
        .timer_start = h_timer_start,
        .timer_stop = loop_timer_stop,
        .workq_new = h_workq_new,
        .workq_free = workq_free,
        .submit = h_submit,
        .async_new = h_async_new,
        .async_send = loop_async_send,
        .async_free = loop_async_free,
        .resampler_new = h_resampler_new,
        .resample = h_resample,
        .resampler_free = h_resampler_free,
        .cfg_int = h_cfg_int,
        .cfg_double = h_cfg_double,
        .cfg_bool = h_cfg_bool,
        .cfg_string = h_cfg_string,
        .cfg_list_size = h_cfg_list_size,
        .cfg_list_string = h_cfg_list_string,
        .cfg_map_string = h_cfg_map_string,
        .metric_family = metrics_family,
        .metric_series = metrics_series,
        .series_add = metrics_add,
        .series_set = metrics_set,
        .series_observe = metrics_observe,
        .metrics_visit = metrics_visit,
        .report = h_report,
        .reset_done = h_reset_done,
        .channel_open = h_channel_open,
        .channel_audio = h_channel_audio,
        .channel_input_end = h_channel_input_end,
        .channel_event = h_channel_event,
        .channel_close = h_channel_close,
        .channel_id = h_channel_id,
        .stt_result = h_stt_result,
        .stt_failed = h_stt_failed,
        .stt_flushed = h_stt_flushed,
        .mt_done = h_mt_done,
        .tts_audio = h_tts_audio,
        .tts_done = h_tts_done,
        .metrics_visit_families = metrics_visit_families,
        .stt_ready = h_stt_ready,
        .mt_result = h_mt_result,
        .http_request = http_request,
        .http_cancel = http_cancel,
        .http_header = http_header,
        .ws_connect = ws_connect,
        .ws_send = ws_send,
        .ws_buffered = ws_buffered,
        .ws_close = ws_close,
        .ws_cancel = ws_cancel,
        .lws_context = ws_lws_context,
        .io_start = h_io_start,
        .io_set = loop_io_set,
        .io_stop = loop_io_stop,
        .channel_audio_at = h_channel_audio_at,
        .channel_dtmf = h_channel_dtmf,
        .channel_progress = h_channel_progress,
        .channel_played = h_channel_played,
    };
}
