/* transport_rtp against a fake Asterisk (arifake.py beside this file: ARI
 * REST, the events WebSocket and the Asterisk side of ExternalMedia RTP),
 * loaded by the real core with the mock engines. What a user checks:
 *   - RTP from a peer that loses, reorders, duplicates packets, with a
 *     foreign source and malformed and truncated packets: each is dropped
 *     and counted as such, and the recogniser's timeline stays continuous
 *     (the second phrase is found where it was spoken); what tolk sends
 *     back is PT 11, one packet per frame, continuous sequence numbers and
 *     timestamps, a marker at the talkspurt; DTMF arrives; hang-up tears
 *     down every channel and bridge.
 *   - REST 500 on externalMedia and 404 on originate: the call ends cleanly
 *     (the caller is hung up), the next call works.
 *   - malformed events are counted and ignored.
 *   - an events socket that stalls (no pong) is reconnected.
 * Skipped (77) without python3. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAXF 16

static pid_t g_fake;
static int g_port;

typedef struct rec {
    core *c;
    char *dir;
    int ended;
    size_t finals;
    double fstart[MAXF], fend[MAXF];
    size_t phrases;
    int dtmf;
    char dtmf_digit;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    if (r->ok) ((rec *)ud)->phrases++;
}
static void on_transcript(void *ud, const transcript_event *e) {
    rec *R = ud;
    if (!e->is_final || e->leg != TOLK_LEG_A) return;
    if (R->finals < MAXF) {
        R->fstart[R->finals] = e->start_s;
        R->fend[R->finals] = e->end_s;
    }
    R->finals++;
}
static void on_end(void *ud, tolk_channel *ch) {
    (void)ch;
    ((rec *)ud)->ended++;
}
static void on_event(void *ud, tolk_channel *ch, int leg, const char *name, const json_t *data) {
    (void)ch;
    rec *R = ud;
    if (!strcmp(name, "dtmf") && leg == TOLK_LEG_A) {
        R->dtmf++;
        const char *d = json_string_value(json_object_get(data, "digit"));
        R->dtmf_digit = d ? d[0] : 0;
    }
}

static char *fake(const char *method, const char *path, const char *body) {
    return tu_http(g_port, method, path, body);
}
static void fake_do(const char *method, const char *path, const char *body) { free(fake(method, path, body)); }
static json_t *fake_state(void) {
    char *s = fake("GET", "/_fake/state", NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    return j;
}

static int connected(void *ud) {
    rec *R = ud;
    json_t *h = tu_health(R->c, "asterisk");
    int ok = json_is_true(json_object_get(h, "connected"));
    json_decref(h);
    return ok;
}

typedef struct want {
    rec *R;
    int ended;
} want;
static int ended_n(void *ud) {
    want *w = ud;
    return w->R->ended >= w->ended && w->R->c->active == 0;
}

static const char *g_core_extra = "";

static rec *start(const char *extra) {
    g_port = tu_fake_start("plugins/transport_rtp/tests/arifake.py", &g_fake);
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf", "core: { workers = 1; log_level = \"verb\"; %s };\n", g_core_extra);
    tu_write_mock_pipeline(R->dir);
    tu_write(R->dir, "60-asterisk.conf",
             "instance: { name = \"asterisk\"; plugin = \"transport_rtp\"; settings: {\n"
             "  url = \"http://127.0.0.1:%d\"; user = \"test\"; password = \"test\"; app = \"tolktest\";\n"
             "  reconnect_min = 0.05; reconnect_max = 0.2; rest_timeout = 5; media = \"rtp\"; %s "
             "}; };\n",
             g_port, extra ? extra : "");
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase,
                                .transcript = on_transcript,
                                .channel_end = on_end,
                                .event = on_event,
                                .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, connected, R, 30));
    return R;
}

static void done(rec *R) {
    core_free(R->c);
    metrics_shutdown();
    tu_fake_stop(&g_fake);
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R);
    tu_log_clear();
}

static long long hint(rec *R, const char *key) { return tu_health_int(R->c, "asterisk", key); }

static int json_has_string(const json_t *arr, const char *s) {
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_string_value(v) && !strcmp(json_string_value(v), s)) return 1;
    return 0;
}

/* Nothing of the call is left: every channel and bridge was deleted. */
static void assert_torn_down(rec *R) {
    (void)R;
    json_t *st = fake_state();
    assert_int_equal(json_array_size(json_object_get(st, "channels")), 0);
    assert_int_equal(json_object_size(json_object_get(st, "bridges")), 0);
    json_decref(st);
}

static int torn_down(void *ud) {
    (void)ud;
    json_t *st = fake_state();
    int ok = json_array_size(json_object_get(st, "channels")) == 0 &&
             json_object_size(json_object_get(st, "bridges")) == 0;
    json_decref(st);
    return ok;
}

static void test_rtp_peer_faults(void **state) {
    (void)state;
    rec *R = start("rtp_reorder_frames = 3;");
    /* Two phrases of 440 Hz tone: the first 0-0.62 s (31 sequence numbers,
     * one of them never sent), the second from 1.42 s, 0.6 s long. */
    fake_do("POST", "/_fake/call",
            "{\"id\": \"A1\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": true, \"tail\": 1.5,"
            " \"frames\": [[\"tone\", 5], [\"skip\"], [\"tone\", 5], [\"swap\"], [\"tone\", 2],"
            " [\"tone\", 3], [\"dup\"], [\"tone\", 3], [\"foreign\"], [\"badversion\"], [\"truncated\"],"
            " [\"badpt\"], [\"tone\", 10], [\"silence\", 40],"
            " [\"tone\", 10], [\"hold\"], [\"tone\", 1], [\"tone\", 5], [\"release\"], [\"tone\", 14],"
            " [\"silence\", 40]]}}");
    /* a DTMF digit from the caller while the call runs */
    tu_run_until(R->c, NULL, NULL, 0.5);
    fake_do("POST", "/_fake/raw",
            "{\"type\": \"ChannelDtmfReceived\", \"digit\": \"7\", \"duration_ms\": 120,"
            " \"channel\": {\"id\": \"A1\", \"name\": \"PJSIP/caller-A1\", \"state\": \"Up\"},"
            " \"application\": \"tolktest\"}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));

    /* every fault dropped and counted as what it is */
    assert_int_equal(hint(R, "media_stats.rx_lost"), 2);      /* the skipped one, the held one */
    assert_int_equal(hint(R, "media_stats.rx_late"), 1);      /* the held one, when released */
    assert_int_equal(hint(R, "media_stats.rx_duplicate"), 1);
    assert_int_equal(hint(R, "media_stats.rx_foreign"), 1);
    assert_int_equal(hint(R, "media_stats.rx_malformed"), 3); /* bad version, truncated, PT 96 */
    assert_true(hint(R, "media_stats.rx_frames") >= 31 + 40 + 30 + 40);

    /* the recogniser's timeline is continuous: the second phrase lies where
     * it was spoken, though packets were lost and reordered before it */
    assert_int_equal(R->finals, 2);
    assert_true(fabs(R->fstart[0] - 0.0) < 0.1);
    assert_true(fabs(R->fstart[1] - 1.42) < 0.1);
    assert_true(fabs(R->fend[1] - 2.02) < 0.1);
    assert_int_equal(R->phrases, 2);

    /* DTMF reached the core as an event of the caller */
    assert_int_equal(R->dtmf, 1);
    assert_int_equal(R->dtmf_digit, '7');

    /* what tolk sent into the callee's ExternalMedia channel: the
     * translation, as Asterisk accepts it */
    json_t *st = fake_state();
    json_t *in = json_object_get(st, "rtp_in");
    json_t *mb = NULL;
    const char *k;
    json_t *v;
    json_object_foreach(in, k, v) if (strlen(k) > 3 && !strcmp(k + strlen(k) - 3, "-mb")) mb = v;
    assert_non_null(mb);
    assert_true(json_integer_value(json_object_get(mb, "packets")) > 50);
    assert_int_equal(json_array_size(json_object_get(mb, "pts")), 1);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(mb, "pts"), 0)), 11);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(mb, "sizes"), 0)), 12 + 320);
    assert_int_equal(json_integer_value(json_object_get(mb, "seq_breaks")), 0);
    assert_int_equal(json_integer_value(json_object_get(mb, "ts_breaks")), 0);
    assert_int_equal(json_array_size(json_object_get(mb, "ssrcs")), 1);
    assert_true(json_integer_value(json_object_get(mb, "markers")) >= 1);
    assert_true(json_integer_value(json_object_get(mb, "loud")) > 10);
    /* and everything was deleted: the caller, the callee, both media
     * channels and both bridges */
    json_t *del = json_object_get(st, "deletes");
    assert_true(json_array_size(del) >= 4);
    json_decref(st);
    assert_torn_down(R);
    assert_false(tu_log_has("test:test"));
    done(R);
}

static void test_rest_failures(void **state) {
    (void)state;
    rec *R = start(NULL);
    fake_do("POST", "/_fake/config", "{\"fail\": {\"externalMedia\": 500}}");
    fake_do("POST", "/_fake/call", "{\"id\": \"A2\", \"args\": [\"Local/b@x/n\"]}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    assert_true(tu_log_has("HTTP 500"));
    json_t *st = fake_state();
    assert_true(json_has_string(json_object_get(st, "deletes"), "channels/A2"));
    json_decref(st);

    fake_do("POST", "/_fake/config", "{\"fail\": {\"originate\": 404}}");
    fake_do("POST", "/_fake/call", "{\"id\": \"A3\", \"args\": [\"Local/b@x/n\"]}");
    w.ended = 2;
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    assert_true(tu_log_has("the callee could not be called (HTTP 404"));
    assert_true(hint(R, "rest_errors") >= 2);

    /* the next call works */
    fake_do("POST", "/_fake/config", "{\"fail\": {}}");
    fake_do("POST", "/_fake/call",
            "{\"id\": \"A4\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": true, \"tail\": 1.0,"
            " \"frames\": [[\"tone\", 30], [\"silence\", 30]]}}");
    w.ended = 3;
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_int_equal(R->phrases, 1);
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));

    /* an overloaded Asterisk refuses the teardown's first DELETEs (503):
     * they are tried again until nothing of the call is left */
    fake_do("POST", "/_fake/config", "{\"fail_deletes\": 4}");
    fake_do("POST", "/_fake/call", "{\"id\": \"A10\", \"args\": [\"dial=Local/b@x/n\"]}");
    tu_run_until(R->c, NULL, NULL, 0.8);
    fake_do("POST", "/_fake/hangup", "{\"id\": \"A10\"}");
    w.ended = 4;
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    assert_true(tu_log_has("HTTP 503: fake overload: trying again"));
    done(R);
}

static void test_malformed_events(void **state) {
    (void)state;
    rec *R = start(NULL);
    const char *bad[] = {
        "not json at all",
        "[1, 2, 3]",
        "{}",
        "{\"type\": \"StasisStart\"}",
        "{\"type\": \"StasisStart\", \"channel\": {\"id\": 5}}",
        "{\"type\": \"StasisStart\", \"channel\": \"A9\", \"args\": {}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) fake_do("POST", "/_fake/raw", bad[i]);
    tu_run_until(R->c, NULL, NULL, 0.5);
    assert_true(hint(R, "bad_events") >= 5);
    assert_int_equal(hint(R, "calls_total"), 0);
    assert_true(connected(R));
    /* still taking calls */
    fake_do("POST", "/_fake/call",
            "{\"id\": \"A5\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": true, \"tail\": 1.0,"
            " \"frames\": [[\"tone\", 30], [\"silence\", 30]]}}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_int_equal(R->phrases, 1);
    done(R);
}

/* Both parties in one bridge, and no media channel. */
static int direct_bridge(const char *a, const char *b) {
    json_t *st = fake_state();
    json_t *br = json_object_get(st, "bridges");
    const char *k;
    json_t *v;
    int found = 0;
    json_object_foreach(br, k, v) {
        if (json_array_size(v) == 2 && json_has_string(v, a) && json_has_string(v, b)) found = 1;
    }
    /* the call's media channels would be <call>-ma and <call>-mb */
    char ma[160], mb[160];
    snprintf(ma, sizeof ma, "%.*s-ma", (int)strlen(b) - 2, b);
    snprintf(mb, sizeof mb, "%.*s-mb", (int)strlen(b) - 2, b);
    json_t *ch = json_object_get(st, "channels");
    if (json_has_string(ch, ma) || json_has_string(ch, mb)) found = 0;
    json_decref(st);
    return found;
}

typedef struct two {
    const char *a, *b;
} two;
static int direct_pred(void *ud) {
    two *t = ud;
    return direct_bridge(t->a, t->b);
}

static void test_over_limit_and_passthrough(void **state) {
    (void)state;
    g_core_extra = "max_channels = 1;";
    rec *R = start(NULL);
    g_core_extra = "";
    /* the first call is translated and holds the only channel ... */
    fake_do("POST", "/_fake/call",
            "{\"id\": \"A6\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": false,"
            " \"frames\": [[\"silence\", 150]]}}");
    tu_run_until(R->c, NULL, NULL, 0.5);
    assert_int_equal(R->c->active, 1);
    /* ... so the second is bridged untranslated, never half set up */
    fake_do("POST", "/_fake/call", "{\"id\": \"A7\", \"args\": [\"dial=Local/c@x/n\"]}");
    tu_run_until(R->c, NULL, NULL, 0.8);
    json_t *st = fake_state();
    json_t *v;
    char callee[128] = "";
    json_t *ch = json_object_get(st, "channels");
    size_t i;
    /* the second call's callee is the one channel ending in -b that is not the first's */
    json_array_foreach(ch, i, v) {
        const char *id = json_string_value(v);
        if (strlen(id) > 2 && !strcmp(id + strlen(id) - 2, "-b") && !strstr(id, "-1-")) snprintf(callee, sizeof callee, "%s", id);
    }
    json_decref(st);
    assert_true(callee[0] != 0);
    two t2 = {"A7", callee};
    assert_true(tu_run_until(R->c, direct_pred, &t2, 5));
    assert_int_equal(hint(R, "refused"), 1);
    assert_int_equal(hint(R, "direct"), 1);
    assert_int_equal(R->c->active, 1);
    /* the caller of the bridged call hangs up: everything of it goes */
    fake_do("POST", "/_fake/hangup", "{\"id\": \"A7\"}");
    fake_do("POST", "/_fake/hangup", "{\"id\": \"A6\"}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));

    /* mode=passthrough from the dialplan: one bridge, no media channel */
    fake_do("POST", "/_fake/call", "{\"id\": \"A8\", \"args\": [\"dial=Local/d@x/n\", \"mode=passthrough\"]}");
    tu_run_until(R->c, NULL, NULL, 0.8);
    assert_int_equal(hint(R, "direct"), 2);
    assert_int_equal(R->c->active, 1);
    fake_do("POST", "/_fake/hangup", "{\"id\": \"A8\"}");
    w.ended = 2;
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    done(R);
}

static int reconnected(void *ud) {
    rec *R = ud;
    return hint(R, "reconnects") >= 1 && connected(R);
}

static void test_stalled_events_socket(void **state) {
    (void)state;
    rec *R = start("ping_interval = 0.3;");
    /* a call that is up while the socket stalls survives it */
    fake_do("POST", "/_fake/call",
            "{\"id\": \"S1\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": false,"
            " \"frames\": [[\"silence\", 10]]}}");
    tu_run_until(R->c, NULL, NULL, 0.8);
    assert_int_equal(R->c->active, 1);
    fake_do("POST", "/_fake/config", "{\"stall\": true}");
    /* no pong: the socket is given up and connected again */
    tu_run_until(R->c, NULL, NULL, 1.5);
    fake_do("POST", "/_fake/config", "{\"stall\": false}");
    assert_true(tu_run_until(R->c, reconnected, R, 10));
    json_t *st = fake_state();
    assert_true(json_integer_value(json_object_get(st, "ws_connects")) >= 2);
    json_decref(st);
    assert_true(tu_log_has("ARI events socket lost"));
    /* GET /channels after each reconnection found the call's channels */
    tu_run_until(R->c, NULL, NULL, 0.5);
    assert_true(hint(R, "survived") >= 1);
    assert_int_equal(hint(R, "lost_calls"), 0);
    assert_int_equal(R->c->active, 1);
    fake_do("POST", "/_fake/hangup", "{\"id\": \"S1\"}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    done(R);
}

/* One call through the given RTP socket settings: translated, torn down. */
static void one_call(const char *settings) {
    rec *R = start(settings);
    fake_do("POST", "/_fake/call",
            "{\"id\": \"P1\", \"args\": [\"dial=Local/b@x/n\"], \"rtp\": {\"hangup\": true, \"tail\": 1.0,"
            " \"frames\": [[\"tone\", 30], [\"foreign\"], [\"silence\", 30]]}}");
    want w = {R, 1};
    assert_true(tu_run_until(R->c, ended_n, &w, 30));
    assert_int_equal(R->phrases, 1);
    assert_int_equal(hint(R, "media_stats.rx_lost"), 0);
    assert_true(tu_run_until(R->c, torn_down, NULL, 30));
    done(R);
}

static void test_shared_port_and_port_range(void **state) {
    (void)state;
    char s[128];
    int base = 30000 + (int)(getpid() % 20000);
    /* every leg on one socket: told apart by Asterisk's port; a packet from
     * an unknown source is not counted against any call */
    snprintf(s, sizeof s, "rtp_shared_port = %d;", base);
    one_call(s);
    /* a socket per leg from a range of two ports */
    snprintf(s, sizeof s, "rtp_port_min = %d; rtp_port_max = %d;", base + 2, base + 3);
    one_call(s);
}

int main(void) {
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 is not installed\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtp_peer_faults),
        cmocka_unit_test(test_rest_failures),
        cmocka_unit_test(test_malformed_events),
        cmocka_unit_test(test_stalled_events_socket),
        cmocka_unit_test(test_over_limit_and_passthrough),
        cmocka_unit_test(test_shared_port_and_port_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
