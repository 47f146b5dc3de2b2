/* Flow control (issue 11, item 3): calls fed faster than real time keep
 * their queues and the heap under core.max_backlog_seconds whatever the
 * input does; a live call over the bound sheds its oldest audio, counts it
 * and says so once. */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define BACKLOG_SECONDS 10
#define CALLS 5

typedef struct watch {
    core *c;
    double max_depth[Q_COUNT];
    size_t heap0, heap_max;
} watch;

/* in use from the arenas plus the large blocks malloc maps by themselves */
static size_t heap_in_use(void) {
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* Samples the gauges and the heap on every turn of the loop. */
static int sample(void *ud) {
    watch *W = ud;
    for (int q = 0; q < Q_COUNT; q++) {
        double v = metrics_value(W->c->m.qdepth[q]);
        if (v > W->max_depth[q]) W->max_depth[q] = v;
    }
    size_t h = heap_in_use();
    if (h > W->heap_max) W->heap_max = h;
    return 0;
}

static core *start(const char *dir, const char *core_extra, const char *transport) {
    tu_write(dir, "tolk.conf",
             "core: { workers = 1; log_level = \"warn\"; max_backlog_seconds = %d.0; %s };\n",
             BACKLOG_SECONDS, core_extra);
    tu_write_mock_pipeline(dir);
    tu_write(dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { %s }; };\n",
             transport);
    core *c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    assert_int_equal(core_start_transports(c), 0);
    return c;
}

static double shed_seconds(const char *reason) {
    tolk_metric *m = metrics_family("audio_shed_seconds_total", NULL, TOLK_METRIC_COUNTER, "reason",
                                    NULL, 0);
    assert_non_null(m);
    return metrics_value(metrics_series_v(m, reason, NULL));
}

/* Five calls of over an hour each, fed as fast as the loop allows (pull
 * channels), played paced: the input waits for the pipeline instead of
 * piling up in it. The bounds, with max_backlog_seconds = 10 per direction
 * and phrases of 1 s of speech:
 *   - playback: 10 s of audio plus one phrase's synthesis (< 3 s) per call,
 *     i.e. 5 * 13 * 50 = 3250 frames;
 *   - MT + TTS queues: phrases of about 1 s of speech each, at most 10 s
 *     of them per call: 100 with room to spare;
 *   - heap growth: 2 MiB per call (10 MiB): a replay buffer of 10 s
 *     (320 KiB), a playback ring of at most twice 13 s (832 KiB), the
 *     phrases, the mocks' pending results.
 * Without backpressure the same 4 s feed all 20000 s of audio, the TTS
 * queue reaches ~9000 phrases, playback ~31000 frames and the heap +30 MiB,
 * still growing. */
static void test_fast_calls_stay_bounded(void **state) {
    char *dir = tu_tmpdir();
    watch W = {0};
    W.heap0 = heap_in_use();
    core *c = start(dir, "",
                    "calls = 5; phrases = 2000; speech_ms = 1000; gap_ms = 1000; "
                    "realtime = false; paced = true; mode = \"unidirectional\";");
    W.c = c;
    tu_run_until(c, sample, &W, 4.0);
    long long sent = tu_health_int(c, "calls", "frames_sent.total");
    long long waits = tu_health_int(c, "calls", "audio_waits");
    printf("# 5 fast calls, 4 s: %lld frames sent (%.0f s of audio), %lld waits; max depth "
           "stt %.0f mt %.0f tts %.0f playback %.0f; heap +%.1f MiB\n",
           sent, (double)sent * TOLK_FRAME_SECONDS, waits, W.max_depth[Q_STT], W.max_depth[Q_MT],
           W.max_depth[Q_TTS], W.max_depth[Q_PLAYBACK],
           ((double)W.heap_max - (double)W.heap0) / 1048576.0);
    assert_true(W.max_depth[Q_PLAYBACK] <= CALLS * (BACKLOG_SECONDS + 3) * 50);
    assert_true(W.max_depth[Q_MT] + W.max_depth[Q_TTS] <= 2 * CALLS * BACKLOG_SECONDS);
    /* the calls were fed ahead of real time up to the bound, then waited */
    assert_true(sent >= CALLS * BACKLOG_SECONDS * 50);
    assert_true(waits > 0);
    /* (mallinfo2 counts nothing under a sanitizer's or valgrind's allocator) */
    if (W.heap0 > 0)
        assert_true(W.heap_max - W.heap0 <= (size_t)CALLS * 2 * 1048576);
    core_free(c);
    tu_rm_rf(dir);
    free(dir);
}

/* A live call (not a pull channel) whose translation takes far longer to
 * say than the speech it came from: the playback buffer would grow for
 * ever. It is cut at the bound: the oldest audio goes, counted in
 * audio_shed_seconds_total{reason="backlog"}, and one log line says so. */
static void test_live_call_sheds_oldest(void **state) {
    char *dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    double shed0 = shed_seconds("backlog");
    tu_write(dir, "tolk.conf",
             "core: { workers = 1; log_level = \"warn\"; max_backlog_seconds = 1.0; };\n");
    tu_write_mock_pipeline(dir);
    /* "hello world": 11 characters of 400 ms: 4.4 s of speech out for
     * every 0.3 s in */
    tu_write(dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = 400; }; };\n");
    tu_write(dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
             "phrases = 20; speech_ms = 300; gap_ms = 300; realtime = true; paced = true; "
             "mode = \"unidirectional\"; }; };\n");
    core *c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    assert_int_equal(core_start_transports(c), 0);
    watch W = {.c = c};
    tu_run_until(c, sample, &W, 3.0);
    printf("# live call: %.2f s shed, max playback depth %.0f frames\n",
           shed_seconds("backlog") - shed0, W.max_depth[Q_PLAYBACK]);
    assert_true(shed_seconds("backlog") - shed0 > 1.0);
    /* cut back to the 1 s bound as the synthesis arrives (room for rounding) */
    assert_true(W.max_depth[Q_PLAYBACK] <= 2 * 50);
    /* never refused: a live source cannot wait */
    assert_int_equal(tu_health_int(c, "calls", "audio_waits"), 0);
    assert_int_equal(tu_log_count("shedding the oldest"), 1);
    core_free(c);
    tu_rm_rf(dir);
    free(dir);
}

typedef struct lost_rec {
    core *c;
    int ok, lost, ended;
} lost_rec;

static void count_phrase(void *ud, const phrase_report *r) {
    lost_rec *L = ud;
    if (r->ok)
        L->ok++;
    else
        L->lost++;
}

static void count_end(void *ud, tolk_channel *ch) { ((lost_rec *)ud)->ended++; }

static int call_over(void *ud) { return ((lost_rec *)ud)->ended > 0; }

/* A live call cannot wait, so its replay buffer keeps replay_seconds: a
 * recogniser that fails 2.5 s into a 3 s phrase, with 1 s kept, leaves
 * 1.5 s of that phrase unheard by its backup. That is no longer silent:
 * audio_shed_seconds_total{reason="replay"} counts it and the report has a
 * lost phrase for it, next to the one the backup made of the rest. */
static void test_live_replay_overflow_is_counted(void **state) {
    char *dir = tu_tmpdir();
    double lost0 = shed_seconds("replay");
    tu_write(dir, "tolk.conf",
             "core: { workers = 1; log_level = \"warn\"; };\n"
             "recovery: { soft_retries = 0; hard_reset = false; replay_seconds = 1.0; };\n");
    tu_write_mock_pipeline(dir);
    tu_write(dir, "20-stt.conf",
             "instances = ( { name = \"stt-a\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ \"hello world\" ]; silence_ms = 200; latency_ms = 10;\n"
             "              drop_after_ms = 2500; }; },\n"
             "  { name = \"stt-b\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ \"hello world\" ]; silence_ms = 200; latency_ms = 10; }; } );\n");
    tu_write(dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\", \"stt-b\" ]; },\n"
             "           { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
             "           { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n");
    tu_write(dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
             "phrases = 1; speech_ms = 3000; gap_ms = 500; realtime = true; paced = false; "
             "mode = \"unidirectional\"; }; };\n");
    lost_rec L = {0};
    core *c = core_new(dir, NULL);
    L.c = c;
    c->obs = (core_observer){.phrase = count_phrase, .channel_end = count_end, .ud = &L};
    assert_int_equal(core_load(c), 0);
    assert_int_equal(core_start_transports(c), 0);
    assert_true(tu_run_until(c, call_over, &L, 15.0));
    double lost = shed_seconds("replay") - lost0;
    printf("# live failover: %.2f s of speech not replayed, %d phrase(s) ok, %d lost\n", lost, L.ok,
           L.lost);
    assert_true(lost >= 1.0 && lost <= 2.0);
    assert_int_equal(L.lost, 1);
    assert_int_equal(L.ok, 1);
    core_free(c);
    tu_rm_rf(dir);
    free(dir);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fast_calls_stay_bounded),
        cmocka_unit_test(test_live_call_sheds_oldest),
        cmocka_unit_test(test_live_replay_overflow_is_counted),
    };
    int rc = cmocka_run_group_tests_name("backlog", tests, NULL, NULL);
    log_set_hook(NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
