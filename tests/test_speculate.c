/* Speculative translation (core.speculative_translation): a recogniser's
 * tentative end of a phrase (TOLK_TRANSCRIPT_EAGER_END) starts MT and TTS
 * early; the final result with the same text plays it, anything else throws
 * it away. What the listener hears must be exactly what they hear without
 * speculation: these tests run each call twice, with and without, and
 * compare. stt_mock sends tentative ends after eager_ms of silence. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAX_REPORTS 16

typedef struct rec {
    size_t n;
    int ok[MAX_REPORTS], speculated[MAX_REPORTS];
    double lead_ms[MAX_REPORTS];
    unsigned seq[MAX_REPORTS];
    char text[MAX_REPORTS][64], translation[MAX_REPORTS][64];
    int ended;
    core *c;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAX_REPORTS) return;
    R->ok[R->n] = r->ok;
    R->speculated[R->n] = r->speculated;
    R->lead_ms[R->n] = r->speculative_lead_ms;
    R->seq[R->n] = r->seq;
    snprintf(R->text[R->n], sizeof R->text[0], "%s", r->text ? r->text : "");
    snprintf(R->translation[R->n], sizeof R->translation[0], "%s", r->translation ? r->translation : "");
    R->n++;
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

static int all_ended(void *ud) {
    rec *R = ud;
    return R->c->active == 0 && R->ended > 0 && tu_health_int(R->c, "calls", "calls_active") == 0;
}

static double spec_count(const char *outcome) {
    tolk_metric *m = metrics_family("speculative_translations_total",
                                    "Translations started on a tentative end of phrase: outcome "
                                    "confirmed (played when the final result came) or discarded",
                                    TOLK_METRIC_COUNTER, "outcome", NULL, 0);
    return metrics_value(metrics_series_v(m, outcome, NULL));
}

typedef struct outcome {
    rec R;
    long long frames_b, energy_b;
    double confirmed, discarded;
} outcome;

/* One unidirectional mock call; stt_settings are stt_mock's (eager_ms...). */
static void run_call(outcome *o, int speculate, const char *stt_settings, const char *transport,
                     const char *tts_settings) {
    char *dir = tu_tmpdir();
    tu_write(dir, "tolk.conf",
             "core: { max_channels = 2; drain_timeout = 10.0; workers = 1; log_level = \"warn\";\n"
             "        translation_cache = 0; speculative_translation = %s; };\n",
             speculate ? "true" : "false");
    tu_write_mock_pipeline(dir);
    if (tts_settings)
        tu_write(dir, "40-tts.conf", "instance: { name = \"tts-a\"; plugin = \"tts_mock\"; settings: { %s }; };\n",
                 tts_settings);
    tu_write(dir, "20-stt.conf",
             "instance: { name = \"stt-a\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ \"hello world\", \"thank you\", \"good morning\" ];\n"
             "              latency_ms = 10; partial_ms = 0; %s }; };\n",
             stt_settings);
    tu_write(dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
             "mode = \"unidirectional\"; realtime = true; paced = false; %s }; };\n",
             transport);
    double confirmed0 = spec_count("confirmed"), discarded0 = spec_count("discarded");
    memset(o, 0, sizeof *o);
    o->R.c = core_new(dir, NULL);
    o->R.c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = &o->R};
    assert_int_equal(core_load(o->R.c), 0);
    assert_int_equal(core_start_transports(o->R.c), 0);
    assert_true(tu_run_until(o->R.c, all_ended, &o->R, 30));
    o->frames_b = tu_health_int(o->R.c, "calls", "frames_played.b");
    o->energy_b = tu_health_int(o->R.c, "calls", "energy_played_by_leg.b");
    o->confirmed = spec_count("confirmed") - confirmed0;
    o->discarded = spec_count("discarded") - discarded0;
    for (int q = 0; q < Q_COUNT; q++) assert_true(metrics_value(o->R.c->m.qdepth[q]) == 0);
    core_free(o->R.c);
    tu_rm_rf(dir);
    free(dir);
}

static void assert_same_heard(const outcome *with, const outcome *without) {
    assert_int_equal(with->R.n, without->R.n);
    for (size_t i = 0; i < with->R.n; i++) {
        assert_int_equal(with->R.ok[i], without->R.ok[i]);
        assert_int_equal(with->R.seq[i], without->R.seq[i]);
        assert_string_equal(with->R.text[i], without->R.text[i]);
        assert_string_equal(with->R.translation[i], without->R.translation[i]);
    }
    assert_true(without->frames_b > 0);
    assert_int_equal(with->frames_b, without->frames_b);
    assert_int_equal(with->energy_b, without->energy_b);
}

/* Tentative end after 100 ms of silence, final after 300 ms: each phrase
 * is translated ahead and played when confirmed. */
static void test_confirmed_speculation_plays_once(void **state) {
    static outcome with, without;
    const char *stt = "silence_ms = 300; eager_ms = 100;";
    const char *tr = "phrases = 3; speech_ms = 600; gap_ms = 700;";
    run_call(&with, 1, stt, tr, NULL);
    run_call(&without, 0, stt, tr, NULL);
    assert_int_equal(with.R.n, 3);
    assert_same_heard(&with, &without);
    for (size_t i = 0; i < 3; i++) {
        assert_true(with.R.ok[i]);
        assert_true(with.R.speculated[i]);
        /* it started before the final came: the recogniser's last 200 ms */
        assert_true(with.R.lead_ms[i] > 0);
        assert_false(without.R.speculated[i]);
    }
    assert_true(with.confirmed == 3);
    assert_true(with.discarded == 0);
    assert_true(without.confirmed == 0 && without.discarded == 0);
}

/* Pauses longer than eager_ms but shorter than silence_ms: each tentative
 * end is withdrawn by the speech that follows, and only the last one (of
 * the one phrase the three bursts make) is confirmed. */
static void test_withdrawn_speculation_is_never_heard(void **state) {
    static outcome with, without;
    const char *stt = "silence_ms = 500; eager_ms = 100;";
    const char *tr = "phrases = 3; speech_ms = 400; gap_ms = 300;";
    run_call(&with, 1, stt, tr, NULL);
    run_call(&without, 0, stt, tr, NULL);
    assert_same_heard(&with, &without);
    assert_int_equal(with.R.n, 1);
    assert_true(with.R.ok[0]);
    assert_true(with.R.speculated[0]);
    assert_true(with.confirmed == 1);
    assert_true(with.discarded == 2);
}

/* The final result says something else than the tentative end: the
 * speculation is thrown away and the final text is translated as usual. */
static void test_different_final_discards(void **state) {
    static outcome with, without;
    const char *stt = "silence_ms = 300; eager_ms = 100; eager_differ_every = 1;";
    const char *tr = "phrases = 2; speech_ms = 600; gap_ms = 700;";
    run_call(&with, 1, stt, tr, NULL);
    run_call(&without, 0, stt, tr, NULL);
    assert_same_heard(&with, &without);
    assert_int_equal(with.R.n, 2);
    assert_string_equal(with.R.text[0], "hello world indeed");
    assert_string_equal(with.R.text[1], "thank you indeed");
    for (size_t i = 0; i < 2; i++) {
        assert_true(with.R.ok[i]);
        assert_false(with.R.speculated[i]);
    }
    assert_true(with.confirmed == 0);
    assert_true(with.discarded == 2);
}

/* A synthesiser slower than the recogniser's last 200 ms: the final comes
 * while the speculation is still being synthesised, and the rest of its
 * audio flows as any phrase's. */
static void test_confirmed_while_synthesising(void **state) {
    static outcome with, without;
    const char *stt = "silence_ms = 300; eager_ms = 100;";
    const char *tr = "phrases = 2; speech_ms = 600; gap_ms = 1200;";
    /* 40 ms chunks every 100 ms: the synthesis of a phrase lasts about a
     * second, and the final comes 200 ms after the tentative end */
    const char *tts = "latency_ms = 50; ms_per_char = 30; chunk_ms = 40; chunk_interval_ms = 100;";
    run_call(&with, 1, stt, tr, tts);
    run_call(&without, 0, stt, tr, tts);
    assert_same_heard(&with, &without);
    assert_true(with.confirmed == 2);
}

/* The call hangs up while a speculation waits: no report for it, nothing
 * leaks (ASan and valgrind runs), the call ends. */
static void test_hangup_with_pending_speculation(void **state) {
    static outcome with;
    /* tentative ends come after 100 ms of silence; the final never does
     * (silence_ms longer than the call lasts after the speech) */
    run_call(&with, 1, "silence_ms = 5000; eager_ms = 100;",
             "phrases = 1; speech_ms = 600; gap_ms = 600; hangup = \"close\";", NULL);
    assert_int_equal(with.R.n, 0);
    assert_int_equal(with.frames_b, 0);
    assert_true(with.confirmed == 0);
    assert_true(with.discarded == 1);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_confirmed_speculation_plays_once),
        cmocka_unit_test(test_withdrawn_speculation_is_never_heard),
        cmocka_unit_test(test_different_final_discards),
        cmocka_unit_test(test_confirmed_while_synthesising),
        cmocka_unit_test(test_hangup_with_pending_speculation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
