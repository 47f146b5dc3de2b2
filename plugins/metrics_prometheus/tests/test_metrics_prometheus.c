/* metrics_prometheus through the real core: a mock call runs (transport_mock
 * + stt/mt/tts mocks) while a client thread talks HTTP to the plugin over
 * loopback and the main thread turns the core's loop, as tolkd does. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "testutil.h"

/* ------------------------------------------------------------------ */
/* Fixture: a core with a mock call and the exporter on a free port     */

typedef struct fx {
    char *dir;
    core *c;
    int port;
} fx;

static void write_prom(fx *F, const char *settings) {
    tu_write(F->dir, "70-metrics.conf",
             "instance: { name = \"prom\"; plugin = \"metrics_prometheus\"; settings: { %s }; };\n",
             settings);
}

static int prom_port(core *c, const char *instance) {
    return (int)tu_health_int(c, instance, "port");
}

static void start_core(fx *F, const char *prom_settings, const char *transport) {
    F->dir = tu_tmpdir();
    tu_write(F->dir, "tolk.conf",
             "core: { workers = 1; drain_timeout = 1.0; log_level = \"info\"; };\n");
    tu_write_mock_pipeline(F->dir);
    if (transport)
        tu_write(F->dir, "60-transport.conf",
                 "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { %s }; };\n",
                 transport);
    write_prom(F, prom_settings);
    F->c = core_new(F->dir, NULL);
    assert_int_equal(core_load(F->c), 0);
    assert_int_equal(core_start_transports(F->c), 0);
    F->port = prom_port(F->c, "prom");
    assert_true(F->port > 0);
}

static void stop_core(fx *F) {
    if (F->c) core_free(F->c);
    F->c = NULL;
    tu_rm_rf(F->dir);
    free(F->dir);
    F->dir = NULL;
}

#define LIVE_CALL "calls = 1; phrases = 1000; speech_ms = 600; gap_ms = 400;"

static int setup(void **state) {
    fx *F = calloc(1, sizeof *F);
    tu_log_capture();
    start_core(F, "port = 0; idle_timeout = 1; max_connections = 8;", LIVE_CALL);
    *state = F;
    return 0;
}

static int teardown(void **state) {
    fx *F = *state;
    stop_core(F);
    free(F);
    tu_log_clear();
    return 0;
}

/* ------------------------------------------------------------------ */
/* Requests from a client thread while the loop turns                  */

typedef struct req {
    int port, family;
    const char *raw;  /* NULL: GET path with Connection: close */
    const char *path;
    int head_only;
    int read_all; /* read until the server closes; the bytes in r.body */
    int rc;
    double seconds;
    http_resp r;
    atomic_int done;
} req;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *client_main(void *ud) {
    req *q = ud;
    double t0 = now_s();
    int fd = httpc_connect(q->family ? q->family : 4, q->port);
    if (fd < 0) {
        q->rc = -1;
    } else {
        char buf[512];
        const char *raw = q->raw;
        if (!raw) {
            snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                     q->path);
            raw = buf;
        }
        if (q->read_all) {
            q->rc = send(fd, raw, strlen(raw), MSG_NOSIGNAL) == (ssize_t)strlen(raw) ? 0 : -1;
            size_t cap = 1 << 16;
            q->r.body = malloc(cap);
            struct timeval tv = {10, 0};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            for (ssize_t n; (n = recv(fd, q->r.body + q->r.body_len, cap - q->r.body_len - 1, 0)) > 0;) {
                q->r.body_len += (size_t)n;
                if (cap - q->r.body_len < 4096) q->r.body = realloc(q->r.body, cap *= 2);
            }
            q->r.body[q->r.body_len] = 0;
        } else {
            q->rc = httpc_exchange(fd, raw, q->head_only, 10, &q->r);
        }
        close(fd);
    }
    q->seconds = now_s() - t0;
    atomic_store(&q->done, 1);
    return NULL;
}

static int req_done(void *ud) { return atomic_load(&((req *)ud)->done); }

static void run_req(core *c, req *q) {
    pthread_t t;
    atomic_store(&q->done, 0);
    assert_int_equal(pthread_create(&t, NULL, client_main, q), 0);
    tu_run_until(c, req_done, q, 15);
    pthread_join(t, NULL);
}

static void get(fx *F, const char *path, req *q) {
    memset(q, 0, sizeof *q);
    q->port = F->port;
    q->path = path;
    run_req(F->c, q);
    assert_int_equal(q->rc, 0);
}

/* ------------------------------------------------------------------ */
/* A small parser of the text format, to check its rules               */

typedef struct sample {
    char name[128];
    char labels[512]; /* as written, between the braces */
    char le[48];      /* the le label's value, if any */
    char *raw;        /* the whole line */
    double value;
} sample;

typedef struct expo {
    sample *s;
    size_t n, cap;
    char **help, **type; /* "name text" / "name type" lines, in order */
    size_t nhelp, ntype;
    char *text;
} expo;

/* Reads one label value after the opening quote; returns the closing quote. */
static const char *skip_value(const char *p) {
    for (; *p && *p != '"'; p++)
        if (*p == '\\') {
            assert_true(p[1] == '\\' || p[1] == '"' || p[1] == 'n');
            p++;
        }
    assert_int_equal(*p, '"');
    return p;
}

static void parse_expo(const char *body, size_t len, expo *E) {
    memset(E, 0, sizeof *E);
    assert_true(len > 0);
    assert_int_equal(body[len - 1], '\n'); /* the last line ends with \n */
    E->text = strndup(body, len);
    char *save = NULL;
    for (char *line = strtok_r(E->text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "# HELP ", 7)) {
            E->help = realloc(E->help, (E->nhelp + 1) * sizeof *E->help);
            E->help[E->nhelp++] = line + 7;
            continue;
        }
        if (!strncmp(line, "# TYPE ", 7)) {
            E->type = realloc(E->type, (E->ntype + 1) * sizeof *E->type);
            E->type[E->ntype++] = line + 7;
            continue;
        }
        assert_true(line[0] != '#');
        if (E->n == E->cap) E->s = realloc(E->s, (E->cap = E->cap * 2 + 256) * sizeof *E->s);
        sample *s = &E->s[E->n++];
        memset(s, 0, sizeof *s);
        s->raw = line;
        size_t nl = strcspn(line, "{ ");
        assert_true(nl > 0 && nl < sizeof s->name);
        memcpy(s->name, line, nl);
        const char *p = line + nl;
        if (*p == '{') {
            const char *start = ++p;
            while (*p != '}') {
                const char *eq = strchr(p, '=');
                assert_non_null(eq);
                assert_int_equal(eq[1], '"');
                const char *end = skip_value(eq + 2);
                if (eq - p == 2 && !strncmp(p, "le", 2)) {
                    size_t vl = (size_t)(end - eq - 2);
                    assert_true(vl < sizeof s->le);
                    memcpy(s->le, eq + 2, vl);
                }
                p = end + 1;
                if (*p == ',') p++;
            }
            assert_true((size_t)(p - start) < sizeof s->labels);
            memcpy(s->labels, start, (size_t)(p - start));
            p++;
        }
        assert_int_equal(*p, ' ');
        char *endv;
        s->value = strtod(p + 1, &endv);
        assert_true(endv != p + 1);
        assert_true(*endv == 0); /* no timestamps */
    }
}

static void free_expo(expo *E) {
    free(E->s);
    free(E->help);
    free(E->type);
    free(E->text);
}

static const sample *find(const expo *E, const char *name, const char *labels) {
    for (size_t i = 0; i < E->n; i++)
        if (!strcmp(E->s[i].name, name) && !strcmp(E->s[i].labels, labels ? labels : ""))
            return &E->s[i];
    return NULL;
}

static const char *type_of(const expo *E, const char *name) {
    size_t nl = strlen(name);
    for (size_t i = 0; i < E->ntype; i++)
        if (!strncmp(E->type[i], name, nl) && E->type[i][nl] == ' ') return E->type[i] + nl + 1;
    return NULL;
}

static const char *help_of(const expo *E, const char *name) {
    size_t nl = strlen(name);
    for (size_t i = 0; i < E->nhelp; i++)
        if (!strncmp(E->help[i], name, nl) && E->help[i][nl] == ' ') return E->help[i] + nl + 1;
    return NULL;
}

/* The family a sample belongs to: its own name, or a histogram's base name. */
static const char *family_of(const expo *E, const sample *s, char *buf, size_t n) {
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++) {
        size_t nl = strlen(s->name), sl = strlen(sfx[i]);
        if (nl > sl && !strcmp(s->name + nl - sl, sfx[i])) {
            snprintf(buf, n, "%.*s", (int)(nl - sl), s->name);
            const char *t = type_of(E, buf);
            if (t && !strcmp(t, "histogram")) return buf;
        }
    }
    return s->name;
}

/* The rules of format 0.0.4 that hold for any output: one HELP and one TYPE
 * per family, before its samples, each family's lines together, unique
 * series, and for histograms cumulative buckets in increasing le, the
 * +Inf bucket equal to _count, then _sum and _count. */
static void check_rules(const expo *E) {
    for (size_t i = 0; i < E->ntype; i++)
        for (size_t j = i + 1; j < E->ntype; j++) {
            size_t a = strcspn(E->type[i], " "), b = strcspn(E->type[j], " ");
            assert_false(a == b && !strncmp(E->type[i], E->type[j], a));
        }
    assert_int_equal(E->nhelp, E->ntype);
    char prev[128] = "", fam[128];
    char done[256][128];
    size_t ndone = 0;
    for (size_t i = 0; i < E->n; i++) {
        const sample *s = &E->s[i];
        const char *f = family_of(E, s, fam, sizeof fam);
        assert_non_null(type_of(E, f));
        assert_non_null(help_of(E, f));
        if (strcmp(f, prev)) {
            for (size_t k = 0; k < ndone; k++) assert_string_not_equal(done[k], f); /* contiguous */
            if (ndone < 256) snprintf(done[ndone++], sizeof done[0], "%s", f);
            snprintf(prev, sizeof prev, "%s", f);
        }
        for (size_t j = i + 1; j < E->n && j < i + 64; j++) /* near duplicates */
            assert_false(!strcmp(s->name, E->s[j].name) && !strcmp(s->labels, E->s[j].labels));
        if (strcmp(type_of(E, f), "histogram") || strcmp(s->name + strlen(f), "_bucket")) continue;
        if (i > 0 && !strcmp(E->s[i - 1].name, s->name)) continue; /* not the first bucket */
        /* a histogram series: buckets up to +Inf, then _sum, then _count */
        size_t j = i;
        double last_le = -INFINITY, last = 0;
        for (; !strcmp(E->s[j].name, s->name); j++) {
            double le = strtod(E->s[j].le, NULL);
            assert_true(E->s[j].le[0]);
            assert_true(le > last_le);
            assert_true(E->s[j].value >= last);
            last_le = le, last = E->s[j].value;
            if (!strcmp(E->s[j].le, "+Inf")) {
                j++;
                break;
            }
        }
        assert_true(isinf(last_le));
        char want[160];
        snprintf(want, sizeof want, "%s_sum", f);
        assert_string_equal(E->s[j].name, want);
        snprintf(want, sizeof want, "%s_count", f);
        assert_string_equal(E->s[j + 1].name, want);
        assert_true(E->s[j + 1].value == last); /* +Inf bucket == count */
        assert_string_equal(E->s[j].labels, E->s[j + 1].labels);
    }
}

static void scrape(fx *F, expo *E, req *q) {
    get(F, "/metrics", q);
    assert_int_equal(q->r.status, 200);
    char *ct = httpc_header(&q->r, "content-type");
    assert_non_null(ct);
    assert_string_equal(ct, "text/plain; version=0.0.4; charset=utf-8");
    free(ct);
    parse_expo(q->r.body, q->r.body_len, E);
    check_rules(E);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

static int frames_seen(void *ud) { return metrics_value(((core *)ud)->m.frames_s) >= 25; }
static int translated(void *ud) { return metrics_value(((core *)ud)->m.translations_s) >= 1; }

/* The core's own metrics, fed by the running mock call, and the process's. */
static void test_core_and_process_metrics(void **state) {
    fx *F = *state;
    assert_true(tu_run_until(F->c, translated, F->c, 10));
    expo E;
    req q;
    scrape(F, &E, &q);
    const sample *s = find(&E, "frames_processed_total", NULL);
    assert_non_null(s);
    assert_true(s->value >= 25);
    assert_string_equal(type_of(&E, "frames_processed_total"), "counter");
    /* every metric of the spec is announced (HELP and TYPE) from the
     * first scrape, with or without series yet */
    static const char *const spec[][2] = {
        {"translation_latency_seconds", "histogram"}, {"component_latency_milliseconds", "histogram"},
        {"frames_processed_total", "counter"},        {"translations_completed_total", "counter"},
        {"audio_bytes_processed_total", "counter"},   {"words_translated_total", "counter"},
        {"errors_total", "counter"},                  {"recoveries_total", "counter"},
        {"queue_depth", "gauge"},                     {"queue_wait_time_milliseconds", "histogram"},
        {"active_channels", "gauge"},                 {"channel_duration_seconds", "histogram"},
        {"service_uptime_seconds", "gauge"},          {"service_health", "gauge"},
        {"success_rate", "gauge"},                    {"pipe_buffer_utilization", "gauge"},
        {"voice_embedding_cache_size", "gauge"},      {"translation_cache_hit_rate", "gauge"},
        {"process_cpu_seconds_total", "counter"},     {"process_resident_memory_bytes", "gauge"},
        {"process_open_fds", "gauge"},                {"process_start_time_seconds", "gauge"},
    };
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        const char *t = type_of(&E, spec[i][0]);
        if (!t) fail_msg("%s: no TYPE line", spec[i][0]);
        assert_string_equal(t, spec[i][1]);
        assert_non_null(help_of(&E, spec[i][0]));
    }
    /* the queue of every tier of the pipeline has its depth and wait */
    static const char *const queues[] = {"input", "stt", "mt", "tts", "playback"};
    for (size_t i = 0; i < 5; i++) {
        char lbl[64];
        snprintf(lbl, sizeof lbl, "queue=\"%s\"", queues[i]);
        assert_non_null(find(&E, "queue_depth", lbl));
        assert_non_null(find(&E, "queue_wait_time_milliseconds_count", lbl));
    }
    /* the mock call's phrases went through MT's translation cache */
    assert_non_null(find(&E, "translation_cache_hit_rate", "component=\"mt-a\""));
    assert_string_equal(type_of(&E, "translation_latency_seconds"), "histogram");
    assert_non_null(find(&E, "translation_latency_seconds_count",
                         "source_lang=\"en\",target_lang=\"es\",stage=\"total\""));
    assert_string_equal(type_of(&E, "queue_wait_time_milliseconds"), "histogram");
    assert_non_null(s = find(&E, "translations_completed_total", NULL));
    assert_true(s->value >= 1);
    assert_string_equal(type_of(&E, "active_channels"), "gauge");
    s = find(&E, "active_channels", NULL);
    assert_non_null(s);
    assert_true(s->value == (double)F->c->active);
    assert_non_null(find(&E, "queue_depth", "queue=\"stt\""));
    assert_non_null(find(&E, "queue_wait_time_milliseconds_bucket", "queue=\"mt\",le=\"+Inf\""));
    /* audio bytes are 640 per frame: both counters come from the same code path */
    const sample *bytes = find(&E, "audio_bytes_processed_total", NULL);
    assert_non_null(bytes);
    assert_true(bytes->value >= 25 * 640.0);

    time_t now = time(NULL);
    s = find(&E, "process_start_time_seconds", NULL);
    assert_non_null(s);
    assert_true(s->value > (double)now - 3600 && s->value <= (double)now + 1);
    s = find(&E, "process_open_fds", NULL);
    assert_non_null(s);
    assert_true(s->value >= 3);
    const sample *max = find(&E, "process_max_fds", NULL);
    assert_non_null(max);
    assert_true(max->value >= s->value);
    assert_non_null(s = find(&E, "process_resident_memory_bytes", NULL));
    assert_true(s->value > 1e6);
    assert_non_null(s = find(&E, "process_virtual_memory_bytes", NULL));
    assert_true(s->value >= find(&E, "process_resident_memory_bytes", NULL)->value);
    assert_non_null(s = find(&E, "process_cpu_seconds_total", NULL));
    assert_true(s->value >= 0);
    assert_string_equal(type_of(&E, "process_cpu_seconds_total"), "counter");
    free_expo(&E);
    httpc_free(&q.r);
}

/* Escaping, float formatting, histogram maths and label order, on families
 * this test registers in the (process-wide) registry. */
static void test_exposition_details(void **state) {
    fx *F = *state;
    tolk_metric *esc = metrics_family("tpx_escapes_total", "Backslash \\ and\nnewline, \"quotes\" kept",
                                      TOLK_METRIC_COUNTER, "path,msg", NULL, 0);
    metrics_add(metrics_series_v(esc, "C:\\DIR\\FILE.TXT", "Cannot find file:\n\"FILE.TXT\"", NULL), 3);
    metrics_add(metrics_series_v(esc, "bad\xff" "byte", "caf\xc3\xa9", NULL), 1);

    static const double bounds[] = {0.005, 0.1, 1, 2.5, 1000000};
    tolk_metric *h = metrics_family("tpx_latency_seconds", "Test histogram", TOLK_METRIC_HISTOGRAM,
                                    "zeta,alpha", bounds, ARRAY_LEN(bounds));
    static const double obs[] = {0.001, 0.005, 0.05, 0.7, 3, 1e7, 0.1};
    tolk_series *hs = metrics_series_v(h, "z", "a", NULL);
    double sum = 0;
    for (size_t i = 0; i < ARRAY_LEN(obs); i++) metrics_observe(hs, obs[i]), sum += obs[i];
    metrics_series_v(h, "empty", "", NULL);

    tolk_metric *g = metrics_family("tpx_values", "Float formatting", TOLK_METRIC_GAUGE, "v", NULL, 0);
    static const struct {
        const char *label;
        double v;
        const char *text;
    } vals[] = {{"nan", NAN, "NaN"},         {"inf", INFINITY, "+Inf"},
                {"-inf", -INFINITY, "-Inf"}, {"big", 12345678901234.0, "12345678901234"},
                {"tenth", 0.1, "0.1"},       {"tiny", 1e-7, "1e-07"},
                {"neg", -2.5, "-2.5"},       {"zero", 0, "0"},
                {"third", 1.0 / 3, "0.3333333333333333"}};
    for (size_t i = 0; i < ARRAY_LEN(vals); i++)
        metrics_set(metrics_series_v(g, vals[i].label, NULL), vals[i].v);

    expo E;
    req q;
    scrape(F, &E, &q);
    const char *body = q.r.body;

    /* HELP escapes \ and newline only; label values also escape " */
    assert_non_null(strstr(body, "# HELP tpx_escapes_total Backslash \\\\ and\\nnewline, \"quotes\" kept\n"
                                 "# TYPE tpx_escapes_total counter\n"));
    assert_non_null(strstr(body, "tpx_escapes_total{path=\"C:\\\\DIR\\\\FILE.TXT\","
                                 "msg=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 3\n"));
    /* a byte that is not UTF-8 becomes U+FFFD; valid UTF-8 passes */
    assert_non_null(strstr(body, "tpx_escapes_total{path=\"bad\xef\xbf\xbd" "byte\",msg=\"caf\xc3\xa9\"} 1\n"));

    /* labels in the family's order, le last; cumulative counts computed
     * from the observations above (le is inclusive) */
    static const char *const le[] = {"0.005", "0.1", "1", "2.5", "1000000", "+Inf"};
    for (size_t b = 0; b <= ARRAY_LEN(bounds); b++) {
        char labels[128];
        snprintf(labels, sizeof labels, "zeta=\"z\",alpha=\"a\",le=\"%s\"", le[b]);
        const sample *s = find(&E, "tpx_latency_seconds_bucket", labels);
        assert_non_null(s);
        size_t want = 0;
        for (size_t i = 0; i < ARRAY_LEN(obs); i++)
            if (b == ARRAY_LEN(bounds) || obs[i] <= bounds[b]) want++;
        assert_true(s->value == (double)want);
    }
    const sample *s = find(&E, "tpx_latency_seconds_sum", "zeta=\"z\",alpha=\"a\"");
    assert_non_null(s);
    assert_true(s->value == sum); /* printed so that it reads back exactly */
    s = find(&E, "tpx_latency_seconds_count", "zeta=\"z\",alpha=\"a\"");
    assert_non_null(s);
    assert_true(s->value == (double)ARRAY_LEN(obs));
    /* integers without exponent noise, even for le */
    assert_non_null(strstr(body, "tpx_latency_seconds_bucket{zeta=\"z\",alpha=\"a\",le=\"1000000\"} 6\n"));
    /* a series never observed: zero buckets, sum 0 */
    assert_non_null(strstr(body, "tpx_latency_seconds_bucket{zeta=\"empty\",alpha=\"\",le=\"+Inf\"} 0\n"
                                 "tpx_latency_seconds_sum{zeta=\"empty\",alpha=\"\"} 0\n"
                                 "tpx_latency_seconds_count{zeta=\"empty\",alpha=\"\"} 0\n"));
    for (size_t i = 0; i < ARRAY_LEN(vals); i++) {
        char line[96];
        snprintf(line, sizeof line, "tpx_values{v=\"%s\"} %s\n", vals[i].label, vals[i].text);
        assert_non_null(strstr(body, line));
    }
    free_expo(&E);
    httpc_free(&q.r);
}

/* tolkd with many calls has many fds open: connections with fd numbers far
 * above lws's table size (max_connections + 16) still work. */
static void test_high_fd_numbers(void **state) {
    fx *F = *state;
    int fds[400], n = 0;
    for (; n < 400; n++)
        if ((fds[n] = dup(0)) < 0) break;
    assert_true(n >= 100);
    req q;
    get(F, "/metrics", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    assert_true(tu_health_int(F->c, "prom", "accepted") >= 2);
    for (int i = 0; i < n; i++) close(fds[i]);
}

static void test_healthz(void **state) {
    fx *F = *state;
    assert_true(tu_run_until(F->c, frames_seen, F->c, 10));
    req q;
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    char *ct = httpc_header(&q.r, "content-type");
    assert_string_equal(ct, "application/json");
    free(ct);
    json_t *j = json_loads(q.r.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    assert_int_equal(json_integer_value(json_object_get(j, "active_channels")), (json_int_t)F->c->active);
    assert_true(json_number_value(json_object_get(j, "uptime_seconds")) > 0);
    assert_true(json_is_object(json_object_get(j, "providers")));
    json_decref(j);
    httpc_free(&q.r);

    /* a provider reported FAILED in the registry: 503. The core does not
     * feed service_health yet, so the test sets the series itself. */
    tolk_metric *hf = metrics_family("service_health", "Provider health: 0 healthy .. 3 failed",
                                     TOLK_METRIC_GAUGE, "component", NULL, 0);
    assert_non_null(hf);
    tolk_series *bad = metrics_series_v(hf, "tpx-provider", NULL);
    metrics_set(bad, TOLK_DEGRADED);
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    j = json_loads(q.r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "degraded");
    json_decref(j);
    httpc_free(&q.r);

    metrics_set(bad, TOLK_FAILED);
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 503);
    j = json_loads(q.r.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "failed");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "providers"), "tpx-provider")),
                        "failed");
    json_decref(j);
    httpc_free(&q.r);
    metrics_set(bad, TOLK_HEALTHY); /* the registry outlives this test */
}

static void test_bad_requests(void **state) {
    fx *F = *state;
    req q;
    get(F, "/nope", &q);
    assert_int_equal(q.r.status, 404);
    httpc_free(&q.r);
    get(F, "/metrics/extra", &q);
    assert_int_equal(q.r.status, 404);
    httpc_free(&q.r);

    memset(&q, 0, sizeof q);
    q.port = F->port;
    q.raw = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\nabc=def";
    run_req(F->c, &q);
    assert_int_equal(q.rc, 0);
    assert_int_equal(q.r.status, 405);
    char *allow = httpc_header(&q.r, "allow");
    assert_non_null(allow);
    assert_string_equal(allow, "GET, HEAD");
    free(allow);
    httpc_free(&q.r);

    memset(&q, 0, sizeof q);
    q.port = F->port;
    q.raw = "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    run_req(F->c, &q);
    assert_int_equal(q.r.status, 405);
    httpc_free(&q.r);

    /* HEAD: the headers of a GET, no body (httpc fails if bytes follow) */
    memset(&q, 0, sizeof q);
    q.port = F->port;
    q.raw = "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    q.head_only = 1;
    run_req(F->c, &q);
    assert_int_equal(q.rc, 0);
    assert_int_equal(q.r.status, 200);
    char *cl = httpc_header(&q.r, "content-length");
    assert_non_null(cl);
    assert_true(atol(cl) > 1000);
    free(cl);
    assert_int_equal(q.r.body_len, 0);
    assert_true(q.r.eof);
    httpc_free(&q.r);

    /* HTTP/1.1 only: a WebSocket or h2c upgrade is refused, not held open */
    static const char *const upgrades[] = {
        "GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"};
    for (size_t i = 0; i < ARRAY_LEN(upgrades); i++) {
        memset(&q, 0, sizeof q);
        q.port = F->port;
        q.raw = upgrades[i];
        q.read_all = 1;
        run_req(F->c, &q);
        assert_int_equal(q.rc, 0);
        assert_true(q.seconds < 2.0); /* closed by the server, not by the client's timeout */
        assert_non_null(strstr(q.r.body, " 501 "));
        httpc_free(&q.r);
    }

    /* keep-alive and pipelining: POST with a body, then two GETs on one
     * connection; the body is not taken for a request */
    memset(&q, 0, sizeof q);
    q.port = F->port;
    q.raw = "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    q.read_all = 1;
    run_req(F->c, &q);
    assert_int_equal(q.rc, 0);
    const char *p1 = strstr(q.r.body, "HTTP/1.1 405 ");
    const char *p2 = p1 ? strstr(p1, "HTTP/1.1 200 ") : NULL;
    const char *p3 = p2 ? strstr(p2, "HTTP/1.1 404 ") : NULL;
    assert_non_null(p1);
    assert_non_null(p2);
    assert_non_null(p3);
    assert_non_null(strstr(p2, "\"status\":\"ok\""));
    httpc_free(&q.r);
}

typedef struct holder {
    int port;
    const char *send;
    int rcvbuf;
    double hold;      /* seconds to keep the connection before giving up */
    double closed_at; /* when the server closed it; 0: it did not */
    atomic_int done;
} holder;

/* Connects, sends part of something and then neither sends nor reads. */
static void *holder_main(void *ud) {
    holder *H = ud;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (H->rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &H->rcvbuf, sizeof H->rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)H->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    double t0 = now_s();
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        if (H->send) send(fd, H->send, strlen(H->send), MSG_NOSIGNAL);
        /* stalled reader: do not read; just look for the close (RST/FIN)
         * with MSG_PEEK once the hold time is over */
        usleep((useconds_t)(H->hold * 1e6));
        char c;
        struct timeval tv = {0, 100000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (!H->rcvbuf) {
            ssize_t n = recv(fd, &c, 1, MSG_PEEK);
            if (n == 0 || (n < 0 && errno == ECONNRESET)) H->closed_at = now_s() - t0;
        }
    }
    close(fd);
    atomic_store(&H->done, 1);
    return NULL;
}

static int holder_done(void *ud) { return atomic_load(&((holder *)ud)->done); }

static int conns_at_most(void *ud) {
    void **a = ud;
    return tu_health_int(a[0], "prom", "connections") <= (long long)(intptr_t)a[1];
}

/* A half-open client (half a request line, then nothing) neither blocks a
 * parallel scrape nor lives past idle_timeout. */
static void test_half_open_client(void **state) {
    fx *F = *state;
    holder H = {.port = F->port, .send = "GET /metr", .hold = 2.6};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, holder_main, &H), 0);
    void *one[] = {F->c, (void *)(intptr_t)0};
    /* wait until it is connected */
    double t0 = now_s();
    while (tu_health_int(F->c, "prom", "connections") < 1 && now_s() - t0 < 5)
        tu_run_until(F->c, NULL, NULL, 0.01);
    assert_int_equal(tu_health_int(F->c, "prom", "connections"), 1);
    req q;
    get(F, "/metrics", &q);
    assert_int_equal(q.r.status, 200);
    /* answered while the half-open client still holds its connection */
    assert_false(holder_done(&H));
    printf("# scrape beside a half-open client: %.1f ms\n", q.seconds * 1e3);
    httpc_free(&q.r);
    /* idle_timeout = 1: gone within about two seconds, long before the
     * client gives up */
    assert_true(tu_run_until(F->c, conns_at_most, one, 3.0));
    tu_run_until(F->c, holder_done, &H, 10);
    pthread_join(t, NULL);
    assert_true(H.closed_at > 0);
}

/* 1000 label sets of a histogram, as 1000 calls would make: the render
 * time (reported), and a client that asks for it and never reads does not
 * block other scrapes and is cut after idle_timeout. */
static void test_render_1000_series(void **state) {
    fx *F = *state;
    static const double b[] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 2.5, 3.0};
    tolk_metric *m = metrics_family("tpx_channel_latency_seconds", "Per-channel latency (test)",
                                    TOLK_METRIC_HISTOGRAM, "channel,direction", b, ARRAY_LEN(b));
    for (int i = 0; i < 1000; i++) {
        char id[32];
        snprintf(id, sizeof id, "call-%04d", i / 2);
        tolk_series *s = metrics_series_v(m, id, i % 2 ? "b_to_a" : "a_to_b", NULL);
        for (int k = 0; k < 5; k++) metrics_observe(s, 0.05 + 0.6 * k * (i % 7) / 7.0);
    }
    expo E;
    req q;
    double best = 1e9;
    for (int round = 0; round < 5; round++) {
        scrape(F, &E, &q);
        json_t *d = tu_health(F->c, "prom");
        double r = json_number_value(json_object_get(d, "last_render_seconds"));
        json_decref(d);
        if (r < best) best = r;
        if (round == 0) {
            size_t n = 0;
            for (size_t i = 0; i < E.n; i++) n += !strcmp(E.s[i].name, "tpx_channel_latency_seconds_count");
            assert_int_equal(n, 1000);
            printf("# /metrics with 1000 histogram series: %zu bytes, %zu samples\n", q.r.body_len, E.n);
        }
        free_expo(&E);
        httpc_free(&q.r);
    }
    /* the figure only: time targets live in `make bench` (bench_calls
     * scrapes during 1000 calls), not in a unit test on a noisy machine */
    printf("# render (snapshot + format) with 1000 histogram series: best of 5 %.2f ms\n", best * 1e3);

    /* a reader that stalls: tiny receive window, never reads */
    holder H = {.port = F->port,
                .send = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                .rcvbuf = 2048,
                .hold = 3.0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, holder_main, &H), 0);
    double t0 = now_s();
    while (tu_health_int(F->c, "prom", "requests.metrics") < 6 && now_s() - t0 < 5)
        tu_run_until(F->c, NULL, NULL, 0.01);
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    scrape(F, &E, &q);
    /* both answered while the stalled reader still holds its connection */
    assert_false(holder_done(&H));
    free_expo(&E);
    httpc_free(&q.r);
    void *none[] = {F->c, (void *)(intptr_t)0};
    assert_true(tu_run_until(F->c, conns_at_most, none, 2.8)); /* cut while still stalled */
    tu_run_until(F->c, holder_done, &H, 10);
    pthread_join(t, NULL);
}

/* Connections open at destroy(): lws closes them, the plugin frees their
 * buffers (ASan/valgrind see no leak) and the core's loop is left as it was:
 * no watcher of lws's remains, and no reference was taken away. */
static void timer_fired(struct ev_loop *loop, ev_timer *w, int revents) { *(int *)w->data = 1; }

static void test_destroy_with_open_connections(void **state) {
    fx *F = *state;
    holder H = {.port = F->port, .send = "GET /metrics HTTP/1.1\r\nHost: x\r\n", .hold = 3.0};
    holder S = {.port = F->port, .send = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", .rcvbuf = 2048,
                .hold = 3.0};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, holder_main, &H), 0);
    assert_int_equal(pthread_create(&t2, NULL, holder_main, &S), 0);
    double t0 = now_s();
    while (tu_health_int(F->c, "prom", "connections") < 2 && now_s() - t0 < 5)
        tu_run_until(F->c, NULL, NULL, 0.01);
    assert_int_equal(tu_health_int(F->c, "prom", "connections"), 2);
    tu_run_until(F->c, NULL, NULL, 0.2); /* the second is mid-response */
    struct ev_loop *loop = F->c->loop;
    core_free(F->c); /* destroys the instance */
    F->c = NULL;
    /* without waiting for either client */
    assert_false(holder_done(&H));
    assert_false(holder_done(&S));
    assert_false(tu_log_has("did not finish destroying"));
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    /* a referenced timer runs, then the loop ends: nothing else is active
     * and the reference count is intact */
    int fired = 0;
    ev_timer tm;
    ev_timer_init(&tm, timer_fired, 0.2, 0.);
    tm.data = &fired;
    ev_timer_start(loop, &tm);
    alarm(10);
    ev_run(loop, 0);
    alarm(0);
    assert_true(fired);
}

/* Out of file descriptors, with connections waiting in the backlog: the
 * exporter stops accepting for a while and says so once, instead of
 * spinning on accept() and logging every failure (issue 11, item 4); once
 * descriptors are free again it accepts the waiting connections. */
static void test_out_of_fds_backs_off(void **state) {
    fx *F = *state;
    long long accepted = tu_health_int(F->c, "prom", "accepted");
    struct rlimit old, tight;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    int lowest = dup(0);
    assert_true(lowest >= 0);
    close(lowest);
    tight = old;
    tight.rlim_cur = (rlim_t)lowest + 6;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &tight), 0);
    /* the test's own sockets take the last descriptors; each one's
     * connection waits in the exporter's backlog */
    int fds[16], n = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (n < 16) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) break;
        assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
        fds[n++] = fd;
    }
    assert_true(n > 0 && n < 16);
    tu_log_clear();
    tu_run_until(F->c, NULL, NULL, 1.0); /* the loop turns on, calls go on */
    int lines = tu_log_count("accept: Too many open files");
    for (int i = 0; i < n; i++) close(fds[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_int_equal(lines, 1);
    /* descriptors are back: the waiting connections are taken */
    long long want = accepted + n;
    double t0 = now_s();
    while (tu_health_int(F->c, "prom", "accepted") < want && now_s() - t0 < 15)
        tu_run_until(F->c, NULL, NULL, 0.05);
    assert_true(tu_health_int(F->c, "prom", "accepted") >= want);
    req q;
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
}

/* One lws context per process: the exporter is a vhost of the core's. */
static void test_shared_lws_context(void **state) {
    fx *F = *state;
    struct lws_context *ctx = F->c->host.lws_context();
    assert_non_null(ctx);
    assert_non_null(lws_get_vhost_by_name(ctx, "metrics"));
}

/* Issue 11, item 11: an over-long URL gets 414, over-long headers 431, a
 * method other than GET or HEAD 405 with Allow (lws alone closed the first
 * two without a word, answered TRACE and unknown methods 403 and CONNECT
 * not at all). */
static void test_http_answers_for_bad_heads(void **state) {
    fx *F = *state;
    static char longurl[6000], longhdr[16384];
    int off = snprintf(longurl, sizeof longurl, "GET /");
    memset(longurl + off, 'u', 3000);
    snprintf(longurl + off + 3000, sizeof longurl - (size_t)off - 3000, " HTTP/1.1\r\nHost: x\r\n\r\n");
    off = snprintf(longhdr, sizeof longhdr, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(longhdr + off, 'h', sizeof longhdr - (size_t)off - 8);
    memcpy(longhdr + sizeof longhdr - 8, "\r\n\r\n", 5);
    static const struct {
        const char *raw;
        int status;
    } cases[] = {
        {longurl, 414},
        {longhdr, 431},
        {"TRACE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405},
        {"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405},
        {"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n", 405},
        {"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        req q;
        memset(&q, 0, sizeof q);
        q.port = F->port;
        q.raw = cases[i].raw;
        run_req(F->c, &q);
        assert_int_equal(q.rc, 0);
        assert_int_equal(q.r.status, cases[i].status);
        if (cases[i].status == 405) {
            char *allow = httpc_header(&q.r, "allow");
            assert_non_null(allow);
            assert_string_equal(allow, "GET, HEAD");
            free(allow);
        }
        httpc_free(&q.r);
    }
    /* a head just under the gate's limit is lws's to serve */
    static char bighead[6144];
    off = snprintf(bighead, sizeof bighead, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (int i = 0; off < 5600; i++)
        off += snprintf(bighead + off, sizeof bighead - (size_t)off, "X-Filler-%d: %0200d\r\n", i, i);
    snprintf(bighead + off, sizeof bighead - (size_t)off, "\r\n");
    req q;
    memset(&q, 0, sizeof q);
    q.port = F->port;
    q.raw = bighead;
    run_req(F->c, &q);
    assert_int_equal(q.rc, 0);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    /* and the exporter serves on */
    get(F, "/metrics", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
}

/* A connection from 127.0.0.2 (loopback answers the whole 127/8) that sent
 * the start of a request and then nothing. */
static int slow_client(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in src = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.2", &src.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof src), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(send(fd, "GET /metr", 9, MSG_NOSIGNAL), 9);
    return fd;
}

static int health_at_least(void *ud) {
    void **a = ud;
    return tu_health_int(a[0], "prom", a[1]) >= (long long)(intptr_t)a[2];
}

/* Issue 11, item 10 (slowloris): one client address holds at most
 * max_connections_per_client connections, so others are still served, and
 * a connection that has not sent its whole request head within
 * header_timeout is closed, well before idle_timeout. */
static void test_slow_clients_cannot_starve_scrapes(void **state) {
    fx F = {0};
    tu_log_capture();
    start_core(&F, "port = 0; idle_timeout = 30; header_timeout = 1; max_connections = 8; "
                   "max_connections_per_client = 3;", NULL);
    int fds[5];
    for (int i = 0; i < 5; i++) fds[i] = slow_client(F.port);
    void *refused[] = {F.c, "refused_per_client", (void *)(intptr_t)2};
    assert_true(tu_run_until(F.c, health_at_least, refused, 10));
    assert_int_equal(tu_health_int(F.c, "prom", "connections"), 3);
    /* another client is served meanwhile */
    req q;
    get(&F, "/metrics", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    /* the three slow heads are cut off at header_timeout */
    void *timeouts[] = {F.c, "header_timeouts", (void *)(intptr_t)3};
    assert_true(tu_run_until(F.c, health_at_least, timeouts, 15));
    assert_int_equal(tu_health_int(F.c, "prom", "connections"), 0);
    for (int i = 0; i < 5; i++) close(fds[i]);
    stop_core(&F);
    tu_log_clear();
}

/* lws must leave the core's signals alone: SIGHUP still reloads (the
 * unchanged exporter is kept and serves on), SIGTERM still drains and ends
 * the loop. */
static void test_signals_still_reach_the_core(void **state) {
    fx *F = *state;
    core_watch_signals(F->c);
    tu_log_clear();
    raise(SIGHUP);
    tu_run_until(F->c, NULL, NULL, 0.3);
    assert_true(tu_log_has("reload applied"));
    assert_int_equal(prom_port(F->c, "prom"), F->port);
    req q;
    get(F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    raise(SIGTERM);
    alarm(30);
    ev_ref(F->c->loop);
    ev_run(F->c->loop, 0);
    ev_unref(F->c->loop);
    alarm(0);
    assert_true(tu_log_has("SIGTERM received"));
    assert_int_equal(F->c->active, 0);
}

/* A reload that changes a setting on a fixed port: the new instance cannot
 * bind while the old one listens, retries, and takes the port over when the
 * old generation is released. */
static int port_free_now(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static int listening(void *ud) {
    json_t *d = tu_health(ud, "prom");
    int yes = json_is_true(json_object_get(d, "listening"));
    json_decref(d);
    return yes;
}

static void test_reload_same_port(void **state) {
    fx F = {0};
    tu_log_capture();
    int port = port_free_now();
    char s[128];
    snprintf(s, sizeof s, "port = %d; idle_timeout = 1;", port);
    start_core(&F, s, NULL);
    assert_int_equal(F.port, port);
    snprintf(s, sizeof s, "port = %d; idle_timeout = 2;", port);
    write_prom(&F, s);
    assert_int_equal(core_reload(F.c), 0);
    /* no call holds the old generation: it is gone, the new one retries */
    assert_true(tu_run_until(F.c, listening, F.c, 3.0));
    assert_int_equal(tu_health_int(F.c, "prom", "port"), port);
    req q;
    get(&F, "/healthz", &q);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    stop_core(&F);
    tu_log_clear();
}

static void test_bad_bind_is_a_config_error(void **state) {
    fx F = {0};
    tu_log_capture();
    F.dir = tu_tmpdir();
    tu_write(F.dir, "tolk.conf", "core: { workers = 1; log_level = \"info\"; };\n");
    tu_write_mock_pipeline(F.dir);
    write_prom(&F, "bind = \"localhost\";");
    F.c = core_new(F.dir, NULL);
    assert_int_equal(core_load(F.c), -1);
    assert_true(tu_log_has("70-metrics.conf:1"));
    assert_true(tu_log_has("'localhost' is not an IPv4 or IPv6 address"));
    stop_core(&F);
    tu_log_clear();
}

static void test_ipv6_loopback(void **state) {
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof a) == 0;
    if (probe >= 0) close(probe);
    if (!ok) {
        printf("# no IPv6 loopback here: skipped\n");
        skip();
    }
    fx F = {0};
    tu_log_capture();
    start_core(&F, "bind = \"::1\"; port = 0;", NULL);
    assert_true(tu_log_has("listening on http://[::1]:"));
    assert_false(tu_log_has("beyond loopback"));
    req q = {.port = F.port, .family = 6, .path = "/metrics"};
    run_req(F.c, &q);
    assert_int_equal(q.rc, 0);
    assert_int_equal(q.r.status, 200);
    httpc_free(&q.r);
    stop_core(&F);
    tu_log_clear();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_core_and_process_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exposition_details, setup, teardown),
        cmocka_unit_test_setup_teardown(test_healthz, setup, teardown),
        cmocka_unit_test_setup_teardown(test_high_fd_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_open_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_1000_series, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_open_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signals_still_reach_the_core, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_lws_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_fds_backs_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_answers_for_bad_heads, setup, teardown),
        cmocka_unit_test(test_slow_clients_cannot_starve_scrapes),
        cmocka_unit_test(test_reload_same_port),
        cmocka_unit_test(test_bad_bind_is_a_config_error),
        cmocka_unit_test(test_ipv6_loopback),
    };
    int rc = cmocka_run_group_tests_name("metrics_prometheus", tests, NULL, NULL);
    log_set_hook(NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
