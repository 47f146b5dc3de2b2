/* The recovery hierarchy with fault-injecting mocks: each tier fires and
 * succeeds, escalation goes soft -> hard -> failover -> reset, a dropped STT
 * stream loses no words, a hanging provider times out, a chain that keeps
 * failing is reset at most once per cooldown, and with nothing left the call
 * goes on untranslated instead of silent. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAXR 32

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    char text[MAXR][64], tr[MAXR][96], stt[MAXR][16], mt[MAXR][16];
    double start_s[MAXR];
    int ended;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAXR) return;
    size_t i = R->n++;
    R->ok[i] = r->ok;
    snprintf(R->text[i], sizeof R->text[i], "%s", r->text ? r->text : "");
    snprintf(R->tr[i], sizeof R->tr[i], "%s", r->translation ? r->translation : "");
    snprintf(R->stt[i], sizeof R->stt[i], "%s", r->stt ? r->stt : "");
    snprintf(R->mt[i], sizeof R->mt[i], "%s", r->mt ? r->mt : "");
    R->start_s[i] = r->start_s;
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

static int ended(void *ud) {
    rec *R = ud;
    return R->ended > 0 && R->c->active == 0;
}

/* Three 600 ms bursts at 0, 1.1 and 2.2 s, fed as fast as possible, or at
 * a call's pace where the test depends on when things happen. */
static int realtime;

static rec *begin(const char *recovery, const char *stt, const char *mt, const char *chains) {
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf", "core: { workers = 1; log_level = \"info\"; };\nrecovery: { %s };\n", recovery);
    tu_write_mock_pipeline(R->dir);
    if (stt) tu_write(R->dir, "20-stt.conf", "%s", stt);
    if (mt) tu_write(R->dir, "30-mt.conf", "%s", mt);
    if (chains) tu_write(R->dir, "50-chains.conf", "%s", chains);
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
             "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; "
             "realtime = %s; paced = %s; }; };\n",
             realtime ? "true" : "false", realtime ? "true" : "false");
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    return R;
}

static rec *run(const char *recovery, const char *stt, const char *mt, const char *chains) {
    rec *R = begin(recovery, stt, mt, chains);
    assert_true(tu_run_until(R->c, ended, R, 30));
    return R;
}

static void done(rec *R) {
    core_free(R->c);
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    tu_log_clear();
}

static double recoveries(rec *R, const char *inst, const char *tier_name, const char *ok) {
    return metrics_value(metrics_series_v(R->c->m.recoveries, inst, tier_name, ok, NULL));
}

static const char *fast = "soft_retries = 2; soft_delay = 0.02; jitter = 0.0; hard_timeout = 1.0; "
                          "request_timeout = 0.3; health_interval = 0.1; min_operations = 1;";

static const char *mt_chain_ab =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\", \"mt-b\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n";

/* stt-a's stream drops after 1.4 s of audio, in the middle of the second
 * burst; stt-b, its backup, knows the script from the second phrase on. */
static const char *stt_ab_dropping =
    "instances = (\n"
    "  { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", \"thank you\", \"good morning\" ];\n"
    "      silence_ms = 200; latency_ms = 10; partial_ms = 0; drop_after_ms = 1400; }; },\n"
    "  { name = \"stt-b\"; plugin = \"stt_mock\"; settings: { phrases = [ \"thank you\", \"good morning\" ];\n"
    "      silence_ms = 200; latency_ms = 10; partial_ms = 0; }; } );\n";

static const char *stt_chain_ab =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\", \"stt-b\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n";

static void assert_all_translated(rec *R, size_t n) {
    static const char *const want[] = {"hola mundo", "gracias amigo", "buenos días"};
    assert_int_equal(R->n, n);
    for (size_t i = 0; i < n; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->tr[i], want[i]);
    }
}

#define DICT "dictionary: { hello = \"hola\"; world = \"mundo\"; thank = \"gracias\"; you = \"amigo\"; good = \"buenos\"; morning = \"días\"; };"

/* Tier 1: every second request fails once; the retry on the same provider
 * succeeds. */
static void test_soft_retry(void **state) {
    double before = 0;
    rec *R = run(fast, NULL,
                 "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 2; " DICT " }; };\n",
                 NULL);
    (void)before;
    assert_all_translated(R, 3);
    assert_true(recoveries(R, "mt-a", "soft", "true") >= 1);
    assert_true(tu_log_has("recovered by mt-a (tier soft)"));
    done(R);
}

/* Tier 2: after one success the provider fails until it is reset; soft
 * retries do not help, reset() does. */
static void test_hard_reset(void **state) {
    rec *R = run("soft_retries = 1; soft_delay = 0.02; jitter = 0.0; hard_timeout = 1.0; request_timeout = 0.3;", NULL,
                 "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_after = 1; " DICT " }; };\n",
                 NULL);
    assert_all_translated(R, 3);
    assert_true(recoveries(R, "mt-a", "soft", "false") >= 1);
    assert_true(recoveries(R, "mt-a", "hard", "true") >= 1);
    assert_true(tu_log_has("[mt_mock/mt-a] resetting"));
    done(R);
}

/* Tier 3: the primary always fails; soft retries and a reset do not help;
 * the request moves to the backup and the phrases arrive in order. */
static void test_failover_to_backup(void **state) {
    rec *R = run(fast, NULL,
                 "instances = (\n"
                 "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 1; }; },\n"
                 "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
                 mt_chain_ab);
    assert_all_translated(R, 3);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->mt[i], "mt-b");
    assert_true(recoveries(R, "mt-b", "failover", "true") == 1);
    assert_true(tu_log_has("failing over to mt-b"));
    /* the primary's own health() says it is fine (the mock fails requests,
     * not its health): the next probe brings it back for new calls */
    tolk_instance *a = core_find_instance(R->c, "mt-a");
    tu_run_until(R->c, NULL, NULL, 0.5);
    assert_false(a->down);
    assert_true(tu_log_has("[mt_mock/mt-a] healthy again: new calls use it again"));
    assert_int_equal(chain_pick(&R->c->gen->chains[1]), 0);
    done(R);
}

/* The STT stream drops in the middle of the second phrase: the backup gets
 * the audio since the last final result replayed and recognises that
 * phrase, once, from its start. */
static void test_stt_drop_mid_phrase_loses_no_words(void **state) {
    realtime = 1;
    rec *R = run("soft_retries = 0; hard_reset = false;",
                 stt_ab_dropping, NULL, stt_chain_ab);
    assert_all_translated(R, 3);
    assert_string_equal(R->stt[0], "stt-a");
    assert_string_equal(R->stt[1], "stt-b");
    assert_string_equal(R->stt[2], "stt-b");
    /* the second burst starts at 1.1 s: heard from its beginning, not from
     * the moment of the failover */
    assert_true(R->start_s[1] > 1.05 && R->start_s[1] < 1.15);
    assert_true(recoveries(R, "stt-b", "failover", "true") == 1);
    assert_true(tu_log_has("replaying"));
    done(R);
    realtime = 0;
}

/* failback: a running call's next phrase goes back to the recovered
 * primary translator with "running_calls", stays on the backup with the
 * default "new_calls". */
static void test_running_call_fails_back_to_primary_translator(void **state) {
    static const char *const policy[] = {"running_calls", "new_calls"};
    static const char *const third[] = {"mt-a", "mt-b"};
    for (int k = 0; k < 2; k++) {
        realtime = 1;
        char rc[256];
        snprintf(rc, sizeof rc, "soft_retries = 0; hard_reset = false; health_interval = 0.1; "
                                "min_operations = 1; failback = \"%s\";", policy[k]);
        rec *R = run(rc, NULL,
                     "instances = (\n"
                     "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 2; " DICT " }; },\n"
                     "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
                     mt_chain_ab);
        assert_all_translated(R, 3);
        assert_string_equal(R->mt[0], "mt-a");
        assert_string_equal(R->mt[1], "mt-b");
        assert_string_equal(R->mt[2], third[k]);
        done(R);
        realtime = 0;
    }
}

/* failback = "running_calls": once the primary recogniser is healthy
 * again, a running call's stream goes back to it at the next phrase
 * boundary (with the default, new_calls, it stays on the backup: see
 * test_stt_drop_mid_phrase_loses_no_words). */
static void test_running_call_fails_back_to_primary_recogniser(void **state) {
    realtime = 1;
    rec *R = run("soft_retries = 0; hard_reset = false; health_interval = 0.1; min_operations = 1; "
                 "failback = \"running_calls\";",
                 stt_ab_dropping, NULL, stt_chain_ab);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_true(R->ok[i]);
    assert_string_equal(R->stt[0], "stt-a");
    assert_string_equal(R->stt[1], "stt-b");
    assert_string_equal(R->stt[2], "stt-a");
    assert_true(tu_log_has("recognition back from stt-b to stt-a (failback)"));
    /* the third burst (2.2 s) is heard from its start by the primary */
    assert_true(R->start_s[2] > 2.15 && R->start_s[2] < 2.25);
    done(R);
    realtime = 0;
}

/* While the recogniser is being retried, the caller's frames wait in the
 * input queue: each is observed once, with the time it waited, when the
 * new stream hears it. */
static void test_frames_wait_in_input_queue_during_stt_retry(void **state) {
    realtime = 1;
    rec *R = begin("soft_retries = 1; soft_delay = 0.3; jitter = 0.0; hard_reset = false;",
                   "instance: { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\" ];\n"
                   "      silence_ms = 200; latency_ms = 10; partial_ms = 0; drop_after_ms = 1400; }; };\n",
                   NULL, NULL);
    tolk_series *wait = R->c->m.qwait[Q_INPUT];
    /* the registry is the process's: earlier tests' calls counted too */
    uint64_t n0 = metrics_count(wait);
    double sum0 = metrics_value(wait);
    assert_true(tu_run_until(R->c, ended, R, 30));
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_true(R->ok[i]);
    assert_true(tu_log_has("replaying"));
    assert_true(tu_log_has("recognition recovered by stt-a (tier soft)"));
    uint64_t frames = (uint64_t)tu_health_int(R->c, "calls", "frames_sent.a");
    assert_true(metrics_count(wait) - n0 == frames);
    /* each outage (the mock drops every stream after 1.4 s of audio) left
     * ~15 frames waiting between 0 and 300 ms: ~2.2 s of waiting each */
    size_t outages = (size_t)tu_log_count("stream reopened on stt-a");
    double waited = metrics_value(wait) - sum0;
    assert_true(outages >= 1);
    assert_true(waited > 1000 && waited < (double)outages * 16 * 320);
    assert_true(metrics_value(R->c->m.qdepth[Q_INPUT]) == 0);
    done(R);
    realtime = 0;
}

/* A provider that never answers: its timeout fires and the tiers proceed to
 * the backup. */
static void test_hanging_provider_times_out(void **state) {
    double t0 = mono_now();
    rec *R = run(fast, NULL,
                 "instances = (\n"
                 "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { hang = true; }; },\n"
                 "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
                 mt_chain_ab);
    assert_all_translated(R, 3);
    assert_string_equal(R->mt[0], "mt-b");
    assert_true(metrics_value(metrics_series_v(R->c->m.errors, "mt-a", "timeout", "medium", NULL)) >= 1);
    (void)t0;
    done(R);
}

/* Tier 4: both providers fail; the whole chain is reset once and the
 * primary answers again; when it fails again within the cooldown there is
 * no second reset, and the call goes on untranslated. */
static void test_reset_tier_and_cooldown(void **state) {
    rec *R = run("soft_retries = 0; hard_reset = false; reset_cooldown = 60.0; hard_timeout = 1.0;", NULL,
                 "instances = (\n"
                 "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_after = 1; " DICT " }; },\n"
                 "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 1; }; } );\n",
                 mt_chain_ab);
    assert_int_equal(R->n, 3);
    assert_true(R->ok[0]);
    assert_true(R->ok[1]);
    assert_string_equal(R->tr[1], "gracias amigo");
    assert_string_equal(R->mt[1], "mt-a");
    assert_true(recoveries(R, "mt-a", "reset", "true") == 1);
    assert_false(R->ok[2]);
    assert_int_equal(tu_log_count("EVENT provider set 'mt' is being reset"), 1);
    assert_true(tu_log_has("heard untranslated"));
    done(R);
}

/* No backup and nothing helps: the documented fallback is passthrough, so
 * the callee hears the caller's own voice rather than silence. */
static void test_no_backup_falls_back_to_passthrough(void **state) {
    realtime = 1;
    rec *R = run(fast, NULL,
                 "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 1; }; };\n",
                 NULL);
    assert_true(R->n >= 1);
    assert_false(R->ok[0]);
    assert_true(tu_log_has("heard untranslated"));
    /* the caller's later bursts reached the callee untranslated */
    assert_true(tu_health_int(R->c, "calls", "energy_played_by_leg.b") > 0);
    assert_int_equal(tu_health_int(R->c, "calls", "calls_ended"), 1);
    done(R);
    realtime = 0;
}

int main(void) {
    log_set_level(TOLK_LOG_INFO);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soft_retry),
        cmocka_unit_test(test_hard_reset),
        cmocka_unit_test(test_failover_to_backup),
        cmocka_unit_test(test_stt_drop_mid_phrase_loses_no_words),
        cmocka_unit_test(test_frames_wait_in_input_queue_during_stt_retry),
        cmocka_unit_test(test_running_call_fails_back_to_primary_recogniser),
        cmocka_unit_test(test_running_call_fails_back_to_primary_translator),
        cmocka_unit_test(test_hanging_provider_times_out),
        cmocka_unit_test(test_reset_tier_and_cooldown),
        cmocka_unit_test(test_no_backup_falls_back_to_passthrough),
    };
    int rc = cmocka_run_group_tests_name("recovery", tests, NULL, NULL);
    log_set_hook(NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
