/* stt_deepgram against a faithful local fake of Deepgram's live API
 * (dgfake.py beside this file), loaded by the real core: calls from
 * transport_mock (tone bursts), stt_deepgram as the primary recogniser and
 * stt_mock as its backup, mt_mock and tts_mock after them. What a user
 * checks: the phrases are recognised by Deepgram and translated; the
 * upgrade carries the documented query and the Token header, and the key is
 * never logged; interim results reach the core; UtteranceEnd ends a phrase;
 * a 1011 mid-call moves to the backup (or reconnects) with no phrase lost;
 * a refused key goes straight to the backup; 429 is retried; malformed JSON
 * does not break the stream; a silent stream is caught by the watchdog;
 * KeepAlive keeps a stream without audio open; Finalize ends a long phrase.
 * Skipped (77) without python3. */
#include <arpa/inet.h>
#include <math.h>
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
#define KEY "dg-test-key-93b7d1"

static pid_t g_fake;
static int g_port;

/* ---- the fake server ---- */

static void fake_start(void) { g_port = tu_fake_start("plugins/stt_deepgram/tests/dgfake.py", &g_fake); }
static void fake_stop(void) { tu_fake_stop(&g_fake); }
static char *fake_http(const char *method, const char *path, const char *body) {
    return tu_http(g_port, method, path, body);
}

/* Every upgrade the fake saw, as a JSON array (new reference). */
static json_t *fake_connections(void) {
    char *s = fake_http("GET", "/_fake/connections", NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    return j;
}

static const char *query1(json_t *conn, const char *key) {
    return json_string_value(json_array_get(json_object_get(json_object_get(conn, "query"), key), 0));
}

static size_t controls_count(json_t *conn, const char *type) {
    size_t n = 0;
    json_t *c = json_object_get(conn, "controls");
    for (size_t i = 0; i < json_array_size(c); i++)
        if (!strcmp(json_string_value(json_array_get(c, i)) ? json_string_value(json_array_get(c, i)) : "", type)) n++;
    return n;
}

/* ---- calls ---- */

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    char text[MAXR][96], tr[MAXR][96], stt[MAXR][24];
    size_t partials, finals, good_stability, eager;
    int in_eager; /* the last partial stood on a tentative end */
    char eager_text[MAXR][96];
    double final_start[MAXR], final_end[MAXR]; /* seconds in the caller's audio */
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
}
static void on_transcript(void *ud, const transcript_event *e) {
    rec *R = ud;
    if (e->is_final) {
        if (R->finals < MAXR) {
            R->final_start[R->finals] = e->start_s;
            R->final_end[R->finals] = e->end_s;
        }
        R->finals++;
        R->in_eager = 0;
    } else {
        R->partials++;
        /* an Update repeating a tentative end's words keeps the flag: one
         * tentative end, counted once */
        if (e->eager_end && !R->in_eager && R->eager < MAXR)
            snprintf(R->eager_text[R->eager++], sizeof R->eager_text[0], "%s", e->text);
        R->in_eager = e->eager_end;
        if (e->stability > 0 && e->stability <= 1) R->good_stability++;
    }
}
static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }
static int ended(void *ud) {
    rec *R = ud;
    return R->ended > 0 && R->c->active == 0;
}

typedef struct call_opts {
    const char *dg;       /* extra settings of stt-dg */
    const char *key;      /* NULL: KEY */
    const char *url;      /* NULL: the fake */
    const char *plan;     /* the fake's per-connection steps, or NULL */
    const char *config;   /* the fake's config, or NULL */
    const char *backup;   /* stt_mock's script, NULL: the whole script */
    const char *core;     /* extra core settings */
    const char *calls;    /* transport_mock's call shape, NULL: CALLS */
    const char *recovery; /* extra recovery settings */
    int soft_retries;
} call_opts;

#define CALLS "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; realtime = false;"
/* A live call, for what happens in wall-clock time, and for failures that
 * must reach the core while the caller still speaks (see the report: a
 * failover decided after the input ended can race the call's end). */
#define REALTIME "phrases = 3; speech_ms = 400; gap_ms = 400; mode = \"unidirectional\"; realtime = true;"

static rec *run(const call_opts *o) {
    free(fake_http("POST", "/_fake/reset", ""));
    if (o->config) free(fake_http("POST", "/_fake/config", o->config));
    if (o->plan) {
        char *body = xasprintf("{\"connections\": %s}", o->plan);
        free(fake_http("POST", "/_fake/plan", body));
        free(body);
    }
    rec *R = xcalloc(1, sizeof *R);
    char fake_url[64];
    snprintf(fake_url, sizeof fake_url, "ws://127.0.0.1:%d", g_port);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"debug\"; %s };\n"
             "recovery: { soft_retries = %d; soft_delay = 0.05; jitter = 0.0; hard_reset = false; "
             "request_timeout = 10; %s };\n",
             o->core ? o->core : "", o->soft_retries, o->recovery ? o->recovery : "");
    tu_write_mock_pipeline(R->dir);
    tu_write(R->dir, "20-stt.conf",
             "instances = (\n"
             "  { name = \"stt-dg\"; plugin = \"stt_deepgram\"; settings: { url = \"%s\"; "
             "api_key = \"%s\"; %s }; },\n"
             "  { name = \"stt-b\"; plugin = \"stt_mock\"; settings: { phrases = [ %s ]; silence_ms = 200; "
             "latency_ms = 10; partial_ms = 0; }; } );\n",
             o->url ? o->url : fake_url, o->key ? o->key : KEY, o->dg ? o->dg : "",
             o->backup ? o->backup : "\"hello world\", \"thank you\", \"good morning\"");
    tu_write(R->dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-dg\", \"stt-b\" ]; },\n"
             "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
             "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n");
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = 1; "
             "paced = false; %s }; };\n",
             o->calls ? o->calls : CALLS);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .transcript = on_transcript, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, ended, R, 25));
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

static const char *const english[] = {"hello world", "thank you", "good morning"};
static const char *const spanish[] = {"hola mundo", "gracias amigo", "buenos días"};

/* Phrases [from, to) were recognised by `stt` and translated. */
static void assert_phrases(rec *R, size_t from, size_t to, const char *stt) {
    assert_int_equal(R->n, 3);
    for (size_t i = from; i < to; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->text[i], english[i]);
        assert_string_equal(R->tr[i], spanish[i]);
        assert_string_equal(R->stt[i], stt);
    }
}

/* ---- tests ---- */

static void test_recognised_with_the_documented_request(void **state) {
    call_opts o = {.dg = "keyterms = [ \"tolk\", \"Nova 3\" ];", .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 1);
    json_t *c = json_array_get(conns, 0);
    assert_string_equal(json_string_value(json_object_get(c, "path")), "/v1/listen");
    assert_string_equal(query1(c, "model"), "nova-3");
    assert_string_equal(query1(c, "language"), "en");
    assert_string_equal(query1(c, "encoding"), "linear16");
    assert_string_equal(query1(c, "sample_rate"), "16000");
    assert_string_equal(query1(c, "channels"), "1");
    assert_string_equal(query1(c, "interim_results"), "true");
    assert_string_equal(query1(c, "endpointing"), "300");
    assert_string_equal(query1(c, "utterance_end_ms"), "1000");
    assert_string_equal(query1(c, "vad_events"), "true");
    assert_string_equal(query1(c, "smart_format"), "true");
    assert_string_equal(query1(c, "punctuate"), "true");
    json_t *kt = json_object_get(json_object_get(c, "query"), "keyterm");
    assert_int_equal(json_array_size(kt), 2);
    assert_string_equal(json_string_value(json_array_get(kt, 0)), "tolk");
    assert_string_equal(json_string_value(json_array_get(kt, 1)), "Nova 3");
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "headers"), "authorization")),
                        "Token " KEY);
    /* all the audio, as 20 ms binary frames, then CloseStream at the end */
    assert_true(json_integer_value(json_object_get(c, "audio_bytes")) >= 3 * 1100 * 32);
    assert_int_equal(json_integer_value(json_object_get(c, "audio_bytes")) % 640, 0);
    assert_int_equal(controls_count(c, "CloseStream"), 1);
    assert_int_equal(json_integer_value(json_object_get(c, "server_close")), 1000);
    json_decref(conns);
    /* interim results reached the core as partials with a stability */
    assert_true(R->partials >= 3);
    assert_int_equal(R->good_stability, R->partials);
    assert_int_equal(R->finals, 3);
    /* where each phrase lies: the bursts are 0-0.6 s, 1.1-1.7 s, 2.2-2.8 s */
    for (size_t i = 0; i < 3; i++) {
        assert_true(fabs(R->final_start[i] - 1.1 * (double)i) < 0.05);
        assert_true(fabs(R->final_end[i] - (1.1 * (double)i + 0.6)) < 0.05);
    }
    assert_int_equal(tu_health_int(R->c, "stt-dg", "speech_started"), 3);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "streams"), 1);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "malformed"), 0);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "failures"), 0);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "last_close_code"), 1000);
    /* the key is a secret: not in any log line, even at debug level */
    assert_false(tu_log_has(KEY));
    done(R);
}

/* Without endpointing the phrase ends on UtteranceEnd: its is_final
 * segments become one final transcript. */
static void test_utterance_end_ends_a_phrase(void **state) {
    call_opts o = {.dg = "endpointing = 0; utterance_end_ms = 1000;", .calls = "phrases = 3; speech_ms = 600; gap_ms = 1200; mode = \"unidirectional\"; realtime = false;", .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_string_equal(query1(json_array_get(conns, 0), "endpointing"), "false");
    json_decref(conns);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "utterance_ends"), 3);
    assert_int_equal(R->finals, 3);
    done(R);
}

/* Deepgram fails the stream (1011) in the middle of the second phrase: the
 * core moves to the backup and replays it; nothing is lost. */
static void test_1011_fails_over_to_the_backup(void **state) {
    call_opts o = {.plan = "[{\"close_after_ms\": 1000, \"code\": 1011}]",
                   .backup = "\"thank you\", \"good morning\"", .calls = REALTIME, .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 1, "stt-dg");
    assert_phrases(R, 1, 3, "stt-b");
    assert_true(tu_log_has("Deepgram closed the stream (1011"));
    assert_int_equal(tu_health_int(R->c, "stt-dg", "last_close_code"), 1011);
    done(R);
}

/* The same with a soft retry: a new stream on Deepgram hears the replay. */
static void test_1011_reconnects_with_replay(void **state) {
    call_opts o = {.plan = "[{\"close_after_ms\": 1400, \"code\": 1011}, {\"script_from\": 1}]", .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 2);
    json_decref(conns);
    done(R);
}

/* A refused key: permanent, straight to the backup, no second attempt. */
static void test_401_goes_straight_to_the_backup(void **state) {
    call_opts o = {.key = "invalid", .calls = REALTIME, .soft_retries = 3};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-b");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(conns, 0), "refused")), 401);
    json_decref(conns);
    assert_true(tu_log_has("Deepgram refused the key (HTTP 401"));
    assert_int_equal(tu_health_int(R->c, "stt-dg", "refused"), 1);
    json_t *h = tu_health(R->c, "stt-dg");
    json_decref(h);
    done(R);
}

/* 429 (too many streams): transient, retried on Deepgram. */
static void test_429_is_retried(void **state) {
    call_opts o = {.plan = "[{\"refuse\": 429}]", .soft_retries = 2};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 2);
    json_decref(conns);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "rate_limited"), 1);
    done(R);
}

/* Undecodable audio (1008) is our bug: logged with what was sent. */
static void test_1008_is_logged_as_a_bug(void **state) {
    call_opts o = {.plan = "[{\"close_after_ms\": 200, \"code\": 1008, \"reason\": \"DATA-0000\"}]",
                   .calls = REALTIME, .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-b");
    assert_true(tu_log_has("BUG: Deepgram could not decode our audio (close 1008 DATA-0000)"));
    assert_int_equal(tu_health_int(R->c, "stt-dg", "undecodable"), 1);
    done(R);
}

static void test_malformed_json_does_not_break_the_stream(void **state) {
    call_opts o = {.plan = "[{\"malformed\": true}]", .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    assert_true(tu_health_int(R->c, "stt-dg", "malformed") >= 3);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "failures"), 0);
    assert_true(tu_log_has("that is not JSON"));
    done(R);
}

/* A stream that takes audio and answers nothing while the caller speaks is
 * dead: the watchdog fails it and the backup hears the replay. */
static void test_watchdog_fires_on_a_silent_stream(void **state) {
    call_opts o = {.plan = "[{\"stall\": true}]", .dg = "results_timeout = 1.0;",
                   .calls = REALTIME, .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-b");
    assert_int_equal(tu_health_int(R->c, "stt-dg", "watchdog"), 1);
    assert_true(tu_log_has("Deepgram sent nothing for 1.0 s while the caller spoke"));
    done(R);
}

/* Leg A says one phrase, leg B nothing, for 2.1 s of a live call. */
#define QUIET_B "realtime = true; mode = \"bidirectional\"; phrases = 1; speech_ms = 600; gap_ms = 1500;"

/* Leg B says nothing: its stream gets one frame of silence first (Deepgram
 * closes a stream that never had audio, KeepAlive or not), then KeepAlives;
 * the fake's inactivity close (1 s here) never comes. */
static void test_keepalive_in_silence(void **state) {
    call_opts o = {.dg = "keepalive_interval = 0.25;", .config = "{\"idle_timeout\": 1.0}",
                   .calls = QUIET_B,
                   .soft_retries = 0};
    rec *R = run(&o);
    assert_int_equal(R->n, 1);
    assert_true(R->ok[0]);
    assert_string_equal(R->stt[0], "stt-dg");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 2);
    int quiet = 0;
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(conns, i);
        assert_true(json_integer_value(json_object_get(c, "server_close")) != 1011);
        if (json_integer_value(json_object_get(c, "audio_bytes")) == 640) {
            quiet++;
            assert_true(controls_count(c, "KeepAlive") >= 3);
        }
    }
    assert_int_equal(quiet, 1);
    json_decref(conns);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "failures"), 0);
    assert_true(tu_health_int(R->c, "stt-dg", "keepalives") >= 3);
    done(R);
}

/* The control for the test above: with KeepAlives too rare, the fake
 * closes the stream that never had audio (NET-0001), as Deepgram does. */
static void test_a_stream_without_audio_is_closed(void **state) {
    call_opts o = {.dg = "keepalive_interval = 5;", .config = "{\"idle_timeout\": 1.0}", .calls = QUIET_B,
                   .soft_retries = 0};
    rec *R = run(&o);
    assert_int_equal(R->n, 1);
    assert_true(R->ok[0]);
    json_t *conns = fake_connections();
    int closed = 0;
    for (size_t i = 0; i < json_array_size(conns); i++) {
        json_t *c = json_array_get(conns, i);
        if (json_integer_value(json_object_get(c, "audio_bytes")) == 0 &&
            json_integer_value(json_object_get(c, "server_close")) == 1011)
            closed++;
    }
    assert_int_equal(closed, 1);
    json_decref(conns);
    assert_true(tu_log_has("Deepgram closed the stream (1011 Deepgram did not receive audio data"));
    done(R);
}

/* A phrase longer than max_phrase_seconds: the core asks for the final
 * now; Deepgram's from_finalize result ends the phrase. */
static void test_finalize(void **state) {
    /* live audio: the core cuts phrases as the frames arrive, not in a replay */
    call_opts o = {.core = "max_phrase_seconds = 0.3;", .dg = "finalize_timeout = 0.3;", .calls = REALTIME,
                   .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_true(controls_count(json_array_get(conns, 0), "Finalize") >= 3);
    json_decref(conns);
    /* each phrase was cut by a from_finalize result, not by the timeout */
    assert_true(tu_health_int(R->c, "stt-dg", "finalizes") - tu_health_int(R->c, "stt-dg", "finalize_timeouts") >= 3);
    done(R);
}

/* Flux: a turn is a phrase; EagerEndOfTurn reaches the core as a partial
 * marked TOLK_TRANSCRIPT_EAGER_END, then EndOfTurn confirms it. */
static void test_flux_turns(void **state) {
    call_opts o = {.dg = "api = \"v2\"; eager_eot_threshold = 0.5; eot_timeout_ms = 3000;", .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 1);
    json_t *c = json_array_get(conns, 0);
    assert_string_equal(json_string_value(json_object_get(c, "path")), "/v2/listen");
    assert_string_equal(query1(c, "model"), "flux-general-en");
    assert_string_equal(query1(c, "encoding"), "linear16");
    assert_string_equal(query1(c, "sample_rate"), "16000");
    assert_string_equal(query1(c, "eager_eot_threshold"), "0.5");
    assert_string_equal(query1(c, "eot_timeout_ms"), "3000");
    assert_null(query1(c, "language")); /* Flux takes the language from the model */
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "headers"), "authorization")),
                        "Token " KEY);
    /* 80 ms chunks, as Deepgram advises for Flux (the last may be shorter) */
    json_int_t bytes = json_integer_value(json_object_get(c, "audio_bytes"));
    json_int_t messages = json_integer_value(json_object_get(c, "audio_messages"));
    assert_true(messages <= bytes / 2560 + 1 && messages >= bytes / 2560);
    assert_int_equal(controls_count(c, "CloseStream"), 1);
    json_decref(conns);
    assert_int_equal(R->eager, 3);
    for (size_t i = 0; i < 3; i++) assert_string_equal(R->eager_text[i], english[i]);
    assert_int_equal(R->finals, 3);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "eager_ends"), 3);
    done(R);
}

/* Speech comes back after an EagerEndOfTurn: TurnResumed withdraws it and
 * the turn goes on; one phrase, final once the speaker is done. */
static void test_flux_turn_resumed(void **state) {
    call_opts o = {.dg = "api = \"v2\"; eager_eot_threshold = 0.5;", .config = "{\"eot_ms\": 700}",
                   .soft_retries = 0};
    rec *R = run(&o);
    assert_int_equal(R->n, 1);
    assert_true(R->ok[0]);
    assert_string_equal(R->text[0], "hello world thank you good morning");
    assert_string_equal(R->tr[0], "hola mundo gracias amigo buenos días");
    assert_int_equal(R->eager, 3);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "turns_resumed"), 2);
    assert_int_equal(R->finals, 1);
    done(R);
}

/* Flux has no Finalize: finalize() sends ForceEndTurn, and the turn's
 * EndOfTurn is the final. */
static void test_flux_force_end_turn(void **state) {
    call_opts o = {.core = "max_phrase_seconds = 0.3;", .dg = "api = \"v2\"; finalize_timeout = 0.3;",
                   .calls = REALTIME, .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    json_t *conns = fake_connections();
    assert_true(controls_count(json_array_get(conns, 0), "ForceEndTurn") >= 3);
    assert_int_equal(controls_count(json_array_get(conns, 0), "Finalize"), 0);
    json_decref(conns);
    assert_true(tu_health_int(R->c, "stt-dg", "finalizes") - tu_health_int(R->c, "stt-dg", "finalize_timeouts") >= 3);
    done(R);
}

/* The network goes away mid-call (no close frame: 1006): backend failure,
 * the backup takes over with the replay. */
static void test_dropped_connection_fails_over(void **state) {
    call_opts o = {.plan = "[{\"drop_after_ms\": 1000}]", .backup = "\"thank you\", \"good morning\"",
                   .calls = REALTIME, .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 1, "stt-dg");
    assert_phrases(R, 1, 3, "stt-b");
    assert_int_equal(tu_health_int(R->c, "stt-dg", "last_close_code"), 1006);
    assert_true(tu_log_has("no connection to Deepgram (connection dropped without a close frame)"));
    done(R);
}

/* No Deepgram at all: the connection fails, the backup recognises. */
static void test_no_server_fails_over(void **state) {
    call_opts o = {.url = "ws://127.0.0.1:1", .calls = REALTIME, .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-b");
    assert_true(tu_health_int(R->c, "stt-dg", "failures") >= 1);
    done(R);
}

/* A Flux Error message fails the stream; the retry hears the replay. */
static void test_flux_error_is_retried(void **state) {
    call_opts o = {.dg = "api = \"v2\";", .plan = "[{\"error_after_ms\": 1400}, {\"script_from\": 1}]",
                   .soft_retries = 1};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-dg");
    assert_true(tu_log_has("Deepgram Flux error INTERNAL_SERVER_ERROR: the fake was told to fail"));
    assert_int_equal(tu_health_int(R->c, "stt-dg", "errors"), 1);
    json_t *conns = fake_connections();
    assert_int_equal(json_array_size(conns), 2);
    json_decref(conns);
    done(R);
}

static void test_key_from_the_environment(void **state) {
    char *dir = tu_tmpdir();
    tu_write(dir, "tolk.conf", "core: { workers = 1; };\n"
                               "instance: { name = \"d\"; plugin = \"stt_deepgram\"; };\n");
    unsetenv("DEEPGRAM_API_KEY");
    core *c = core_new(dir, NULL);
    assert_int_not_equal(core_load(c), 0);
    core_free(c);
    setenv("DEEPGRAM_API_KEY", "env-key", 1);
    c = core_new(dir, NULL);
    assert_int_equal(core_load(c), 0);
    json_t *h = tu_health(c, "d");
    assert_string_equal(json_string_value(json_object_get(h, "url")), "wss://api.deepgram.com");
    json_decref(h);
    core_free(c);
    unsetenv("DEEPGRAM_API_KEY");
    metrics_shutdown();
    tu_rm_rf(dir);
    free(dir);
}

/* ---- reachability, as an operator sees it ---- */

/* service_health{component="stt-dg"}: 0 healthy .. 3 failed; -1 absent. */
static void health_of(void *ud, const tolk_metric_sample *s) {
    if (!strcmp(s->name, "service_health") && s->label_values &&
        !strcmp(s->label_values[0], "stt-dg"))
        *(double *)ud = s->value;
}
static double health_metric(void) {
    double v = -1;
    metrics_visit(health_of, &v);
    return v;
}
static int metric_healthy(void *ud) { return health_metric() == TOLK_HEALTHY; }

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct phrases_n {
    rec *R;
    size_t n;
} phrases_n;
static int phrases_at_least(void *ud) {
    phrases_n *p = ud;
    return p->R->n >= p->n && p->R->c->active == 0;
}

/* Nothing listens where Deepgram should be: the call is recognised by the
 * backup, and the instance's health says FAILED (the metric and the
 * health detail), and stays so while the port refuses, although no call
 * uses it any more; once Deepgram listens again, the plugin's probe
 * finds it, health comes back to HEALTHY, and a new call is recognised by
 * Deepgram again. */
static void test_unreachable_is_failed_until_it_answers(void **state) {
    int port = free_port();
    char *url = xasprintf("ws://127.0.0.1:%d", port);
    call_opts o = {.url = url,
                   .dg = "probe_interval = 0.2;",
                   .recovery = "health_interval = 0.05;",
                   .calls = REALTIME,
                   .soft_retries = 0};
    rec *R = run(&o);
    assert_phrases(R, 0, 3, "stt-b");
    /* many health probes and connection attempts later */
    tu_run_until(R->c, NULL, NULL, 1.0);
    assert_true(health_metric() == TOLK_FAILED);
    assert_true(tu_log_has("Deepgram unreachable: "));
    json_t *h = tu_health(R->c, "stt-dg");
    assert_true(json_is_false(json_object_get(h, "reachable")));
    assert_true(json_string_length(json_object_get(h, "connect_error")) > 0);
    json_decref(h);
    assert_true(tu_health_int(R->c, "stt-dg", "probes") >= 2);
    assert_int_equal(tu_health_int(R->c, "stt-dg", "unreachable"), 1); /* reported once */
    /* Deepgram is back */
    pid_t back = 0;
    tu_fake_start_port("plugins/stt_deepgram/tests/dgfake.py", port, &back);
    assert_true(tu_run_until(R->c, metric_healthy, NULL, 10));
    assert_true(tu_log_has("Deepgram reachable again"));
    h = tu_health(R->c, "stt-dg"); /* json_is_true() evaluates its argument twice */
    assert_true(json_is_true(json_object_get(h, "reachable")));
    json_decref(h);
    json_t *cfg =
        json_pack("{s:i, s:i, s:i, s:i, s:s, s:b, s:b}", "calls", 1, "phrases", 3, "speech_ms", 400,
                  "gap_ms", 400, "mode", "unidirectional", "realtime", 1, "paced", 0);
    conf_errors errs = {0};
    tolk_instance *calls = core_add_instance(R->c, "calls-2", "transport_mock", cfg, &errs);
    json_decref(cfg);
    conf_errors_free(&errs);
    assert_non_null(calls);
    assert_int_equal(instance_start_transport(calls), TOLK_OK);
    phrases_n six = {R, 6};
    assert_true(tu_run_until(R->c, phrases_at_least, &six, 20));
    for (size_t i = 3; i < 6; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->text[i], english[i - 3]);
        assert_string_equal(R->stt[i], "stt-dg");
    }
    tu_fake_stop(&back);
    free(url);
    done(R);
}

int main(void) {
    if (system("python3 -c 'import json, socket, threading' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 not installed (scripts/setup-debian.sh installs it)\n");
        return 77;
    }
    log_set_level(TOLK_LOG_INFO);
    fake_start();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recognised_with_the_documented_request),
        cmocka_unit_test(test_utterance_end_ends_a_phrase),
        cmocka_unit_test(test_1011_fails_over_to_the_backup),
        cmocka_unit_test(test_1011_reconnects_with_replay),
        cmocka_unit_test(test_401_goes_straight_to_the_backup),
        cmocka_unit_test(test_429_is_retried),
        cmocka_unit_test(test_1008_is_logged_as_a_bug),
        cmocka_unit_test(test_malformed_json_does_not_break_the_stream),
        cmocka_unit_test(test_watchdog_fires_on_a_silent_stream),
        cmocka_unit_test(test_keepalive_in_silence),
        cmocka_unit_test(test_a_stream_without_audio_is_closed),
        cmocka_unit_test(test_finalize),
        cmocka_unit_test(test_flux_turns),
        cmocka_unit_test(test_flux_turn_resumed),
        cmocka_unit_test(test_flux_force_end_turn),
        cmocka_unit_test(test_dropped_connection_fails_over),
        cmocka_unit_test(test_no_server_fails_over),
        cmocka_unit_test(test_flux_error_is_retried),
        cmocka_unit_test(test_key_from_the_environment),
        cmocka_unit_test(test_unreachable_is_failed_until_it_answers),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fake_stop();
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
