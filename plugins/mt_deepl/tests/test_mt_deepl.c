/* mt_deepl against a faithful local fake of DeepL's API v2
 * (tests/deeplfake.py beside this file), loaded by the real core: calls from
 * transport_mock, scripted phrases from stt_mock, mt_deepl as the primary
 * translator and mt_mock as its backup. What a user checks: the
 * translations come from DeepL, the request is what DeepL documents (key in
 * the header and never in the log, language codes, context, model type),
 * 429/5xx/garbage are retried with the SDKs' backoff and Retry-After, 456
 * and 403 move to the backup at once, 400 is not retried; with batch_ms
 * phrases of several calls share requests, each still translated. Skipped (77)
 * without python3. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAXR 16
#define KEY "test-key-4f1e0c"

static pid_t g_fake;
static int g_port;
static int g_calls = 1; /* concurrent calls of the next run() */

/* ---- the fake server ---- */

static void fake_start(void) { g_port = tu_fake_start("plugins/mt_deepl/tests/deeplfake.py", &g_fake); }
static void fake_stop(void) { tu_fake_stop(&g_fake); }
static char *fake_http(const char *method, const char *path, const char *body) {
    return tu_http(g_port, method, path, body);
}

static void fake_plan(const char *responses_json) {
    char *body = xasprintf("{\"responses\": %s}", responses_json);
    free(fake_http("POST", "/_fake/plan", body));
    free(body);
}

/* The translate requests the fake saw, as a JSON array (new reference). */
static json_t *fake_seen(void) {
    char *s = fake_http("GET", "/_fake/requests", NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    return j;
}

/* ---- calls ---- */

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    char tr[MAXR][96], mt[MAXR][24];
    double mt_ms[MAXR];
    int ended;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAXR) return;
    size_t i = R->n++;
    R->ok[i] = r->ok;
    snprintf(R->tr[i], sizeof R->tr[i], "%s", r->translation ? r->translation : "");
    snprintf(R->mt[i], sizeof R->mt[i], "%s", r->mt ? r->mt : "");
    R->mt_ms[i] = r->mt_ms;
}
static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }
static int ended(void *ud) {
    rec *R = ud;
    return R->ended > 0 && R->c->active == 0;
}

#define DICT "dictionary: { hello = \"HOLA\"; world = \"MUNDO\"; thank = \"GRACIAS\"; you = \"AMIGO\"; good = \"BUENOS\"; morning = \"DIAS\"; };"

/* deepl_settings: the inside of mt-deepl's settings group; plan: the
 * fake's first answers (NULL: normal service). */
static rec *run(const char *deepl_settings, const char *plan) {
    free(fake_http("POST", "/_fake/reset", ""));
    if (plan) fake_plan(plan);
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"debug\"; };\n"
             "recovery: { soft_retries = 1; soft_delay = 0.05; jitter = 0.0; hard_reset = false; "
             "request_timeout = 10; };\n");
    tu_write_mock_pipeline(R->dir);
    tu_write(R->dir, "30-mt.conf",
             "instances = (\n"
             "  { name = \"mt-deepl\"; plugin = \"mt_deepl\"; settings: { %s }; },\n"
             "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; " DICT " }; } );\n",
             deepl_settings);
    tu_write(R->dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
             "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-deepl\", \"mt-b\" ]; },\n"
             "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n");
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = %d; "
             "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = false; "
             "paced = false; }; };\n",
             g_calls);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, ended, R, 30));
    return R;
}

static void done(rec *R) {
    core_free(R->c);
    metrics_shutdown();
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    tu_log_clear();
}

static char *settings(const char *extra) {
    static char buf[512];
    snprintf(buf, sizeof buf,
             "url = \"http://127.0.0.1:%d\"; auth_key = \"" KEY "\"; backoff_initial = 0.05; "
             "timeout = 2.0; %s",
             g_port, extra ? extra : "");
    return buf;
}

static const char *const spanish[] = {"hola mundo", "gracias amigo", "buenos días"};

static void assert_from_deepl(rec *R) {
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->tr[i], spanish[i]);
        assert_string_equal(R->mt[i], "mt-deepl");
    }
}

/* ---- tests ---- */

static void test_translates_with_the_documented_request(void **state) {
    rec *R = run(settings(NULL), NULL);
    assert_from_deepl(R);
    json_t *seen = fake_seen();
    assert_int_equal(json_array_size(seen), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *req = json_array_get(seen, i);
        json_t *h = json_object_get(req, "headers");
        assert_string_equal(json_string_value(json_object_get(h, "authorization")), "DeepL-Auth-Key " KEY);
        assert_string_equal(json_string_value(json_object_get(h, "content-type")), "application/json");
        json_t *body = json_loads(json_string_value(json_object_get(req, "body")), 0, NULL);
        assert_non_null(body);
        assert_string_equal(json_string_value(json_array_get(json_object_get(body, "text"), 0)),
                            i == 0 ? "hello world" : i == 1 ? "thank you" : "good morning");
        assert_string_equal(json_string_value(json_object_get(body, "source_lang")), "EN");
        assert_string_equal(json_string_value(json_object_get(body, "target_lang")), "ES");
        assert_string_equal(json_string_value(json_object_get(body, "model_type")), "latency_optimized");
        /* the call's previous phrases as context (core.mt_context = 2) */
        const char *ctx = json_string_value(json_object_get(body, "context"));
        if (i == 0)
            assert_null(ctx);
        else if (i == 1)
            assert_string_equal(ctx, "hello world");
        else
            assert_string_equal(ctx, "hello world thank you");
        json_decref(body);
    }
    json_decref(seen);
    /* the key is a secret: not in any log line, even at debug level */
    assert_false(tu_log_has(KEY));
    done(R);
}

static void test_429_and_5xx_are_retried(void **state) {
    rec *R = run(settings("max_retries = 3;"), "[{\"status\": 429}, {\"status\": 529}, {\"status\": 500}]");
    assert_from_deepl(R);
    json_t *seen = fake_seen();
    assert_int_equal(json_array_size(seen), 6);
    json_decref(seen);
    assert_int_equal(tu_health_int(R->c, "mt-deepl", "retries"), 3);
    done(R);
}

static void test_retry_after_is_honoured(void **state) {
    rec *R = run(settings(NULL), "[{\"status\": 429, \"retry_after\": 1}]");
    assert_from_deepl(R);
    /* the backoff alone would be 50 ms */
    assert_true(R->mt_ms[0] >= 1000);
    done(R);
}

static void test_garbage_and_a_reset_answer_are_retried(void **state) {
    rec *R = run(settings("max_retries = 2;"), "[{\"status\": 200, \"body\": \"<html>not json</html>\"}, {\"reset\": true}]");
    assert_from_deepl(R);
    assert_int_equal(tu_health_int(R->c, "mt-deepl", "retries"), 2);
    done(R);
}

/* Quota used up: no retry (neither here nor by the core), the backup
 * translates at once, and the rest of the call stays on it. */
static void test_quota_fails_over_at_once(void **state) {
    rec *R = run(settings(NULL), "[{\"status\": 456}]");
    assert_int_equal(R->n, 3);
    assert_string_equal(R->tr[0], "HOLA MUNDO");
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->mt[i], "mt-b");
    json_t *seen = fake_seen();
    assert_int_equal(json_array_size(seen), 1);
    json_decref(seen);
    assert_true(tu_log_has("DeepL answered 456 (quota for this billing period used up)"));
    assert_true(metrics_value(metrics_series_v(R->c->m.recoveries, "mt-b", "failover", "true", NULL)) == 1);
    done(R);
}

static void test_refused_key_fails_over_at_once(void **state) {
    char s[256];
    snprintf(s, sizeof s, "url = \"http://127.0.0.1:%d\"; auth_key = \"invalid\"; backoff_initial = 0.05;", g_port);
    rec *R = run(s, NULL);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->mt[i], "mt-b");
    json_t *seen = fake_seen();
    assert_int_equal(json_array_size(seen), 1);
    json_decref(seen);
    assert_true(tu_log_has("DeepL answered 403"));
    done(R);
}

/* 400: the request is wrong; sending it again would not help. */
static void test_bad_request_is_not_retried(void **state) {
    rec *R = run(settings(NULL), "[{\"status\": 400}]");
    assert_int_equal(R->n, 3);
    assert_false(R->ok[0]);
    assert_true(R->ok[1] && R->ok[2]);
    json_t *seen = fake_seen();
    assert_int_equal(json_array_size(seen), 3);
    json_decref(seen);
    assert_true(tu_log_has("DeepL refused a request of"));
    done(R);
}

/* The network is gone: retries, then the core's recovery moves to the
 * backup; every phrase is translated once. */
static void test_no_server_fails_over(void **state) {
    rec *R = run("url = \"http://127.0.0.1:1\"; auth_key = \"" KEY "\"; backoff_initial = 0.01; max_retries = 1;", NULL);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->mt[i], "mt-b");
    }
    done(R);
}

static void test_free_key_and_environment(void **state) {
    /* a :fx key without a url goes to the Free host */
    char *dir = tu_tmpdir();
    tu_write(dir, "tolk.conf", "core: { workers = 1; };\n"
                               "instance: { name = \"d\"; plugin = \"mt_deepl\"; settings: { auth_key = \"abc:fx\"; }; };\n");
    core *c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    json_t *h = tu_health(c, "d");
    assert_string_equal(json_string_value(json_object_get(h, "url")), "https://api-free.deepl.com");
    json_decref(h);
    core_free(c);
    /* the key from the environment when the settings have none */
    tu_write(dir, "tolk.conf", "core: { workers = 1; };\n"
                               "instance: { name = \"d\"; plugin = \"mt_deepl\"; };\n");
    unsetenv("DEEPL_AUTH_KEY");
    c = core_new(dir, NULL);
    assert_int_not_equal(core_load(c), 0);
    core_free(c);
    setenv("DEEPL_AUTH_KEY", "env-key", 1);
    c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    h = tu_health(c, "d");
    assert_string_equal(json_string_value(json_object_get(h, "url")), "https://api.deepl.com");
    json_decref(h);
    core_free(c);
    unsetenv("DEEPL_AUTH_KEY");
    metrics_shutdown();
    tu_rm_rf(dir);
    free(dir);
}

/* batch_ms: four calls' phrases, arriving together, share requests
 * ({"text": [...]}, answered in order), each phrase still gets its own
 * translation, and no batched request carries a context. */
static void test_batching_shares_requests(void **state) {
    g_calls = 4;
    rec *R = run(settings("batch_ms = 300;"), NULL);
    g_calls = 1;
    assert_int_equal(R->n, 12);
    int seen[3] = {0};
    for (size_t i = 0; i < R->n; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->mt[i], "mt-deepl");
        for (int k = 0; k < 3; k++) seen[k] += !strcmp(R->tr[i], spanish[k]);
    }
    for (int k = 0; k < 3; k++) assert_int_equal(seen[k], 4);
    json_t *seen_reqs = fake_seen();
    size_t texts = 0, most = 0;
    for (size_t i = 0; i < json_array_size(seen_reqs); i++) {
        json_t *body = json_loads(json_string_value(json_object_get(json_array_get(seen_reqs, i), "body")), 0, NULL);
        assert_non_null(body);
        size_t n = json_array_size(json_object_get(body, "text"));
        texts += n;
        if (n > most) most = n;
        assert_null(json_object_get(body, "context"));
        json_decref(body);
    }
    assert_int_equal(texts, 12);
    assert_true(most > 1);
    assert_true(json_array_size(seen_reqs) < 12);
    json_decref(seen_reqs);
    assert_int_equal(tu_health_int(R->c, "mt-deepl", "batched_texts"), 12);
    assert_int_equal(tu_health_int(R->c, "mt-deepl", "batches"), tu_health_int(R->c, "mt-deepl", "requests"));
    done(R);
}

int main(void) {
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 not installed (scripts/setup-debian.sh installs it)\n");
        return 77;
    }
    log_set_level(TOLK_LOG_INFO);
    fake_start();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_translates_with_the_documented_request),
        cmocka_unit_test(test_429_and_5xx_are_retried),
        cmocka_unit_test(test_retry_after_is_honoured),
        cmocka_unit_test(test_garbage_and_a_reset_answer_are_retried),
        cmocka_unit_test(test_quota_fails_over_at_once),
        cmocka_unit_test(test_refused_key_fails_over_at_once),
        cmocka_unit_test(test_bad_request_is_not_retried),
        cmocka_unit_test(test_no_server_fails_over),
        cmocka_unit_test(test_free_key_and_environment),
        cmocka_unit_test(test_batching_shares_requests),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fake_stop();
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
