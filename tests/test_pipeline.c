/* Mock calls through the real core: audio in, translated audio out, in
 * order, with queues drained and channel states as the spec lists them. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "util.h"
#include "testutil.h"

#define MAX_REPORTS 64

typedef struct rec {
    phrase_report r[MAX_REPORTS];
    char *text[MAX_REPORTS], *translation[MAX_REPORTS];
    char from[MAX_REPORTS][8], to[MAX_REPORTS][8];
    size_t n;
    chan_state states[16];
    size_t nstates;
    int ended;
    core *c;
    char *dir;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAX_REPORTS) return;
    if (r->ok) {
        assert_string_equal(r->stt, "stt-a");
        assert_string_equal(r->mt, "mt-a");
        assert_string_equal(r->tts, "tts-a");
    }
    R->r[R->n] = *r;
    R->text[R->n] = xstrdup(r->text);
    R->translation[R->n] = xstrdup(r->translation);
    R->r[R->n].text = R->text[R->n];
    R->r[R->n].translation = R->translation[R->n];
    /* the report's strings live only during the callback */
    snprintf(R->from[R->n], sizeof R->from[0], "%s", r->from);
    snprintf(R->to[R->n], sizeof R->to[0], "%s", r->to);
    R->r[R->n].from = R->from[R->n];
    R->r[R->n].to = R->to[R->n];
    R->r[R->n].stt = R->r[R->n].mt = R->r[R->n].tts = NULL;
    R->r[R->n].channel_id = NULL;
    R->n++;
}

static void on_state(void *ud, tolk_channel *ch, chan_state st) {
    rec *R = ud;
    if (R->nstates < ARRAY_LEN(R->states)) R->states[R->nstates++] = st;
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

static int setup(void **state) {
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_write(R->dir, "tolk.conf", "core: { max_channels = 2; drain_timeout = 10.0; workers = 1; log_level = \"warn\"; };\n");
    tu_write_mock_pipeline(R->dir);
    *state = R;
    return 0;
}

static int teardown(void **state) {
    rec *R = *state;
    if (R->c) core_free(R->c);
    for (size_t i = 0; i < R->n; i++) {
        free(R->text[i]);
        free(R->translation[i]);
    }
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    return 0;
}

static void start(rec *R, const char *transport_settings) {
    tu_write(R->dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { %s }; };\n",
             transport_settings);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_state = on_state, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
}

static int all_ended(void *ud) {
    rec *R = ud;
    return R->c->active == 0 && R->ended > 0 && tu_health_int(R->c, "calls", "calls_active") == 0;
}

static double depth(core *c, int q) { return metrics_value(c->m.qdepth[q]); }

static void test_mock_call_translated_in_order(void **state) {
    rec *R = *state;
    start(R, "calls = 1; phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; "
             "realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 3);
    static const char *const want_text[] = {"hello world", "thank you", "good morning"};
    static const char *const want_tr[] = {"hola mundo", "gracias amigo", "buenos días"};
    for (size_t i = 0; i < 3; i++) {
        assert_true(R->r[i].ok);
        assert_int_equal(R->r[i].seq, i + 1);
        assert_string_equal(R->r[i].text, want_text[i]);
        assert_string_equal(R->r[i].translation, want_tr[i]);
        assert_int_equal(R->r[i].from_leg, TOLK_LEG_A);
        if (i) assert_true(R->r[i].start_s > R->r[i - 1].end_s);
    }
    /* the callee heard translated speech; nothing came back to the caller */
    assert_true(tu_health_int(R->c, "calls", "frames_played.b") > 0);
    assert_true(tu_health_int(R->c, "calls", "energy_played_by_leg.b") > 0);
    assert_int_equal(tu_health_int(R->c, "calls", "play_bad_size"), 0);
    assert_int_equal(tu_health_int(R->c, "calls", "calls_ended"), 1);
    /* every queue drained */
    for (int q = 0; q < Q_COUNT; q++) assert_true(depth(R->c, q) == 0);
    static const chan_state want[] = {CH_RINGING, CH_CONNECTED, CH_TRANSLATING, CH_DISCONNECTING,
                                      CH_DISCONNECTED};
    assert_int_equal(R->nstates, ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++) assert_int_equal(R->states[i], want[i]);
}

static void test_bidirectional_both_directions(void **state) {
    rec *R = *state;
    start(R, "calls = 1; phrases = 2; speech_ms = 500; gap_ms = 500; legs = \"both\"; "
             "mode = \"bidirectional\"; realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    size_t a = 0, b = 0;
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->r[i].ok);
        if (R->r[i].from_leg == TOLK_LEG_A) {
            a++;
            assert_string_equal(R->r[i].from, "en");
            assert_string_equal(R->r[i].to, "es");
        } else {
            b++;
            assert_string_equal(R->r[i].from, "es");
            assert_string_equal(R->r[i].to, "en");
        }
    }
    assert_int_equal(a, 2);
    assert_int_equal(b, 2);
    assert_true(tu_health_int(R->c, "calls", "energy_played_by_leg.a") > 0);
    assert_true(tu_health_int(R->c, "calls", "energy_played_by_leg.b") > 0);
}

/* Passthrough bridges every frame, untranslated, both ways. */
static void test_passthrough_bridges_audio(void **state) {
    rec *R = *state;
    start(R, "calls = 1; phrases = 2; speech_ms = 400; gap_ms = 300; legs = \"both\"; "
             "mode = \"passthrough\"; realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 0);
    long long sent_a = tu_health_int(R->c, "calls", "frames_sent.a");
    long long sent_b = tu_health_int(R->c, "calls", "frames_sent.b");
    assert_true(sent_a > 0);
    assert_int_equal(tu_health_int(R->c, "calls", "frames_played.b"), sent_a);
    assert_int_equal(tu_health_int(R->c, "calls", "frames_played.a"), sent_b);
}

/* Paced and fed in real time: the latency the core measures starts when the
 * end of the phrase arrived, so it cannot be shorter than the recogniser's
 * trailing silence plus the mocks' configured delays. */
static void test_realtime_latency_is_measured_from_phrase_end(void **state) {
    rec *R = *state;
    start(R, "calls = 1; phrases = 2; speech_ms = 500; gap_ms = 600; mode = \"unidirectional\"; "
             "realtime = true; paced = true;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 2);
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->r[i].ok);
        /* silence_ms 200 + stt 10 + mt 5 + tts 10 */
        assert_true(R->r[i].latency_ms >= 225);
        assert_true(R->r[i].stt_ms >= 200);
    }
    assert_true(tu_health_int(R->c, "calls", "jitter_frames") > 0);
    assert_int_equal(tu_health_int(R->c, "calls", "play_bad_size"), 0);
}

static void test_max_channels_refuses_cleanly(void **state) {
    rec *R = *state;
    double refused0 = metrics_value(metrics_series(metrics_family("channels_refused_total", "", TOLK_METRIC_COUNTER, NULL, NULL, 0), NULL));
    start(R, "calls = 3; phrases = 1; speech_ms = 300; gap_ms = 300; realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(tu_health_int(R->c, "calls", "calls_opened"), 2);
    assert_int_equal(tu_health_int(R->c, "calls", "calls_refused"), 1);
    assert_true(metrics_value(R->c->m.refused_s) - refused0 == 1);
    assert_int_equal(R->c->refused_channels, 1);
    /* the two accepted calls were translated */
    assert_int_equal(R->ended, 2);
    assert_int_equal(R->n, 2);
}

/* The caller hangs up mid-call: everything in flight is cancelled, nothing
 * fires afterwards (ASan and valgrind watch this one). */
static void test_hangup_cancels_in_flight_work(void **state) {
    rec *R = *state;
    tu_write(R->dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = 30; chunk_interval_ms = 200; }; };\n");
    start(R, "calls = 1; phrases = 2; speech_ms = 400; gap_ms = 250; hangup = \"close\"; "
             "realtime = false; paced = true;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(tu_health_int(R->c, "calls", "calls_ended"), 1);
    assert_int_equal(tu_health_int(R->c, "calls", "hangup_unknown_call"), 0);
    for (int q = 0; q < Q_COUNT; q++) assert_true(depth(R->c, q) == 0);
}

/* Garbage from a provider (invalid UTF-8, control bytes) is cleaned, not
 * passed on, and does not stop the call. */
static void test_garbage_translation_is_cleaned(void **state) {
    rec *R = *state;
    tu_write(R->dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { garbage = true; }; };\n");
    start(R, "calls = 1; phrases = 2; speech_ms = 400; gap_ms = 400; realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 2);
    for (size_t i = 0; i < R->n; i++) {
        if (!R->r[i].ok) continue;
        json_t *j = json_string(R->r[i].translation); /* NULL if not UTF-8 */
        assert_non_null(j);
        json_decref(j);
        for (const char *p = R->r[i].translation; *p; p++) assert_true((unsigned char)*p >= 0x20);
    }
}

static double mt_requests(core *c) { return (double)tu_health_int(c, "mt-a", "requests"); }

/* Six phrases, three distinct texts: the second time round each comes from
 * the MT provider's cache, identical, without asking the provider, and the
 * hit rate says so. */
static void test_translation_cache_serves_repeated_phrases(void **state) {
    rec *R = *state;
    tolk_metric *rate = metrics_family("translation_cache_hit_rate", "", TOLK_METRIC_GAUGE, "component", NULL, 0);
    tolk_metric *lookups = metrics_family("translation_cache_lookups_total", "", TOLK_METRIC_COUNTER,
                                          "component,result", NULL, 0);
    /* the registry is the process's: earlier tests' calls counted too */
    double hits0 = metrics_value(metrics_series_v(lookups, "mt-a", "hit", NULL));
    double misses0 = metrics_value(metrics_series_v(lookups, "mt-a", "miss", NULL));
    start(R, "calls = 1; phrases = 6; speech_ms = 400; gap_ms = 400; mode = \"unidirectional\"; "
             "realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 6);
    for (size_t i = 0; i < 6; i++) {
        assert_true(R->r[i].ok);
        assert_int_equal(R->r[i].mt_cached, i >= 3);
        if (i >= 3) assert_string_equal(R->r[i].translation, R->r[i - 3].translation);
    }
    assert_true(mt_requests(R->c) == 3);
    assert_true(metrics_value(metrics_series_v(rate, "mt-a", NULL)) == 0.5);
    assert_true(metrics_value(metrics_series_v(lookups, "mt-a", "hit", NULL)) - hits0 == 3);
    assert_true(metrics_value(metrics_series_v(lookups, "mt-a", "miss", NULL)) - misses0 == 3);
}

static void test_translation_cache_off(void **state) {
    rec *R = *state;
    tu_write(R->dir, "tolk.conf", "core: { max_channels = 2; workers = 1; translation_cache = 0; };\n");
    start(R, "calls = 1; phrases = 6; speech_ms = 400; gap_ms = 400; mode = \"unidirectional\"; "
             "realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 6);
    for (size_t i = 0; i < 6; i++) assert_false(R->r[i].mt_cached);
    assert_true(mt_requests(R->c) == 6);
}

/* Endpoints carry voice profiles: each party is spoken in their own
 * (cloned) voice. The TTS provider makes a voice's embedding once (the
 * mock's clone_ms) and keeps it: the gauge counts the voices kept. */
static void test_voice_embeddings_are_kept(void **state) {
    rec *R = *state;
    tu_write(R->dir, "tolk.conf",
             "core: { max_channels = 2; workers = 1; };\n"
             "endpoints = ( { name = \"alice\"; language = \"en\"; voice = \"alice-ref\"; },\n"
             "              { name = \"bob\"; language = \"es\"; voice = \"bob-ref\"; } );\n");
    tu_write(R->dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = 30; clone_ms = 300; }; };\n");
    start(R, "calls = 1; phrases = 2; speech_ms = 400; gap_ms = 500; legs = \"both\"; "
             "mode = \"bidirectional\"; endpoint_a = \"alice\"; endpoint_b = \"bob\"; "
             "realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 4);
    int first[2] = {1, 1};
    for (size_t i = 0; i < R->n; i++) {
        int leg = R->r[i].from_leg;
        assert_true(R->r[i].ok);
        assert_string_equal(R->r[i].from, leg == TOLK_LEG_A ? "en" : "es");
        if (first[leg])
            assert_true(R->r[i].tts_first_ms >= 300);
        else
            assert_true(R->r[i].tts_first_ms < 300);
        first[leg] = 0;
    }
    assert_int_equal(tu_health_int(R->c, "tts-a", "clones"), 2);
    tolk_metric *fam = metrics_family("voice_embedding_cache_size", "", TOLK_METRIC_GAUGE, "component", NULL, 0);
    assert_true(metrics_value(metrics_series_v(fam, "tts-a", NULL)) == 2);
}

static int stt_busy(void *ud) { return depth(((rec *)ud)->c, Q_STT) >= 1; }

/* Each queue of the five tiers is measured: while the caller speaks, the
 * phrase is in the STT queue; every frame's wait before the recogniser,
 * every phrase's wait before STT, MT, TTS and playback is observed once;
 * at the end every depth is back to 0. */
static void test_every_queue_is_measured(void **state) {
    rec *R = *state;
    tolk_series *wait[Q_COUNT];
    uint64_t before[Q_COUNT];
    start(R, "calls = 1; phrases = 2; speech_ms = 500; gap_ms = 600; mode = \"unidirectional\"; "
             "realtime = true; paced = true;");
    for (int q = 0; q < Q_COUNT; q++) {
        wait[q] = R->c->m.qwait[q];
        before[q] = metrics_count(wait[q]);
    }
    assert_true(tu_run_until(R->c, stt_busy, R, 5));
    assert_true(tu_run_until(R->c, all_ended, R, 20));
    assert_int_equal(R->n, 2);
    uint64_t frames = (uint64_t)tu_health_int(R->c, "calls", "frames_sent.a");
    assert_true(frames > 0);
    assert_true(metrics_count(wait[Q_INPUT]) - before[Q_INPUT] == frames);
    for (int q = Q_STT; q < Q_COUNT; q++) assert_true(metrics_count(wait[q]) - before[q] == 2);
    for (int q = 0; q < Q_COUNT; q++) assert_true(depth(R->c, q) == 0);
}

/* The voice detector's energy (core/util.c, vectorised) is the exact sum
 * of squares, full-scale negative samples included: a frame of -32768 must
 * not read as silence. */
static void test_pcm_energy_is_exact(void **state) {
    (void)state;
    int16_t f[TOLK_FRAME_SAMPLES];
    uint32_t x = 12345;
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++) {
            x = x * 1103515245u + 12345u;
            f[i] = round == 0   ? INT16_MIN
                   : round == 1 ? (i % 2 ? INT16_MAX : INT16_MIN)
                   : round == 2 ? (int16_t)(x >> 16)
                                : (int16_t)(i % 7 == 0 ? -3 : 0);
        }
        uint64_t want = 0;
        for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++) want += (uint64_t)((int64_t)f[i] * f[i]);
        assert_true(pcm_energy(f, TOLK_FRAME_SAMPLES) == want);
    }
    assert_true(pcm_energy(f, 0) == 0);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pcm_energy_is_exact),
        cmocka_unit_test_setup_teardown(test_mock_call_translated_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bidirectional_both_directions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passthrough_bridges_audio, setup, teardown),
        cmocka_unit_test_setup_teardown(test_realtime_latency_is_measured_from_phrase_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_channels_refuses_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hangup_cancels_in_flight_work, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_translation_is_cleaned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_translation_cache_serves_repeated_phrases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_translation_cache_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_queue_is_measured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_voice_embeddings_are_kept, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("pipeline", tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
