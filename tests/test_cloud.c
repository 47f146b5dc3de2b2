/* The cloud chain of examples/cloud/conf.d (Deepgram -> DeepL -> XTTS with
 * offline backups), loaded by the real core from the shipped files, with
 * the three base URLs pointed at the faithful local fakes
 * (plugins/stt_deepgram/tests/dgfake.py, plugins/mt_deepl/tests/deeplfake.py,
 * plugins/tts_xtts/tests/xttsfake.py). A call from transport_mock (tone
 * bursts, fed in real time; the fake Deepgram and stt_mock "hear" each
 * burst as the next line of their script).
 *
 * What a user checks:
 *   - without faults, every phrase is recognised by Deepgram, translated by
 *     DeepL and spoken by XTTS, once, and heard;
 *   - the network dies mid-call (the three fakes are killed: every
 *     connection is reset, every new one refused): the call goes on with
 *     the backups, every phrase translated exactly once, none lost; when the
 *     fakes come back (same ports) the call goes back to the cloud
 *     providers (recovery.failback = "running_calls" in the example), as
 *     each phrase's report and the recovery metrics say.
 *
 * The backups: the detailed tests replace the example's offline backups
 * (PocketSphinx, Apertium, eSpeak NG) by the mocks under the same instance
 * names (stt_mock, mt_mock, tts_mock), because PocketSphinx hears nothing
 * useful in tone bursts and its timing on a loaded 2-core machine would
 * make the per-phrase assertions nondeterministic. One test keeps the
 * example's offline backups as shipped (when their Debian packages are
 * installed) and checks only what they decide: the call goes on with
 * them, nothing lost, and comes back to the cloud.
 *
 * Skipped (77) without python3. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define MAXR 64
/* The call: PHRASES bursts of SPEECH_MS, each followed by GAP_MS of quiet. */
#define SPEECH_MS 600
#define GAP_MS 900
#define PHRASES 12

enum { DG, DL, XT, NFAKES };
static const char *const scripts[NFAKES] = {"plugins/stt_deepgram/tests/dgfake.py",
                                            "plugins/mt_deepl/tests/deeplfake.py",
                                            "plugins/tts_xtts/tests/xttsfake.py"};
static pid_t g_pid[NFAKES];
static int g_port[NFAKES];

static void fakes_start(void) {
    for (int i = 0; i < NFAKES; i++)
        g_port[i] = tu_fake_start_port(scripts[i], g_port[i], &g_pid[i]);
    /* the fake XTTS: the studio speaker the example names is one of its own */
}
static void fakes_kill(void) {
    for (int i = 0; i < NFAKES; i++)
        tu_fake_stop(&g_pid[i]);
}

/* ---- the example, pointed at the fakes ---- */

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 1 << 16;
    char *buf = xmalloc(cap);
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* s with the first occurrence of from replaced by to (new; s is freed). */
static char *replace(char *s, const char *from, const char *to) {
    char *at = strstr(s, from);
    assert_non_null(at);
    char *out = xasprintf("%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    free(s);
    return out;
}

/* The backup is the last block of its file: from the "  {" line before
 * its name to the end of the list. */
static char *replace_backup(char *s, const char *name, const char *block) {
    char key[96];
    snprintf(key, sizeof key, "name = \"%s\";", name);
    char *at = strstr(s, key);
    assert_non_null(at);
    while (at > s && strncmp(at, "\n  {", 4))
        at--;
    char *out = xasprintf("%.*s\n  %s\n);\n", (int)(at - s), s, block);
    free(s);
    return out;
}

/* Copies the example into dir, the URLs on the fakes; mock_backups: the
 * backups are mocks under the example's instance names. */
static void write_example(const char *dir, int mock_backups) {
    const char *files[] = {"tolk.conf", "20-stt.conf", "30-mt.conf", "40-tts.conf", "50-chains.conf"};
    char url[64];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *path = xasprintf("%s/examples/cloud/conf.d/%s", getenv("top_srcdir"), files[i]);
        char *s = slurp(path);
        free(path);
        if (!strcmp(files[i], "tolk.conf")) {
            /* the daemon's defaults, for a test: its log lines, one worker */
            s = replace(s, "log_level = \"info\";", "log_level = \"debug\";");
            s = replace(s, "workers = 2;", "workers = 1;");
        }
        if (!strcmp(files[i], "20-stt.conf")) {
            snprintf(url, sizeof url, "ws://127.0.0.1:%d", g_port[DG]);
            s = replace(s, "wss://api.deepgram.com", url);
            if (mock_backups)
                s = replace_backup(s, "stt-pocketsphinx",
                                   "{ name = \"stt-pocketsphinx\"; plugin = "
                                   "\"stt_mock\"; settings: { phrases = [ "
                                   "\"hello world\", \"thank you\", \"good morning\" "
                                   "]; silence_ms = 300; "
                                   "latency_ms = 20; partial_ms = 0; }; }");
        }
        if (!strcmp(files[i], "30-mt.conf")) {
            snprintf(url, sizeof url, "http://127.0.0.1:%d", g_port[DL]);
            s = replace(s, "https://api.deepl.com", url);
            if (mock_backups)
                s = replace_backup(s, "mt-apertium",
                                   "{ name = \"mt-apertium\"; plugin = \"mt_mock\"; settings: { "
                                   "latency_ms = 5; "
                                   "dictionary: { hello = \"hola\"; world = \"mundo\"; thank = "
                                   "\"gracias\"; "
                                   "you = \"amigo\"; good = \"buenos\"; morning = \"días\"; }; }; }");
        }
        if (!strcmp(files[i], "40-tts.conf")) {
            snprintf(url, sizeof url, "http://127.0.0.1:%d", g_port[XT]);
            s = replace(s, "http://127.0.0.1:8000", url);
            if (mock_backups)
                s = replace_backup(s, "tts-espeak",
                                   "{ name = \"tts-espeak\"; plugin = \"tts_mock\"; "
                                   "settings: { latency_ms = 10; "
                                   "ms_per_char = 10; }; }");
        }
        tu_write(dir, files[i], "%s", s);
        free(s);
    }
}

/* ---- the call ---- */

typedef struct rec {
    core *c;
    char *dir;
    size_t n;
    int ok[MAXR];
    double start_s[MAXR];
    char text[MAXR][256], tr[MAXR][256], stt[MAXR][24], mt[MAXR][24], tts[MAXR][24];
    int ended;
} rec;

static void on_phrase(void *ud, const phrase_report *r) {
    rec *R = ud;
    if (R->n >= MAXR) return;
    size_t i = R->n++;
    R->ok[i] = r->ok;
    R->start_s[i] = r->start_s;
    snprintf(R->text[i], sizeof R->text[i], "%s", r->text ? r->text : "");
    snprintf(R->tr[i], sizeof R->tr[i], "%s", r->translation ? r->translation : "");
    snprintf(R->stt[i], sizeof R->stt[i], "%s", r->stt ? r->stt : "");
    snprintf(R->mt[i], sizeof R->mt[i], "%s", r->mt ? r->mt : "");
    snprintf(R->tts[i], sizeof R->tts[i], "%s", r->tts ? r->tts : "");
}
static void on_end(void *ud, tolk_channel *ch) { ((rec *)ud)->ended++; }
static int ended(void *ud) {
    rec *R = ud;
    return R->ended > 0 && R->c->active == 0;
}

static rec *start(int mock_backups, int phrases) {
    for (int i = 0; i < NFAKES; i++)
        free(tu_http(g_port[i], "POST", "/_fake/reset", ""));
    setenv("DEEPGRAM_API_KEY", "dg-test-key-cloud", 1);
    setenv("DEEPL_AUTH_KEY", "deepl-test-key-cloud", 1);
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    write_example(R->dir, mock_backups);
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; "
             "settings: { calls = 1; "
             "phrases = %d; speech_ms = %d; gap_ms = %d; mode = "
             "\"unidirectional\"; realtime = true; "
             "paced = false; }; };\n",
             phrases, SPEECH_MS, GAP_MS);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    /* the studio speaker is known before the call */
    for (int t = 0; t < 500 && !tu_log_has("studio speaker"); t++)
        tu_run_until(R->c, NULL, NULL, 0.01);
    assert_int_equal(core_start_transports(R->c), 0);
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

/* The burst a phrase came from, by its position in the caller's audio. */
static int burst_of(double start_s) {
    double period = (SPEECH_MS + GAP_MS) / 1000.0;
    int k = (int)(start_s / period);
    double into = start_s - k * period;
    return into <= SPEECH_MS / 1000.0 ? k : -1;
}

/* What the call did, for the test's log. */
static void dump(rec *R) {
    for (size_t i = 0; i < R->n; i++)
        printf("# phrase %zu at %.2f s: %s '%s' -> %s '%s' -> %s%s\n", i, R->start_s[i], R->stt[i], R->text[i],
               R->mt[i], R->tr[i], R->tts[i], R->ok[i] ? "" : " (LOST)");
}

/* Every burst reported once, translated (ok, a translation), none lost. */
static void assert_each_phrase_once(rec *R, int phrases) {
    int seen[MAXR] = {0};
    for (size_t i = 0; i < R->n; i++) {
        if (!R->ok[i] || !R->tr[i][0] || !R->text[i][0])
            fail_msg("phrase %zu (at %.2f s, '%s') was not translated", i, R->start_s[i], R->text[i]);
        int b = burst_of(R->start_s[i]);
        assert_true(b >= 0 && b < phrases);
        seen[b]++;
    }
    for (int b = 0; b < phrases; b++)
        if (seen[b] != 1) fail_msg("burst %d was reported %d times", b, seen[b]);
    assert_int_equal(R->n, (size_t)phrases);
}

static int cloud(rec *R, size_t i) {
    return !strcmp(R->stt[i], "stt-deepgram") && !strcmp(R->mt[i], "mt-deepl") && !strcmp(R->tts[i], "tts-xtts");
}

typedef struct at_least {
    rec *R;
    size_t n;
} at_least;
static int reported(void *ud) {
    at_least *a = ud;
    return a->R->n >= a->n;
}

typedef struct metric_q {
    const char *name, *l0, *l1, *l2;
    double sum;
} metric_q;
static void metric_sum(void *ud, const tolk_metric_sample *s) {
    metric_q *q = ud;
    if (strcmp(s->name, q->name) || !s->label_values) return;
    const char *want[3] = {q->l0, q->l1, q->l2};
    for (size_t i = 0; i < 3 && i < s->nlabels; i++)
        if (want[i] && strcmp(s->label_values[i], want[i])) return;
    q->sum += s->value;
}
/* recoveries_total{component, tier, success} */
static double recoveries(const char *component, const char *tier_name, const char *success) {
    metric_q q = {"recoveries_total", component, tier_name, success, 0};
    metrics_visit(metric_sum, &q);
    return q.sum;
}

/* ---- tests ---- */

static const char *const english[] = {"hello world", "thank you", "good morning"};
static const char *const spanish[] = {"hola mundo", "gracias amigo", "buenos días"};

static void test_cloud_chain_end_to_end(void **state) {
    rec *R = start(1, 3);
    assert_true(tu_run_until(R->c, ended, R, 30));
    assert_each_phrase_once(R, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_true(cloud(R, i));
        assert_string_equal(R->text[i], english[i]);
        assert_string_equal(R->tr[i], spanish[i]);
    }
    /* heard: the fake XTTS speaks 300 ms per word, six words */
    long long played = tu_health_int(R->c, "calls", "frames_played.b");
    assert_true(played >= 6 * 15 - 3 && played <= 6 * 15 + 3);
    /* the key came from the environment and was sent, never logged */
    assert_false(tu_log_has("dg-test-key-cloud"));
    assert_false(tu_log_has("deepl-test-key-cloud"));
    char *reqs = tu_http(g_port[DL], "GET", "/_fake/requests", NULL);
    assert_non_null(strstr(reqs, "DeepL-Auth-Key deepl-test-key-cloud"));
    free(reqs);
    assert_true(recoveries(NULL, "failover", NULL) == 0);
    done(R);
}

static int primaries_up(void *ud) {
    rec *R = ud;
    const char *names[] = {"stt-deepgram", "mt-deepl", "tts-xtts"};
    for (int i = 0; i < 3; i++)
        if (core_find_instance(R->c, names[i])->down) return 0;
    return 1;
}

/* The network dies after two phrases and comes back after two more on the
 * backups. */
static void network_dies(int mock_backups) {
    rec *R = start(mock_backups, PHRASES);
    at_least two = {R, 2};
    assert_true(tu_run_until(R->c, reported, &two, 15));
    assert_true(cloud(R, 0) && cloud(R, 1));
    fakes_kill();
    size_t killed_at = R->n;
    at_least more = {R, killed_at + 2};
    assert_true(tu_run_until(R->c, reported, &more, 20));
    fakes_start();
    /* back in the chains once each primary's health() says so */
    assert_true(tu_run_until(R->c, primaries_up, R, 15));
    size_t up_at = R->n;
    assert_true(tu_run_until(R->c, ended, R, 40));
    dump(R);
    assert_each_phrase_once(R, PHRASES);
    /* on the backups while the fakes were gone */
    for (size_t i = killed_at; i < killed_at + 2; i++) {
        assert_string_equal(R->stt[i], "stt-pocketsphinx");
        assert_string_equal(R->mt[i], "mt-apertium");
        assert_string_equal(R->tts[i], "tts-espeak");
    }
    /* and back on the cloud providers: every phrase that reached the
     * translation after they were up again (one may have been under way) */
    assert_true(R->n >= up_at + 2);
    for (size_t i = up_at + 1; i < R->n; i++)
        if (!cloud(R, i)) fail_msg("phrase %zu came after the providers were back, but not through them", i);
    if (mock_backups) {
        /* Deepgram heard the first phrases as its script's first lines; each
         * phrase's translation is its text's, whoever recognised it (a
         * recogniser's new stream starts its script again) */
        assert_string_equal(R->text[0], english[0]);
        assert_string_equal(R->text[1], english[1]);
        for (size_t i = 0; i < R->n; i++) {
            int k = 0;
            while (k < 3 && strcmp(R->text[i], english[k]))
                k++;
            assert_true(k < 3);
            assert_string_equal(R->tr[i], spanish[k]);
        }
    }
    /* the recovery metrics: recoveries_total{component} names the provider
     * that recovered the operation, here each backup by failover */
    assert_true(recoveries("stt-pocketsphinx", "failover", "true") >= 1);
    assert_true(recoveries("mt-apertium", "failover", "true") >= 1);
    assert_true(recoveries("tts-espeak", "failover", "true") >= 1);
    assert_true(tu_log_has("failback"));
    done(R);
}

static void test_network_dies_mid_call_mock_backups(void **state) { network_dies(1); }

#define LIBRIVOX                                                                                                       \
    "/usr/share/pocketsphinx/test/data/librivox/"                                                                      \
    "sense_and_sensibility_01_austen_64kb-0"
static const char *const clips[] = {LIBRIVOX "880.wav", LIBRIVOX "930.wav", LIBRIVOX "880.wav", LIBRIVOX "930.wav",
                                    LIBRIVOX "880.wav", LIBRIVOX "930.wav", LIBRIVOX "880.wav"};

static int offline_engines_installed(void) {
    for (size_t i = 0; i < sizeof clips / sizeof clips[0]; i++)
        if (access(clips[i], R_OK) != 0) return 0;
    return access("/usr/share/pocketsphinx/model/en-us", R_OK) == 0 && system("which apertium >/dev/null 2>&1") == 0 &&
           system("which lt-proc >/dev/null 2>&1") == 0;
}

/* Two short LibriVox clips (16 kHz mono) in turn, 1.5 s of silence after
 * each: 33 s of English read aloud, seven phrases. */
static void write_speech(const char *path) {
    FILE *out = fopen(path, "wb");
    assert_non_null(out);
    unsigned char hdr[44] = {0};
    fwrite(hdr, 1, sizeof hdr, out);
    uint32_t data = 0;
    static int16_t silence[24000];
    for (size_t i = 0; i < sizeof clips / sizeof clips[0]; i++) {
        FILE *f = fopen(clips[i], "rb");
        assert_non_null(f);
        unsigned char h[12], ck[8];
        assert_int_equal(fread(h, 1, 12, f), 12);
        /* walk the chunks to "data" */
        while (fread(ck, 1, 8, f) == 8) {
            uint32_t len = ck[4] | ck[5] << 8 | ck[6] << 16 | (uint32_t)ck[7] << 24;
            if (memcmp(ck, "data", 4)) {
                fseek(f, (long)(len + (len & 1)), SEEK_CUR);
                continue;
            }
            unsigned char buf[4096];
            size_t n;
            while (len > 0 && (n = fread(buf, 1, len < sizeof buf ? len : sizeof buf, f)) > 0) {
                fwrite(buf, 1, n, out);
                data += (uint32_t)n;
                len -= (uint32_t)n;
            }
            break;
        }
        fclose(f);
        fwrite(silence, 1, sizeof silence, out);
        data += sizeof silence;
    }
    uint32_t riff = 36 + data, fmt_len = 16, rate = 16000, byte_rate = 32000;
    uint16_t pcm = 1, ch = 1, align = 2, bits = 16;
    fseek(out, 0, SEEK_SET);
    fwrite("RIFF", 1, 4, out), fwrite(&riff, 4, 1, out), fwrite("WAVEfmt ", 1, 8, out);
    fwrite(&fmt_len, 4, 1, out), fwrite(&pcm, 2, 1, out), fwrite(&ch, 2, 1, out), fwrite(&rate, 4, 1, out);
    fwrite(&byte_rate, 4, 1, out), fwrite(&align, 2, 1, out), fwrite(&bits, 2, 1, out);
    fwrite("data", 1, 4, out), fwrite(&data, 4, 1, out);
    fclose(out);
}

/* The example as shipped, offline backups included (PocketSphinx, Apertium,
 * eSpeak NG), on real English speech through transport_file in real time.
 * The fake Deepgram and PocketSphinx cut the speech into phrases each in its
 * own way, so phrases are not matched one to one here (the mock test does
 * that): no phrase is lost, the call goes on with the three offline engines
 * while the fakes are gone, and the phrases after they are back are the
 * cloud's again. */
static void test_network_dies_mid_call_offline_backups(void **state) {
    if (!offline_engines_installed()) skip();
    for (int i = 0; i < NFAKES; i++)
        free(tu_http(g_port[i], "POST", "/_fake/reset", ""));
    setenv("DEEPGRAM_API_KEY", "dg-test-key-cloud", 1);
    setenv("DEEPL_AUTH_KEY", "deepl-test-key-cloud", 1);
    rec *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    write_example(R->dir, 0);
    char *in = xasprintf("%s/in.wav", R->dir), *out = xasprintf("%s/out.wav", R->dir);
    write_speech(in);
    tu_write(R->dir, "60-calls.conf",
             "instance: { name = \"calls\"; plugin = \"transport_file\"; settings: { "
             "input = \"%s\"; "
             "output = \"%s\"; from = \"en\"; to = \"es\"; realtime = true; }; };\n",
             in, out);
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    for (int t = 0; t < 500 && !tu_log_has("studio speaker"); t++)
        tu_run_until(R->c, NULL, NULL, 0.01);
    assert_int_equal(core_start_transports(R->c), 0);

    at_least one = {R, 1};
    assert_true(tu_run_until(R->c, reported, &one, 20));
    assert_true(cloud(R, 0));
    fakes_kill();
    size_t killed_at = R->n;
    at_least more = {R, killed_at + 1};
    assert_true(tu_run_until(R->c, reported, &more, 20));
    fakes_start();
    assert_true(tu_run_until(R->c, primaries_up, R, 15));
    size_t up_at = R->n;
    assert_true(tu_run_until(R->c, ended, R, 60));
    dump(R);
    for (size_t i = 0; i < R->n; i++)
        assert_true(R->ok[i]);
    assert_false(tu_log_has("lost at"));
    int stt_b = 0, mt_b = 0, tts_b = 0;
    for (size_t i = killed_at; i < up_at; i++) {
        stt_b += !strcmp(R->stt[i], "stt-pocketsphinx");
        mt_b += !strcmp(R->mt[i], "mt-apertium");
        tts_b += !strcmp(R->tts[i], "tts-espeak");
    }
    assert_true(stt_b > 0 && mt_b > 0 && tts_b > 0);
    assert_true(R->n >= up_at + 2);
    for (size_t i = up_at + 1; i < R->n; i++)
        if (!cloud(R, i)) fail_msg("phrase %zu came after the providers were back, but not through them", i);
    assert_true(recoveries("stt-pocketsphinx", "failover", "true") >= 1);
    free(in);
    free(out);
    done(R);
}

int main(void) {
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 not installed (scripts/setup-debian.sh installs it)\n");
        return 77;
    }
    log_set_level(TOLK_LOG_INFO);
    fakes_start();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cloud_chain_end_to_end),
        cmocka_unit_test(test_network_dies_mid_call_mock_backups),
        cmocka_unit_test(test_network_dies_mid_call_offline_backups),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fakes_kill();
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
