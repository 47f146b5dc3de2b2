/* bench_pipe: N concurrent calls through transport_pipe (named pipes) and
 * the mock engines, for a fixed time. The media side is a child process
 * (so its CPU is not counted as tolk's): it makes each call's FIFO pair,
 * writes SLIN16 into every {id}_in.pcm in real time (1.2 s of tone, 2.8 s
 * of silence, over and over, each call at its own phase) and reads every
 * {id}_out.pcm. Prints what the issue asks:
 *   CPU seconds per call-minute of the process running the core and the
 *   plugin (its worker threads included), and of the media side;
 *   frames lost on the way in (written by the media side, not fed to the
 *   core), on the way out (dropped by the plugin's output buffers, or
 *   written and not read), phrases lost, and how often the media side
 *   found an input pipe full (the plugin not reading in time);
 *   core-added latency (end of phrase -> first translated frame, minus the
 *   mocks' delays) p50/p99.
 *
 *   bench_pipe [calls] [seconds]
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "log.h"
#include "metrics.h"

#define SILENCE_MS 300
#define LATENCY_STT 50
#define LATENCY_MT 20
#define LATENCY_TTS 80
#define MOCK_DELAY_MS (SILENCE_MS + LATENCY_STT + LATENCY_MT + LATENCY_TTS)
#define PERIOD 200 /* frames: 1.2 s of speech, 2.8 s of silence */
#define SPEECH 60
#define FRAME_BYTES 640

typedef struct media_result {
    uint64_t written, stalls, read_bytes, loud;
    double lag_max_ms;
    double cpu;
    int calls_opened;
} media_result;

static double cpu_of(const struct rusage *ru) {
    return (double)ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 + (double)ru->ru_stime.tv_sec +
           ru->ru_stime.tv_usec / 1e6;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return cpu_of(&ru);
}

/* ---- the media side (child process) ---- */

typedef struct side {
    int wfd, rfd;
    double t0;
    uint64_t sent;
    unsigned phase;
    char in[300], out[300];
    int done;
} side;

static void media_main(const char *media, int n, double seconds, int result_fd) {
    int16_t *period = calloc((size_t)PERIOD * 320, sizeof *period);
    for (int i = 0; i < SPEECH * 320; i++)
        period[i] = (int16_t)(6000 * sin(2 * M_PI * 440 * (double)i / 16000));
    side *s = calloc((size_t)n, sizeof *s);
    media_result R = {0};
    for (int i = 0; i < n; i++) {
        snprintf(s[i].in, sizeof s[i].in, "%s/bench-%04d_in.pcm", media, i);
        snprintf(s[i].out, sizeof s[i].out, "%s/bench-%04d_out.pcm", media, i);
        s[i].wfd = -1;
        s[i].phase = (unsigned)(i * 37) % PERIOD;
        if (mkfifo(s[i].out, 0600) != 0 || mkfifo(s[i].in, 0600) != 0) _exit(3);
        s[i].rfd = open(s[i].out, O_RDONLY | O_NONBLOCK);
    }
    double start = mono_now(), end = start + seconds;
    uint8_t buf[65536];
    for (;;) {
        double now = mono_now();
        int writing = now < end;
        for (int i = 0; i < n; i++) {
            side *c = &s[i];
            if (writing && c->wfd < 0 && !c->done) {
                c->wfd = open(c->in, O_WRONLY | O_NONBLOCK);
                if (c->wfd >= 0) {
                    c->t0 = now;
                    R.calls_opened++;
                }
            }
            if (c->wfd >= 0 && !writing) {
                close(c->wfd);
                c->wfd = -1;
                c->done = 1;
            }
            if (c->wfd >= 0) {
                uint64_t due = (uint64_t)floor((now - c->t0) / 0.02) + 1;
                if (due > c->sent + 1) {
                    double lag = (now - c->t0 - (double)c->sent * 0.02) * 1000.0;
                    if (lag > R.lag_max_ms) R.lag_max_ms = lag;
                }
                while (c->sent < due) {
                    const int16_t *f = period + ((c->sent + c->phase) % PERIOD) * 320;
                    ssize_t w = write(c->wfd, f, FRAME_BYTES);
                    if (w != FRAME_BYTES) {
                        R.stalls++; /* the pipe is full: tolk did not read in time */
                        break;
                    }
                    c->sent++;
                    R.written++;
                }
            }
            if (c->rfd >= 0) {
                ssize_t r;
                while ((r = read(c->rfd, buf, sizeof buf)) > 0) {
                    R.read_bytes += (uint64_t)r;
                    for (ssize_t k = 0; k + 1 < r; k += 64) {
                        int16_t v = (int16_t)(buf[k] | (buf[k + 1] << 8));
                        if (v > 1000 || v < -1000) R.loud++;
                    }
                }
            }
        }
        if (!writing && now > end + 6) break; /* grace, drain, then the last reads */
        usleep(5000);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    R.cpu = cpu_of(&ru);
    if (write(result_fd, &R, sizeof R) != (ssize_t)sizeof R) _exit(4);
    for (int i = 0; i < n; i++) {
        if (s[i].rfd >= 0) close(s[i].rfd);
        unlink(s[i].in);
        unlink(s[i].out);
    }
    _exit(0);
}

/* ---- tolk ---- */

typedef struct bench {
    double until; /* phrases after the talking window (cut by the writers' close) are not timed */
    double *lat;
    size_t n, cap, lost, phrases, ended;
} bench;

static void on_phrase(void *ud, const phrase_report *r) {
    bench *b = ud;
    if (mono_now() > b->until) return;
    b->phrases++;
    if (!r->ok) {
        b->lost++;
        return;
    }
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 1024;
        b->lat = xrealloc(b->lat, b->cap * sizeof(double));
    }
    b->lat[b->n++] = r->latency_ms - MOCK_DELAY_MS;
}

static void on_end(void *ud, tolk_channel *ch) { ((bench *)ud)->ended++; }

static void write_conf(const char *dir, const char *media, int calls) {
    char path[512];
    FILE *f;
#define CONF(name, ...)                                                                            \
    do {                                                                                           \
        snprintf(path, sizeof path, "%s/%s", dir, name);                                           \
        f = fopen(path, "w");                                                                      \
        if (!f) {                                                                                  \
            perror(path);                                                                          \
            exit(1);                                                                               \
        }                                                                                          \
        fprintf(f, __VA_ARGS__);                                                                   \
        fclose(f);                                                                                 \
    } while (0)
    CONF("tolk.conf",
         "core: { max_channels = %d; workers = 2; drain_timeout = 60.0; log_level = \"warn\"; "
         "translation_cache = 0; };\n",
         calls + 10);
    CONF("20-stt.conf",
         "instance: { name = \"stt\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello "
         "world\", \"thank you\" ]; silence_ms = %d; latency_ms = %d; partial_ms = 0; }; };\n",
         SILENCE_MS, LATENCY_STT);
    CONF("30-mt.conf",
         "instance: { name = \"mt\"; plugin = \"mt_mock\"; settings: { latency_ms = %d; }; };\n",
         LATENCY_MT);
    CONF("40-tts.conf",
         "instance: { name = \"tts\"; plugin = \"tts_mock\"; settings: { latency_ms = %d; "
         "ms_per_char = 40; }; };\n",
         LATENCY_TTS);
    CONF("50-chains.conf",
         "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt\" ]; },\n"
         "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt\" ]; },\n"
         "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts\" ]; } );\n");
    CONF("60-pipe.conf",
         "instance: { name = \"pipe\"; plugin = \"transport_pipe\"; settings: { media_dir = "
         "\"%s\"; from = \"en\"; to = \"es\"; eof_grace_ms = 500; max_calls = %d; }; };\n",
         media, calls + 10);
#undef CONF
}

static double hnum(json_t *h, const char *k) { return json_number_value(json_object_get(h, k)); }

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 200;
    double seconds = argc > 2 ? atof(argv[2]) : 20;
    if (calls < 1 || calls > 5000 || seconds < 5) {
        fprintf(stderr, "usage: bench_pipe [calls 1..5000] [seconds >= 5]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    log_set_level(TOLK_LOG_WARN);
    char dir[] = "/tmp/tolk-bench-pipe-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char media[600];
    snprintf(media, sizeof media, "%s/media", dir);
    if (mkdir(media, 0700) != 0) return 1;
    write_conf(dir, media, calls);

    int fds[2];
    if (pipe(fds) != 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        close(fds[0]);
        media_main(media, calls, seconds, fds[1]);
    }
    close(fds[1]);

    bench b = {0};
    core *c = core_new(dir, NULL);
    c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = &b};
    if (core_load(c) != 0) return 1;
    double t0 = mono_now();
    b.until = t0 + seconds;
    core_start_transports(c);
    int status = 0;
    /* CPU over the talking window, from 1 s in (every call open) to its end */
    double cpu_a = -1, cpu_b = -1;
    while (waitpid(child, &status, WNOHANG) == 0) {
        ev_run(c->loop, EVRUN_ONCE); /* the plugin's 20 ms tick wakes it at least */
        double now = mono_now();
        if (cpu_a < 0 && now >= t0 + 1) cpu_a = cpu_seconds();
        if (cpu_b < 0 && now >= t0 + seconds) cpu_b = cpu_seconds();
    }
    double cpu = cpu_b - cpu_a, wall = seconds - 1;
    media_result M = {0};
    if (read(fds[0], &M, sizeof M) != (ssize_t)sizeof M) {
        fprintf(stderr, "bench_pipe: the media side failed (status %d)\n", status);
        return 1;
    }
    tolk_instance *inst = core_find_instance(c, "pipe");
    json_t *h = NULL;
    inst->desc->health(inst->self, &h);
    double fed = hnum(h, "frames_in"), out_w = hnum(h, "frames_out");
    double lost_in = (double)M.written - fed;
    double read_frames = (double)M.read_bytes / FRAME_BYTES;
    sort_doubles(b.lat, b.n);
    double call_minutes = (double)calls * wall / 60.0;
    printf("pipe calls=%d (opened by the media side %d, ended %zu) talking %.0f s\n", calls,
           M.calls_opened, b.ended, seconds);
    printf("  phrases             %zu translated, %zu lost\n", b.phrases - b.lost, b.lost);
    printf("  core-added latency  p50 %.2f ms  p99 %.2f ms  (end of phrase -> first frame, minus "
           "%d ms of mock delays)\n",
           percentile_sorted(b.lat, b.n, 50), percentile_sorted(b.lat, b.n, 99), MOCK_DELAY_MS);
    printf("  frames in           written %llu, fed to the core %.0f, lost %.0f; input pipe found "
           "full %llu times; media side's lag max %.1f ms\n",
           (unsigned long long)M.written, fed, lost_in, (unsigned long long)M.stalls, M.lag_max_ms);
    printf("  frames out          written %.0f, read %.0f, dropped: overflow %.0f, at end %.0f, "
           "unplayed by the core %llu\n",
           out_w, read_frames, hnum(h, "out_overflow_frames"), hnum(h, "out_dropped_at_end"),
           (unsigned long long)c->out_frames_dropped);
    printf(
        "  CPU                 tolk %.4f s per call-minute (%.1f%% of one core, %d calls talking, "
        "%.0f s window); media side %.4f s per call-minute (its whole run)\n",
        cpu / call_minutes, 100.0 * cpu / wall, calls, wall,
        M.cpu / ((double)calls * seconds / 60.0));
    fflush(stdout);
    json_decref(h);
    core_shutdown(c);
    double drain_end = mono_now() + 10;
    while (c->active && mono_now() < drain_end)
        ev_run(c->loop, EVRUN_ONCE | EVRUN_NOWAIT);
    core_free(c);
    metrics_shutdown();
    free(b.lat);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) != 0;
}
