/* Plugin ABI 1.2 as a plugin author relies on it: late callbacks on every
 * kind of handle are caught (and abort a debug build), results with a wrong
 * size are refused, TOLK_DECLINED moves a request to the next provider with
 * no health penalty, report() and permanent failures fail over, a running
 * call keeps its own generation's recovery settings across a reload, MT
 * requests carry context, glossary and formality and honour retry-after and
 * no-cache, recognisers open asynchronously and are finalised at the
 * maximum phrase length, partials are published with their stability, voice
 * samples reach a cloning TTS, and plugins built against the 1.1 header or
 * a newer minor (with the compat entry) load. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "handle.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAXR 32

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    char text[MAXR][64], tr[MAXR][192], stt[MAXR][24], mt[MAXR][24];
    double mt_ms[MAXR];
    int ended;
    /* transcript events */
    size_t partials, finals, stable_partials;
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
    R->mt_ms[i] = r->mt_ms;
}

static void on_transcript(void *ud, const transcript_event *e) {
    rec *R = ud;
    if (e->is_final) {
        R->finals++;
    } else {
        R->partials++;
        if (e->stability > 0 && e->stability < 1) R->stable_partials++;
    }
}

static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }

static int ended(void *ud) {
    rec *R = ud;
    return R->ended > 0 && R->c->active == 0;
}

/* The mock pipeline, with files replaced where a test says so (NULL keeps
 * the mock's), and a transport_mock call of three 600 ms bursts. */
static const char *calls_default =
    "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
    "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = false; "
    "paced = false; }; };\n";

static rec *begin(const char *core_extra, const char *recovery, const char *stt, const char *mt,
                  const char *tts, const char *chains, const char *calls) {
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf", "core: { workers = 1; log_level = \"info\"; %s };\nrecovery: { %s };\n",
             core_extra ? core_extra : "", recovery ? recovery : "");
    tu_write_mock_pipeline(R->dir);
    if (stt) tu_write(R->dir, "20-stt.conf", "%s", stt);
    if (mt) tu_write(R->dir, "30-mt.conf", "%s", mt);
    if (tts) tu_write(R->dir, "40-tts.conf", "%s", tts);
    if (chains) tu_write(R->dir, "50-chains.conf", "%s", chains);
    tu_write(R->dir, "60-calls.conf", "%s", calls ? calls : calls_default);
    char *path = xasprintf("%s:%s:%s/../abi11", getenv("TOLK_PLUGIN_PATH"),
                           getenv("TOLK_TEST_FIXTURES"), getenv("TOLK_TEST_FIXTURES"));
    R->c = core_new(R->dir, path);
    free(path);
    R->c->obs = (core_observer){.phrase = on_phrase, .transcript = on_transcript,
                                .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    return R;
}

static rec *run(const char *core_extra, const char *recovery, const char *stt, const char *mt,
                const char *tts, const char *chains, const char *calls) {
    rec *R = begin(core_extra, recovery, stt, mt, tts, chains, calls);
    assert_true(tu_run_until(R->c, ended, R, 30));
    return R;
}

static void done(rec *R) {
    core_free(R->c);
    /* every test reads its own counters from zero */
    metrics_shutdown();
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    tu_log_clear();
}

static double errors(rec *R, const char *component, const char *type, const char *sev) {
    return metrics_value(metrics_series_v(R->c->m.errors, component, type, sev, NULL));
}

static double recoveries(rec *R, const char *inst, const char *tier_name, const char *ok) {
    return metrics_value(metrics_series_v(R->c->m.recoveries, inst, tier_name, ok, NULL));
}

static const char *calls_realtime =
    "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
    "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = true; "
    "paced = true; }; };\n";

#define DICT "dictionary: { hello = \"hola\"; world = \"mundo\"; thank = \"gracias\"; you = \"amigo\"; good = \"buenos\"; morning = \"días\"; };"
#define STT_A(extra)                                                                             \
    "{ name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", "       \
    "\"thank you\", \"good morning\" ]; silence_ms = 200; latency_ms = 10; partial_ms = 0; " extra \
    " }; }"

static const char *stt_chain_ab =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\", \"stt-b\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n";
static const char *mt_chain_ab =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\", \"mt-b\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n";

static void assert_all_translated(rec *R) {
    static const char *const want[] = {"hola mundo", "gracias amigo", "buenos días"};
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->tr[i], want[i]);
    }
}

/* ---- handles ---- */

static void test_handle_table(void **state) {
    static const tolk_plugin a = {.name = "a"}, b = {.name = "b"};
    int x, y;
    void *h1 = handle_new(H_REQUEST, &x, &a);
    assert_ptr_equal(handle_get(h1, H_REQUEST), &x);
    assert_null(handle_get(h1, H_STREAM)); /* another kind's handle is not this one */
    handle_retire(h1);
    assert_null(handle_get(h1, H_REQUEST));
    assert_ptr_equal(handle_last_owner(h1), &a);
    /* slots are reused, the stale handle still does not match */
    void *hs[300];
    for (int i = 0; i < 300; i++) hs[i] = handle_new(H_STREAM, &y, &b);
    assert_null(handle_get(h1, H_REQUEST));
    assert_null(handle_get(h1, H_STREAM));
    for (int i = 0; i < 300; i++) {
        assert_ptr_equal(handle_get(hs[i], H_STREAM), &y);
        handle_retire(hs[i]);
    }
    assert_null(handle_get(NULL, H_STREAM));
    assert_null(handle_get((void *)(uintptr_t)0xdeadbeef00ull, H_STREAM));
    assert_int_equal(handle_live_count(), 0);
    handle_table_free();
}

/* ---- late callbacks ---- */

static const char *late_conf_stt = "instance: { name = \"stt-late\"; plugin = \"fx_late_stt\"; };\n";
static const char *late_conf_mt = "instance: { name = \"mt-late\"; plugin = \"fx_late_mt\"; };\n";
static const char *late_conf_tts = "instance: { name = \"tts-late\"; plugin = \"fx_late_tts\"; };\n";
static const char *late_conf_chains =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-late\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-late\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-late\" ]; } );\n";
static const char *late_conf_calls = "instance: { name = \"calls\"; plugin = \"fx_late_transport\"; };\n";

static rec *late_run(void) {
    rec *R = run(NULL, NULL, late_conf_stt, late_conf_mt, late_conf_tts, late_conf_chains,
                 late_conf_calls);
    /* the plugins call back 30 ms after they were told to stop */
    tu_run_until(R->c, NULL, NULL, 0.3);
    return R;
}

/* Every host function that takes a stream, request or channel handle is
 * called after the handle ended: each call is recognised (no freed memory
 * is read: this runs under ASan in CI), counted per plugin, logged once
 * per plugin, and the call's own translation is unharmed. */
static void test_late_callbacks_are_caught(void **state) {
#ifdef TOLK_DEBUG
    /* a debug build aborts on the first one, so the bug is found in tests */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        rec *R = late_run();
        done(R);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
#else
    rec *R = late_run();
    assert_int_equal(R->n, 1);
    assert_true(R->ok[0]);
    assert_string_equal(R->tr[0], "late:late words");
    assert_true(errors(R, "fx_late_stt", "late_callback", "high") == 4);
    assert_true(errors(R, "fx_late_mt", "late_callback", "high") == 2);
    assert_true(errors(R, "fx_late_tts", "late_callback", "high") == 2);
    assert_true(errors(R, "fx_late_transport", "late_callback", "high") == 4);
    assert_int_equal(tu_log_count("that had already ended: ignored"), 4);
    done(R);
#endif
}

/* A result whose size is smaller than any ABI's struct is refused. */
static void test_transcript_size_checked(void **state) {
    rec *R = run(NULL, NULL, "instance: { name = \"stt-small\"; plugin = \"fx_small_stt\"; };\n", NULL, NULL,
                 "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-small\" ]; },\n"
                 "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
                 "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n",
                 NULL);
    assert_int_equal(R->n, 0);
    assert_true(errors(R, "stt-small", "invalid", "high") >= 1);
    assert_true(tu_log_has("smaller than ABI 1.0's"));
    done(R);
}

/* ---- DECLINED, report(), permanent failures ---- */

static void test_declined_asks_the_next_provider(void **state) {
    rec *R = run(NULL, "min_operations = 1;", NULL,
                 "instances = (\n"
                 "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; languages = [ \"fr\", \"de\" ]; }; },\n"
                 "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
                 NULL, mt_chain_ab, NULL);
    assert_all_translated(R);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->mt[i], "mt-b");
    tolk_instance *a = core_find_instance(R->c, "mt-a");
    /* no health penalty: nothing recorded, not down, no error counted */
    assert_int_equal(a->track.ops, 0);
    assert_false(a->down);
    assert_int_equal(a->health, TOLK_HEALTHY);
    assert_true(errors(R, "mt-a", "declined", "low") == 0);
    assert_true(recoveries(R, "mt-b", "failover", "true") == 0);
    done(R);
}

/* A provider reports trouble outside any request (its socket closed while
 * idle): it is marked down and the running call's stream fails over, with
 * the audio since the last final result replayed. */
static void test_report_fails_the_stream_over(void **state) {
    rec *R = run(NULL, "soft_retries = 0; hard_reset = false;",
                 "instances = ( " STT_A("report_after_ms = 1000;") ",\n"
                 "  { name = \"stt-b\"; plugin = \"stt_mock\"; settings: { phrases = [ \"thank you\", \"good morning\" ];\n"
                 "      silence_ms = 200; latency_ms = 10; partial_ms = 0; }; } );\n",
                 NULL, NULL, stt_chain_ab, calls_realtime);
    assert_all_translated(R);
    assert_string_equal(R->stt[0], "stt-a");
    assert_string_equal(R->stt[1], "stt-b");
    assert_string_equal(R->stt[2], "stt-b");
    assert_true(errors(R, "stt-a", "reported", "high") == 1);
    assert_true(tu_log_has("[stt_mock/stt-a] marked down"));
    assert_true(recoveries(R, "stt-b", "failover", "true") == 1);
    done(R);
}

/* A permanent failure (a bad key) fails over at once: no soft retry, no
 * reset, although both are configured. */
static void test_permanent_failure_fails_over_at_once(void **state) {
    rec *R = run(NULL, "soft_retries = 3; soft_delay = 0.02; hard_reset = true;",
                 "instances = ( " STT_A("fail_every = 1; fail_severity = \"permanent\";") ",\n"
                 "  { name = \"stt-b\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", \"thank you\", \"good morning\" ];\n"
                 "      silence_ms = 200; latency_ms = 10; partial_ms = 0; }; } );\n",
                 NULL, NULL, stt_chain_ab, NULL);
    assert_all_translated(R);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->stt[i], "stt-b");
    assert_true(recoveries(R, "stt-a", "soft", "false") == 0);
    assert_true(recoveries(R, "stt-a", "hard", "false") == 0);
    assert_false(tu_log_has("[stt_mock/stt-a] resetting"));
    assert_true(recoveries(R, "stt-b", "failover", "true") == 1);
    assert_true(errors(R, "stt-a", "backend", "permanent") == 1);
    done(R);

    /* MT: the plugin says so through report(); its failed request is not
     * retried on it */
    R = run(NULL, "soft_retries = 3; soft_delay = 0.02; hard_reset = true;", NULL,
            "instances = (\n"
            "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_every = 1; fail_severity = \"permanent\"; }; },\n"
            "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
            NULL, mt_chain_ab, NULL);
    assert_all_translated(R);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->mt[i], "mt-b");
    assert_true(recoveries(R, "mt-a", "soft", "false") == 0);
    assert_false(tu_log_has("[mt_mock/mt-a] resetting"));
    assert_true(recoveries(R, "mt-b", "failover", "true") == 1);
    done(R);
}

/* ---- a reload during a call ---- */

static int first_phrase(void *ud) { return ((rec *)ud)->n >= 1; }

/* The call started with soft_retries = 0; a reload during it asks for
 * three soft retries. The running call's failures still go straight to
 * the backup: it recovers by its own generation's settings. */
static void test_running_call_keeps_its_recovery_settings(void **state) {
    rec *R = begin(NULL, "soft_retries = 0; hard_reset = false;", NULL,
                   "instances = (\n"
                   "  { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; fail_after = 1; " DICT " }; },\n"
                   "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
                   NULL, mt_chain_ab, calls_realtime);
    assert_true(tu_run_until(R->c, first_phrase, R, 10));
    unsigned gen = R->c->gen->id;
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"info\"; };\n"
             "recovery: { soft_retries = 3; soft_delay = 0.05; hard_reset = true; };\n");
    assert_int_equal(core_reload(R->c), 0);
    assert_true(R->c->gen->id != gen);
    assert_true(tu_run_until(R->c, ended, R, 30));
    assert_all_translated(R);
    assert_string_equal(R->mt[0], "mt-a");
    assert_string_equal(R->mt[1], "mt-b");
    assert_true(recoveries(R, "mt-a", "soft", "false") == 0);
    assert_false(tu_log_has("[mt_mock/mt-a] resetting"));
    assert_true(recoveries(R, "mt-b", "failover", "true") == 1);
    done(R);
}

/* ---- MT requests ---- */

/* Two instances of fx_mt12: its process load hook runs once, before the
 * first create() (its create() refuses otherwise). */
static const char *mt12_conf = "instances = ( { name = \"mt-x\"; plugin = \"fx_mt12\"; },\n"
                               "  { name = \"mt-y\"; plugin = \"fx_mt12\"; } );\n";
static const char *mt12_chains =
    "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
    "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-x\" ]; },\n"
    "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n"
    "endpoints = ( { name = \"alice\"; language = \"en\"; glossary = \"medical\"; formality = \"more\"; } );\n";
static const char *calls_alice =
    "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
    "phrases = %d; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = false; "
    "paced = false; endpoint_a = \"alice\"; }; };\n";

static rec *run_mt12(const char *core_extra, const char *phrases, int nphrases) {
    char stt[512], calls[512];
    snprintf(stt, sizeof stt,
             "instance: { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ %s ]; "
             "silence_ms = 200; latency_ms = 10; partial_ms = 0; }; };\n", phrases);
    snprintf(calls, sizeof calls, calls_alice, nphrases);
    return run(core_extra, "soft_retries = 2; soft_delay = 0.01; jitter = 0.0;", stt, mt12_conf,
               NULL, mt12_chains, calls);
}

static void test_mt_request_carries_context_glossary_formality(void **state) {
    rec *R = run_mt12(NULL, "\"hello world\", \"thank you\", \"hello world\"", 3);
    assert_int_equal(R->n, 3);
    assert_string_equal(R->tr[0], "[ctx 0|medical|more] hello world");
    assert_string_equal(R->tr[1], "[ctx 1|medical|more|hello world] thank you");
    /* the same text in another context is not taken from the cache */
    assert_string_equal(R->tr[2], "[ctx 2|medical|more|hello world|thank you] hello world");
    done(R);
}

static void test_mt_retry_after_and_no_cache(void **state) {
    /* the first attempt asks for 0.3 s; the soft delay alone is 10 ms */
    rec *R = run_mt12("mt_context = 0;", "\"please retry\", \"nocache one\", \"nocache one\", \"plain\", \"plain\"", 5);
    assert_int_equal(R->n, 5);
    for (size_t i = 0; i < 5; i++) assert_true(R->ok[i]);
    assert_true(R->mt_ms[0] >= 290);
    tolk_series *hit = metrics_series_v(R->c->m.cache_lookups, "mt-x", "hit", NULL);
    tolk_series *miss = metrics_series_v(R->c->m.cache_lookups, "mt-x", "miss", NULL);
    /* "nocache one" twice: both asked; "plain" twice: the second from the cache */
    assert_true(metrics_value(hit) == 1);
    assert_true(metrics_value(miss) == 4);
    done(R);
}

/* ---- STT: asynchronous open, partials, params, finalize ---- */

static void test_stt_async_open_partials_and_params(void **state) {
    rec *R = run(NULL, NULL,
                 "instance: { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", "
                 "\"thank you\", \"good morning\" ]; silence_ms = 200; latency_ms = 10; partial_ms = 100; "
                 "open_delay_ms = 150; }; };\n",
                 NULL, NULL, NULL, NULL);
    assert_all_translated(R);
    assert_true(tu_health_int(R->c, "stt-a", "async_opens") >= 1);
    assert_int_equal(tu_health_int(R->c, "stt-a", "early_feeds"), 0);
    assert_int_equal(tu_health_int(R->c, "stt-a", "last_leg"), 0);
    json_t *h = tu_health(R->c, "stt-a");
    assert_string_equal(json_string_value(json_object_get(h, "last_target")), "es");
    assert_true(strlen(json_string_value(json_object_get(h, "last_channel"))) > 0);
    json_decref(h);
    assert_int_equal(R->finals, 3);
    assert_true(R->partials >= 3);
    assert_true(R->stable_partials >= 3);
    done(R);
}

static void test_long_phrase_is_finalised(void **state) {
    rec *R = run("max_phrase_seconds = 1;", NULL,
                 "instance: { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { phrases = [ \"one\", \"two\", \"three\", \"four\" ]; "
                 "silence_ms = 200; latency_ms = 10; partial_ms = 0; }; };\n",
                 "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; }; };\n", NULL, NULL,
                 "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
                 "phrases = 1; speech_ms = 3500; gap_ms = 500; mode = \"unidirectional\"; realtime = false; "
                 "paced = false; }; };\n");
    /* 3.5 s of speech cut at 1 s, 2 s and 3 s, then the rest */
    assert_true(tu_health_int(R->c, "stt-a", "finalizes") >= 3);
    assert_true(R->n >= 4);
    assert_true(tu_log_has("phrase longer than 1 s: finalising"));
    done(R);
}

/* ---- TTS: voice samples for cloning, the request struct ---- */

static void test_voice_sample_reaches_a_cloning_tts(void **state) {
    rec *R = run(NULL, NULL, NULL, NULL, NULL,
                 "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
                 "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
                 "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n"
                 "endpoints = ( { name = \"alice\"; language = \"en\"; clone_voice = true; clone_seconds = 1; } );\n",
                 "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
                 "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = false; "
                 "paced = false; endpoint_a = \"alice\"; }; };\n");
    assert_all_translated(R);
    assert_int_equal(tu_health_int(R->c, "tts-a", "voice_samples"), 1);
    json_t *h = tu_health(R->c, "tts-a");
    const char *sampled = json_string_value(json_object_get(h, "sampled_voice"));
    const char *last = json_string_value(json_object_get(h, "last_voice"));
    assert_true(!strncmp(sampled, "clone:", 6) && sampled[strlen(sampled) - 1] == 'a');
    assert_string_equal(last, sampled);
    assert_true(json_real_value(json_object_get(h, "last_rate")) == 1.0);
    json_decref(h);
    done(R);
}

/* ---- plugins of other minors ---- */

static void test_abi11_plugin_still_loads_and_works(void **state) {
    rec *R = run(NULL, NULL, NULL,
                 "instance: { name = \"mt-skel\"; plugin = \"skeleton_mt\"; settings: { suffix = \"!\"; }; };\n",
                 NULL,
                 "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
                 "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-skel\" ]; },\n"
                 "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n",
                 NULL);
    assert_int_equal(R->n, 3);
    assert_string_equal(R->tr[0], "HELLO WORLD!");
    assert_string_equal(R->tr[1], "THANK YOU!");
    assert_string_equal(R->tr[2], "GOOD MORNING!");
    tolk_instance *skel = core_find_instance(R->c, "mt-skel");
    assert_int_equal(skel->desc->abi_minor, 1);
    /* the 1.1 fingerprint of a large-file build, refused by the 1.1 loader */
    assert_non_null(strstr(skel->desc->build_abi, "o64"));
    done(R);
}

static void test_newer_minor_loads_only_with_the_compat_entry(void **state) {
    char err[512] = "";
    const char *dir = getenv("TOLK_TEST_FIXTURES");
    const loaded_plugin *lp = loader_find("fx_compat", dir, err, sizeof err);
    assert_non_null(lp);
    assert_int_equal(lp->desc->abi_minor, TOLK_ABI_MINOR);
    lp = loader_find("fx_minor", dir, err, sizeof err);
    assert_null(lp);
    assert_non_null(strstr(err, "TOLK_PLUGIN_DEFINE_COMPAT"));
}

int main(void) {
    log_set_level(TOLK_LOG_INFO);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_table),
        cmocka_unit_test(test_late_callbacks_are_caught),
        cmocka_unit_test(test_transcript_size_checked),
        cmocka_unit_test(test_declined_asks_the_next_provider),
        cmocka_unit_test(test_report_fails_the_stream_over),
        cmocka_unit_test(test_permanent_failure_fails_over_at_once),
        cmocka_unit_test(test_running_call_keeps_its_recovery_settings),
        cmocka_unit_test(test_mt_request_carries_context_glossary_formality),
        cmocka_unit_test(test_mt_retry_after_and_no_cache),
        cmocka_unit_test(test_stt_async_open_partials_and_params),
        cmocka_unit_test(test_long_phrase_is_finalised),
        cmocka_unit_test(test_voice_sample_reaches_a_cloning_tts),
        cmocka_unit_test(test_abi11_plugin_still_loads_and_works),
        cmocka_unit_test(test_newer_minor_loads_only_with_the_compat_entry),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
