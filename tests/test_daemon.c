/* SIGTERM: no new calls, running calls drain up to drain_timeout, then the
 * loop ends. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

static core *start(const char *dir, double drain, const char *transport) {
    tu_write(dir, "tolk.conf", "core: { workers = 1; drain_timeout = %.1f; log_level = \"info\"; };\n", drain);
    tu_write_mock_pipeline(dir);
    tu_write(dir, "60-transport.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { %s }; };\n", transport);
    core *c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    core_watch_signals(c);
    assert_int_equal(core_start_transports(c), 0);
    return c;
}

/* Runs the loop as tolkd does, until shutdown breaks it. */
static double run_to_exit(core *c) {
    double t0 = mono_now();
    alarm(60); /* a hang fails the test instead of the CI */
    ev_ref(c->loop);
    ev_run(c->loop, 0);
    ev_unref(c->loop);
    alarm(0);
    return mono_now() - t0;
}

static void test_sigterm_drains_then_forces(void **state) {
    char *dir = tu_tmpdir();
    tu_log_capture();
    core *c = start(dir, 1.0, "calls = 2; phrases = 20; speech_ms = 500; gap_ms = 500; realtime = true;");
    tu_run_until(c, NULL, NULL, 0.5);
    assert_int_equal(c->active, 2);
    raise(SIGTERM);
    run_to_exit(c);
    assert_int_equal(c->active, 0);
    assert_true(tu_log_has("SIGTERM received"));
    assert_true(tu_log_has("drain timeout: ending 2 calls"));
    /* the transport was told to hang up each call */
    assert_int_equal(tu_health_int(c, "calls", "calls_ended"), 2);
    core_free(c);
    tu_log_clear();
    tu_rm_rf(dir);
    free(dir);
}

static void test_sigterm_waits_for_calls_to_finish(void **state) {
    char *dir = tu_tmpdir();
    tu_log_capture();
    core *c = start(dir, 30.0, "calls = 1; phrases = 1; speech_ms = 400; gap_ms = 400; realtime = true;");
    tu_run_until(c, NULL, NULL, 0.3);
    assert_int_equal(c->active, 1);
    raise(SIGTERM);
    run_to_exit(c);
    assert_int_equal(c->active, 0);
    assert_true(tu_log_has("all calls ended"));
    assert_false(tu_log_has("drain timeout"));
    /* the call finished its phrase: it was translated, not cut */
    assert_true(tu_health_int(c, "calls", "energy_played_by_leg.b") > 0);
    core_free(c);
    tu_log_clear();
    tu_rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_drains_then_forces),
        cmocka_unit_test(test_sigterm_waits_for_calls_to_finish),
    };
    int rc = cmocka_run_group_tests_name("daemon", tests, NULL, NULL);
    log_set_hook(NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
