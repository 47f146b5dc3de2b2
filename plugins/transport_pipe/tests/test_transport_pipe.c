/* transport_pipe loaded by the real core from a conf.d, with this program
 * as the media side: it makes the FIFOs in the media directory, writes
 * SLIN16 into {id}_in.pcm in real time (or as told) and reads
 * {id}_out.pcm, as a media server's helper would. What a user checks:
 * translated speech comes out of the out pipe (mock engines, and the
 * offline engines on a LibriVox clip); a writer that goes away and comes
 * back within the grace time is one call; a slow, then absent reader
 * neither blocks the loop nor crashes, and its overflow is counted;
 * malformed names, regular files and symbolic links are refused, counted
 * and logged, and nothing outside the directory is opened; 100 calls at
 * once all come through. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define FRAME_BYTES 640
#define LOUD_RMS 300.0
#define MAX_CALLS 128

/* ---- the media side of one call ---- */

typedef struct mcall {
    char id[64];
    char in_path[512], out_path[512];
    int wfd, rfd;
    int16_t *pcm; /* what party A says */
    size_t nframes, sent;
    int realtime; /* one frame per 20 ms, else as fast as the pipe takes it */
    double t0;
    int writer_done; /* closed its write end after the last frame */
    int pause_after; /* > 0: close the writer after this many frames ... */
    double pause_s;  /* ... and come back this much later */
    double paused_at;
    int reading;  /* reads the out pipe */
    size_t chunk; /* > 0: writes this many bytes at a time, frames split anywhere */
    size_t boff;  /* bytes of frame `sent` already written */
    uint64_t out_bytes, loud_frames;
    double loud_sumsq;
    uint8_t part[FRAME_BYTES];
    size_t npart;
} mcall;

/* Tone bursts (440 Hz, the mock recogniser's "speech") with silence around. */
static int16_t *tones(int phrases, int speech_ms, int gap_ms, size_t *nframes) {
    size_t sf = (size_t)speech_ms / 20, gf = (size_t)gap_ms / 20;
    size_t n = 10 + (size_t)phrases * (sf + gf);
    int16_t *p = xcalloc(n * 320, sizeof *p);
    size_t f = 10;
    for (int k = 0; k < phrases; k++) {
        for (size_t i = 0; i < sf * 320; i++)
            p[f * 320 + i] = (int16_t)(6000 * sin(2 * M_PI * (440 + 40 * k) * (double)i / 16000));
        f += sf + gf;
    }
    *nframes = n;
    return p;
}

static void mc_init(mcall *m, const char *media, const char *id, int16_t *pcm, size_t nframes) {
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    snprintf(m->in_path, sizeof m->in_path, "%s/%s_in.pcm", media, id);
    snprintf(m->out_path, sizeof m->out_path, "%s/%s_out.pcm", media, id);
    m->wfd = m->rfd = -1;
    m->pcm = pcm;
    m->nframes = nframes;
    m->realtime = 1;
    m->reading = 1;
}

/* The out FIFO first, opened for reading, then the in FIFO: the pair is
 * complete and the call begins. */
static void mc_make(mcall *m) {
    assert_int_equal(mkfifo(m->out_path, 0600), 0);
    m->rfd = open(m->out_path, O_RDONLY | O_NONBLOCK);
    assert_true(m->rfd >= 0);
    assert_int_equal(mkfifo(m->in_path, 0600), 0);
}

static void mc_read(mcall *m) {
    uint8_t buf[8192];
    if (m->rfd < 0 || !m->reading) return;
    for (;;) {
        ssize_t r = read(m->rfd, buf, sizeof buf);
        if (r <= 0) break;
        m->out_bytes += (uint64_t)r;
        for (ssize_t off = 0; off < r;) {
            size_t k = FRAME_BYTES - m->npart;
            if (k > (size_t)(r - off)) k = (size_t)(r - off);
            memcpy(m->part + m->npart, buf + off, k);
            m->npart += k;
            off += (ssize_t)k;
            if (m->npart < FRAME_BYTES) continue;
            m->npart = 0;
            double s = 0;
            for (int i = 0; i < 320; i++) {
                int16_t v = (int16_t)(uint16_t)(m->part[2 * i] | (m->part[2 * i + 1] << 8));
                s += (double)v * v;
            }
            if (sqrt(s / 320) > LOUD_RMS) {
                m->loud_frames++;
                m->loud_sumsq += s / 320;
            }
        }
    }
}

static void mc_pump(mcall *m) {
    double now = mono_now();
    if (!m->writer_done && m->wfd < 0) {
        if (m->paused_at > 0 && now - m->paused_at < m->pause_s) goto read;
        m->wfd = open(m->in_path, O_WRONLY | O_NONBLOCK);
        if (m->wfd >= 0 && m->paused_at > 0) m->pause_after = 0; /* came back */
        if (m->wfd >= 0) m->t0 = now - (double)m->sent * 0.02;
    }
    while (m->wfd >= 0 && m->sent < m->nframes) {
        if (m->realtime && (double)m->sent * 0.02 > now - m->t0) break;
        /* little-endian on the wire: this test runs on little-endian hosts */
        const uint8_t *base = (const uint8_t *)m->pcm;
        size_t at = m->sent * FRAME_BYTES + m->boff;
        size_t k = m->chunk ? m->chunk : FRAME_BYTES - m->boff;
        if (at + k > m->nframes * FRAME_BYTES) k = m->nframes * FRAME_BYTES - at;
        ssize_t w = write(m->wfd, base + at, k);
        if (w <= 0) break; /* the pipe is full: later */
        at += (size_t)w;
        m->sent = at / FRAME_BYTES;
        m->boff = at % FRAME_BYTES;
        if (m->boff) continue;
        if (m->pause_after && m->sent == (size_t)m->pause_after) {
            close(m->wfd);
            m->wfd = -1;
            m->paused_at = now;
            break;
        }
    }
    if (m->wfd >= 0 && m->sent == m->nframes) {
        close(m->wfd);
        m->wfd = -1;
        m->writer_done = 1;
    }
read:
    mc_read(m);
}

static void mc_close(mcall *m) {
    if (m->wfd >= 0) close(m->wfd);
    if (m->rfd >= 0) close(m->rfd);
    m->wfd = m->rfd = -1;
}

/* ---- the core ---- */

typedef struct rig {
    core *c;
    char *dir, *media;
    mcall *calls;
    size_t ncalls;
    int ended, phrases_ok, phrases;
    char tr[8][96];
    double util_in_max, util_out_max;
    int util_seen;
} rig;

static void on_phrase(void *ud, const phrase_report *r) {
    rig *R = ud;
    R->phrases++;
    if (r->ok) {
        if (R->phrases_ok < 8)
            snprintf(R->tr[R->phrases_ok], sizeof R->tr[0], "%s",
                     r->translation ? r->translation : "");
        R->phrases_ok++;
    }
}
static void on_end(void *ud, tolk_channel *ch) { ((rig *)ud)->ended++; }

static void conf_mock(const char *dir) {
    tu_write(dir, "tolk.conf",
             "core: { workers = 1; log_level = \"debug\"; max_channels = 400; };\n");
    tu_write_mock_pipeline(dir);
}

/* transport: the inside of the pipe instance's settings (media_dir added) */
static rig *rig_new(int offline, const char *transport) {
    rig *R = xcalloc(1, sizeof *R);
    R->dir = tu_tmpdir();
    R->media = xasprintf("%s/media", R->dir);
    tu_log_capture();
    tu_log_clear();
    if (offline) {
        static const char *const files[] = {"tolk.conf", "20-stt.conf", "30-mt.conf", "40-tts.conf",
                                            "50-chains.conf"};
        for (size_t i = 0; i < 5; i++) {
            char *src = xasprintf("%s/conf.d/%s", getenv("top_srcdir"), files[i]);
            char *dst = xasprintf("%s/%s", R->dir, files[i]);
            FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
            assert_non_null(in);
            assert_non_null(out);
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, in)) > 0)
                fwrite(buf, 1, n, out);
            fclose(in);
            fclose(out);
            free(src);
            free(dst);
        }
    } else {
        conf_mock(R->dir);
    }
    tu_write(R->dir, "60-pipe.conf",
             "instance: { name = \"pipe\"; plugin = \"transport_pipe\"; settings: {\n"
             "  media_dir = \"%s\"; from = \"en\"; to = \"es\"; %s }; };\n",
             R->media, transport ? transport : "");
    R->calls = xcalloc(MAX_CALLS, sizeof *R->calls); /* never moves: tests hold pointers */
    R->c = core_new(R->dir, NULL);
    R->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = R};
    assert_int_equal(core_load(R->c), 0);
    assert_int_equal(core_start_transports(R->c), 0);
    return R;
}

static void rig_free(rig *R) {
    for (size_t i = 0; i < R->ncalls; i++) {
        mc_close(&R->calls[i]);
        free(R->calls[i].pcm);
    }
    free(R->calls);
    core_free(R->c);
    metrics_shutdown();
    tu_rm_rf(R->dir);
    free(R->dir);
    free(R->media);
    free(R);
    tu_log_clear();
}

static long long H(rig *R, const char *key) { return tu_health_int(R->c, "pipe", key); }

static void util_visit(void *ud, const tolk_metric_sample *s) {
    rig *R = ud;
    if (strcmp(s->name, "pipe_buffer_utilization") || !s->label_values) return;
    R->util_seen |= !strcmp(s->label_values[0], "pipe:in")    ? 1
                    : !strcmp(s->label_values[0], "pipe:out") ? 2
                                                              : 0;
    if (!strcmp(s->label_values[0], "pipe:in") && s->value > R->util_in_max)
        R->util_in_max = s->value;
    if (!strcmp(s->label_values[0], "pipe:out") && s->value > R->util_out_max)
        R->util_out_max = s->value;
}

static int pump_all(void *ud) {
    rig *R = ud;
    for (size_t i = 0; i < R->ncalls; i++)
        mc_pump(&R->calls[i]);
    R->c->host.metrics_visit(util_visit, R);
    return 0;
}

static int all_ended(void *ud) {
    rig *R = ud;
    pump_all(R);
    return R->ended >= (int)R->ncalls && R->c->active == 0;
}

static int settle(void *ud);

static int ended_one(void *ud) {
    rig *R = ud;
    pump_all(R);
    return R->ended == 1 && R->c->active == 0;
}

static int talking(void *ud) {
    rig *R = ud;
    pump_all(R);
    return tu_health_int(R->c, "pipe", "frames_in") > 20;
}

static mcall *add_call(rig *R, const char *id, int phrases) {
    assert_true(R->ncalls < MAX_CALLS);
    mcall *m = &R->calls[R->ncalls++];
    size_t nf;
    int16_t *pcm = tones(phrases, 800, 600, &nf);
    mc_init(m, R->media, id, pcm, nf);
    return m;
}

static int is_fifo(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* ---- tests ---- */

__attribute__((unused)) static void test_mock_call_end_to_end(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 300;");
    struct stat st;
    /* created with safe permissions: never writable by others */
    assert_int_equal(lstat(R->media, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0770);
    mcall *m = add_call(R, "1700000000.42", 3);
    mc_make(m);
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    /* the translations of the three phrases */
    assert_int_equal(R->phrases_ok, 3);
    assert_string_equal(R->tr[0], "hola mundo");
    assert_string_equal(R->tr[1], "gracias amigo");
    assert_string_equal(R->tr[2], "buenos días");
    /* ... came out of the out pipe as speech: tts_mock speaks 30 ms per
     * character (10 + 13 + 11 characters, about 1 s, 40 ms gaps between
     * words), at the mock's amplitude */
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_true(m->loud_frames >= 35 && m->loud_frames <= 60);
    assert_true(sqrt(m->loud_sumsq / (double)m->loud_frames) > 1000);
    assert_int_equal(m->out_bytes % FRAME_BYTES, 0);
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(H(R, "calls_ended"), 1);
    assert_int_equal(H(R, "calls_active"), 0);
    assert_int_equal(H(R, "frames_in"), (long long)m->nframes);
    assert_int_equal(H(R, "out_overflow_frames"), 0);
    /* the gauge has a series per direction */
    assert_int_equal(R->util_seen, 3);
    assert_true(tu_log_has("call 1700000000.42 began"));
    /* the media side made both FIFOs: they are its to remove */
    assert_true(is_fifo(m->in_path));
    assert_true(is_fifo(m->out_path));
    rig_free(R);
}

/* create_out: the plugin makes {id}_out.pcm and removes it at the end. */
__attribute__((unused)) static void test_created_out_is_removed(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200; create_out = true;");
    mcall *m = add_call(R, "made-out", 1);
    assert_int_equal(mkfifo(m->in_path, 0600), 0);
    /* the reader opens it once the plugin has made it */
    for (int i = 0; i < 500 && m->rfd < 0; i++) {
        tu_run_until(R->c, NULL, NULL, 0.01);
        if (is_fifo(m->out_path)) m->rfd = open(m->out_path, O_RDONLY | O_NONBLOCK);
    }
    assert_true(m->rfd >= 0);
    struct stat st;
    assert_int_equal(lstat(m->out_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_int_equal(R->phrases_ok, 1);
    assert_true(m->loud_frames > 5);
    assert_false(is_fifo(m->out_path)); /* removed: it made it */
    assert_true(is_fifo(m->in_path));   /* left: the media side made it */
    rig_free(R);
}

/* The writer closes the FIFO after the first phrase and opens it again
 * 0.5 s later, within the 3 s grace: one call with both phrases. */
__attribute__((unused)) static void test_writer_returns_within_grace(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 3000;");
    mcall *m = add_call(R, "flaky", 2);
    m->pause_after = 10 + 40 + 30; /* the first burst and half its gap */
    m->pause_s = 0.5;
    mc_make(m);
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(H(R, "calls_ended"), 1);
    assert_int_equal(H(R, "writer_eofs"), 2); /* the pause, then the end */
    assert_int_equal(H(R, "writer_returns"), 1);
    assert_int_equal(R->phrases_ok, 2);
    assert_int_equal(H(R, "frames_in"), (long long)m->nframes);
    assert_true(tu_log_has("came back after"));
    rig_free(R);
}

/* Beyond the grace time the input has ended: the call is over, and a
 * writer opening the FIFO later is not served by it. */
__attribute__((unused)) static void test_writer_gone_beyond_grace_ends_call(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200;");
    mcall *m = add_call(R, "gone", 2);
    m->pause_after = 10 + 40 + 30;
    m->pause_s = 1000; /* never comes back */
    mc_make(m);
    assert_true(tu_run_until(R->c, ended_one, R, 30));
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(H(R, "writer_returns"), 0);
    assert_int_equal(R->phrases_ok, 1);
    /* nobody reads the in FIFO any more */
    assert_int_equal(open(m->in_path, O_WRONLY | O_NONBLOCK), -1);
    assert_int_equal(errno, ENXIO);
    rig_free(R);
}

/* Over max_calls a pair is refused once (both of its names are reported),
 * counted and logged; the call in progress goes on. */
__attribute__((unused)) static void test_max_calls(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200; max_calls = 1;");
    mcall *a = add_call(R, "first", 1);
    mc_make(a);
    tu_run_until(R->c, settle, NULL, 0.3);
    mcall *b = add_call(R, "second", 1);
    mc_make(b);
    b->writer_done = 1; /* nobody serves it: the media side does not write */
    R->ncalls = 1;
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    R->ncalls = 2;
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(H(R, "calls_refused"), 1);
    assert_int_equal(R->phrases_ok, 1);
    assert_true(tu_log_has("call second refused: 1 calls already (max_calls)"));
    rig_free(R);
}

/* A pair nobody ever writes to: the call ends after writer_timeout_ms. */
__attribute__((unused)) static void test_no_writer_times_out(void **state) {
    rig *R = rig_new(0, "writer_timeout_ms = 300;");
    mcall *m = add_call(R, "silent", 1);
    mc_make(m);
    m->writer_done = 1; /* the media side never opens it for writing */
    assert_true(tu_run_until(R->c, ended_one, R, 10));
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(H(R, "frames_in"), 0);
    assert_true(tu_log_has("call silent: no writer for party A's input in 0.3 s"));
    rig_free(R);
}

/* Bad settings are reported with the file and line, before anything runs:
 * a relative directory, a world-writable mode, an existing directory that
 * everyone may write to. */
__attribute__((unused)) static void test_bad_settings_have_file_and_line(void **state) {
    char *dir = tu_tmpdir();
    tu_log_capture();
    tu_log_clear();
    conf_mock(dir);
    tu_write(dir, "60-pipe.conf",
             "instance: { name = \"pipe\"; plugin = \"transport_pipe\"; settings: {\n"
             "  media_dir = \"relative/media\"; }; };\n");
    core *c = core_new(dir, NULL);
    assert_int_not_equal(core_load(c), 0);
    assert_true(tu_log_has("60-pipe.conf:2: "));
    assert_true(tu_log_has("an absolute path"));
    core_free(c);
    tu_log_clear();
    tu_write(dir, "60-pipe.conf",
             "instance: { name = \"pipe\"; plugin = \"transport_pipe\"; settings: {\n"
             "  media_dir = \"/tmp/x\";\n  dir_mode = \"0777\"; }; };\n");
    c = core_new(dir, NULL);
    assert_int_not_equal(core_load(c), 0);
    assert_true(tu_log_has("60-pipe.conf:3: "));
    assert_true(tu_log_has("never writable by others"));
    core_free(c);
    tu_log_clear();
    char *open_dir = xasprintf("%s/open", dir);
    assert_int_equal(mkdir(open_dir, 0700), 0);
    assert_int_equal(chmod(open_dir, 0777), 0);
    tu_write(dir, "60-pipe.conf",
             "instance: { name = \"pipe\"; plugin = \"transport_pipe\"; settings: {\n"
             "  media_dir = \"%s\"; }; };\n",
             open_dir);
    c = core_new(dir, NULL);
    assert_int_not_equal(core_load(c), 0);
    assert_true(tu_log_has("60-pipe.conf:2: "));
    assert_true(tu_log_has("is writable by every user"));
    core_free(c);
    metrics_shutdown();
    tu_log_clear();
    tu_rm_rf(dir);
    free(open_dir);
    free(dir);
}

/* Continuous output (a frame every 20 ms) to a reader that reads a frame
 * every 100 ms, then to no reader at all: the kernel's pipe buffer and the
 * plugin's 200 ms fill, the oldest audio is dropped and counted, and all
 * the while the input is read and fed: the loop is not blocked. */
typedef struct slow {
    rig *R;
    mcall *m;
    double last_read;
    int phase; /* 0 slow reader, 1 reader gone */
    long long in_at_close;
} slow;

static int slow_pump(void *ud) {
    slow *S = ud;
    mcall *m = S->m;
    m->reading = 0;
    mc_pump(m);
    double now = mono_now();
    if (S->phase == 0 && m->rfd >= 0 && now - S->last_read >= 0.1) {
        uint8_t f[FRAME_BYTES];
        if (read(m->rfd, f, sizeof f) > 0) m->out_bytes += FRAME_BYTES;
        S->last_read = now;
    }
    S->R->c->host.metrics_visit(util_visit, S->R);
    return 0;
}

static int overflowing(void *ud) {
    slow *S = ud;
    slow_pump(S);
    return tu_health_int(S->R->c, "pipe", "out_overflow_frames") >= 20;
}

static int slow_ended(void *ud) {
    slow *S = ud;
    slow_pump(S);
    return S->R->ended == 1 && S->R->c->active == 0;
}

__attribute__((unused)) static void test_slow_then_absent_reader(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200; output = \"continuous\"; out_buffer_ms = 200;");
    mcall *m = add_call(R, "slowreader", 4);
    slow S = {.R = R, .m = m};
    mc_make(m);
    assert_true(tu_run_until(R->c, overflowing, &S, 20));
    assert_true(m->out_bytes > 0); /* it did read a little */
    assert_true(R->util_out_max >= 0.99);
    /* the reader goes away */
    S.phase = 1;
    close(m->rfd);
    m->rfd = -1;
    S.in_at_close = H(R, "frames_in");
    assert_true(tu_run_until(R->c, slow_ended, &S, 30));
    /* the input went on being read and translated with nobody reading */
    assert_int_equal(H(R, "frames_in"), (long long)m->nframes);
    assert_true(H(R, "frames_in") > S.in_at_close);
    assert_int_equal(R->phrases_ok, 4);
    assert_true(H(R, "out_overflow_frames") >= 20);
    assert_true(H(R, "reader_gone") >= 1);
    assert_int_equal(H(R, "calls_ended"), 1);
    assert_true(tu_log_has("oldest audio is dropped"));
    rig_free(R);
}

static int settle(void *ud) { return 0; }

__attribute__((unused)) static void test_malformed_names_refused(void **state) {
    rig *R = rig_new(0, NULL);
    char long_id[200];
    memset(long_id, 'x', 150);
    long_id[150] = '\0';
    const char *bad[] = {"bad name_in.pcm",
                         "semi;colon_in.pcm",
                         ".hidden_in.pcm",
                         "_in.pcm",
                         "caf\xc3\xa9_in.pcm",
                         "x_mid.pcm",
                         NULL};
    for (size_t i = 0; bad[i]; i++) {
        char *p = xasprintf("%s/%s", R->media, bad[i]);
        assert_int_equal(mkfifo(p, 0600), 0);
        free(p);
    }
    char *p = xasprintf("%s/%s_in.pcm", R->media, long_id);
    assert_int_equal(mkfifo(p, 0600), 0);
    free(p);
    /* not ours: ignored, not counted */
    tu_write(R->media, "notes.txt", "hello\n");
    tu_run_until(R->c, settle, NULL, 0.5);
    assert_int_equal(H(R, "refused_names"), 7);
    assert_int_equal(H(R, "calls_started"), 0);
    assert_true(tu_log_has("refused: not a call's FIFO name"));
    assert_true(tu_log_has("/bad name_in.pcm refused"));
    assert_true(tu_log_has("/caf??_in.pcm refused")); /* logged without the raw bytes */
    assert_false(tu_log_has("notes.txt"));
    rig_free(R);
}

/* A regular file or a symbolic link where a FIFO should be: refused,
 * counted, logged, and the file a link points to is never opened. */
__attribute__((unused)) static void test_regular_file_and_symlink_refused(void **state) {
    rig *R = rig_new(0, NULL);
    char *outside = xasprintf("%s/outside.pcm", R->dir);
    assert_int_equal(mkfifo(outside, 0600), 0);
    char *secret = xasprintf("%s/secret", R->dir);
    tu_write(R->dir, "secret", "not for you\n");

    char *p = xasprintf("%s/reg_out.pcm", R->media);
    assert_int_equal(mkfifo(p, 0600), 0);
    free(p);
    tu_write(R->media, "reg_in.pcm", "RIFF....");
    p = xasprintf("%s/lnk_out.pcm", R->media);
    assert_int_equal(mkfifo(p, 0600), 0);
    free(p);
    p = xasprintf("%s/lnk_in.pcm", R->media);
    assert_int_equal(symlink(outside, p), 0);
    free(p);
    p = xasprintf("%s/sec_out.pcm", R->media);
    assert_int_equal(symlink(secret, p), 0);
    free(p);
    p = xasprintf("%s/sec_in.pcm", R->media);
    assert_int_equal(mkfifo(p, 0600), 0);
    free(p);
    tu_run_until(R->c, settle, NULL, 0.5);
    assert_int_equal(H(R, "calls_started"), 0);
    assert_int_equal(H(R, "refused_not_fifo"), 1);
    assert_int_equal(H(R, "refused_symlinks"), 2);
    assert_true(tu_log_has("reg_in.pcm refused: a regular file, not a FIFO"));
    assert_true(tu_log_has("lnk_in.pcm refused: a symbolic link"));
    assert_true(tu_log_has("sec_out.pcm refused: a symbolic link"));
    /* the FIFO outside the directory was never opened: it has no reader */
    assert_int_equal(open(outside, O_WRONLY | O_NONBLOCK), -1);
    assert_int_equal(errno, ENXIO);
    free(outside);
    free(secret);
    rig_free(R);
}

/* During a call its input FIFO is replaced by a regular file (renamed
 * over it), then a call's JSON is a link: the call ends, refusals counted. */
__attribute__((unused)) static void test_fifo_replaced_during_call(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 5000;");
    mcall *m = add_call(R, "victim", 3);
    mc_make(m);
    assert_true(tu_run_until(R->c, talking, R, 10));
    char *tmp = xasprintf("%s/plain", R->media);
    tu_write(R->media, "plain", "just a file\n");
    assert_int_equal(rename(tmp, m->in_path), 0);
    free(tmp);
    assert_true(tu_run_until(R->c, ended_one, R, 10));
    assert_int_equal(H(R, "refused_replaced"), 1);
    assert_true(tu_log_has("call victim ended: one of its FIFOs was replaced"));

    /* a JSON that is a link is not followed: the call is refused */
    char *target = xasprintf("%s/elsewhere.json", R->dir);
    tu_write(R->dir, "elsewhere.json", "{\"mode\": \"passthrough\"}");
    char *lnk = xasprintf("%s/linked.json", R->media);
    assert_int_equal(symlink(target, lnk), 0);
    mcall *m2 = add_call(R, "linked", 1);
    mc_make(m2);
    tu_run_until(R->c, settle, NULL, 0.5);
    assert_int_equal(H(R, "calls_started"), 1);
    assert_true(tu_log_has("linked.json refused: a symbolic link"));
    free(target);
    free(lnk);
    rig_free(R);
}

/* Removing a FIFO ends its call at once. */
__attribute__((unused)) static void test_removed_fifo_ends_call(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 5000;");
    mcall *m = add_call(R, "removed", 3);
    mc_make(m);
    assert_true(tu_run_until(R->c, talking, R, 10));
    assert_int_equal(unlink(m->out_path), 0);
    assert_true(tu_run_until(R->c, ended_one, R, 10));
    assert_int_equal(H(R, "calls_removed"), 1);
    assert_true(tu_log_has("removed_out.pcm was removed"));
    rig_free(R);
}

/* The call's JSON: languages and mode; and a bad one refuses the call. */
__attribute__((unused)) static void test_call_json(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200;");
    tu_write(R->media, "pt.json", "{\"mode\": \"passthrough\", \"language_a\": \"en\"}");
    tu_write(R->media, "typo.json", "{\"langauge_a\": \"en\"}");
    tu_write(R->media, "broken.json", "{\"mode\": ");
    mcall *pt = add_call(R, "pt", 1);
    mcall *ty = add_call(R, "typo", 1);
    mcall *br = add_call(R, "broken", 1);
    mc_make(pt);
    mc_make(ty);
    mc_make(br);
    R->ncalls = 1; /* only pt is served */
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    tu_run_until(R->c, pump_all, R, 0.2);
    R->ncalls = 3;
    /* passthrough: the caller's own voice comes out, untranslated */
    assert_int_equal(R->phrases_ok, 0);
    assert_true(pt->loud_frames >= 35);
    assert_int_equal(H(R, "refused_json"), 2);
    assert_true(tu_log_has("typo.json refused: unknown key \"langauge_a\""));
    assert_true(tu_log_has("broken.json refused: line 1"));
    assert_int_equal(H(R, "calls_started"), 1);
    rig_free(R);
}

/* A second pair makes the call two-party: each party's translation comes
 * out of its own out pipe. */
__attribute__((unused)) static void test_two_parties(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 300;");
    mcall *a = add_call(R, "duo", 2);
    mcall *b = add_call(R, "duo_b", 2);
    /* party B starts later so the two alternate */
    memmove(b->pcm + 50 * 320, b->pcm, (b->nframes - 50) * 320 * sizeof(int16_t));
    memset(b->pcm, 0, 50 * 320 * sizeof(int16_t));
    /* b's pair first, so it is there when a's pair completes */
    mc_make(b);
    mc_make(a);
    assert_true(tu_run_until(R->c, ended_one, R, 30));
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_int_equal(H(R, "calls_started"), 1);
    assert_int_equal(R->phrases_ok, 4);
    assert_true(a->loud_frames >= 15);
    assert_true(b->loud_frames >= 15);
    assert_true(tu_log_has("began (two parties"));
    rig_free(R);
}

/* A writer much faster than real time on a paced call: the input buffer
 * fills (the writer then waits on the full pipe) and the core gets 20 ms
 * of audio per 20 ms, so nothing is shed and nothing is lost. */
__attribute__((unused)) static void test_fast_writer_paced(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200; in_buffer_ms = 500;");
    mcall *m = add_call(R, "hasty", 3);
    m->realtime = 0;
    double t0 = mono_now();
    mc_make(m);
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    /* paced: it cannot have taken less than the audio lasts */
    assert_true(mono_now() - t0 >= (double)m->nframes * 0.02 * 0.95);
    assert_int_equal(H(R, "frames_in"), (long long)m->nframes);
    assert_int_equal(R->phrases_ok, 3);
    assert_true(H(R, "in_buffer_full") >= 1);
    assert_true(R->util_in_max >= 0.99);
    assert_false(tu_log_has("shedding"));
    rig_free(R);
}

/* A _b pair that appears during a one-party call joins it: in a
 * unidirectional call party B is heard untranslated, out of {id}_b_out.pcm. */
typedef struct join {
    rig *R;
    int made;
} join;

static int join_pump(void *ud) {
    join *J = ud;
    rig *R = J->R;
    if (!J->made && R->calls[0].sent > 50) {
        mc_make(&R->calls[1]);
        J->made = 1;
    }
    if (!J->made) {
        mc_pump(&R->calls[0]);
        return 0;
    }
    return ended_one(R);
}

__attribute__((unused)) static void test_party_b_joins_later(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 300;");
    mcall *a = add_call(R, "later", 2);
    mcall *b = add_call(R, "later_b", 1);
    mc_make(a);
    join J = {.R = R};
    assert_true(tu_run_until(R->c, join_pump, &J, 30));
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_int_equal(H(R, "calls_started"), 1);
    assert_true(tu_log_has("call later: party B joined"));
    assert_int_equal(R->phrases_ok, 2); /* A's two phrases, translated */
    assert_true(a->loud_frames >= 15);  /* ... for B */
    assert_true(b->loud_frames >= 35);  /* B's own 0.8 s tone, for A */
    assert_int_equal(H(R, "frames_in"), (long long)(a->nframes + b->nframes));
    rig_free(R);
}

/* input = "pull": a writer faster than real time, writing odd-sized
 * chunks, is taken as fast as the core takes it (a file-like source):
 * frames reassembled, nothing lost. */
__attribute__((unused)) static void test_pull_input(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 200; input = \"pull\"; output = \"unpaced\";");
    mcall *m = add_call(R, "fast", 3);
    m->realtime = 0;
    m->chunk = 333; /* odd sizes: frames and even samples split across writes */
    mc_make(m);
    assert_true(tu_run_until(R->c, all_ended, R, 30));
    assert_int_equal(R->phrases_ok, 3);
    assert_int_equal(H(R, "frames_in"), (long long)m->nframes);
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_true(m->loud_frames >= 35);
    rig_free(R);
}

__attribute__((unused)) static void test_hundred_calls(void **state) {
    rig *R = rig_new(0, "eof_grace_ms = 300;");
    for (int i = 0; i < 100; i++) {
        char id[32];
        snprintf(id, sizeof id, "call-%03d", i);
        mc_make(add_call(R, id, 1));
    }
    assert_true(tu_run_until(R->c, all_ended, R, 60));
    assert_int_equal(H(R, "calls_started"), 100);
    assert_int_equal(H(R, "calls_ended"), 100);
    assert_int_equal(R->phrases_ok, 100);
    tu_run_until(R->c, pump_all, R, 0.2);
    for (size_t i = 0; i < R->ncalls; i++)
        assert_true(R->calls[i].loud_frames >= 5);
    assert_int_equal(H(R, "out_overflow_frames"), 0);
    rig_free(R);
}

/* The offline engines (PocketSphinx, Apertium, eSpeak NG as in conf.d/)
 * on a LibriVox clip written into the pipe: Spanish speech comes out. */
#define CLIP                                                                                       \
    "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"

static int16_t *read_clip(size_t *nframes) {
    FILE *f = fopen(CLIP, "rb");
    if (!f) return NULL;
    uint8_t h[12], ch[8];
    int16_t *pcm = NULL;
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4)) goto out;
    while (fread(ch, 1, 8, f) == 8) {
        uint32_t n =
            (uint32_t)ch[4] | (uint32_t)ch[5] << 8 | (uint32_t)ch[6] << 16 | (uint32_t)ch[7] << 24;
        if (memcmp(ch, "data", 4)) {
            fseek(f, (long)(n + (n & 1)), SEEK_CUR);
            continue;
        }
        /* 16 kHz mono 16-bit already (checked below by its length): raw SLIN16 */
        size_t frames = n / FRAME_BYTES + 1;
        pcm = xcalloc(frames * 320, sizeof *pcm);
        if (fread(pcm, 1, n, f) != n) {
            free(pcm);
            pcm = NULL;
        }
        *nframes = frames;
        break;
    }
out:
    fclose(f);
    return pcm;
}

__attribute__((unused)) static void test_offline_engines_librivox(void **state) {
    if (access(CLIP, R_OK) != 0 || access("/usr/share/pocketsphinx/model/en-us/en-us", R_OK) != 0)
        skip();
    rig *R = rig_new(1, "eof_grace_ms = 300; mode = \"unidirectional\";");
    size_t nf = 0;
    int16_t *pcm = read_clip(&nf);
    assert_non_null(pcm);
    assert_true(nf > 300); /* several seconds of speech */
    R->ncalls = 1;
    mcall *m = &R->calls[0];
    mc_init(m, R->media, "librivox", pcm, nf);
    mc_make(m);
    assert_true(tu_run_until(R->c, all_ended, R, 120));
    tu_run_until(R->c, pump_all, R, 0.2);
    assert_true(R->phrases_ok >= 1);
    assert_true(strlen(R->tr[0]) > 0);
    /* Spanish speech: at least a second of voiced audio, at a speaking level */
    assert_true(m->loud_frames >= 50);
    double rms = sqrt(m->loud_sumsq / (double)m->loud_frames);
    assert_true(rms > 1000 && rms < 20000);
    /* and no longer than a few times the input */
    assert_true(m->out_bytes / FRAME_BYTES < 4 * nf);
    rig_free(R);
}

/* Built twice: test_transport_pipe (mock engines, clean under valgrind) and,
 * with TP_OFFLINE, test_transport_pipe_offline (libespeak-ng itself reads
 * uninitialised memory under valgrind, so it stays out of that list). */
int main(void) {
    signal(SIGPIPE, SIG_IGN);
#ifdef TP_OFFLINE
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offline_engines_librivox),
    };
#else
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mock_call_end_to_end),
        cmocka_unit_test(test_created_out_is_removed),
        cmocka_unit_test(test_writer_returns_within_grace),
        cmocka_unit_test(test_writer_gone_beyond_grace_ends_call),
        cmocka_unit_test(test_no_writer_times_out),
        cmocka_unit_test(test_max_calls),
        cmocka_unit_test(test_bad_settings_have_file_and_line),
        cmocka_unit_test(test_slow_then_absent_reader),
        cmocka_unit_test(test_malformed_names_refused),
        cmocka_unit_test(test_regular_file_and_symlink_refused),
        cmocka_unit_test(test_fifo_replaced_during_call),
        cmocka_unit_test(test_removed_fifo_ends_call),
        cmocka_unit_test(test_call_json),
        cmocka_unit_test(test_two_parties),
        cmocka_unit_test(test_party_b_joins_later),
        cmocka_unit_test(test_fast_writer_paced),
        cmocka_unit_test(test_pull_input),
        cmocka_unit_test(test_hundred_calls),
    };
#endif
    return cmocka_run_group_tests(tests, NULL, NULL);
}
