/* bench_cloud: the cloud provider plugins against their local fakes
 * (plugins/stt_deepgram/tests/dgfake.py, plugins/mt_deepl/tests/deeplfake.py,
 * plugins/tts_xtts/tests/xttsfake.py: Python processes on this machine,
 * sharing its cores with the core), with calls from transport_mock fed and
 * paced in real time. Latency is measured as everywhere in this project:
 * from the end of a phrase (as its audio arrived) to the first translated
 * frame handed to the transport.
 *
 *   bench_cloud chain CALLS SECONDS [batch]   (issue #14)
 *     Deepgram (Nova, v1) -> DeepL -> XTTS, the fakes' delays set to the
 *     original design's budget: the final result 150 ms after the end of a
 *     phrase (endpointing = 150: the fake Deepgram answers once 150 ms of
 *     silence has arrived), DeepL answers 80 ms after a request, XTTS's
 *     first audio 250 ms after a request. Target: p99 <= 150 + 80 + 250 +
 *     10 = 490 ms. Also DeepL requests/s and texts per request as the fake
 *     counts them, and CPU (the core's process; each fake's apart).
 *     "batch": mt_deepl's batch_ms = 10 (DeepL batching, off by default).
 *
 *   bench_cloud flux CALLS SECONDS [speculation]   (issue #13)
 *     Deepgram Flux (v2) with eager_eot_threshold set -> DeepL -> XTTS,
 *     the fakes' delays as in "chain" but the end of a turn decided by the
 *     fake Flux: EagerEndOfTurn after FLUX_EAGER_MS of silence, EndOfTurn
 *     after FLUX_EOT_MS (the fake's defaults; Deepgram documents no
 *     figure). "speculation": core.speculative_translation = true. Prints
 *     end of phrase -> first translated frame p50/p99, and how many
 *     speculations were confirmed or thrown away.
 *
 *   bench_cloud stt CALLS SECONDS   (issue #13)
 *     Bidirectional calls through the fake Deepgram (two streams a call),
 *     mt_mock and tts_mock after it. The recogniser's overhead: end of
 *     phrase -> final result (phrase report stt_ms) minus the fake's
 *     configured delay (endpointing, 300 ms here) p50/p99, target <= 2 ms
 *     p99; CPU and RSS per stream, against the same calls through stt_mock
 *     (run with "stt-mock" for that baseline). Speculation is measured in
 *     the flux mode.
 *
 *   bench_cloud stt-mock CALLS SECONDS   the baseline of the stt mode.
 *
 *   bench_cloud mt CALLS SECONDS [batch]   DeepL under load: stt_mock ->
 *     mt_deepl against the DeepL fake (80 ms) -> tts_mock; requests/s to
 *     the fake, texts per request, MT wait+request p50/p99, CPU.
 *
 * The fakes are started here (python3, top_srcdir from the environment or
 * "."), on ports of their own, and stopped at the end. The Deepgram side is
 * dgfast by default (plugins/stt_deepgram/tests/dgfast, dgfake.py's normal
 * service in C: the Python fake takes a whole core at 400 streams, and the
 * figures were the fake's), from top_builddir (environment, or "."; `make
 * bench-cloud` builds it); BENCH_DG_FAKE=python brings back dgfake.py. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core.h"
#include "log.h"
#include "metrics.h"

#define ENDPOINTING_CHAIN 150
#define DEEPL_MS 80
#define XTTS_MS 250
#define BUDGET_MS (ENDPOINTING_CHAIN + DEEPL_MS + XTTS_MS + 10)
#define ENDPOINTING_STT 300
#define FLUX_EAGER_MS 100
#define FLUX_EOT_MS 300

enum { DG, DL, XT, NFAKES };
static const char *const scripts[NFAKES] = {"plugins/stt_deepgram/tests/dgfake.py",
                                            "plugins/mt_deepl/tests/deeplfake.py",
                                            "plugins/tts_xtts/tests/xttsfake.py"};
static pid_t fake_pid[NFAKES];
static int fake_port[NFAKES];
static int dg_python; /* BENCH_DG_FAKE=python: dgfake.py rather than dgfast */

static int fake_start(int i) {
    const char *top = getenv("top_srcdir") ? getenv("top_srcdir") : ".";
    char portfile[] = "/tmp/tolk-bench-port-XXXXXX";
    int fd = mkstemp(portfile);
    if (fd < 0) return -1;
    close(fd);
    unlink(portfile);
    char *script = xasprintf("%s/%s", top, scripts[i]);
    const char *build = getenv("top_builddir") ? getenv("top_builddir") : ".";
    char *fast = xasprintf("%s/plugins/stt_deepgram/tests/dgfast", build);
    if (i == DG && !dg_python && access(fast, X_OK) != 0) {
        fprintf(stderr, "bench_cloud: %s not built (make plugins/stt_deepgram/tests/dgfast, "
                        "or BENCH_DG_FAKE=python)\n",
                fast);
        free(script);
        free(fast);
        return -1;
    }
    char eager[16], eot[16];
    snprintf(eager, sizeof eager, "%d", FLUX_EAGER_MS);
    snprintf(eot, sizeof eot, "%d", FLUX_EOT_MS);
    pid_t pid = fork();
    if (pid == 0) {
        /* dgfast takes on its command line what dgfake.py takes by /_fake/config */
        if (i == DG && !dg_python)
            execl(fast, fast, "--eager-ms", eager, "--eot-ms", eot, "--stats", portfile,
                  (char *)NULL);
        else
            execlp("python3", "python3", script, portfile, (char *)NULL);
        _exit(127);
    }
    free(script);
    free(fast);
    int port = 0;
    for (int t = 0; t < 500 && !port; t++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
        }
        if (!port) usleep(20000);
    }
    unlink(portfile);
    fake_pid[i] = pid;
    fake_port[i] = port;
    return port > 0 ? 0 : -1;
}

static void fakes_stop(void) {
    for (int i = 0; i < NFAKES; i++)
        if (fake_pid[i] > 0) {
            kill(fake_pid[i], SIGTERM);
            waitpid(fake_pid[i], NULL, 0);
            fake_pid[i] = 0;
        }
}

/* Killed (make bench-cloud interrupted): the fakes go too. kill() and
 * waitpid() are async-signal-safe. */
static void on_signal(int sig) {
    fakes_stop();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A blocking HTTP/1.0 exchange with a fake's control side; the body, new. */
static char *fake_http(int i, const char *method, const char *path, const char *body) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fake_port[i])};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return xstrdup("");
    }
    char *req = xasprintf("%s %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", method,
                          path, body ? strlen(body) : 0, body ? body : "");
    if (write(fd, req, strlen(req)) < 0) perror("write");
    free(req);
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    ssize_t n;
    while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 >= cap) buf = xrealloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';
    char *b = strstr(buf, "\r\n\r\n");
    char *out = xstrdup(b ? b + 4 : "");
    free(buf);
    return out;
}

/* CPU seconds of a process (utime + stime from /proc/PID/stat). */
static double proc_cpu(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
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

static double loadavg(void) {
    double l = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = NAN;
        fclose(f);
    }
    return l;
}

/* ---- what the calls did ---- */

typedef struct bench {
    double *lat, *stt, *mt, *tts, *play;
    size_t n, cap;
    size_t lost, phrases;
    int measuring;
    double stt_delay;
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
        b->stt = xrealloc(b->stt, b->cap * sizeof(double));
        b->mt = xrealloc(b->mt, b->cap * sizeof(double));
        b->tts = xrealloc(b->tts, b->cap * sizeof(double));
        b->play = xrealloc(b->play, b->cap * sizeof(double));
    }
    b->mt[b->n] = r->mt_ms + r->mt_wait_ms;
    b->tts[b->n] = r->tts_first_ms + r->tts_wait_ms;
    b->play[b->n] = r->playback_wait_ms;
    b->lat[b->n] = r->latency_ms;
    b->stt[b->n] = r->stt_ms - b->stt_delay;
    b->n++;
}

static void run_for(core *c, double seconds) {
    double end = mono_now() + seconds;
    while (mono_now() < end)
        ev_run(c->loop, EVRUN_ONCE);
}

static void put(const char *dir, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put(const char *dir, const char *name, const char *fmt, ...) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

typedef enum mode { M_CHAIN, M_STT, M_STT_MOCK, M_MT, M_FLUX } mode;

static void write_conf(const char *dir, mode m, int calls, int batch, int speculate) {
    put(dir, "tolk.conf",
        /* no translation cache: every phrase goes to the MT provider */
        "core: { max_channels = %d; workers = 2; drain_timeout = 120.0; log_level = \"warn\"; "
        "translation_cache = 0; speculative_translation = %s; };\n",
        calls + 10, speculate ? "true" : "false");
    if (m == M_STT_MOCK || m == M_MT)
        put(dir, "20-stt.conf",
            "instance: { name = \"stt\"; plugin = \"stt_mock\"; settings: { phrases = [ \"hello world\", "
            "\"thank you\", \"good morning\" ]; silence_ms = %d; latency_ms = 0; partial_ms = 0; }; };\n",
            ENDPOINTING_STT);
    else if (m == M_FLUX)
        put(dir, "20-stt.conf",
            "instance: { name = \"stt\"; plugin = \"stt_deepgram\"; settings: { url = \"ws://127.0.0.1:%d\"; "
            "api_key = \"bench-key\"; api = \"v2\"; eager_eot_threshold = 0.5; }; };\n",
            fake_port[DG]);
    else
        put(dir, "20-stt.conf",
            "instance: { name = \"stt\"; plugin = \"stt_deepgram\"; settings: { url = \"ws://127.0.0.1:%d\"; "
            "api_key = \"bench-key\"; endpointing = %d; utterance_end_ms = 0; vad_events = false; "
            "interim_results = %s; }; };\n",
            fake_port[DG], m == M_CHAIN ? ENDPOINTING_CHAIN : ENDPOINTING_STT, m == M_CHAIN ? "false" : "true");
    if (m == M_MT) {
        put(dir, "30-mt.conf",
            "instance: { name = \"mt\"; plugin = \"mt_deepl\"; settings: { url = \"http://127.0.0.1:%d\"; "
            "auth_key = \"bench-key\"; %s }; };\n",
            fake_port[DL], batch ? "batch_ms = 10;" : "");
        put(dir, "40-tts.conf",
            "instance: { name = \"tts\"; plugin = \"tts_mock\"; settings: { latency_ms = 10; ms_per_char = 40; }; "
            "};\n");
    } else if (m == M_CHAIN || m == M_FLUX) {
        put(dir, "30-mt.conf",
            "instance: { name = \"mt\"; plugin = \"mt_deepl\"; settings: { url = \"http://127.0.0.1:%d\"; "
            "auth_key = \"bench-key\"; %s }; };\n",
            fake_port[DL], batch ? "batch_ms = 10;" : "");
        /* one URL per concurrent stream the fake serves (a GPU each) */
        char urls[64 * 40] = "";
        for (int i = 0; i < 64; i++) {
            char u[40];
            snprintf(u, sizeof u, "%s\"http://127.0.0.1:%d\"", i ? ", " : "", fake_port[XT]);
            strcat(urls, u);
        }
        put(dir, "40-tts.conf",
            "instance: { name = \"tts\"; plugin = \"tts_xtts\"; settings: { urls = [ %s ]; "
            "studio_speaker = \"Claribel Dervla\"; }; };\n",
            urls);
    } else {
        put(dir, "30-mt.conf", "instance: { name = \"mt\"; plugin = \"mt_mock\"; settings: { latency_ms = 5; }; };\n");
        put(dir, "40-tts.conf",
            "instance: { name = \"tts\"; plugin = \"tts_mock\"; settings: { latency_ms = 10; ms_per_char = 40; }; "
            "};\n");
    }
    put(dir, "50-chains.conf",
        "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt\" ]; },\n"
        "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt\" ]; },\n"
        "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts\" ]; } );\n");
    /* as bench_calls: each party speaks 1.2 s, then 2.8 s of silence while
     * the other speaks and hears the translation */
    put(dir, "60-calls.conf",
        "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = %d; "
        "start_spread_ms = 4000; phrases = 3; speech_ms = 1200; gap_ms = 2800; legs = \"both\"; "
        "mode = \"bidirectional\"; realtime = true; paced = true; repeat = true; }; };\n",
        calls);
}

static double pct(double *v, size_t n, double p) { return n ? percentile_sorted(v, n, p) : NAN; }

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_cloud chain|flux|stt|stt-mock|mt CALLS SECONDS [batch|speculation]\n");
        return 2;
    }
    mode m = !strcmp(argv[1], "chain") ? M_CHAIN
             : !strcmp(argv[1], "flux") ? M_FLUX
             : !strcmp(argv[1], "stt") ? M_STT
             : !strcmp(argv[1], "mt")  ? M_MT
                                       : M_STT_MOCK;
    int calls = atoi(argv[2]);
    double seconds = atof(argv[3]);
    int batch = argc > 4 && !strcmp(argv[4], "batch");
    int speculate = argc > 4 && !strcmp(argv[4], "speculation");
    if (calls < 1 || seconds < 5) return 2;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    log_set_level(TOLK_LOG_WARN);
    dg_python = getenv("BENCH_DG_FAKE") && !strcmp(getenv("BENCH_DG_FAKE"), "python");
    int cloud_chain = m == M_CHAIN || m == M_FLUX;
    if ((cloud_chain || m == M_STT) && fake_start(DG) != 0) return 1;
    if ((cloud_chain || m == M_MT) && fake_start(DL) != 0) return 1;
    if (cloud_chain && fake_start(XT) != 0) {
        fakes_stop();
        return 1;
    }
    if (cloud_chain || m == M_MT) {
        char body[128];
        snprintf(body, sizeof body, "{\"delay_ms\": %d, \"record\": false}", DEEPL_MS);
        free(fake_http(DL, "POST", "/_fake/config", body));
    }
    if (m == M_FLUX && dg_python) {
        char body[128];
        snprintf(body, sizeof body, "{\"eager_ms\": %d, \"eot_ms\": %d}", FLUX_EAGER_MS, FLUX_EOT_MS);
        free(fake_http(DG, "POST", "/_fake/config", body));
    }
    if (cloud_chain) {
        char body[128];
        snprintf(body, sizeof body, "{\"delay_ms\": %d, \"streams\": 64, \"record\": false}", XTTS_MS);
        free(fake_http(XT, "POST", "/_fake/config", body));
    }
    char dir[] = "/tmp/tolk-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    write_conf(dir, m, calls, batch, speculate);

    bench b = {.stt_delay = m == M_CHAIN ? ENDPOINTING_CHAIN : m == M_FLUX ? FLUX_EOT_MS : ENDPOINTING_STT};
    double mt_mode_delay = ENDPOINTING_STT + DEEPL_MS + 10; /* stt_mock, DeepL fake, tts_mock */
    core *c = core_new(dir, NULL);
    c->obs = (core_observer){.phrase = on_phrase, .ud = &b};
    if (core_load(c) != 0) {
        fakes_stop();
        return 1;
    }
    run_for(c, 0.5); /* the studio speaker */
    double rss_loaded = rss_bytes();
    core_start_transports(c);
    run_for(c, 6); /* every call started and through its first phrase */
    double load0 = loadavg();
    double cpu0 = self_cpu(), t0 = mono_now();
    double fcpu0[NFAKES];
    for (int i = 0; i < NFAKES; i++)
        fcpu0[i] = fake_pid[i] ? proc_cpu(fake_pid[i]) : NAN;
    json_t *st0 = NULL;
    if (m == M_CHAIN || m == M_MT) {
        char *s = fake_http(DL, "GET", "/_fake/stats", NULL);
        st0 = json_loads(s, 0, NULL);
        free(s);
    }
    tolk_metric *spec_m = metrics_family("speculative_translations_total",
                                         "Translations started on a tentative end of phrase: outcome "
                                         "confirmed (played when the final result came) or discarded",
                                         TOLK_METRIC_COUNTER, "outcome", NULL, 0);
    double spec_ok0 = metrics_value(metrics_series_v(spec_m, "confirmed", NULL));
    double spec_no0 = metrics_value(metrics_series_v(spec_m, "discarded", NULL));
    b.measuring = 1;
    double rss_peak = 0;
    for (double t = 0; t < seconds; t += 1) {
        run_for(c, 1);
        double r = rss_bytes();
        if (r > rss_peak) rss_peak = r;
    }
    double cpu = self_cpu() - cpu0, wall = mono_now() - t0;
    b.measuring = 0;
    double fcpu[NFAKES];
    for (int i = 0; i < NFAKES; i++)
        fcpu[i] = fake_pid[i] ? proc_cpu(fake_pid[i]) - fcpu0[i] : NAN;
    json_t *st1 = NULL;
    if (m == M_CHAIN || m == M_MT) {
        char *s = fake_http(DL, "GET", "/_fake/stats", NULL);
        st1 = json_loads(s, 0, NULL);
        free(s);
    }
    double load1 = loadavg();
    size_t active = c->active;
    int streams = (int)active * 2;

    sort_doubles(b.lat, b.n);
    printf("bench_cloud %s%s: calls=%d (bidirectional, %d recogniser streams) window=%.0fs phrases=%zu "
           "lost=%zu; load average %.1f -> %.1f (2 cores, shared)\n",
           argv[1], batch ? " batch" : "", calls, streams, wall, b.phrases, b.lost, load0, load1);
    if (fake_pid[DG]) printf("  fake Deepgram: %s\n", dg_python ? "dgfake.py (Python)" : "dgfast (C)");
    if (m == M_FLUX) {
        double ok = metrics_value(metrics_series_v(spec_m, "confirmed", NULL)) - spec_ok0;
        double no = metrics_value(metrics_series_v(spec_m, "discarded", NULL)) - spec_no0;
        printf("  speculative translation %s\n", speculate ? "on" : "off");
        printf("  end of phrase -> first translated frame  p50 %.1f ms  p99 %.1f ms  max %.1f ms  (fake delays: "
               "Flux EagerEndOfTurn %d ms / EndOfTurn %d ms of silence, DeepL %d ms, XTTS first audio %d ms)\n",
               pct(b.lat, b.n, 50), pct(b.lat, b.n, 99), b.n ? b.lat[b.n - 1] : NAN, FLUX_EAGER_MS, FLUX_EOT_MS,
               DEEPL_MS, XTTS_MS);
        printf("  speculations in the window: %.0f confirmed, %.0f thrown away (%.1f%%)\n", ok, no,
               ok + no > 0 ? 100 * no / (ok + no) : 0.0);
        printf("  CPU: tolk %.1f%% of one core; fakes: Deepgram %.1f%%, DeepL %.1f%%, XTTS %.1f%%\n",
               100 * cpu / wall, 100 * fcpu[DG] / wall, 100 * fcpu[DL] / wall, 100 * fcpu[XT] / wall);
    } else if (m == M_MT) {
        sort_doubles(b.mt, b.n);
        printf("  end of phrase -> first translated frame  p50 %.1f ms  p99 %.1f ms  max %.1f ms  (stated delays "
               "%.0f ms: stt_mock 300 ms of silence, DeepL fake %d ms, tts_mock 10 ms)\n",
               pct(b.lat, b.n, 50), pct(b.lat, b.n, 99), b.n ? b.lat[b.n - 1] : NAN, mt_mode_delay, DEEPL_MS);
        printf("  MT (wait+request) p50 %.1f ms  p99 %.1f ms\n", pct(b.mt, b.n, 50), pct(b.mt, b.n, 99));
        double reqs =
            json_number_value(json_object_get(st1, "requests")) - json_number_value(json_object_get(st0, "requests"));
        double texts =
            json_number_value(json_object_get(st1, "texts")) - json_number_value(json_object_get(st0, "texts"));
        printf("  DeepL fake: %.1f requests/s, %.2f texts per request (max %.0f)\n", reqs / wall,
               reqs > 0 ? texts / reqs : NAN, json_number_value(json_object_get(st1, "max_texts")));
        printf("  CPU: tolk %.1f%% of one core (%.4f s per call-minute); DeepL fake %.1f%%\n", 100 * cpu / wall,
               cpu / (active * wall / 60.0), 100 * fcpu[DL] / wall);
        json_decref(st0);
        json_decref(st1);
    } else if (m == M_CHAIN) {
        printf("  end of phrase -> first translated frame  p50 %.1f ms  p99 %.1f ms  max %.1f ms  "
               "(fake delays %d + %d + %d ms; target p99 <= %d ms: %s)\n",
               pct(b.lat, b.n, 50), pct(b.lat, b.n, 99), b.n ? b.lat[b.n - 1] : NAN, ENDPOINTING_CHAIN, DEEPL_MS,
               XTTS_MS, BUDGET_MS, pct(b.lat, b.n, 99) <= BUDGET_MS ? "met" : "NOT met");
        sort_doubles(b.stt, b.n);
        sort_doubles(b.mt, b.n);
        sort_doubles(b.tts, b.n);
        sort_doubles(b.play, b.n);
        printf("  stages p50/p99: STT final - %d ms %.1f/%.1f, MT (wait+request) %.1f/%.1f, TTS first audio "
               "(wait+request) %.1f/%.1f, first audio -> frame out %.1f/%.1f ms\n",
               ENDPOINTING_CHAIN, pct(b.stt, b.n, 50), pct(b.stt, b.n, 99), pct(b.mt, b.n, 50), pct(b.mt, b.n, 99),
               pct(b.tts, b.n, 50), pct(b.tts, b.n, 99), pct(b.play, b.n, 50), pct(b.play, b.n, 99));
        double reqs =
            json_number_value(json_object_get(st1, "requests")) - json_number_value(json_object_get(st0, "requests"));
        double texts =
            json_number_value(json_object_get(st1, "texts")) - json_number_value(json_object_get(st0, "texts"));
        printf("  DeepL fake: %.1f requests/s, %.2f texts per request (max %.0f)\n", reqs / wall,
               reqs > 0 ? texts / reqs : NAN, json_number_value(json_object_get(st1, "max_texts")));
        printf("  CPU: tolk %.1f%% of one core (%.4f s per call-minute); fakes: Deepgram %.1f%%, DeepL %.1f%%, "
               "XTTS %.1f%%\n",
               100 * cpu / wall, cpu / (active * wall / 60.0), 100 * fcpu[DG] / wall, 100 * fcpu[DL] / wall,
               100 * fcpu[XT] / wall);
        json_decref(st0);
        json_decref(st1);
    } else {
        sort_doubles(b.stt, b.n);
        printf("  end of phrase -> final, minus the %s's %d ms  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
               m == M_STT ? "fake Deepgram" : "stt_mock", ENDPOINTING_STT, pct(b.stt, b.n, 50), pct(b.stt, b.n, 99),
               b.n ? b.stt[b.n - 1] : NAN);
        printf("  end of phrase -> first translated frame  p50 %.1f ms  p99 %.1f ms\n", pct(b.lat, b.n, 50),
               pct(b.lat, b.n, 99));
        printf("  CPU: tolk %.1f%% of one core, %.3f ms per stream-second", 100 * cpu / wall,
               streams ? 1000 * cpu / (streams * wall) : NAN);
        if (m == M_STT) printf("; fake Deepgram %.1f%% of one core", 100 * fcpu[DG] / wall);
        printf("\n  RSS: %.1f KiB per stream (peak %.1f MiB, %.1f MiB loaded)\n",
               streams ? (rss_peak - rss_loaded) / 1024.0 / streams : NAN, rss_peak / 1048576.0,
               rss_loaded / 1048576.0);
    }
    fflush(stdout);
    core_shutdown(c);
    double drain_end = mono_now() + 30;
    while (c->active && mono_now() < drain_end)
        ev_run(c->loop, EVRUN_ONCE);
    core_free(c);
    fakes_stop();
    free(b.lat);
    free(b.stt);
    free(b.mt);
    free(b.tts);
    free(b.play);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) != 0;
}
