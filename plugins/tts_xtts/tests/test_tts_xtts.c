/* tts_xtts against faithful local fakes of the XTTS v2 streaming server
 * (tests/xttsfake.py beside this file), loaded by the real core: calls from
 * transport_mock, scripted phrases from stt_mock, mt_mock's Spanish,
 * tts_xtts as the primary synthesiser and tts_mock as its backup. What a
 * user checks: the translation is heard, as long as the server's audio
 * (24 kHz resampled to 16 kHz), never with the WAV header in it; the
 * request carries the profile's conditioning and the language; the pool
 * uses every server, one stream each, and queues the rest; a stalled
 * stream fails over to the backup; a dead server leaves the pool and comes
 * back; reference WAVs are cloned once and cached on disk; a party's own
 * speech is cloned and then used; the voice cache (voice_cache, the
 * voice_embedding_cache_size gauge) evicts the least recently used voice,
 * never the default, and a cloned voice comes back from its on-disk cache
 * without a second clone; a phrase whose caller hangs up while it waits in
 * the pool's queue never reaches a server and leaves the queue depth
 * metric. Skipped (77) without python3. */
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
#define NFAKES 2
/* the fake: 300 ms of tone per word = 15 frames of 20 ms once at 16 kHz */
#define FRAMES_PER_WORD 15
#define PCM_BYTES_PER_WORD (24000 * 300 / 1000 * 2)
#define PROFILE_MARK 0.375 /* speaker_embedding[0] of the test's profile */
#define FIRST_CLONE_MARK (1.0 / 64) /* the fake's first clone */

static pid_t g_fake[NFAKES];
static int g_port[NFAKES];

/* ---- the fake servers ---- */

static void fake_start(int i) { g_port[i] = tu_fake_start("plugins/tts_xtts/tests/xttsfake.py", &g_fake[i]); }
static void fake_stop(int i) { tu_fake_stop(&g_fake[i]); }
static char *fake_http(int i, const char *method, const char *path, const char *body) {
    return tu_http(g_port[i], method, path, body);
}

static void fake_post(int i, const char *path, const char *body) { free(fake_http(i, "POST", path, body)); }

/* The fake's record (new reference): requests, clones, max_active, waited. */
static json_t *fake_state(int i) {
    char *s = fake_http(i, "GET", "/_fake/state", NULL);
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    assert_non_null(j);
    return j;
}

static size_t fake_count(int i, const char *what) {
    json_t *st = fake_state(i);
    size_t n = json_array_size(json_object_get(st, what));
    json_decref(st);
    return n;
}

/* ---- voice profiles ---- */

/* Conditioning of the real shapes; speaker_embedding[0] = mark. */
static void write_profile(const char *dir, const char *name, double mark) {
    json_t *se = json_array(), *gl = json_array();
    for (int i = 0; i < 512; i++) json_array_append_new(se, json_real(i ? 0.01 : mark));
    for (int r = 0; r < 32; r++) {
        json_t *row = json_array();
        for (int i = 0; i < 1024; i++) json_array_append_new(row, json_real(i ? 0.0 : 0.5));
        json_array_append_new(gl, row);
    }
    json_t *doc = json_pack("{s:o, s:o}", "speaker_embedding", se, "gpt_cond_latent", gl);
    char *path = xasprintf("%s/%s.json", dir, name);
    assert_int_equal(json_dump_file(doc, path, JSON_COMPACT), 0);
    free(path);
    json_decref(doc);
}

/* Two seconds of a 16 kHz mono tone as a WAV file. */
static void write_reference_wav(const char *dir, const char *name) {
    char *path = xasprintf("%s/%s.wav", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t n = 32000, data = n * 2, riff = 36 + data, fmt_len = 16, rate = 16000, byte_rate = 32000;
    uint16_t pcm = 1, ch = 1, align = 2, bits = 16;
    fwrite("RIFF", 1, 4, f), fwrite(&riff, 4, 1, f), fwrite("WAVEfmt ", 1, 8, f);
    fwrite(&fmt_len, 4, 1, f), fwrite(&pcm, 2, 1, f), fwrite(&ch, 2, 1, f), fwrite(&rate, 4, 1, f);
    fwrite(&byte_rate, 4, 1, f), fwrite(&align, 2, 1, f), fwrite(&bits, 2, 1, f);
    fwrite("data", 1, 4, f), fwrite(&data, 4, 1, f);
    for (uint32_t i = 0; i < n; i++) {
        int16_t s = (int16_t)(6000 * sin(2 * M_PI * 180 * i / 16000.0));
        fwrite(&s, 2, 1, f);
    }
    fclose(f);
    free(path);
}

/* ---- calls ---- */

typedef struct rec {
    core *c;
    char *dir, *profiles;
    size_t n;
    int ok[MAXR];
    char tr[MAXR][96], tts[MAXR][24];
    int tts_failovers; /* TTS operations the core recovered by failing over */
    int ended;
    int calls;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAXR) return;
    size_t i = R->n++;
    R->ok[i] = r->ok;
    snprintf(R->tr[i], sizeof R->tr[i], "%s", r->translation ? r->translation : "");
    snprintf(R->tts[i], sizeof R->tts[i], "%s", r->tts ? r->tts : "");
}
static void on_recovered(void *ud, const char *stage_name, const char *tier_name, double gap_ms) {
    rec *R = ud;
    if (!strcmp(stage_name, "tts") && !strcmp(tier_name, "failover")) R->tts_failovers++;
}
static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }
static int ended(void *ud) {
    rec *R = ud;
    return R->ended >= R->calls && R->c->active == 0;
}

typedef struct run_opts {
    const char *urls;      /* NULL: fake 0 */
    const char *xtts;      /* more tts-xtts settings */
    const char *endpoints; /* an endpoints list, or NULL */
    const char *calls;     /* transport_mock settings beyond the defaults, or NULL */
    int ncalls;
    int wav_profile;       /* also write bob.wav */
    int clones_before_calls; /* wait for this many clones before starting the calls */
    char *profiles;        /* reuse this profiles directory (stolen), NULL: a new one */
    double probe_interval; /* 0: 0.2 s */
    const char *voice;     /* the default: "default_voice = \"alice\";" */
    int no_calls;          /* load only: the test starts its calls itself */
    double stall_timeout;  /* 0: 1 s */
} run_opts;

static rec *run(const run_opts *o) {
    rec *R = xcalloc(1, sizeof *R);
    R->calls = o->ncalls ? o->ncalls : 1;
    R->dir = tu_tmpdir();
    if (o->profiles) {
        R->profiles = o->profiles;
    } else {
        R->profiles = tu_tmpdir();
        write_profile(R->profiles, "alice", PROFILE_MARK);
        if (o->wav_profile) write_reference_wav(R->profiles, "bob");
    }
    tu_log_capture();
    tu_log_clear();
    char urls[128];
    snprintf(urls, sizeof urls, "\"http://127.0.0.1:%d\"", g_port[0]);
    tu_write(R->dir, "tolk.conf",
             "core: { workers = 1; log_level = \"debug\"; };\n"
             "recovery: { soft_retries = 1; soft_delay = 0.05; jitter = 0.0; hard_reset = false; "
             "request_timeout = 10; };\n%s\n",
             o->endpoints ? o->endpoints : "");
    tu_write_mock_pipeline(R->dir);
    tu_write(R->dir, "40-tts.conf",
             "instances = (\n"
             "  { name = \"tts-xtts\"; plugin = \"tts_xtts\"; settings: { urls = [ %s ]; profiles_dir = \"%s\"; "
             "%s probe_interval = %g; stall_timeout = %g; connect_timeout = 1.0; %s }; },\n"
             "  { name = \"tts-b\"; plugin = \"tts_mock\"; settings: { latency_ms = 5; ms_per_char = 10; }; } );\n",
             o->urls ? o->urls : urls, R->profiles, o->voice ? o->voice : "default_voice = \"alice\";", o->probe_interval > 0 ? o->probe_interval : 0.2,
             o->stall_timeout > 0 ? o->stall_timeout : 1.0, o->xtts ? o->xtts : "");
    tu_write(R->dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
             "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
             "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-xtts\", \"tts-b\" ]; } );\n");
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = %d; "
             "phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; %s }; };\n",
             R->calls, o->calls ? o->calls : "realtime = false; paced = false;");
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .recovered = on_recovered, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    for (int t = 0; t < 500 && tu_health_int(R->c, "tts-xtts", "clones") < o->clones_before_calls; t++)
        tu_run_until(R->c, NULL, NULL, 0.01);
    for (int t = 0; t < 500 && o->voice && !tu_log_has("studio speaker"); t++) tu_run_until(R->c, NULL, NULL, 0.01);
    if (o->no_calls) return R;
    assert_int_equal(core_start_transports(R->c), 0);
    assert_true(tu_run_until(R->c, ended, R, 30));
    return R;
}

static void done(rec *R) {
    core_free(R->c);
    metrics_shutdown();
    tu_rm_rf(R->dir);
    free(R->dir);
    if (R->profiles) {
        tu_rm_rf(R->profiles);
        free(R->profiles);
    }
    free(R);
    tu_log_clear();
}

/* Each test starts with idle fakes: a stream a previous test left (its
 * client gone) ends first. */
static void reset_fakes(void) {
    for (int i = 0; i < NFAKES; i++) {
        for (int t = 0; t < 100; t++) {
            json_t *st = fake_state(i);
            json_int_t active = json_integer_value(json_object_get(st, "active"));
            json_decref(st);
            if (!active) break;
            usleep(50000);
        }
        fake_post(i, "/_fake/reset", "");
    }
}

static const char *const spanish[] = {"hola mundo", "gracias amigo", "buenos días"};

/* Every phrase translated and spoken by tts-xtts; calls may interleave. */
static void assert_spoken_by_xtts(rec *R, size_t phrases) {
    assert_int_equal(R->n, phrases);
    int seen[3] = {0};
    for (size_t i = 0; i < phrases; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->tts[i], "tts-xtts");
        for (int k = 0; k < 3; k++) seen[k] += !strcmp(R->tr[i], spanish[k]);
    }
    for (int k = 0; k < 3; k++) assert_int_equal(seen[k], (int)phrases / 3);
}

/* Six words of 300 ms: 90 frames; the resampler's filter keeps a few
 * samples of the end, and the last frame is padded. */
static void assert_heard_six_words(rec *R) {
    long long played = tu_health_int(R->c, "calls", "frames_played.b");
    assert_true(played >= 6 * FRAMES_PER_WORD - 3 && played <= 6 * FRAMES_PER_WORD + 3);
}

static double json_num(json_t *j) { return json_number_value(j); }

/* A counter of the i-th server of the pool, from health(). */
static long long server_int(rec *R, size_t i, const char *key) {
    json_t *h = tu_health(R->c, "tts-xtts");
    json_t *v = json_object_get(json_array_get(json_object_get(h, "servers"), i), key);
    long long r = json_is_boolean(v) ? json_is_true(v) : v ? (long long)json_number_value(v) : -1;
    json_decref(h);
    return r;
}

/* ---- tests ---- */

static void test_speech_arrives_in_the_profiles_voice(void **state) {
    reset_fakes();
    run_opts o = {0};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    assert_heard_six_words(R);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "pcm_bytes"), 6 * PCM_BYTES_PER_WORD);
    json_t *st = fake_state(0);
    json_t *reqs = json_object_get(st, "requests");
    assert_int_equal(json_array_size(reqs), 3);
    for (size_t i = 0; i < 3; i++) {
        json_t *q = json_array_get(reqs, i);
        assert_string_equal(json_string_value(json_object_get(q, "text")), spanish[i]);
        assert_string_equal(json_string_value(json_object_get(q, "language")), "es");
        assert_true(json_is_false(json_object_get(q, "add_wav_header")));
        assert_string_equal(json_string_value(json_object_get(q, "stream_chunk_size")), "20");
        assert_true(json_num(json_object_get(q, "speaker_embedding0")) == PROFILE_MARK);
        assert_int_equal(json_integer_value(json_object_get(q, "latent_rows")), 32);
        assert_true(json_num(json_object_get(q, "gpt_cond_latent00")) == 0.5);
    }
    assert_int_equal(json_integer_value(json_object_get(st, "max_active")), 1);
    json_decref(st);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "headers_stripped"), 0);
    done(R);
}

/* An old server sends the 44-byte header whatever add_wav_header says:
 * it is dropped, so the call hears exactly the PCM. */
static void test_wav_header_is_never_played(void **state) {
    reset_fakes();
    fake_post(0, "/_fake/config", "{\"force_header\": true}");
    run_opts o = {0};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    json_t *st = fake_state(0);
    json_t *q = json_array_get(json_object_get(st, "requests"), 0);
    assert_true(json_is_true(json_object_get(q, "header")));
    json_decref(st);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "headers_stripped"), 3);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "pcm_bytes"), 6 * PCM_BYTES_PER_WORD);
    assert_heard_six_words(R);
    done(R);
}

static void test_two_calls_use_both_servers(void **state) {
    reset_fakes();
    char urls[128];
    snprintf(urls, sizeof urls, "\"http://127.0.0.1:%d\", \"http://127.0.0.1:%d\"", g_port[0], g_port[1]);
    run_opts o = {.urls = urls, .ncalls = 2};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 6);
    for (int i = 0; i < NFAKES; i++) {
        json_t *st = fake_state(i);
        assert_true(json_array_size(json_object_get(st, "requests")) >= 1);
        assert_int_equal(json_integer_value(json_object_get(st, "max_active")), 1);
        json_decref(st);
    }
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "failures"), 0);
    done(R);
}

static void count_waits(void *ud, const tolk_metric_sample *s) {
    if (!strcmp(s->name, "tts_xtts_queue_wait_milliseconds") && s->label_values &&
        !strcmp(s->label_values[0], "tts-xtts"))
        *(uint64_t *)ud += s->count;
}

/* One server, two calls: one stream at a time, the other phrase waits in
 * the plugin's queue (never at the server). */
static void test_one_server_makes_the_second_call_wait(void **state) {
    reset_fakes();
    run_opts o = {.ncalls = 2};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 6);
    assert_true(tu_health_int(R->c, "tts-xtts", "queue_peak") > 0);
    assert_true(tu_health_int(R->c, "tts-xtts", "queued") > 0);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "queue_depth"), 0);
    uint64_t waits = 0;
    metrics_visit(count_waits, &waits);
    assert_int_equal(waits, 6);
    json_t *st = fake_state(0);
    assert_int_equal(json_integer_value(json_object_get(st, "max_active")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "waited")), 0);
    json_decref(st);
    done(R);
}

/* The stream stops after one word: past stall_timeout the phrase fails
 * (TOLK_E_TIMEOUT), the server leaves the pool, and the core's recovery
 * speaks the phrase with the backup (the probe is slower than the retry). */
static void test_stall_fails_over_to_the_backup(void **state) {
    reset_fakes();
    fake_post(0, "/_fake/plan", "{\"responses\": [{\"stall_after_words\": 1}]}");
    run_opts o = {.probe_interval = 5};
    rec *R = run(&o);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_true(R->ok[i]);
    assert_int_equal(R->tts_failovers, 1);
    assert_string_equal(R->tts[2], "tts-b");
    assert_true(tu_log_has("stream stalled"));
    assert_int_equal(server_int(R, 0, "timeouts"), 1);
    assert_true(tu_log_has("failed (timeout"));
    done(R);
}

/* The connection drops after one word: the phrase fails over, the server
 * leaves the pool (TOLK_E_BACKEND) and is back once it answers. */
static void test_reset_mid_stream_fails_over(void **state) {
    reset_fakes();
    fake_post(0, "/_fake/plan", "{\"responses\": [{\"reset_after_words\": 1}]}");
    run_opts o = {.probe_interval = 5};
    rec *R = run(&o);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_true(R->ok[i]);
    assert_int_equal(R->tts_failovers, 1);
    assert_int_equal(server_int(R, 0, "failures"), 1);
    assert_int_equal(server_int(R, 0, "timeouts"), 0);
    assert_true(tu_log_has("leaves the pool"));
    done(R);
}

/* A 500 answer is no audio: nothing of its body is played. */
static void test_server_error_is_not_played(void **state) {
    reset_fakes();
    fake_post(0, "/_fake/plan", "{\"responses\": [{\"status\": 500}]}");
    run_opts o = {.probe_interval = 5};
    rec *R = run(&o);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) assert_true(R->ok[i]);
    assert_int_equal(R->tts_failovers, 1);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "pcm_bytes"), 0);
    assert_true(tu_log_has("HTTP 500"));
    done(R);
}

/* The caller hangs up while phrases stream and wait: they are cancelled
 * (the debug build aborts on a callback after cancel()), the server's
 * slot comes free and stays in the pool. */
static void test_hangup_cancels_streams(void **state) {
    reset_fakes();
    /* the last phrase's audio is late: the call is gone before it comes */
    fake_post(0, "/_fake/plan", "{\"responses\": [{}, {}, {\"delay_ms\": 1500}]}");
    run_opts o = {.calls = "realtime = true; paced = false; hangup = \"close\";"};
    rec *R = run(&o);
    assert_int_equal(fake_count(0, "requests"), 3);
    assert_true(R->n >= 2 && R->ok[0] && R->ok[1]);
    assert_true(tu_health_int(R->c, "calls", "frames_played.b") <= 4 * FRAMES_PER_WORD + 3);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "queue_depth"), 0);
    assert_int_equal(server_int(R, 0, "busy"), 0);
    assert_int_equal(server_int(R, 0, "up"), 1);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "failures"), 0);
    assert_false(tu_log_has("had already ended"));
    done(R);
}

static int server0_up(void *ud) {
    rec *R = ud;
    json_t *h = tu_health(R->c, "tts-xtts");
    int up = json_is_true(json_object_get(json_array_get(json_object_get(h, "servers"), 0), "up"));
    json_decref(h);
    return up;
}

/* The first URL closes every connection: it leaves the pool, the phrases
 * go to the second; once it answers /languages again it is back. */
static void test_dead_url_leaves_the_pool_and_returns(void **state) {
    reset_fakes();
    fake_post(1, "/_fake/config", "{\"down\": true}");
    char urls[128];
    snprintf(urls, sizeof urls, "\"http://127.0.0.1:%d\", \"http://127.0.0.1:%d\"", g_port[1], g_port[0]);
    run_opts o = {.urls = urls};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    assert_int_equal(fake_count(0, "requests"), 3);
    assert_false(server0_up(R));
    assert_int_equal(server_int(R, 0, "failures"), 1);
    assert_true(tu_log_has("leaves the pool"));
    fake_post(1, "/_fake/config", "{\"down\": false}");
    assert_true(tu_run_until(R->c, server0_up, R, 5));
    assert_true(server_int(R, 0, "probes") > 0);
    assert_true(tu_log_has("answers again"));
    done(R);
}

/* Every server down: requests fail at once, host->report() says so, and
 * the backup speaks. */
static void test_all_down_fails_over_at_once(void **state) {
    reset_fakes();
    fake_post(0, "/_fake/config", "{\"down\": true}");
    run_opts o = {0};
    rec *R = run(&o);
    assert_int_equal(R->n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(R->ok[i]);
        assert_string_equal(R->tts[i], "tts-b");
    }
    assert_true(tu_log_has("every XTTS server is down"));
    fake_post(0, "/_fake/config", "{\"down\": false}");
    done(R);
}

/* bob.wav is cloned through /clone_speaker once, cached as
 * bob.clone.json, and a later daemon reads the cache. */
static void test_reference_wav_is_cloned_once_and_cached(void **state) {
    reset_fakes();
    const char *ep = "endpoints = ( { name = \"bobby\"; language = \"en\"; voice = \"bob\"; } );";
    run_opts o = {.wav_profile = 1, .endpoints = ep, .clones_before_calls = 1,
                  .calls = "realtime = false; paced = false; endpoint_a = \"bobby\";"};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    json_t *st = fake_state(0);
    json_t *clones = json_object_get(st, "clones");
    assert_int_equal(json_array_size(clones), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(clones, 0), "rate")), 16000);
    json_t *reqs = json_object_get(st, "requests");
    for (size_t i = 0; i < 3; i++)
        assert_true(json_num(json_object_get(json_array_get(reqs, i), "speaker_embedding0")) == FIRST_CLONE_MARK);
    json_decref(st);
    char *cache = xasprintf("%s/bob.clone.json", R->profiles);
    struct stat sb;
    assert_int_equal(stat(cache, &sb), 0);
    free(cache);
    /* the next daemon: no clone, the cached conditioning */
    fake_post(0, "/_fake/reset", "");
    run_opts o2 = o;
    o2.profiles = R->profiles;
    o2.clones_before_calls = 0;
    R->profiles = NULL;
    done(R);
    R = run(&o2);
    assert_spoken_by_xtts(R, 3);
    assert_int_equal(fake_count(0, "clones"), 0);
    st = fake_state(0);
    reqs = json_object_get(st, "requests");
    assert_true(json_num(json_object_get(json_array_get(reqs, 0), "speaker_embedding0")) == FIRST_CLONE_MARK);
    json_decref(st);
    done(R);
}

/* No default profile: the server's studio speaker, as GET /studio_speakers
 * gives it. */
static void test_studio_speaker_is_the_default(void **state) {
    reset_fakes();
    run_opts o = {.voice = "studio_speaker = \"Claribel Dervla\";"};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    json_t *st = fake_state(0);
    json_t *reqs = json_object_get(st, "requests");
    for (size_t i = 0; i < 3; i++)
        assert_true(json_num(json_object_get(json_array_get(reqs, i), "speaker_embedding0")) == 0.75);
    json_decref(st);
    done(R);
}

static void cache_gauge(void *ud, const tolk_metric_sample *s) {
    if (!strcmp(s->name, "voice_embedding_cache_size") && s->label_values &&
        !strcmp(s->label_values[0], "tts-xtts"))
        *(double *)ud = s->value;
}

/* clone_voice: the caller's first second of speech goes to /clone_speaker;
 * the phrases after it are spoken with that conditioning. */
static void test_voice_sample_is_cloned_and_used(void **state) {
    reset_fakes();
    const char *ep = "endpoints = ( { name = \"carol\"; language = \"en\"; clone_voice = true; clone_seconds = 1; } );";
    run_opts o = {.endpoints = ep, .calls = "realtime = true; paced = false; endpoint_a = \"carol\";"};
    rec *R = run(&o);
    assert_spoken_by_xtts(R, 3);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "voice_samples"), 1);
    json_t *st = fake_state(0);
    json_t *clones = json_object_get(st, "clones");
    assert_int_equal(json_array_size(clones), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(clones, 0), "rate")), 16000);
    json_t *reqs = json_object_get(st, "requests");
    /* the first phrase came before the sample was complete: default voice */
    assert_true(json_num(json_object_get(json_array_get(reqs, 0), "speaker_embedding0")) == PROFILE_MARK);
    assert_true(json_num(json_object_get(json_array_get(reqs, 2), "speaker_embedding0")) == FIRST_CLONE_MARK);
    json_decref(st);
    double cached = 0;
    metrics_visit(cache_gauge, &cached);
    assert_true(cached == 2); /* alice and the clone */
    done(R);
}

/* ---- calls started one by one ---- */

typedef struct ended_n {
    rec *R;
    int n;
} ended_n;
static int ended_at_least(void *ud) {
    ended_n *e = ud;
    return e->R->ended >= e->n;
}

/* A call from a transport_mock instance of its own, added to the running
 * core (a transport of the configuration, as a reload would add it). */
static tolk_instance *call_start(rec *R, const char *name, const char *settings) {
    char *js = xasprintf("{\"calls\": 1, \"phrases\": 1, \"speech_ms\": 600, \"gap_ms\": 500, "
                         "\"mode\": \"unidirectional\", %s}",
                         settings);
    json_t *cfg = json_loads(js, 0, NULL);
    free(js);
    assert_non_null(cfg);
    conf_errors errs = {0};
    tolk_instance *inst = core_add_instance(R->c, name, "transport_mock", cfg, &errs);
    json_decref(cfg);
    conf_errors_free(&errs);
    assert_non_null(inst);
    assert_int_equal(instance_start_transport(inst), TOLK_OK);
    return inst;
}

/* One call spoken by endpoint `ep`, to its end. */
static void call_as(rec *R, const char *ep) {
    static int k;
    char name[32], settings[128];
    snprintf(name, sizeof name, "call-%d", ++k);
    snprintf(settings, sizeof settings, "\"realtime\": false, \"paced\": false, \"endpoint_a\": \"%s\"", ep);
    ended_n e = {R, R->ended + 1};
    call_start(R, name, settings);
    assert_true(tu_run_until(R->c, ended_at_least, &e, 20));
}

/* speaker_embedding[0] of the fake's last /tts_stream request. */
static double last_voice(void) {
    json_t *st = fake_state(0);
    json_t *reqs = json_object_get(st, "requests");
    double v = json_num(json_object_get(json_array_get(reqs, json_array_size(reqs) - 1), "speaker_embedding0"));
    json_decref(st);
    return v;
}

static double cache_size(void) {
    double cached = -1;
    metrics_visit(cache_gauge, &cached);
    return cached;
}

#define CARL_MARK 0.125
#define DAVE_MARK 0.25

/* voice_cache = 3: the default voice (kept: it is pinned) and two others.
 * The one used least recently leaves the cache, not the one loaded first;
 * a voice cloned from a WAV is cloned once, kept in memory and on disk
 * (bob.clone.json), and read back from disk after it left the cache. */
static void test_voice_cache_evicts_least_recently_used(void **state) {
    reset_fakes();
    char *profiles = tu_tmpdir();
    write_profile(profiles, "alice", PROFILE_MARK);
    write_profile(profiles, "carl", CARL_MARK);
    write_profile(profiles, "dave", DAVE_MARK);
    write_reference_wav(profiles, "bob");
    const char *ep = "endpoints = ( { name = \"bobby\"; language = \"en\"; voice = \"bob\"; "
                     "},\n"
                     "  { name = \"carly\"; language = \"en\"; voice = \"carl\"; },\n"
                     "  { name = \"davy\"; language = \"en\"; voice = \"dave\"; } );";
    run_opts o = {
        .profiles = profiles, .endpoints = ep, .xtts = "voice_cache = 3;", .clones_before_calls = 1, .no_calls = 1};
    rec *R = run(&o);
    /* bob.wav was cloned at start: alice (the default) and bob */
    assert_int_equal(fake_count(0, "clones"), 1);
    assert_true(cache_size() == 2);
    call_as(R, "bobby");
    assert_true(last_voice() == FIRST_CLONE_MARK);
    call_as(R, "carly");
    assert_true(last_voice() == CARL_MARK);
    assert_true(cache_size() == 3);
    call_as(R, "bobby"); /* bob is now used more recently than carl */
    call_as(R, "davy");  /* full: carl goes, not bob (loaded before carl) */
    assert_true(last_voice() == DAVE_MARK);
    assert_int_equal(tu_log_count("voice 'carl' leaves the cache"), 1);
    assert_int_equal(tu_log_count("voice 'bob' leaves the cache"), 0);
    assert_int_equal(tu_log_count("voice 'alice' leaves the cache"), 0);
    assert_true(cache_size() == 3);
    call_as(R, "bobby"); /* still in memory */
    assert_true(last_voice() == FIRST_CLONE_MARK);
    call_as(R, "carly"); /* back from carl.json: dave goes */
    assert_true(last_voice() == CARL_MARK);
    assert_int_equal(tu_log_count("voice 'dave' leaves the cache"), 1);
    call_as(R, "davy"); /* bob goes */
    assert_int_equal(tu_log_count("voice 'bob' leaves the cache"), 1);
    call_as(R, "bobby"); /* from bob.clone.json on disk, not cloned again */
    assert_true(last_voice() == FIRST_CLONE_MARK);
    assert_int_equal(fake_count(0, "clones"), 1);
    assert_int_equal(tu_log_count("cloning voice 'bob'"), 1);
    assert_true(cache_size() == 3);
    char *cache = xasprintf("%s/bob.clone.json", profiles);
    struct stat sb;
    assert_int_equal(stat(cache, &sb), 0);
    free(cache);
    done(R);
}

static void queue_gauge_of(void *ud, const tolk_metric_sample *s) {
    if (!strcmp(s->name, "tts_xtts_queue_depth") && s->label_values && !strcmp(s->label_values[0], "tts-xtts"))
        *(double *)ud = s->value;
}
static double queue_depth_metric(void) {
    double v = -1;
    metrics_visit(queue_gauge_of, &v);
    return v;
}
static int fake_streaming(void *ud) {
    json_t *st = fake_state(0);
    json_int_t active = json_integer_value(json_object_get(st, "active"));
    json_decref(st);
    return active == 1;
}
static int queued_one(void *ud) { return queue_depth_metric() == 1; }

/* One server, busy with the first call's phrase (its first audio comes
 * after 8 s); the second caller's phrase waits in the plugin's queue and
 * the caller hangs up: the request is cancelled where it waits, never
 * reaches the server, and the queue depth metric goes back to 0 while the
 * first stream is still going. */
static void test_cancel_while_queued_never_reaches_the_server(void **state) {
    reset_fakes();
    /* 8 s: the second call is over long before, even on a loaded machine */
    fake_post(0, "/_fake/plan", "{\"responses\": [{\"delay_ms\": 8000}]}");
    run_opts o = {.no_calls = 1, .stall_timeout = 20};
    rec *R = run(&o);
    call_start(R, "first", "\"realtime\": false, \"paced\": false");
    assert_true(tu_run_until(R->c, fake_streaming, NULL, 10));
    /* the second caller speaks one phrase and hangs up 0.8 s after it */
    call_start(R, "second",
               "\"realtime\": true, \"paced\": false, \"gap_ms\": 800, "
               "\"hangup\": \"close\"");
    assert_true(tu_run_until(R->c, queued_one, NULL, 10));
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "queue_depth"), 1);
    ended_n one = {R, 1};
    assert_true(tu_run_until(R->c, ended_at_least, &one, 10));
    /* the second call is over; the first still streams */
    assert_true(fake_streaming(NULL));
    assert_true(queue_depth_metric() == 0);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "queue_depth"), 0);
    assert_int_equal(fake_count(0, "requests"), 1);
    ended_n two = {R, 2};
    assert_true(tu_run_until(R->c, ended_at_least, &two, 25));
    /* only the first call's phrase was ever sent */
    assert_int_equal(fake_count(0, "requests"), 1);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "queued"), 1);
    assert_int_equal(tu_health_int(R->c, "tts-xtts", "requests"), 2); /* both reached the plugin */
    assert_int_equal(server_int(R, 0, "busy"), 0);
    assert_true(R->n >= 1 && R->ok[0]);
    assert_string_equal(R->tts[0], "tts-xtts");
    done(R);
}
/* What the fake's i-th recorded /tts_stream request carried (new). */
static char *request_field(size_t i, const char *key) {
    json_t *st = fake_state(0);
    json_t *v = json_object_get(json_array_get(json_object_get(st, "requests"), i), key);
    char *r = json_is_string(v)   ? xstrdup(json_string_value(v))
              : json_is_number(v) ? xasprintf("%g", json_num(v))
                                  : NULL;
    json_decref(st);
    assert_non_null(r);
    return r;
}

/* One second of a party's speech lent to tts-xtts as voice `name`, as the
 * core does for an endpoint with clone_voice. */
static void sample_voice(rec *R, const char *name) {
    static int16_t pcm[TOLK_SAMPLE_RATE];
    for (size_t i = 0; i < TOLK_SAMPLE_RATE; i++)
        pcm[i] = (int16_t)(6000 * sin(2 * M_PI * 220 * i / 16000.0));
    tolk_instance *inst = core_find_instance(R->c, "tts-xtts");
    assert_non_null(inst);
    const tolk_tts *tts = (const tolk_tts *)inst->desc;
    tolk_voice_sample vs = {
        .size = sizeof vs, .voice = name, .pcm = pcm, .n = TOLK_SAMPLE_RATE, .language = "en"};
    assert_int_equal(tts->voice_sample(inst->self, &vs), TOLK_OK);
}
static int clones_at_least(void *ud) {
    ended_n *e = ud;
    return tu_health_int(e->R->c, "tts-xtts", "clones") >= e->n;
}

/* The conditioning is serialised once per voice: two phrases of one voice
 * carry the same conditioning, and the one the fake cloned (not the
 * default's); the same voice cloned again (a new sample under the same
 * name) is spoken with the new conditioning from the next phrase on. */
static void test_a_voice_keeps_its_conditioning_until_cloned_again(void **state) {
    reset_fakes();
    const char *ep =
        "endpoints = ( { name = \"pat\"; language = \"en\"; voice = \"clone:t:a\"; } );";
    run_opts o = {.endpoints = ep, .no_calls = 1};
    rec *R = run(&o);
    sample_voice(R, "clone:t:a");
    ended_n one = {R, 1}, two = {R, 2};
    assert_true(tu_run_until(R->c, clones_at_least, &one, 10));
    call_as(R, "pat");
    call_as(R, "pat");
    assert_int_equal(fake_count(0, "requests"), 2);
    char *first = request_field(0, "cond_digest"), *second = request_field(1, "cond_digest");
    assert_string_equal(first, second);
    assert_true(last_voice() == FIRST_CLONE_MARK);
    sample_voice(R, "clone:t:a");
    assert_true(tu_run_until(R->c, clones_at_least, &two, 10));
    call_as(R, "pat");
    call_as(R, "pat");
    assert_int_equal(fake_count(0, "requests"), 4);
    char *third = request_field(2, "cond_digest"), *fourth = request_field(3, "cond_digest");
    assert_string_not_equal(third, first);
    assert_string_equal(third, fourth);
    assert_true(last_voice() == 2 * FIRST_CLONE_MARK); /* the fake's second clone */
    assert_int_equal(fake_count(0, "clones"), 2);
    free(first), free(second), free(third), free(fourth);
    done(R);
}

int main(void) {
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 not installed (scripts/setup-debian.sh installs it)\n");
        return 77;
    }
    log_set_level(TOLK_LOG_INFO);
    for (int i = 0; i < NFAKES; i++) fake_start(i);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_speech_arrives_in_the_profiles_voice),
        cmocka_unit_test(test_wav_header_is_never_played),
        cmocka_unit_test(test_two_calls_use_both_servers),
        cmocka_unit_test(test_one_server_makes_the_second_call_wait),
        cmocka_unit_test(test_stall_fails_over_to_the_backup),
        cmocka_unit_test(test_reset_mid_stream_fails_over),
        cmocka_unit_test(test_server_error_is_not_played),
        cmocka_unit_test(test_hangup_cancels_streams),
        cmocka_unit_test(test_dead_url_leaves_the_pool_and_returns),
        cmocka_unit_test(test_all_down_fails_over_at_once),
        cmocka_unit_test(test_reference_wav_is_cloned_once_and_cached),
        cmocka_unit_test(test_voice_sample_is_cloned_and_used),
        cmocka_unit_test(test_studio_speaker_is_the_default),
        cmocka_unit_test(test_voice_cache_evicts_least_recently_used),
        cmocka_unit_test(test_cancel_while_queued_never_reaches_the_server),
        cmocka_unit_test(test_a_voice_keeps_its_conditioning_until_cloned_again),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < NFAKES; i++) fake_stop(i);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
