/* bench_calls: N concurrent bidirectional mock calls through the real core,
 * fed and paced in real time, for a fixed time. Prints what the issue asks:
 *   core-added latency (end of phrase -> first translated frame, minus the
 *   mocks' configured delays) p50/p99, playback jitter p99 (deviation from
 *   each talkspurt's 20 ms grid, measured by the transport), frames lost,
 *   CPU seconds per call-minute, RSS per call and heap in use per call
 *   (glibc's count of allocated bytes: what the calls hold, whether or not
 *   freed memory went back to the system). Meanwhile a client
 *   scrapes the Prometheus exporter (on the same loop) twice a second, as
 *   a monitoring system would (more often): the figures include its cost,
 *   and the scrape times are printed. Also meanwhile, a bare 20 ms timer on
 *   a thread of its own (clock_nanosleep to absolute times) measures how
 *   late this machine wakes a sleeper: the playback jitter target is its
 *   p99 + 0.5 ms, as the machine's own noise is no fault of the core.
 *
 *   bench_calls [calls] [seconds]
 *
 * The mocks' delays are fixed here, so the subtraction is exact: the STT
 * mock ends a phrase after SILENCE_MS of silence and answers LATENCY_STT
 * later; MT answers after LATENCY_MT; TTS's first chunk comes LATENCY_TTS
 * after the request. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
/* The jitter target: p99 within this much of the bare timer's p99. */
#define JITTER_MARGIN_MS 0.5

typedef struct bench {
    core *c;
    double *lat;
    size_t n, cap;
    size_t lost, phrases;
    int measuring;
} bench;

static void on_phrase(void *ud, const phrase_report *r) {
    bench *b = ud;
    if (!b->measuring) return;
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

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static double rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

/* ---- the scraper: a plain HTTP/1.0 client on its own thread ---- */

#define MAX_SCRAPES 4096
typedef struct scraper {
    int port;
    volatile int stop;
    int off; /* TOLK_BENCH_NO_SCRAPE set: the scraper only waits */
    double ms[MAX_SCRAPES];
    size_t n, bytes, failed;
} scraper;

static size_t scrape_once(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t total = 0;
    static const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
        char buf[65536];
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) total += (size_t)r;
    }
    close(fd);
    return total;
}

static void *scraper_main(void *ud) {
    scraper *S = ud;
    while (!S->stop) {
        if (S->off) {
            usleep(10000);
            continue;
        }
        double t0 = mono_now();
        size_t got = scrape_once(S->port);
        double dt = (mono_now() - t0) * 1000.0;
        if (got == 0) S->failed++;
        else if (S->n < MAX_SCRAPES) S->ms[S->n++] = dt, S->bytes = got;
        for (int i = 0; i < 50 && !S->stop; i++) usleep(10000);
    }
    return NULL;
}

/* ---- the baseline: a bare 20 ms timer on its own thread ---- */

typedef struct baseline {
    volatile int stop;
    double *late_ms; /* how late each wake-up was */
    size_t n, cap;
} baseline;

static void *baseline_main(void *ud) {
    baseline *B = ud;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!B->stop && B->n < B->cap) {
        /* absolute deadlines on a 20 ms grid: lateness does not accumulate */
        next.tv_nsec += 20000000;
        if (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {}
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double late = (double)(now.tv_sec - next.tv_sec) * 1e3 +
                      (double)(now.tv_nsec - next.tv_nsec) / 1e6;
        B->late_ms[B->n++] = late;
    }
    return NULL;
}

static void run_for(core *c, double seconds) {
    double end = mono_now() + seconds;
    while (mono_now() < end) ev_run(c->loop, EVRUN_ONCE);
}

static void write_conf(const char *dir, int calls) {
    char path[512];
    FILE *f;
#define CONF(name, ...)                                                       \
    do {                                                                      \
        snprintf(path, sizeof path, "%s/%s", dir, name);                       \
        f = fopen(path, "w");                                                 \
        if (!f) { perror(path); exit(1); }                                    \
        fprintf(f, __VA_ARGS__);                                              \
        fclose(f);                                                            \
    } while (0)
    CONF("tolk.conf",
         /* no translation cache: every phrase pays the mock MT delay subtracted below */
         "core: { max_channels = %d; workers = 2; drain_timeout = 120.0; log_level = \"warn\"; "
         "translation_cache = 0; };\n",
         calls + 10);
    CONF("20-stt.conf",
         "instance: { name = \"stt\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", "
         "\"thank you\" ]; silence_ms = %d; latency_ms = %d; partial_ms = 0; }; };\n",
         SILENCE_MS, LATENCY_STT);
    CONF("30-mt.conf", "instance: { name = \"mt\"; plugin = \"mt_mock\"; settings: { latency_ms = %d; }; };\n",
         LATENCY_MT);
    CONF("40-tts.conf",
         "instance: { name = \"tts\"; plugin = \"tts_mock\"; settings: { latency_ms = %d; ms_per_char = 40; }; };\n",
         LATENCY_TTS);
    CONF("50-chains.conf",
         "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt\" ]; },\n"
         "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt\" ]; },\n"
         "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts\" ]; } );\n");
    /* each party speaks 1.2 s, then 2.8 s of silence while the other speaks
     * and hears the translation */
    CONF("60-calls.conf",
         "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = %d; "
         "start_spread_ms = 4000; phrases = 3; speech_ms = 1200; gap_ms = 2800; legs = \"both\"; "
         "mode = \"bidirectional\"; realtime = true; paced = true; repeat = true; }; };\n",
         calls);
    CONF("70-metrics.conf",
         "instance: { name = \"prom\"; plugin = \"metrics_prometheus\"; settings: { port = 0; }; };\n");
#undef CONF
}

static json_t *health(core *c, const char *name) {
    tolk_instance *inst = core_find_instance(c, name);
    json_t *d = NULL;
    inst->desc->health(inst->self, &d);
    return d;
}

static double jnum(json_t *o, const char *a, const char *b) {
    json_t *v = json_object_get(o, a);
    if (b) v = json_object_get(v, b);
    return json_number_value(v);
}

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 50;
    double seconds = argc > 2 ? atof(argv[2]) : 20;
    if (calls < 1 || seconds < 5) {
        fprintf(stderr, "usage: bench_calls [calls >= 1] [seconds >= 5]\n");
        return 2;
    }
    log_set_level(TOLK_LOG_WARN);
    char dir[] = "/tmp/tolk-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    write_conf(dir, calls);

    bench b = {0};
    double rss0 = rss_bytes();
    core *c = core_new(dir, NULL);
    b.c = c;
    c->obs = (core_observer){.phrase = on_phrase, .ud = &b};
    if (core_load(c) != 0) return 1;
    double rss_loaded = rss_bytes();
    double heap_loaded = (double)mallinfo2().uordblks;
    core_start_transports(c);
    /* warm up: every call started and through its first phrase */
    run_for(c, 6);
    double frames0 = metrics_value(c->m.frames_s);
    json_t *ph = health(c, "prom");
    scraper S = {.port = (int)jnum(ph, "port", NULL), .off = getenv("TOLK_BENCH_NO_SCRAPE") != NULL};
    json_decref(ph);
    pthread_t scraper_thread;
    if (pthread_create(&scraper_thread, NULL, scraper_main, &S) != 0) return 1;
    baseline B = {.cap = (size_t)(seconds * 50) + 100};
    B.late_ms = xcalloc(B.cap, sizeof(double));
    pthread_t baseline_thread;
    if (pthread_create(&baseline_thread, NULL, baseline_main, &B) != 0) return 1;
    double cpu0 = cpu_seconds(), t0 = mono_now();
    b.measuring = 1;
    double rss_peak = 0, heap_peak = 0;
    for (double t = 0; t < seconds; t += 1) {
        run_for(c, 1);
        double r = rss_bytes();
        if (r > rss_peak) rss_peak = r;
        struct mallinfo2 mi = mallinfo2();
        if ((double)mi.uordblks > heap_peak) heap_peak = (double)mi.uordblks;
    }
    double cpu = cpu_seconds() - cpu0, wall = mono_now() - t0;
    double frames = metrics_value(c->m.frames_s) - frames0;
    b.measuring = 0;
    B.stop = 1;
    pthread_join(baseline_thread, NULL);
    S.stop = 1;
    /* the scraper's last request needs the loop to be answered */
    while (pthread_tryjoin_np(scraper_thread, NULL) != 0) ev_run(c->loop, EVRUN_ONCE | EVRUN_NOWAIT);
    ph = health(c, "prom");
    double render_max_ms = jnum(ph, "max_render_seconds", NULL) * 1000.0;
    json_decref(ph);
    size_t active = c->active;

    /* let every call finish its phrases and hang up, then count */
    core_shutdown(c);
    double drain_end = mono_now() + 60;
    while (c->active && mono_now() < drain_end) ev_run(c->loop, EVRUN_ONCE);
    json_t *h = health(c, "calls");
    double sent = jnum(h, "frames_sent", "total");
    double processed = metrics_value(c->m.frames_s);
    double lost_in = sent - processed;

    sort_doubles(b.lat, b.n);
    double call_minutes = (double)active * wall / 60.0;
    printf("calls=%d window=%.0fs phrases=%zu lost_phrases=%zu frames_in=%.0f\n", calls, wall, b.phrases,
           b.lost, frames);
    printf("  core-added latency  p50 %.2f ms  p99 %.2f ms  max %.2f ms  (end of phrase -> first "
           "frame, minus %d ms of mock delays)\n",
           percentile_sorted(b.lat, b.n, 50), percentile_sorted(b.lat, b.n, 99), b.n ? b.lat[b.n - 1] : NAN, MOCK_DELAY_MS);
    printf("  playback jitter     p50 %.3f ms  p99 %.3f ms  max %.3f ms  over %.0f frames (overflow %.0f)\n",
           jnum(h, "jitter_p50_ms", NULL), jnum(h, "jitter_p99_ms", NULL), jnum(h, "jitter_max_ms", NULL),
           jnum(h, "jitter_frames", NULL), jnum(h, "jitter_overflow", NULL));
    sort_doubles(B.late_ms, B.n);
    double base_p99 = percentile_sorted(B.late_ms, B.n, 99), jitter_p99 = jnum(h, "jitter_p99_ms", NULL);
    printf("  timer baseline      p50 %.3f ms  p99 %.3f ms  max %.3f ms  (how late a bare 20 ms timer on "
           "its own thread woke, %zu wakes)\n",
           percentile_sorted(B.late_ms, B.n, 50), base_p99, B.n ? B.late_ms[B.n - 1] : NAN, B.n);
    printf("  jitter target       p99 %.3f ms <= baseline p99 %.3f + %.1f ms: %s\n", jitter_p99, base_p99,
           JITTER_MARGIN_MS, jitter_p99 <= base_p99 + JITTER_MARGIN_MS ? "met" : "NOT met");
    printf("  frames lost         %.0f in (sent %.0f, processed %.0f), %llu out unplayed; loop lag max %.1f ms\n",
           lost_in, sent, processed, (unsigned long long)c->out_frames_dropped,
           jnum(h, "feed_lag_max_ms", NULL));
    printf("  CPU                 %.3f s per call-minute (%.1f%% of one core for %zu calls)\n",
           call_minutes > 0 ? cpu / call_minutes : NAN, 100.0 * cpu / wall, active);
    printf("  RSS                 %.1f KiB per call (peak %.1f MiB, %.1f MiB before calls, %.1f MiB at start); "
           "heap in use %.1f KiB per call\n",
           (rss_peak - rss_loaded) / 1024.0 / calls, rss_peak / 1048576.0, rss_loaded / 1048576.0,
           rss0 / 1048576.0, (heap_peak - heap_loaded) / 1024.0 / calls);
    sort_doubles(S.ms, S.n);
    printf("  /metrics scrapes    %zu (%zu failed), %zu bytes; wall p50 %.2f ms  p99 %.2f ms  max %.2f ms; "
           "render (loop busy) max %.2f ms\n",
           S.n, S.failed, S.bytes, percentile_sorted(S.ms, S.n, 50), percentile_sorted(S.ms, S.n, 99), S.n ? S.ms[S.n - 1] : NAN,
           render_max_ms);
    fflush(stdout);
    json_decref(h);
    core_free(c);
    free(b.lat);
    free(B.late_ms);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    return 0;
}
