/* SIGHUP while a call runs: a bad file is rejected and changes nothing; a
 * good one applies to new calls, keeps unchanged instances, and the running
 * call finishes on its own configuration without losing a frame. */
#include <signal.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

typedef struct rec {
    core *c;
    char *dir;
    char first_call[64];
    int first_ok, first_bad, later_mt_b, later_other;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (!R->first_call[0]) snprintf(R->first_call, sizeof R->first_call, "%s", r->channel_id);
    if (!strcmp(r->channel_id, R->first_call)) {
        if (r->ok && !strcmp(r->mt, "mt-a"))
            R->first_ok++;
        else
            R->first_bad++;
    } else if (r->ok && !strcmp(r->mt, "mt-b")) {
        R->later_mt_b++;
    } else {
        R->later_other++;
    }
}

/* A reload is read on its own thread: wait for its outcome in the log. */
static int logged(void *needle) { return tu_log_has(needle); }

static int got_later(void *ud) { return ((rec *)ud)->later_mt_b > 0; }
static int stopped(void *ud) { return ((rec *)ud)->c->active == 0; }

static const char *mt_conf_b =
    "instances = (\n"
    "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5;\n"
    "      dictionary: { hello = \"hola\"; world = \"mundo\"; }; }; },\n"
    "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 7; }; }\n"
    ");\n";

static void test_reload_during_a_call(void **state) {
    rec R = {0};
    R.dir = tu_tmpdir();
    tu_log_capture();
    tu_write(R.dir, "tolk.conf", "core: { workers = 1; log_level = \"verb\"; };\n");
    tu_write_mock_pipeline(R.dir);
    tu_write(R.dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5;\n"
             "      dictionary: { hello = \"hola\"; world = \"mundo\"; }; }; };\n");
    tu_write(R.dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: {\n"
             "  calls = 1; phrases = 3; speech_ms = 500; gap_ms = 500; repeat = true;\n"
             "  mode = \"unidirectional\"; realtime = true; paced = true; }; };\n");
    R.c = core_new(R.dir, NULL);
    R.c->obs = (core_observer){.phrase = on_phrase, .ud = &R};
    assert_int_equal(core_load(R.c), 0);
    core_watch_signals(R.c);
    assert_int_equal(core_start_transports(R.c), 0);
    double frames0 = metrics_value(R.c->m.frames_s);
    tu_run_until(R.c, NULL, NULL, 0.7);
    unsigned gen1 = R.c->gen->id;
    tolk_instance *stt1 = core_find_instance(R.c, "stt-a");
    tolk_instance *calls1 = core_find_instance(R.c, "calls");
    assert_int_equal(R.c->active, 1);

    /* a bad file: rejected with its line, nothing changes */
    tu_write(R.dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\";\n"
             "  settings: {\n"
             "    latency_ms = \"fast\";\n"
             "  }; };\n");
    raise(SIGHUP);
    assert_true(tu_run_until(R.c, logged, "reload rejected", 10));
    assert_int_equal(R.c->gen->id, gen1);
    assert_true(tu_log_has("30-mt.conf:3: 'latency_ms'"));
    assert_true(tu_log_has("reload rejected"));

    /* a good file: a new MT instance for new calls */
    tu_write(R.dir, "30-mt.conf", "%s", mt_conf_b);
    tu_write(R.dir, "40-tts.conf",
             "instance: { name = \"tts-b\"; plugin = \"tts_mock\"; settings: { latency_ms = 10; }; };\n");
    tu_write(R.dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
             "           { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-b\", \"mt-a\" ]; },\n"
             "           { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-b\" ]; } );\n");
    raise(SIGHUP);
    assert_true(tu_run_until(R.c, logged, "reload applied", 10));
    assert_int_not_equal(R.c->gen->id, gen1);
    assert_true(tu_log_has("reload applied"));
    /* unchanged settings: the very same instances */
    assert_ptr_equal(core_find_instance(R.c, "stt-a"), stt1);
    assert_ptr_equal(core_find_instance(R.c, "calls"), calls1);
    assert_non_null(core_find_instance(R.c, "mt-b"));
    /* tts-a left the configuration, but the running call still uses it */
    assert_null(core_find_instance(R.c, "tts-a"));
    assert_false(tu_log_has("[tts_mock/tts-a] destroyed"));

    /* the running call ends on mt-a; the next call uses mt-b */
    assert_true(tu_run_until(R.c, got_later, &R, 20));
    assert_int_equal(R.first_ok, 3);
    /* ...and goes once that call has ended */
    assert_true(tu_log_has("[tts_mock/tts-a] destroyed"));
    assert_int_equal(R.first_bad, 0);
    assert_int_equal(R.later_other, 0);

    core_shutdown(R.c);
    assert_true(tu_run_until(R.c, stopped, &R, 20));
    /* no frame lost: every frame the transport sent reached the pipeline */
    long long sent = tu_health_int(R.c, "calls", "frames_sent.total");
    assert_true(sent > 0);
    assert_true(metrics_value(R.c->m.frames_s) - frames0 == (double)sent);
    assert_int_equal(tu_health_int(R.c, "calls", "audio_rejected"), 0);
    core_free(R.c);
    tu_log_clear();
    log_set_hook(NULL, NULL);
    tu_rm_rf(R.dir);
    free(R.dir);
}

/* SIGHUPs while conf.d is being read are coalesced into one more reload
 * after it; a reload still being read when the core is freed is dropped. */
static int reload_idle(void *ud) {
    core *c = ud;
    return !c->reload_running && !c->reload_again;
}

static void test_reload_requests_coalesce(void **state) {
    char *dir = tu_tmpdir();
    tu_log_capture();
    tu_write(dir, "tolk.conf", "core: { workers = 1; log_level = \"info\"; };\n");
    tu_write_mock_pipeline(dir);
    core *c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    unsigned gen1 = c->gen->id;

    /* the first request starts a read; it cannot finish before the loop
     * runs again, so the next two find it under way */
    core_request_reload(c);
    core_request_reload(c);
    core_request_reload(c);
    assert_true(c->reload_running);
    assert_true(tu_run_until(c, reload_idle, c, 10));
    assert_int_equal(tu_log_count("reload applied"), 2);
    assert_int_equal(c->gen->id, gen1 + 2);
    assert_true(tu_log_has("reload requested while one is under way"));

    /* a bad file: rejected on the loop, the generation stays */
    tu_write(dir, "70-bad.conf", "core: { workers = 1; };\n");
    core_request_reload(c);
    assert_true(tu_run_until(c, reload_idle, c, 10));
    assert_true(tu_log_has("reload rejected"));
    assert_int_equal(c->gen->id, gen1 + 2);

    /* freed while a read is under way: nothing applied, nothing leaked */
    core_request_reload(c);
    core_free(c);
    assert_int_equal(tu_log_count("reload applied"), 2);
    tu_log_clear();
    log_set_hook(NULL, NULL);
    tu_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reload_during_a_call),
        cmocka_unit_test(test_reload_requests_coalesce),
    };
    int rc = cmocka_run_group_tests_name("reload", tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
