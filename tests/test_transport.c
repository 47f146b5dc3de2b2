/* The transport side of ABI 1.2 through the real core, driven by
 * transport_mock and the mock engines: continuous playout, DTMF and call
 * progress events, calls that wait for the answer, capture timestamps,
 * played-out feedback (latency to the ear), direction modes, play errors,
 * the channel_info size check, and io watchers. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "handle.h"
#include "testutil.h"

#define MAXR 32

typedef struct event_rec {
    char name[16];
    int leg;
    char digit[4], leg_field[4];
    long long duration_ms;
} event_rec;

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    unsigned seq[MAXR];
    double latency_ms[MAXR], ear_in_report[MAXR], t_report[MAXR];
    size_t near;
    unsigned ear_seq[MAXR];
    double ear_latency_ms[MAXR], ear_first_out_ms[MAXR];
    size_t nev;
    event_rec ev[MAXR];
    chan_state states[16];
    double state_t[16];
    size_t nstates;
    int options_ok; /* CONNECTED saw the per-call options copied */
    int ended;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAXR) return;
    size_t i = R->n++;
    R->ok[i] = r->ok;
    R->seq[i] = r->seq;
    R->latency_ms[i] = r->latency_ms;
    R->ear_in_report[i] = r->ear_latency_ms;
    R->t_report[i] = mono_now();
}

static void on_phrase_ear(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->near >= MAXR) return;
    size_t i = R->near++;
    R->ear_seq[i] = r->seq;
    R->ear_latency_ms[i] = r->ear_latency_ms;
    R->ear_first_out_ms[i] = r->latency_ms;
}

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static const char *field(const json_t *o, const char *key) {
    return str_or_empty(json_string_value(json_object_get(o, key)));
}

static void on_event(void *ud, tolk_channel *ch, int leg, const char *name, const json_t *data) {
    rec *R = ud;
    if (R->nev >= MAXR) return;
    event_rec *e = &R->ev[R->nev++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->leg = leg;
    snprintf(e->digit, sizeof e->digit, "%s", field(data, "digit"));
    snprintf(e->leg_field, sizeof e->leg_field, "%s", field(data, "leg"));
    e->duration_ms = json_integer_value(json_object_get(data, "duration_ms"));
}

static void on_state(void *ud, tolk_channel *ch, chan_state st) {
    rec *R = ud;
    if (R->nstates < ARRAY_LEN(R->states)) {
        R->state_t[R->nstates] = mono_now();
        R->states[R->nstates++] = st;
    }
    if (st == CH_CONNECTED && ch->options)
        R->options_ok = !strcmp(field(ch->options, "tenant"), "acme");
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

static const char *fast_recovery = "soft_retries = 2; soft_delay = 0.02; jitter = 0.0; "
                                   "hard_timeout = 1.0; request_timeout = 0.3; "
                                   "health_interval = 0.1; min_operations = 1;";

/* A core with the mock pipeline (see testutil.c) and one transport_mock
 * instance "calls" with these settings; mt, if not NULL, replaces the MT
 * instance. The transport is not started when start is 0. */
static rec *begin_with(const char *settings, const char *mt, int start) {
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf",
             "core: { max_channels = 4; drain_timeout = 10.0; workers = 1; log_level = \"warn\"; };\n"
             "recovery: { %s };\n",
             fast_recovery);
    tu_write_mock_pipeline(R->dir);
    if (mt) tu_write(R->dir, "30-mt.conf", "%s", mt);
    tu_write(R->dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { %s }; };\n",
             settings);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase,
                                .phrase_ear = on_phrase_ear,
                                .event = on_event,
                                .channel_state = on_state,
                                .channel_end = on_end,
                                .ud = R};
    assert_int_equal(core_load(R->c), 0);
    if (start) assert_int_equal(core_start_transports(R->c), 0);
    return R;
}

static rec *begin(const char *settings) { return begin_with(settings, NULL, 1); }

static int all_ended(void *ud) {
    rec *R = ud;
    return R->c->active == 0 && R->ended > 0 && tu_health_int(R->c, "calls", "calls_active") == 0;
}

static void run_call(rec *R) { assert_true(tu_run_until(R->c, all_ended, R, 30)); }

static void done(rec *R) {
    if (R->c) core_free(R->c);
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    tu_log_clear();
}

static long long health(rec *R, const char *key) { return tu_health_int(R->c, "calls", key); }

/* ms from the call's "open" to its event `name` in the mock's record; -1 if absent. */
static long long call_event_ms(rec *R, const char *name) {
    json_t *d = tu_health(R->c, "calls");
    json_t *call = json_array_get(json_object_get(d, "calls"), 0);
    json_t *ev = json_object_get(call, "events"), *ms = json_object_get(call, "event_ms");
    long long at = -1, open = -1;
    for (size_t i = 0; i < json_array_size(ev); i++) {
        const char *e = json_string_value(json_array_get(ev, i));
        long long t = json_integer_value(json_array_get(ms, i));
        if (!strcmp(e, "open")) open = t;
        if (!strcmp(e, name) && at < 0) at = t;
    }
    json_decref(d);
    return at >= 0 && open >= 0 ? at - open : -1;
}

static int ok_phrases(rec *R) {
    int n = 0;
    for (size_t i = 0; i < R->n; i++) n += R->ok[i];
    return n;
}

/* Continuous playout: from the answer to the hang-up each leg gets one frame
 * per 20 ms, silence flagged as such, and each translated phrase starts one
 * talkspurt. */
static void test_continuous_playout_every_20ms(void **state) {
    rec *R = begin("calls = 1; phrases = 2; speech_ms = 500; gap_ms = 1000; mode = \"unidirectional\"; "
                   "realtime = true; paced = true; continuous = true; hangup = \"close\";");
    run_call(R);
    long long call_ms = call_event_ms(R, "close");
    assert_true(call_ms > 2500);
    long long want = (call_ms + 10) / 20;
    long long a = health(R, "frames_played.a"), b = health(R, "frames_played.b");
    if (a < want - 2 || a > want + 2 || b < want - 2 || b > want + 2) {
        json_t *d = tu_health(R->c, "calls");
        char *calls = json_dumps(json_object_get(d, "calls"), JSON_COMPACT);
        print_message("frames played a=%lld b=%lld, want %lld: %s\n", a, b, want, calls);
        free(calls);
        json_decref(d);
    }
    assert_in_range(a, want - 2, want + 2);
    assert_in_range(b, want - 2, want + 2);
    /* A hears nothing translated: all silence, no talkspurt */
    assert_int_equal(health(R, "silence_played.a"), a);
    assert_int_equal(health(R, "talkspurts.a"), 0);
    /* B hears both phrases, each one talkspurt, silence around them */
    assert_int_equal(ok_phrases(R), 2);
    assert_int_equal(health(R, "talkspurts.b"), 2);
    long long silence_b = health(R, "silence_played.b");
    assert_true(silence_b > 0 && silence_b < b);
    assert_true(health(R, "energy_played_by_leg.b") > 0);
    assert_true(health(R, "energy_played_by_leg.b") <= b - silence_b);
    assert_int_equal(health(R, "play_bad_size"), 0);
    assert_int_equal(health(R, "play_unknown_call"), 0);
    done(R);
}

/* Without the new settings the mock is a 1.1 transport's call: no
 * silence is played, nothing waits for an answer. */
static void test_plain_call_plays_no_silence(void **state) {
    rec *R = begin("calls = 1; phrases = 1; speech_ms = 400; gap_ms = 500; mode = \"unidirectional\"; "
                   "realtime = true; paced = true;");
    run_call(R);
    assert_int_equal(ok_phrases(R), 1);
    assert_int_equal(health(R, "silence_played.total"), 0);
    assert_int_equal(health(R, "frames_played.a"), 0);
    assert_int_equal(health(R, "talkspurts.b"), 1);
    assert_int_equal(R->nev, 0);
    done(R);
}

static double events_total(rec *R, const char *name) {
    return metrics_value(metrics_series_v(R->c->m.events, name, NULL));
}

static void test_dtmf_reaches_the_observer(void **state) {
    rec *R = begin("calls = 1; phrases = 1; speech_ms = 300; gap_ms = 400; dtmf = \"12#\"; "
                   "dtmf_at_ms = 100; dtmf_duration_ms = 120; realtime = true; paced = true;");
    double before = events_total(R, "dtmf");
    run_call(R);
    assert_int_equal(health(R, "dtmf_sent"), 3);
    assert_int_equal(R->nev, 3);
    static const char *const digits[] = {"1", "2", "#"};
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(R->ev[i].name, "dtmf");
        assert_string_equal(R->ev[i].digit, digits[i]);
        assert_int_equal(R->ev[i].duration_ms, 120);
        assert_string_equal(R->ev[i].leg_field, "a");
        assert_int_equal(R->ev[i].leg, TOLK_LEG_A);
    }
    assert_true(events_total(R, "dtmf") - before == 3);
    done(R);
}

static void test_invalid_dtmf_is_refused(void **state) {
    rec *R = begin("calls = 1; phrases = 1; speech_ms = 300; gap_ms = 400; dtmf = \"1x\"; "
                   "dtmf_at_ms = 100; realtime = true; paced = true;");
    run_call(R);
    assert_int_equal(health(R, "dtmf_sent"), 2);
    assert_int_equal(R->nev, 1);
    assert_string_equal(R->ev[0].digit, "1");
    assert_true(tu_log_has("transport_mock/calls"));
    assert_true(tu_log_has("DTMF digit 0x78 from leg a refused"));
    done(R);
}

/* Rings for 1 s (the first burst, 0-0.4 s, falls in it), then answered:
 * the state stays RINGING until then, the first burst is not translated,
 * the two after the answer are. */
static void test_call_awaiting_answer_translates_after_it(void **state) {
    rec *R = begin("calls = 1; phrases = 3; speech_ms = 400; gap_ms = 700; await_answer_ms = 1000; "
                   "mode = \"unidirectional\"; realtime = true; paced = true;");
    run_call(R);
    static const chan_state want[] = {CH_RINGING, CH_CONNECTED, CH_TRANSLATING, CH_DISCONNECTING,
                                      CH_DISCONNECTED};
    assert_int_equal(R->nstates, ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++) assert_int_equal(R->states[i], want[i]);
    double answered_at = R->state_t[1];
    assert_true(answered_at - R->state_t[0] >= 0.99);
    assert_int_equal(health(R, "calls_answered"), 1);
    /* progress was published: ringing, then answered, about leg B */
    assert_int_equal(R->nev, 2);
    assert_string_equal(R->ev[0].name, "ringing");
    assert_string_equal(R->ev[1].name, "answered");
    assert_int_equal(R->ev[1].leg, TOLK_LEG_B);
    assert_int_equal(R->n, 2);
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->ok[i]);
        assert_true(R->t_report[i] > answered_at);
    }
    done(R);
}

static double mean_latency(rec *R) {
    double sum = 0;
    for (size_t i = 0; i < R->n; i++) sum += R->latency_ms[i];
    return R->n ? sum / (double)R->n : 0;
}

/* The same call with its audio captured 400 ms before it is sent: latency,
 * measured from the capture, is 400 ms longer (two runs on a shared
 * machine: each phrase's latency moves by some tens of ms between runs). */
static void test_capture_time_moves_latency(void **state) {
    static const char *call = "calls = 1; phrases = 2; speech_ms = 500; gap_ms = 600; "
                              "mode = \"unidirectional\"; realtime = true; paced = true; ";
    char settings[512];
    snprintf(settings, sizeof settings, "%s capture_offset_ms = 0;", call);
    rec *R = begin(settings);
    run_call(R);
    assert_int_equal(ok_phrases(R), 2);
    double at_send = mean_latency(R);
    done(R);
    snprintf(settings, sizeof settings, "%s capture_offset_ms = 400;", call);
    R = begin(settings);
    run_call(R);
    assert_int_equal(ok_phrases(R), 2);
    double captured_earlier = mean_latency(R);
    done(R);
    assert_in_range((long long)(captured_earlier - at_send), 400 - 120, 400 + 120);
}

/* The mock says a frame reached the listener 100 ms after play(): the latency
 * to the ear is the latency to play() plus that, within a frame. */
static void test_played_feedback_gives_ear_latency(void **state) {
    rec *R = begin("calls = 1; phrases = 2; speech_ms = 500; gap_ms = 700; mode = \"unidirectional\"; "
                   "realtime = true; paced = true; played_feedback = true; playout_delay_ms = 100;");
    tolk_series *ear = metrics_series_v(R->c->m.latency, "en", "es", "ear", NULL);
    uint64_t before = metrics_count(ear);
    run_call(R);
    assert_int_equal(ok_phrases(R), 2);
    assert_int_equal(R->near, 2);
    for (size_t i = 0; i < R->near; i++) {
        assert_int_equal(R->ear_seq[i], R->seq[i]);
        /* the phrase was reported when handed to play: no feedback yet */
        assert_true(R->ear_in_report[i] < 0);
        assert_true(R->ear_first_out_ms[i] == R->latency_ms[i]);
        double extra = R->ear_latency_ms[i] - R->latency_ms[i];
        assert_in_range((long long)extra, 100 - 20, 100 + 20);
    }
    assert_true(metrics_count(ear) - before == 2);
    assert_true(health(R, "played_reported.b") > 0);
    done(R);
}

static const char *mt_failing =
    "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 1; }; };\n";

/* Every MT provider fails: the direction falls back to passthrough and the
 * transport is told. It declines to bridge, so the core plays the caller's
 * voice to the callee. The untranslated direction B->A was told at open. */
static void test_direction_mode_on_fallback(void **state) {
    rec *R = begin_with("calls = 1; phrases = 3; speech_ms = 600; gap_ms = 500; "
                        "mode = \"unidirectional\"; realtime = true; paced = true;",
                        mt_failing, 1);
    run_call(R);
    assert_true(tu_log_has("heard untranslated"));
    assert_int_equal(health(R, "passthrough_told.a"), 1);
    assert_int_equal(health(R, "passthrough_told.b"), 1);
    assert_true(health(R, "energy_played_by_leg.b") > 0);
    done(R);
}

/* The same, but the transport bridges the caller itself: the core no longer
 * plays the caller's voice. */
static void test_direction_bridged_by_transport(void **state) {
    rec *R = begin_with("calls = 1; phrases = 3; speech_ms = 600; gap_ms = 500; "
                        "mode = \"unidirectional\"; realtime = true; paced = true; "
                        "bridge_passthrough = true;",
                        mt_failing, 1);
    run_call(R);
    assert_true(tu_log_has("heard untranslated"));
    assert_int_equal(health(R, "passthrough_told.a"), 1);
    assert_int_equal(health(R, "energy_played_by_leg.b"), 0);
    assert_int_equal(health(R, "frames_played.b"), 0);
    done(R);
}

static void test_play_errors_are_counted(void **state) {
    rec *R = begin("calls = 1; phrases = 2; speech_ms = 400; gap_ms = 300; legs = \"both\"; "
                   "mode = \"passthrough\"; realtime = false; paced = false; play_error_every = 10;");
    tolk_series *s = metrics_series_v(R->c->m.errors, "calls", "play", "low", NULL);
    double before = metrics_value(s);
    run_call(R);
    long long returned = health(R, "play_errors_returned");
    assert_true(returned > 0);
    assert_true(metrics_value(s) - before == (double)returned);
    assert_int_equal(tu_log_count("play() to leg"), 1);
    done(R);
}

static int refused_once(void *ud) {
    return tu_health_int(((rec *)ud)->c, "calls", "calls_refused") == 1;
}

static void test_too_small_channel_info_is_refused(void **state) {
    rec *R = begin("calls = 1; phrases = 1; info_size = 16; realtime = false; paced = false;");
    assert_true(tu_run_until(R->c, refused_once, R, 10));
    assert_int_equal(health(R, "calls_opened"), 0);
    assert_int_equal(R->c->active, 0);
    json_t *d = tu_health(R->c, "calls");
    json_t *call = json_array_get(json_object_get(d, "calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(call, "refused_status")), TOLK_E_INVAL);
    json_decref(d);
    assert_true(tu_log_has("transport_mock/calls"));
    assert_true(tu_log_has("tolk_channel_info has size 16"));
    done(R);
}

static void test_call_options_are_copied(void **state) {
    rec *R = begin("calls = 1; phrases = 1; speech_ms = 300; gap_ms = 300; realtime = false; "
                   "paced = false; call_options = \"{\\\"tenant\\\": \\\"acme\\\"}\";");
    run_call(R);
    assert_true(R->options_ok);
    done(R);
}

/* Capture times are clamped: one in the future counts as now, and a frame
 * never arrives before the frame ahead of it. */
static void test_capture_time_is_clamped(void **state) {
    rec *R = begin_with("calls = 1;", NULL, 0);
    const tolk_host *h = &R->c->host;
    tolk_instance *inst = core_find_instance(R->c, "calls");
    tolk_channel_info info = {.size = sizeof info, .id = "clamp", .mode = TOLK_MODE_PASSTHROUGH,
                              .paced = 1};
    tolk_status why = TOLK_OK;
    tolk_channel *handle = h->channel_open(inst, &info, NULL, &why);
    assert_non_null(handle);
    /* the transport holds a handle; the test looks at the core's channel */
    tolk_channel *ch = handle_get(handle, H_CHANNEL);
    assert_non_null(ch);
    int16_t frame[TOLK_FRAME_SAMPLES] = {0};
    double before = mono_now();
    assert_int_equal(h->channel_audio_at(handle, TOLK_LEG_A, frame, TOLK_FRAME_SAMPLES, before + 10), TOLK_OK);
    double first = ch->dir[TOLK_LEG_A].arrival[0];
    assert_true(first >= before && first <= mono_now());
    assert_int_equal(h->channel_audio_at(handle, TOLK_LEG_A, frame, TOLK_FRAME_SAMPLES, before - 100), TOLK_OK);
    assert_true(ch->dir[TOLK_LEG_A].arrival[1] == first);
    /* two frames in one call: the second ends 20 ms of audio after the first */
    double t0 = mono_now() - 1;
    int16_t two[2 * TOLK_FRAME_SAMPLES] = {0};
    assert_int_equal(h->channel_audio_at(handle, TOLK_LEG_B, two, ARRAY_LEN(two), t0), TOLK_OK);
    double a = ch->dir[TOLK_LEG_B].arrival[0], b = ch->dir[TOLK_LEG_B].arrival[1];
    assert_true(a > t0 && a < t0 + 0.021);
    assert_true(b - a > 0.019 && b - a < 0.021);
    h->channel_close(handle);
    done(R);
}

/* ---- io watchers ---- */

typedef struct io_ctx {
    const tolk_host *host;
    tolk_io *io;
    int fired;
    int stop_in_cb;
} io_ctx;

static void on_readable(void *ud, int fd, unsigned revents) {
    io_ctx *x = ud;
    char buf[16];
    assert_true(revents & TOLK_IO_READ);
    if (read(fd, buf, sizeof buf) < 0) fail();
    x->fired++;
    if (x->stop_in_cb) x->host->io_stop(x->io);
}

static int fired(void *ud) { return ((io_ctx *)ud)->fired > 0; }

static void test_io_watchers(void **state) {
    rec *R = begin_with("calls = 1;", NULL, 0);
    const tolk_host *h = &R->c->host;
    tolk_instance *inst = core_find_instance(R->c, "calls");
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);

    /* fires when readable, and stops itself inside its callback */
    io_ctx x = {.host = h, .stop_in_cb = 1};
    x.io = h->io_start(inst, fds[0], TOLK_IO_READ, on_readable, &x);
    assert_non_null(x.io);
    assert_int_equal(write(fds[1], "a", 1), 1);
    assert_true(tu_run_until(R->c, fired, &x, 5));
    assert_int_equal(write(fds[1], "b", 1), 1);
    tu_run_until(R->c, NULL, NULL, 0.1);
    assert_int_equal(x.fired, 1);

    /* paused with io_set(0), resumed with io_set(READ); the byte still waits */
    io_ctx y = {.host = h};
    y.io = h->io_start(inst, fds[0], TOLK_IO_READ, on_readable, &y);
    h->io_set(y.io, 0);
    tu_run_until(R->c, NULL, NULL, 0.1);
    assert_int_equal(y.fired, 0);
    h->io_set(y.io, TOLK_IO_READ);
    assert_true(tu_run_until(R->c, fired, &y, 5));

    /* a watcher left running is stopped, with a warning, when its instance goes */
    core_free(R->c);
    R->c = NULL;
    assert_true(tu_log_has("destroyed with 1 io watcher(s) still running"));
    close(fds[0]);
    close(fds[1]);
    done(R);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_continuous_playout_every_20ms),
        cmocka_unit_test(test_plain_call_plays_no_silence),
        cmocka_unit_test(test_dtmf_reaches_the_observer),
        cmocka_unit_test(test_invalid_dtmf_is_refused),
        cmocka_unit_test(test_call_awaiting_answer_translates_after_it),
        cmocka_unit_test(test_capture_time_moves_latency),
        cmocka_unit_test(test_capture_time_is_clamped),
        cmocka_unit_test(test_played_feedback_gives_ear_latency),
        cmocka_unit_test(test_direction_mode_on_fallback),
        cmocka_unit_test(test_direction_bridged_by_transport),
        cmocka_unit_test(test_play_errors_are_counted),
        cmocka_unit_test(test_too_small_channel_info_is_refused),
        cmocka_unit_test(test_call_options_are_copied),
        cmocka_unit_test(test_io_watchers),
    };
    int rc = cmocka_run_group_tests_name("transport", tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
