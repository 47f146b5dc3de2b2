/* Translated speech that takes longer to say than the original, on a paced
 * call fed in real time (transport_mock, the capture timeline): without a
 * speed-up the lag grows phrase after phrase; with one the core asks the
 * TTS for a faster rate (rate hint) or time-compresses the audio itself
 * (libsonic), never beyond core.max_speedup, drops nothing, and goes back
 * to normal speed once nothing waits. The assertions are on what the core
 * did and reported (rates asked, frames played, lag per phrase, counters),
 * not on how fast anything ran. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "conf.h"
#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAX_REPORTS 32
#define MS_PER_CHAR 90
#define LAG_BOUND 1.0
/* A phrase's lag is measured on the wall clock: on a loaded CI machine
 * (ASan, tests in parallel) the loop runs late by up to this much, which
 * no speed-up can win back. Without speed-up the lag passes the bound by
 * far more (test_lag_grows_without_speedup). */
#define LAG_SLACK_MS 200

typedef struct rec {
    phrase_report r[MAX_REPORTS];
    char *translation[MAX_REPORTS];
    size_t n;
    int ended;
    core *c;
    char *dir;
    uint64_t lags0; /* playback_lag_seconds{en,es} observations before the call */
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAX_REPORTS) return;
    R->r[R->n] = *r;
    R->translation[R->n] = r->translation ? xstrdup(r->translation) : NULL;
    R->r[R->n].translation = R->translation[R->n];
    R->r[R->n].text = R->r[R->n].from = R->r[R->n].to = R->r[R->n].channel_id = NULL;
    R->r[R->n].stt = R->r[R->n].mt = R->r[R->n].tts = NULL;
    R->n++;
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

/* Six phrases whose translation ("gracias amigo", 13 characters at 90 ms:
 * 1.17 s) is longer than the 0.5 s said plus the 0.3 s pause before the
 * next one, then four short ones ("yes", 0.28 s) during which the queue
 * empties. */
static const char *const script =
    "\"thank you\", \"thank you\", \"thank you\", \"thank you\", "
    "\"thank you\", \"thank you\", \"yes\", \"yes\", \"yes\", \"yes\"";
#define PHRASES 10
#define LONG_PHRASES 6

static int setup(void **state) {
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_write_mock_pipeline(R->dir);
    tu_write(R->dir, "20-stt.conf",
             "instance: { name = \"stt-a\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ %s ];\n"
             "              silence_ms = 200; latency_ms = 10; partial_ms = 0; "
             "}; };\n",
             script);
    *state = R;
    return 0;
}

static int teardown(void **state) {
    rec *R = *state;
    if (R->c) core_free(R->c);
    for (size_t i = 0; i < R->n; i++) free(R->translation[i]);
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    return 0;
}

static int all_ended(void *ud) {
    rec *R = ud;
    return R->c->active == 0 && R->ended > 0 && tu_health_int(R->c, "calls", "calls_active") == 0;
}

static uint64_t lag_count(core *c) { return metrics_count(metrics_series_v(c->m.lag, "en", "es", NULL)); }

/* One paced call, fed in real time, of the script above. */
static void run_call(rec *R, double max_speedup, int tts_honours_rate) {
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"warn\"; max_lag_seconds = %.1f; "
             "max_speedup = %.2f; };\n",
             LAG_BOUND, max_speedup);
    tu_write(R->dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = %d; honour_rate = %s; "
             "}; };\n",
             MS_PER_CHAR, tts_honours_rate ? "true" : "false");
    tu_write(R->dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: {\n"
             "  calls = 1; phrases = %d; speech_ms = 500; gap_ms = 300; mode = "
             "\"unidirectional\";\n"
             "  realtime = true; paced = true; capture_offset_ms = 0; }; };\n",
             PHRASES);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    R->lags0 = lag_count(R->c);
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, all_ended, R, 60));
    /* nothing was dropped: every phrase was translated and played */
    assert_int_equal(R->n, PHRASES);
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->r[i].ok);
        assert_int_equal(R->r[i].seq, i + 1);
        assert_true(R->r[i].lag_ms >= 0);
    }
    assert_string_equal(R->translation[0], "gracias amigo");
    assert_string_equal(R->translation[PHRASES - 1], "yes");
}

/* tts_mock's audio for text at rate (its layout): ms_per_char per
 * character, scaled by the rate it honours, at least 200 ms, in whole
 * frames. */
static uint64_t mock_frames(const char *text, double rate) {
    uint64_t ms = (uint64_t)MS_PER_CHAR * strlen(text); /* ASCII */
    ms = (uint64_t)((double)ms / rate + 0.5);
    if (ms < 200) ms = 200;
    return (ms * 16 + TOLK_FRAME_SAMPLES - 1) / TOLK_FRAME_SAMPLES;
}

static double pair_value(const char *family, tolk_metric_type type) {
    tolk_metric *m = metrics_family(family, "", type, "source_lang,target_lang", NULL, 0);
    return metrics_value(metrics_series_v(m, "en", "es", NULL));
}

/* max_speedup = 1: speech is never faster, and the lag grows with every
 * long phrase, past the bound, which the counters report. */
static void test_lag_grows_without_speedup(void **state) {
    rec *R = *state;
    double over0 = pair_value("playback_lag_exceeded_total", TOLK_METRIC_COUNTER);
    run_call(R, 1.0, 1);
    for (size_t i = 0; i < R->n; i++) assert_true(R->r[i].speedup == 1.0);
    assert_true(tu_health_int(R->c, "tts-a", "faster_requests") == 0);
    /* each long phrase waited for the one before: 0.37 s more per phrase */
    for (size_t i = 2; i < LONG_PHRASES; i++) assert_true(R->r[i].lag_ms > R->r[i - 1].lag_ms);
    assert_true(R->r[LONG_PHRASES - 1].lag_ms > R->r[0].lag_ms + 1200);
    assert_true(R->r[LONG_PHRASES - 1].lag_ms > LAG_BOUND * 1000 + LAG_SLACK_MS);
    assert_true(pair_value("playback_lag_exceeded_total", TOLK_METRIC_COUNTER) > over0);
    assert_int_equal(lag_count(R->c) - R->lags0, PHRASES);
    /* the whole translation was played, at its own length */
    uint64_t want = 0;
    for (size_t i = 0; i < R->n; i++) want += mock_frames(R->translation[i], 1.0);
    assert_int_equal(tu_health_int(R->c, "calls", "frames_played.b"), (long long)want);
}

/* A TTS that honours the rate hint is asked for faster speech while
 * speech waits ahead, never beyond max_speedup, and the lag stays under
 * the bound; once the queue has emptied it is asked for 1.0 again. */
static void test_rate_hint_keeps_lag_bounded(void **state) {
    rec *R = *state;
    double faster0 = pair_value("playback_speedup_seconds_total", TOLK_METRIC_COUNTER);
    run_call(R, 1.5, 1);
    assert_true(R->r[0].speedup == 1.0); /* nothing ahead of the first */
    size_t faster = 0;
    uint64_t want = 0, natural = 0;
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->r[i].speedup >= 1.0 && R->r[i].speedup <= 1.5);
        faster += R->r[i].speedup > 1.0;
        assert_true(R->r[i].lag_ms <= LAG_BOUND * 1000 + LAG_SLACK_MS);
        want += mock_frames(R->translation[i], R->r[i].speedup);
        natural += mock_frames(R->translation[i], 1.0);
    }
    assert_true(faster >= 2);
    /* The mock made each phrase as much shorter as it was asked; what was
     * still queued when a later phrase came (the rest of the first, which
     * started at normal speed with nothing ahead) was compressed by the
     * core as well: less than that played, but never faster than 1.5. */
    long long played = tu_health_int(R->c, "calls", "frames_played.b");
    assert_true(played < (long long)want);
    assert_true((double)played >= (double)natural / 1.5 - PHRASES);
    /* the hint went above 1.0, never above max_speedup, and back to 1.0 */
    /* each phrase asked for a faster rate reports at least that speed */
    long long asked = tu_health_int(R->c, "tts-a", "faster_requests");
    assert_true(asked >= 2 && asked <= (long long)faster);
    json_t *h = tu_health(R->c, "tts-a");
    double max_rate = json_real_value(json_object_get(h, "max_rate"));
    double last_rate = json_real_value(json_object_get(h, "last_rate"));
    json_decref(h);
    assert_true(max_rate > 1.0 && max_rate <= 1.5);
    assert_true(last_rate == 1.0);
    assert_true(R->r[PHRASES - 1].speedup == 1.0);
    assert_true(pair_value("playback_speedup_seconds_total", TOLK_METRIC_COUNTER) > faster0);
}

/* A TTS that ignores the hint (honour_rate = false): it is asked for 1.0
 * and the core time-compresses the queued audio with libsonic; each phrase
 * comes out shorter by its factor (within what framing and the
 * compressor's edges add), none faster than max_speedup. */
static void test_core_compresses_for_any_tts(void **state) {
    rec *R = *state;
    run_call(R, 1.5, 0);
    json_t *h = tu_health(R->c, "tts-a");
    double max_rate = json_real_value(json_object_get(h, "max_rate"));
    json_decref(h);
    assert_true(max_rate == 1.0);
    size_t faster = 0;
    double want = 0, natural = 0;
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->r[i].speedup >= 1.0 && R->r[i].speedup <= 1.5);
        faster += R->r[i].speedup > 1.0;
        assert_true(R->r[i].lag_ms <= LAG_BOUND * 1000 + LAG_SLACK_MS);
        double f = (double)mock_frames(R->translation[i], 1.0);
        natural += f;
        want += f / R->r[i].speedup;
    }
    assert_true(faster >= 2);
    assert_true(R->r[PHRASES - 1].speedup == 1.0);
    double played = (double)tu_health_int(R->c, "calls", "frames_played.b");
    /* per phrase at most one frame of padding and a few ms of the compressor;
     * the rest of a phrase still queued when the next came may have been
     * compressed further, never beyond max_speedup */
    assert_true(played <= want + PHRASES);
    assert_true(played >= natural / 1.5 - PHRASES);
    assert_true(played < natural - 10);
}

/* One paced call of `bursts` phrases of 3 s, 0.3 s apart, whose final
 * result comes silence_ms (0.2 s) + latency_ms after each: with 250, the
 * speaker of the next one already talks again by then; with 10, not yet. */
static void run_long_phrases(rec *R, int bursts, int latency_ms, const char *lines) {
    tu_write(R->dir, "20-stt.conf",
             "instance: { name = \"stt-a\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ %s ];\n"
             "              silence_ms = 200; latency_ms = %d; partial_ms = 0; "
             "}; };\n",
             lines, latency_ms);
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"warn\"; max_lag_seconds = %.1f; "
             "max_speedup = 1.5; };\n",
             LAG_BOUND);
    tu_write(R->dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = %d; honour_rate = true; }; };\n",
             MS_PER_CHAR);
    tu_write(R->dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: {\n"
             "  calls = 1; phrases = %d; speech_ms = 3000; gap_ms = 300; mode = "
             "\"unidirectional\";\n"
             "  realtime = true; paced = true; capture_offset_ms = 0; }; };\n",
             bursts);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, all_ended, R, 60));
    assert_int_equal(R->n, (size_t)bursts);
    for (size_t i = 0; i < R->n; i++) assert_true(R->r[i].ok);
}

/* A phrase longer than twice the lag bound, with nothing ahead of it,
 * starts faster when the speaker already talks again after it: the next
 * phrase would wait behind its own speech. */
static void test_long_phrase_on_continuous_speech(void **state) {
    rec *R = *state;
    run_long_phrases(R, 2, 250, script);
    assert_true(R->r[0].speedup > 1.0 && R->r[0].speedup <= 1.5);
}

/* Three times "thank you": 3.7 s of translated speech. */
#define LONG_LINE "\"thank you thank you thank you\""

/* When the speaker starts again only after the long phrase's speech was
 * asked for (and began to play) at normal speed, what is left of it is
 * time-compressed then: less audio is played than was synthesised, and it
 * is over before the next phrase comes (3.5 s after the first ended), which
 * then waits for nothing. */
static void test_long_phrase_compressed_when_speaker_goes_on(void **state) {
    rec *R = *state;
    run_long_phrases(R, 2, 10, LONG_LINE);
    assert_true(R->r[0].speedup == 1.0); /* its first frame played at once */
    assert_true(R->r[1].speedup == 1.0);
    long long natural = 2 * (long long)mock_frames(R->translation[0], 1.0);
    assert_true(tu_health_int(R->c, "calls", "frames_played.b") < natural - 10);
}

/* The same phrase when the speaker stops after it plays at normal speed. */
static void test_long_phrase_alone(void **state) {
    rec *R = *state;
    run_long_phrases(R, 1, 250, LONG_LINE);
    assert_true(R->r[0].speedup == 1.0);
    assert_int_equal(tu_health_int(R->c, "calls", "frames_played.b"),
                     (long long)mock_frames(R->translation[0], 1.0));
}

/* The settings are checked: a bad value is reported with its file and line. */
static void test_settings_are_checked(void **state) {
    rec *R = *state;
    static const char *const bad[] = {"max_speedup = 0.5;", "max_speedup = 2.5;", "max_lag_seconds = 0.0;",
                                      "max_lag_seconds = 100.0;", "max_speedup = \"fast\";"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        tu_write(R->dir, "tolk.conf", "core: {\n  workers = 1;\n  %s\n};\n", bad[i]);
        conf_errors errs = {0};
        conf_set *cs = conf_load_dir(R->dir, NULL, &errs);
        assert_null(cs);
        char *want = xasprintf("%s/tolk.conf:3: ", R->dir);
        int found = 0;
        for (size_t k = 0; k < errs.msgs.n; k++) found |= !strncmp(errs.msgs.v[k], want, strlen(want));
        if (!found)
            for (size_t k = 0; k < errs.msgs.n; k++) fprintf(stderr, "  got: %s\n", (char *)errs.msgs.v[k]);
        assert_true(found);
        free(want);
        conf_errors_free(&errs);
    }
    tu_write(R->dir, "tolk.conf", "core: { max_lag_seconds = 2.5; max_speedup = 1.2; };\n");
    conf_errors errs = {0};
    conf_set *cs = conf_load_dir(R->dir, NULL, &errs);
    assert_non_null(cs);
    assert_true(cs->core.max_lag_seconds == 2.5);
    assert_true(cs->core.max_speedup == 1.2);
    conf_free(cs);
    conf_errors_free(&errs);
    /* the defaults */
    tu_write(R->dir, "tolk.conf", "core: { workers = 1; };\n");
    cs = conf_load_dir(R->dir, NULL, &errs);
    assert_non_null(cs);
    assert_true(cs->core.max_lag_seconds == 1.5);
    assert_true(cs->core.max_speedup == 1.5);
    conf_free(cs);
    conf_errors_free(&errs);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_settings_are_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lag_grows_without_speedup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_hint_keeps_lag_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_core_compresses_for_any_tts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_phrase_on_continuous_speech, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_phrase_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_phrase_compressed_when_speaker_goes_on, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("lag", tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
