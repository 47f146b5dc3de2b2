/* The core's own metric families (the specification's names and labels)
 * and the error counter every layer reports to. Below everything else in
 * core/: it calls only the registry (metrics.c). */
#include "core.h"
#include "metrics.h"

static const char *const severity_names[] = {"low", "medium", "high", "critical", "permanent"};

void count_error(core *c, const char *component, const char *type, tolk_severity sev) {
    if ((int)sev < 0 || sev > TOLK_SEV_PERMANENT) sev = TOLK_SEV_MEDIUM;
    metrics_add(metrics_series_v(c->m.errors, component, type, severity_names[sev], NULL), 1);
}

void core_metrics_init(core *c) {
    static const double latency_b[] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 2.5, 3.0};
    static const double component_b[] = {10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000};
    static const double wait_b[] = {1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};
    static const double duration_b[] = {1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
    core_metrics *m = &c->m;
    m->latency = metrics_family("translation_latency_seconds",
                                "Time per pipeline stage; stage=total is end of phrase to first translated frame "
                                "handed to the transport, stage=ear to its playing out (transports that say)",
                                TOLK_METRIC_HISTOGRAM, "source_lang,target_lang,stage", latency_b,
                                ARRAY_LEN(latency_b));
    m->component = metrics_family("component_latency_milliseconds", "Provider operation time",
                                  TOLK_METRIC_HISTOGRAM, "component,operation", component_b,
                                  ARRAY_LEN(component_b));
    m->frames = metrics_family("frames_processed_total", "20 ms audio frames received from calls",
                               TOLK_METRIC_COUNTER, NULL, NULL, 0);
    m->translations = metrics_family("translations_completed_total",
                                     "Phrases whose translation started playing", TOLK_METRIC_COUNTER,
                                     NULL, NULL, 0);
    m->audio_bytes = metrics_family("audio_bytes_processed_total", "Bytes of call audio received",
                                    TOLK_METRIC_COUNTER, NULL, NULL, 0);
    m->words = metrics_family("words_translated_total", "Words recognised and sent to translation",
                              TOLK_METRIC_COUNTER, NULL, NULL, 0);
    m->errors = metrics_family("errors_total", "Errors by component, type and severity",
                               TOLK_METRIC_COUNTER, "component,error_type,severity", NULL, 0);
    m->recoveries = metrics_family("recoveries_total", "Recovery attempts by tier and outcome",
                                   TOLK_METRIC_COUNTER, "component,tier,success", NULL, 0);
    m->queue_depth = metrics_family("queue_depth", "Items waiting in a pipeline queue, all calls",
                                    TOLK_METRIC_GAUGE, "queue", NULL, 0);
    m->queue_wait = metrics_family("queue_wait_time_milliseconds", "Time spent waiting in a queue",
                                   TOLK_METRIC_HISTOGRAM, "queue", wait_b, ARRAY_LEN(wait_b));
    m->active = metrics_family("active_channels", "Calls in progress", TOLK_METRIC_GAUGE, NULL, NULL, 0);
    m->duration = metrics_family("channel_duration_seconds", "Length of ended calls",
                                 TOLK_METRIC_HISTOGRAM, NULL, duration_b, ARRAY_LEN(duration_b));
    m->uptime = metrics_family("service_uptime_seconds", "Seconds since tolkd started",
                               TOLK_METRIC_GAUGE, NULL, NULL, 0);
    m->health = metrics_family("service_health", "Provider health: 0 healthy .. 3 failed",
                               TOLK_METRIC_GAUGE, "component", NULL, 0);
    m->success = metrics_family("success_rate", "Share of successful provider operations",
                                TOLK_METRIC_GAUGE, "component", NULL, 0);
    m->refused = metrics_family("channels_refused_total", "Calls refused (limit or shutdown)",
                                TOLK_METRIC_COUNTER, NULL, NULL, 0);
    m->channels_total = metrics_family("channels_total", "Calls accepted", TOLK_METRIC_COUNTER, NULL,
                                       NULL, 0);
    m->reloads = metrics_family("config_reloads_total", "Configuration reloads by result",
                                TOLK_METRIC_COUNTER, "result", NULL, 0);
    m->cache_rate = metrics_family("translation_cache_hit_rate",
                                   "Share of the last 100 translation cache lookups that hit, per MT provider",
                                   TOLK_METRIC_GAUGE, "component", NULL, 0);
    m->cache_lookups = metrics_family("translation_cache_lookups_total",
                                      "Translation cache lookups by MT provider and result (hit, miss)",
                                      TOLK_METRIC_COUNTER, "component,result", NULL, 0);
    /* Their series come from the plugins that own them: TTS providers that
     * clone voices, transports that write to pipes. The core defines the
     * families so every provider reports them the same way. */
    m->voice_cache = metrics_family("voice_embedding_cache_size",
                                    "Speaker embeddings (cloned voices) a TTS provider keeps ready",
                                    TOLK_METRIC_GAUGE, "component", NULL, 0);
    m->pipe_util = metrics_family("pipe_buffer_utilization",
                                  "Fill of a transport's media pipe buffers, 0..1 (the fullest one)",
                                  TOLK_METRIC_GAUGE, "component", NULL, 0);
    m->events = metrics_family("channel_events_total",
                               "Events from calls (dtmf, ringing, answered, joined, a transport's own)",
                               TOLK_METRIC_COUNTER, "event", NULL, 0);
    static const double lag_b[] = {0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0};
    m->lag = metrics_family("playback_lag_seconds",
                            "End of a phrase (capture time of its last sample) to the start of its translated "
                            "speech, on paced calls: how far the translation runs behind",
                            TOLK_METRIC_HISTOGRAM, "source_lang,target_lang", lag_b, ARRAY_LEN(lag_b));
    m->lag_over = metrics_family("playback_lag_exceeded_total",
                                 "Phrases whose translated speech started later than core.max_lag_seconds "
                                 "after they ended",
                                 TOLK_METRIC_COUNTER, "source_lang,target_lang", NULL, 0);
    m->lag_over_seconds = metrics_family("playback_lag_over_seconds_total",
                                         "Sum over those phrases of their lag beyond core.max_lag_seconds",
                                         TOLK_METRIC_COUNTER, "source_lang,target_lang", NULL, 0);
    m->speedup_seconds = metrics_family("playback_speedup_seconds_total",
                                        "Seconds of translated speech played faster than synthesised at "
                                        "normal rate, to catch up (core.max_speedup)",
                                        TOLK_METRIC_COUNTER, "source_lang,target_lang", NULL, 0);
    m->frames_s = metrics_series(m->frames, NULL);
    m->translations_s = metrics_series(m->translations, NULL);
    m->audio_bytes_s = metrics_series(m->audio_bytes, NULL);
    m->words_s = metrics_series(m->words, NULL);
    m->active_s = metrics_series(m->active, NULL);
    m->duration_s = metrics_series(m->duration, NULL);
    m->uptime_s = metrics_series(m->uptime, NULL);
    m->refused_s = metrics_series(m->refused, NULL);
    m->channels_total_s = metrics_series(m->channels_total, NULL);
    for (int q = 0; q < Q_COUNT; q++) {
        m->qdepth[q] = metrics_series_v(m->queue_depth, queue_names[q], NULL);
        m->qwait[q] = metrics_series_v(m->queue_wait, queue_names[q], NULL);
    }
}
