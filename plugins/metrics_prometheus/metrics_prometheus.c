/*
 * metrics_prometheus -- the core's metrics registry over HTTP, in the
 * Prometheus text exposition format 0.0.4.
 *
 *   GET /metrics   every series of the registry (host->metrics_visit, a
 *                  snapshot copied under each family's lock) plus the
 *                  standard process_* metrics read from /proc at scrape time
 *   GET /healthz   {"status", "uptime_seconds", "active_channels",
 *                  "providers": {component: health}}; 503 when any
 *                  service_health series is 3 (FAILED)
 *   HEAD           the same headers, no body
 *   other paths    404; other methods 405 (Allow: GET, HEAD)
 *
 * HTTP runs on the core's libev loop through libwebsockets 4.1 with the
 * libev event-lib plugin on a foreign loop, as a vhost of the process's one
 * lws context (host->lws_context(), ABI 1.2; the core sets lws's log level
 * and routes its lines to tolk's log). The plugin owns the listening
 * socket (an ev_io) and hands each accepted connection to lws with
 * lws_adopt_descriptor_vhost_via_info(); lws parses requests and writes
 * responses, all non-blocking on the loop thread. Owning the listener, not
 * lws, buys: IPv6 literals, port 0 (the kernel picks; health() reports the
 * port), a connection cap checked at accept, and a bind that is retried
 * every second instead of failing when the port is held by this process's
 * own exporter: on a reload that changes a setting the core creates the new
 * instance while the old one still listens on the port, and the new one
 * takes over once the old one is destroyed. A port held by anything else
 * fails create(), naming the address and port: tolkd exits 3 at startup, a
 * reload is rejected and the running exporter stays.
 *
 * destroy() destroys only the vhost, which closes its connections; the
 * context is the core's. On an older host (ABI < 1.2) the instance creates
 * a context of its own on host->loop, as before: with a foreign loop lws
 * starts no signal watcher (the core keeps SIGINT/SIGTERM/SIGHUP), and
 * info.signal_cb is a no-op anyway, so lws could never ev_break the core's
 * loop; lws_context_destroy() with the libev event lib completes inside the
 * call, and destroy() checks that lws cleared the context pointer
 * (info.pcontext). The tests check that the loop's watcher count is intact
 * afterwards and that SIGHUP/SIGTERM still reach the core.
 *
 * A slow client cannot stall anything: sockets are non-blocking, a
 * response is rendered once and written in 16 KiB pieces as the socket
 * takes them, and every connection has an idle timeout (idle_timeout:
 * waiting for a request, between two pieces of a response, and between
 * keep-alive requests). lws 4.1 on a foreign libev loop can service its
 * timeouts late; see kick_lws().
 *
 * Settings: bind ("127.0.0.1"), port (9090; 0 = any free port),
 * idle_timeout (10 s, whole seconds), max_connections (64),
 * max_connections_per_client (8), header_timeout (5 s), process_metrics
 * (true). A new connection passes the request-head gate (see gate_start())
 * before lws sees it. Binding beyond loopback is the operator's
 * explicit choice and is logged as a warning: the endpoint has no
 * authentication.
 *
 * A family with no series yet (errors_total before the first error) is
 * announced by its HELP and TYPE lines alone, so every metric the core
 * defines is visible from the first scrape (host ABI >= 1.1; an older host
 * reports series only). Everything runs on the loop thread.
 */
#define _GNU_SOURCE /* accept4() */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <libwebsockets.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <tolk/plugin.h>

#define CHUNK (16 * 1024)        /* bytes handed to lws_write() at once */
#define BIND_RETRY_S 1.0         /* a failed bind is retried this often */
#define BIND_RETRY_LOG_EVERY 60  /* ...and logged again every so many tries */
#define GATE_LINE_MAX 2048 /* request line; longer: 414 */
#define GATE_HEAD_MAX 6144 /* request line and headers; longer: 431 (lws holds 8 KiB of them) */
#define ACCEPT_PAUSE_S 0.5       /* accept() failed (out of fds): stop taking connections */
#define ACCEPT_LOG_EVERY_S 60.0  /* ...and say so at most this often */

static const tolk_option options[] = {
    {"bind", TOLK_OPT_STRING, 0, "127.0.0.1", 0, 0,
     "IPv4 or IPv6 address to listen on; beyond loopback the endpoint is open to the network"},
    {"port", TOLK_OPT_INT, 0, "9090", 0, 65535, "TCP port; 0 = any free port (see health)"},
    {"idle_timeout", TOLK_OPT_INT, 0, "10", 1, 3600,
     "seconds a connection may sit idle (no request, or not reading the response)"},
    {"max_connections", TOLK_OPT_INT, 0, "64", 1, 4096,
     "connections at once; more are accepted and closed at once"},
    {"max_connections_per_client", TOLK_OPT_INT, 0, "8", 1, 4096,
     "connections at once from one client address, so one client cannot take every slot"},
    {"header_timeout", TOLK_OPT_INT, 0, "5", 1, 3600,
     "seconds a client has to send a whole request head (at most idle_timeout)"},
    {"process_metrics", TOLK_OPT_BOOL, 0, "true", 0, 0,
     "add process_* metrics (CPU, memory, fds, start time) read from /proc"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

/* ------------------------------------------------------------------ */
/* Growable text buffer                                                */

typedef struct sbuf {
    char *p;
    size_t len, cap, head; /* head: bytes reserved before the text (LWS_PRE) */
    int oom;
} sbuf;

static void sb_init(sbuf *b, size_t head) {
    memset(b, 0, sizeof *b);
    b->head = head;
}

static int sb_grow(sbuf *b, size_t more) {
    if (b->oom) return -1;
    size_t need = b->head + b->len + more + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static char *sb_text(sbuf *b) { return b->p ? b->p + b->head : NULL; }

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (sb_grow(b, n)) return;
    memcpy(b->p + b->head + b->len, s, n);
    b->len += n;
    b->p[b->head + b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_putc(sbuf *b, char c) { sb_put(b, &c, 1); }

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    if (sb_grow(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->head + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_free(sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ */
/* Exposition format pieces                                            */

/* A float as Prometheus parses it (Go's strconv.ParseFloat): NaN, +Inf,
 * -Inf, integers as plain digits, other values in the shortest %g form
 * that reads back to the same double. */
static void fmt_double(char out[40], double v) {
    if (isnan(v)) {
        strcpy(out, "NaN");
    } else if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        strcpy(out, "0");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, 40, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(out, 40, "%.*g", prec, v);
            if (strtod(out, NULL) == v) break;
        }
    }
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned cp = c & (0xff >> (len + 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Escapes for a label value (quote too) or a HELP text; bytes that are not
 * UTF-8 become U+FFFD, because Prometheus rejects the whole scrape over one
 * bad byte and label values can come from the far end of a call. */
static void sb_escaped(sbuf *b, const char *s, int quote) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)p);
    while (n) {
        size_t run = 0;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '\\' && p[run] != '"')
            run++;
        if (run) {
            sb_put(b, (const char *)p, run);
            p += run, n -= run;
            continue;
        }
        unsigned char c = *p;
        if (c == '\\') {
            sb_put(b, "\\\\", 2);
        } else if (c == '\n') {
            sb_put(b, "\\n", 2);
        } else if (c == '"') {
            if (quote)
                sb_put(b, "\\\"", 2);
            else
                sb_putc(b, '"');
        } else if (c < 0x80) {
            sb_putc(b, (char)c); /* other control characters are valid UTF-8 */
        } else {
            size_t l = utf8_seq(p, n);
            if (l) {
                sb_put(b, (const char *)p, l);
                p += l, n -= l;
                continue;
            }
            sb_put(b, "\xef\xbf\xbd", 3);
        }
        p++, n--;
    }
}

/* ------------------------------------------------------------------ */
/* The instance                                                        */

typedef struct prom {
    const tolk_host *host;
    tolk_instance *inst;
    char bind[INET6_ADDRSTRLEN];
    int port_cfg, port;  /* configured; bound (differs with port 0) */
    int idle_timeout;
    int max_conns, max_per_client;
    int header_timeout;
    int process_metrics;

    struct sockaddr_storage addr;
    socklen_t addrlen;
    int lfd;
    ev_io accept_w;
    tolk_timer *retry;
    unsigned bind_failures;
    tolk_timer *accept_pause; /* accept() failed: the listener rests until it fires */
    uint64_t accept_errors, accept_errors_unlogged;
    double accept_logged_at;
    char bind_error[128];

    struct lws_context *ctx; /* the core's (shared_ctx), or an older host's own */
    int shared_ctx;
    struct lws_vhost *vh;
    struct conn_slot *wsis; /* connections lws serves */
    size_t nwsis, capwsis;
    struct gate *gates; /* connections whose request head is not complete yet */
    int ngates;
    uint64_t refused_per_client, header_timeouts, heads_refused;
    ev_timer kick; /* runs while connections are open, see kick_lws() */
    int conns;
    uint64_t accepted, refused, requests[3], render_count;
    double last_render_s, max_render_s;
    size_t last_body_bytes;

    tolk_metric *m_requests, *m_render;
    tolk_series *s_render;
    struct prom *next_live; /* in g_live */
} prom;

/* This process's exporters, to tell a port held by the instance a reload
 * replaces (it lets go soon) from one held by another process (it may
 * never: the operator must hear it at once). Loop thread only. */
static prom *g_live;

static void live_remove(prom *P) {
    for (prom **q = &g_live; *q; q = &(*q)->next_live)
        if (*q == P) {
            *q = P->next_live;
            return;
        }
}

static int port_held_here(const prom *P) {
    for (const prom *q = g_live; q; q = q->next_live)
        if (q != P && (q->port == P->port_cfg || q->port_cfg == P->port_cfg)) return 1;
    return 0;
}

/* A connection lws serves, and its client's address (IPv4 as v4-mapped). */
typedef struct conn_slot {
    struct lws *wsi;
    struct in6_addr addr;
} conn_slot;

/* Per-connection state (lws allocates it per wsi, zeroed). */
typedef struct conn {
    sbuf body;      /* head = LWS_PRE: lws_write() may write in front of it */
    size_t off;
    int sending;
} conn;

enum { H_METRICS, H_HEALTHZ, H_OTHER };
static const char *const handler_names[] = {"metrics", "healthz", "other"};

/* ------------------------------------------------------------------ */
/* /metrics                                                            */

typedef struct names {
    char **v;
    size_t n;
} names;

static int names_has(const names *ns, const char *s) {
    for (size_t i = 0; i < ns->n; i++)
        if (!strcmp(ns->v[i], s)) return 1;
    return 0;
}

static void names_add(names *ns, const char *s) {
    char **v = realloc(ns->v, (ns->n + 1) * sizeof *v);
    if (!v) return;
    ns->v = v;
    char *d = strdup(s);
    if (d) ns->v[ns->n++] = d;
}

static void names_free(names *ns) {
    for (size_t i = 0; i < ns->n; i++) free(ns->v[i]);
    free(ns->v);
}

typedef struct render {
    prom *P;
    sbuf *out;
    const char *fam; /* the family being written (its name pointer) */
    int skip;        /* its name clashes with one already written */
    names seen;      /* every sample name written so far */
    char (*le)[40];  /* its bucket bounds, formatted once per family */
    size_t nle;
    sbuf labels;     /* the series' labels: `a="x",b="y"` */
} render;

/* The names a family's samples use: x, or x_bucket/x_sum/x_count. */
static int family_clashes(render *R, const char *name, tolk_metric_type type) {
    if (names_has(&R->seen, name)) return 1;
    if (type == TOLK_METRIC_HISTOGRAM) {
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        char tmp[512];
        for (size_t i = 0; i < 3; i++) {
            snprintf(tmp, sizeof tmp, "%s%s", name, sfx[i]);
            if (names_has(&R->seen, tmp)) return 1;
        }
    }
    return 0;
}

static void family_claim(render *R, const char *name, tolk_metric_type type) {
    names_add(&R->seen, name);
    if (type == TOLK_METRIC_HISTOGRAM) {
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        char tmp[512];
        for (size_t i = 0; i < 3; i++) {
            snprintf(tmp, sizeof tmp, "%s%s", name, sfx[i]);
            names_add(&R->seen, tmp);
        }
    }
}

static const char *type_name(tolk_metric_type t) {
    switch (t) {
    case TOLK_METRIC_COUNTER: return "counter";
    case TOLK_METRIC_GAUGE: return "gauge";
    case TOLK_METRIC_HISTOGRAM: return "histogram";
    }
    return "untyped";
}

static void begin_family(render *R, const tolk_metric_sample *s) {
    R->fam = s->name;
    R->skip = family_clashes(R, s->name, s->type);
    if (R->skip) {
        TOLK_LOG(R->P->host, R->P->inst, TOLK_LOG_VERB,
                 "metric family '%s' left out: its sample names clash with another family",
                 s->name);
        return;
    }
    family_claim(R, s->name, s->type);
    sbuf *o = R->out;
    sb_puts(o, "# HELP ");
    sb_puts(o, s->name);
    sb_putc(o, ' ');
    sb_escaped(o, s->help, 0);
    sb_puts(o, "\n# TYPE ");
    sb_puts(o, s->name);
    sb_putc(o, ' ');
    sb_puts(o, type_name(s->type));
    sb_putc(o, '\n');
    free(R->le);
    R->le = NULL;
    R->nle = 0;
    if (s->type == TOLK_METRIC_HISTOGRAM && s->nbuckets) {
        R->le = calloc(s->nbuckets, sizeof *R->le);
        if (!R->le) {
            o->oom = 1;
            return;
        }
        R->nle = s->nbuckets;
        for (size_t i = 0; i < s->nbuckets; i++) fmt_double(R->le[i], s->bounds[i]);
    }
}

/* name{labels[,extra]} value\n */
static void sample_line(render *R, const char *name, const char *suffix, const char *extra_k,
                        const char *extra_v, const char *value) {
    sbuf *o = R->out;
    sb_puts(o, name);
    if (suffix) sb_puts(o, suffix);
    if (R->labels.len || extra_k) {
        sb_putc(o, '{');
        if (R->labels.len) sb_put(o, sb_text(&R->labels), R->labels.len);
        if (extra_k) {
            if (R->labels.len) sb_putc(o, ',');
            sb_puts(o, extra_k);
            sb_puts(o, "=\"");
            sb_puts(o, extra_v);
            sb_putc(o, '"');
        }
        sb_putc(o, '}');
    }
    sb_putc(o, ' ');
    sb_puts(o, value);
    sb_putc(o, '\n');
}

static void visit_sample(void *ud, const tolk_metric_sample *s) {
    render *R = ud;
    if (s->name != R->fam && (!R->fam || strcmp(s->name, R->fam))) begin_family(R, s);
    if (R->skip || R->out->oom || !s->label_values) return;
    R->labels.len = 0;
    for (size_t i = 0; i < s->nlabels; i++) {
        if (i) sb_putc(&R->labels, ',');
        sb_puts(&R->labels, s->label_names[i]);
        sb_puts(&R->labels, "=\"");
        sb_escaped(&R->labels, s->label_values[i], 1);
        sb_putc(&R->labels, '"');
    }
    char v[40];
    if (s->type != TOLK_METRIC_HISTOGRAM) {
        fmt_double(v, s->value);
        sample_line(R, s->name, NULL, NULL, NULL, v);
        return;
    }
    for (size_t i = 0; i < s->nbuckets && i < R->nle; i++) {
        if (isnan(s->bounds[i]) || (isinf(s->bounds[i]) && s->bounds[i] > 0)) continue;
        snprintf(v, sizeof v, "%" PRIu64, s->cumulative[i]);
        sample_line(R, s->name, "_bucket", "le", R->le[i], v);
    }
    snprintf(v, sizeof v, "%" PRIu64, s->count);
    sample_line(R, s->name, "_bucket", "le", "+Inf", v);
    fmt_double(v, s->sum);
    sample_line(R, s->name, "_sum", NULL, NULL, v);
    snprintf(v, sizeof v, "%" PRIu64, s->count);
    sample_line(R, s->name, "_count", NULL, NULL, v);
}

/* process_* as the Prometheus client libraries define them. */
typedef struct proc_stats {
    int have_stat, have_fds, have_limit;
    double cpu_s, start_s, vsize, rss;
    long fds;
    double max_fds;
} proc_stats;

static void read_proc(proc_stats *ps) {
    memset(ps, 0, sizeof *ps);
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        /* the command name may hold spaces and ')': fields start after the last ')' */
        char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0, vsize = 0;
        unsigned long long start = 0;
        long rss = 0;
        if (p && tck > 0 &&
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d "
                   "%llu %lu %ld",
                   &utime, &stime, &start, &vsize, &rss) == 5) {
            ps->cpu_s = (double)(utime + stime) / (double)tck;
            ps->vsize = (double)vsize;
            ps->rss = (double)rss * (double)page;
            /* start time: boot time (btime in /proc/stat) + ticks since boot */
            FILE *sf = fopen("/proc/stat", "re");
            if (sf) {
                char line[256];
                unsigned long long btime = 0;
                while (fgets(line, sizeof line, sf))
                    if (sscanf(line, "btime %llu", &btime) == 1) break;
                fclose(sf);
                if (btime) {
                    ps->start_s = (double)btime + (double)start / (double)tck;
                    ps->have_stat = 1;
                }
            }
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long n = 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') n++;
        closedir(d);
        ps->fds = n - 1; /* not counting the directory's own fd */
        ps->have_fds = 1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        ps->max_fds = rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur;
        ps->have_limit = 1;
    }
}

static void process_family(render *R, const char *name, const char *help, const char *type,
                           double value) {
    if (names_has(&R->seen, name)) return; /* the registry has one by that name */
    names_add(&R->seen, name);
    char v[40];
    fmt_double(v, value);
    sb_printf(R->out, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, type, name, v);
}

static void render_process(render *R) {
    proc_stats ps;
    read_proc(&ps);
    if (ps.have_stat) {
        process_family(R, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                       "counter", ps.cpu_s);
        process_family(R, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
                       ps.rss);
        process_family(R, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
                       ps.vsize);
        process_family(R, "process_start_time_seconds",
                       "Start time of the process since unix epoch in seconds.", "gauge", ps.start_s);
    }
    if (ps.have_fds)
        process_family(R, "process_open_fds", "Number of open file descriptors.", "gauge",
                       (double)ps.fds);
    if (ps.have_limit)
        process_family(R, "process_max_fds", "Maximum number of open file descriptors.", "gauge",
                       ps.max_fds);
}

static void render_metrics(prom *P, sbuf *out) {
    double t0 = P->host->now();
    render R = {.P = P, .out = out};
    sb_init(&R.labels, 0);
    if (TOLK_HOST_HAS(P->host, metrics_visit_families))
        P->host->metrics_visit_families(visit_sample, &R);
    else
        P->host->metrics_visit(visit_sample, &R);
    if (P->process_metrics) render_process(&R);
    free(R.le);
    names_free(&R.seen);
    sb_free(&R.labels);
    double dt = P->host->now() - t0;
    P->last_render_s = dt;
    if (dt > P->max_render_s) P->max_render_s = dt;
    P->render_count++;
    P->last_body_bytes = out->len;
    P->host->series_observe(P->s_render, dt);
    TOLK_LOG(P->host, P->inst, TOLK_LOG_DBG, "rendered %zu bytes in %.3f ms", out->len, dt * 1e3);
}

/* ------------------------------------------------------------------ */
/* /healthz                                                            */

typedef struct health_scan {
    double uptime, active;
    int have_uptime, have_active;
    int worst;
    json_t *providers;
} health_scan;

static const char *const health_names[] = {"healthy", "degraded", "unhealthy", "failed"};

static void visit_health(void *ud, const tolk_metric_sample *s) {
    health_scan *H = ud;
    if (s->type != TOLK_METRIC_GAUGE) return;
    if (!strcmp(s->name, "service_uptime_seconds") && s->nlabels == 0) {
        H->uptime = s->value, H->have_uptime = 1;
    } else if (!strcmp(s->name, "active_channels") && s->nlabels == 0) {
        H->active = s->value, H->have_active = 1;
    } else if (!strcmp(s->name, "service_health")) {
        const char *comp = "";
        for (size_t i = 0; i < s->nlabels; i++)
            if (!strcmp(s->label_names[i], "component")) comp = s->label_values[i];
        int h = isnan(s->value) ? 3 : (int)s->value;
        if (h < 0) h = 0;
        if (h > 3) h = 3;
        if (h > H->worst) H->worst = h;
        json_object_set_new(H->providers, comp, json_string(health_names[h]));
    }
}

static int render_health(prom *P, sbuf *out) {
    health_scan H = {.providers = json_object()};
    P->host->metrics_visit(visit_health, &H);
    const char *status = H.worst >= TOLK_FAILED ? "failed" : H.worst > 0 ? "degraded" : "ok";
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "uptime_seconds", H.have_uptime ? json_real(round(H.uptime * 1000) / 1000) : json_null());
    json_object_set_new(o, "active_channels",
                        H.have_active ? json_integer((json_int_t)H.active) : json_null());
    json_object_set_new(o, "providers", H.providers);
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(o);
    if (s) {
        sb_puts(out, s);
        sb_putc(out, '\n');
        free(s);
    } else {
        out->oom = 1;
    }
    return H.worst >= TOLK_FAILED ? 503 : 200;
}

/* ------------------------------------------------------------------ */
/* HTTP through lws                                                    */

static void count_request(prom *P, int handler, int code) {
    P->requests[handler]++;
    char cs[8];
    snprintf(cs, sizeof cs, "%d", code);
    const char *vals[] = {handler_names[handler], cs};
    P->host->series_add(P->host->metric_series(P->m_requests, vals), 1);
}

static void set_idle(prom *P, struct lws *wsi, enum pending_timeout why) {
    lws_set_timeout(wsi, why, P->idle_timeout);
}

/* The response is out: keep the connection for the next request, or close
 * it (-1). A pipelined request already read into lws's buffer is served
 * only on lws's next idle pass, which on the core's loop needs an event of
 * lws's own: wake it (see kick_lws()). */
static int next_request(prom *P, struct lws *wsi) {
    if (lws_http_transaction_completed(wsi)) return -1;
    lws_cancel_service(P->ctx);
    return 0;
}

/* Headers now; the body, if any, from LWS_CALLBACK_HTTP_WRITEABLE. */
static int respond(prom *P, struct lws *wsi, conn *c, unsigned code, const char *ctype,
                   int head_only, int allow) {
    unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, code, ctype, (lws_filepos_t)c->body.len, &p, end))
        return -1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        return -1;
    if (allow && lws_add_http_header_by_name(wsi, (const unsigned char *)"allow:",
                                             (const unsigned char *)"GET, HEAD", 9, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
    if (head_only || c->body.len == 0) {
        sb_free(&c->body);
        return next_request(P, wsi);
    }
    c->off = 0;
    c->sending = 1;
    set_idle(P, wsi, PENDING_TIMEOUT_HTTP_CONTENT);
    lws_callback_on_writable(wsi);
    return 0;
}

static int on_request(prom *P, struct lws *wsi, conn *c, const char *path) {
    char *uri = NULL;
    int ulen = 0;
    int meth = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    int handler = !strcmp(path, "/metrics") ? H_METRICS : !strcmp(path, "/healthz") ? H_HEALTHZ : H_OTHER;
    int head = meth == LWSHUMETH_HEAD;
    sb_free(&c->body);
    sb_init(&c->body, LWS_PRE);
    if (meth != LWSHUMETH_GET && !head) {
        /* lws reads and drops a request body (HTTP_BODY below), so the
         * connection stays usable for the next request */
        count_request(P, handler, 405);
        sb_puts(&c->body, "405 method not allowed: use GET or HEAD\n");
        return respond(P, wsi, c, 405, "text/plain; charset=utf-8", 0, 1);
    }
    if (handler == H_METRICS) {
        render_metrics(P, &c->body);
        if (c->body.oom) {
            sb_free(&c->body);
            sb_init(&c->body, LWS_PRE);
            count_request(P, handler, 500);
            sb_puts(&c->body, "500 out of memory\n");
            return respond(P, wsi, c, 500, "text/plain; charset=utf-8", head, 0);
        }
        count_request(P, handler, 200);
        return respond(P, wsi, c, 200, "text/plain; version=0.0.4; charset=utf-8", head, 0);
    }
    if (handler == H_HEALTHZ) {
        int code = render_health(P, &c->body);
        count_request(P, handler, code);
        return respond(P, wsi, c, (unsigned)code, "application/json", head, 0);
    }
    count_request(P, handler, 404);
    sb_puts(&c->body, "404 not found: try /metrics or /healthz\n");
    return respond(P, wsi, c, 404, "text/plain; charset=utf-8", head, 0);
}

static int on_writeable(prom *P, struct lws *wsi, conn *c) {
    if (!c->sending) return 0;
    size_t left = c->body.len - c->off, n = left > CHUNK ? CHUNK : left;
    int final = n == left;
    /* lws may use the LWS_PRE bytes in front of the piece: they hold text
     * already sent, or the reserved head of the buffer */
    unsigned char *piece = (unsigned char *)c->body.p + c->body.head + c->off;
    int w = lws_write(wsi, piece, n, final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
    if (w < (int)n) return -1;
    c->off += n;
    if (!final) {
        set_idle(P, wsi, PENDING_TIMEOUT_HTTP_CONTENT);
        lws_callback_on_writable(wsi);
        return 0;
    }
    c->sending = 0;
    sb_free(&c->body);
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
    return next_request(P, wsi);
}

/* The instance's connections, so destroy() can close them itself: the
 * context (the core's) outlives the instance, and lws_vhost_destroy()
 * leaves a connection in the middle of a response to the context's end. */
static int track_conn(prom *P, struct lws *wsi, const struct in6_addr *addr) {
    if (P->nwsis == P->capwsis) {
        size_t cap = P->capwsis ? P->capwsis * 2 : 16;
        conn_slot *v = realloc(P->wsis, cap * sizeof *v);
        if (!v) return -1;
        P->wsis = v;
        P->capwsis = cap;
    }
    P->wsis[P->nwsis++] = (conn_slot){.wsi = wsi, .addr = *addr};
    if (P->conns++ == 0) ev_timer_again(P->host->loop, &P->kick);
    return 0;
}

static void forget_conn(prom *P, struct lws *wsi) {
    for (size_t i = 0; i < P->nwsis; i++) {
        if (P->wsis[i].wsi != wsi) continue;
        P->wsis[i] = P->wsis[--P->nwsis];
        if (--P->conns == 0) ev_timer_stop(P->host->loop, &P->kick);
        return;
    }
}

/* Closes every connection now; lws calls back with no instance for them. */
static void close_conns(prom *P) {
    while (P->nwsis) {
        struct lws *wsi = P->wsis[--P->nwsis].wsi;
        P->conns--;
        lws_set_opaque_user_data(wsi, NULL);
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
    }
    free(P->wsis);
    P->wsis = NULL;
    P->capwsis = 0;
}

static int http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len) {
    /* each connection carries its instance (adopted with .opaque = P);
     * destroy() clears it before it closes the connection */
    prom *P = lws_get_opaque_user_data(wsi);
    conn *c = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!P || !c) return -1;
        return on_request(P, wsi, c, in ? (const char *)in : "/");
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        /* HTTP/1.1 only. A WebSocket would sit outside every timeout here,
         * and lws 4.1's h2c path truncated /metrics in a test (HTTP/2 flow
         * control makes lws_write() take less than asked). Prometheus
         * speaks HTTP/1.1. */
        if (P) count_request(P, H_OTHER, 501);
        if (lws_return_http_status(wsi, 501, "only HTTP/1.1: no upgrade to websocket or h2c"))
            return -1;
        return 1; /* lws completes the transaction */
    case LWS_CALLBACK_HTTP_BODY:
        return 0; /* a 405's body: ignored */
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (!P || !c) return -1;
        return on_writeable(P, wsi, c);
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        if (c) {
            sb_free(&c->body);
            c->sending = 0;
        }
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        if (P) forget_conn(P, wsi);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"http", http_cb, sizeof(conn), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* lws only calls this for loops it owns; with the core's loop it must never
 * break it, whatever happens. */
static void ignore_signal(void *handle, int signum) {
    (void)handle;
    (void)signum;
}

/* ------------------------------------------------------------------ */
/* The listening socket                                                */

/* lws 4.1's libev glue services its timers (connection timeouts among
 * them) from an ev_idle pass after each of its I/O events, and arms one
 * ev_timer for the next deadline with ev_timer_set() + ev_timer_start() --
 * which does nothing while that timer is already running for a later
 * deadline. A timeout set on a quiet connection can then wait for an
 * unrelated lws deadline (measured: 2 s timeouts firing after 14 s). While
 * connections are open, a 1 s tick wakes lws through its documented
 * lws_cancel_service(), whose event runs the idle pass: timeouts fire at
 * most a second late. */
static void kick_lws(struct ev_loop *loop, ev_timer *w, int revents) {
    prom *P = w->data;
    if (P->ctx) lws_cancel_service(P->ctx);
}

/* ------------------------------------------------------------------ */
/* The request-head gate                                               */

/* A new connection waits here, outside lws, until its request head is
 * complete: lws 4.1 closes a connection whose URL or headers overflow its
 * header table without a word, answers methods it does not know with 403
 * (and CONNECT not at all), and gives a client that sends its head a byte
 * at a time until its idle timeout. The gate answers 414, 431 and 405
 * (Allow: GET, HEAD) itself, and holds a head to header_timeout. It reads
 * with MSG_PEEK, so lws later reads the whole request itself, and waits
 * for more bytes with SO_RCVLOWAT instead of polling. */
typedef struct gate {
    struct gate *prev, *next;
    prom *P;
    int fd;
    struct in6_addr addr;
    ev_io io;
    ev_timer timer; /* header deadline; after a refusal, the lingering close */
    ssize_t peeked;
    int answered;
} gate;

static struct in6_addr addr_key(const struct sockaddr_storage *ss) {
    struct in6_addr a;
    if (ss->ss_family == AF_INET6) return ((const struct sockaddr_in6 *)ss)->sin6_addr;
    memset(&a, 0, sizeof a);
    a.s6_addr[10] = a.s6_addr[11] = 0xff;
    if (ss->ss_family == AF_INET) memcpy(&a.s6_addr[12], &((const struct sockaddr_in *)ss)->sin_addr, 4);
    return a;
}

static int clients_from(const prom *P, const struct in6_addr *a) {
    int n = 0;
    for (size_t i = 0; i < P->nwsis; i++) n += !memcmp(&P->wsis[i].addr, a, sizeof *a);
    for (const gate *g = P->gates; g; g = g->next) n += !memcmp(&g->addr, a, sizeof *a);
    return n;
}

static void gate_free(gate *g, int close_fd) {
    prom *P = g->P;
    ev_io_stop(P->host->loop, &g->io);
    ev_timer_stop(P->host->loop, &g->timer);
    if (g->prev)
        g->prev->next = g->next;
    else
        P->gates = g->next;
    if (g->next) g->next->prev = g->prev;
    P->ngates--;
    if (close_fd) close(g->fd);
    free(g);
}

/* Methods lws parses and on_request() answers (405 for all but GET and
 * HEAD, keeping the connection); anything else is the gate's. */
static int lws_knows(const char *m, size_t n) {
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i]) == n && !memcmp(m, known[i], n)) return 1;
    return 0;
}

/* 0: a complete head for lws; -1: incomplete; else the status to refuse with. */
static int gate_verdict(const char *buf, size_t n) {
    const char *eol = memchr(buf, '\n', n);
    size_t line = eol ? (size_t)(eol - buf) : n;
    if (line > GATE_LINE_MAX) return 414;
    const char *sp = memchr(buf, ' ', line);
    if (sp && !lws_knows(buf, (size_t)(sp - buf))) return 405;
    if (!sp && line > 16) return 405; /* no method is that long */
    if (!eol) return -1;
    /* the head ends at an empty line: "\n\r\n" or "\n\n" */
    for (const char *p = eol; p; p = memchr(p + 1, '\n', (size_t)(buf + n - (p + 1)))) {
        const char *q = p + 1;
        if (q < buf + n && *q == '\r') q++;
        if (q < buf + n && *q == '\n') return 0;
    }
    return n > GATE_HEAD_MAX ? 431 : -1;
}

static void set_lowat(int fd, int bytes) {
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes);
}

static void gate_drain(gate *g) {
    char buf[4096];
    ssize_t r;
    while ((r = recv(g->fd, buf, sizeof buf, 0)) > 0) {}
    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) gate_free(g, 1);
}

static void gate_refuse(gate *g, int code) {
    prom *P = g->P;
    const char *what = code == 405 ? "Method Not Allowed"
                       : code == 414 ? "URI Too Long"
                                     : "Request Header Fields Too Large";
    const char *body = code == 405 ? "405 method not allowed: use GET or HEAD\n"
                       : code == 414 ? "414 URI too long\n"
                                     : "431 request header fields too large\n";
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d %s\r\nserver: tolkd\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     "content-length: %zu\r\ncache-control: no-store\r\n%sconnection: close\r\n\r\n%s",
                     code, what, strlen(body), code == 405 ? "allow: GET, HEAD\r\n" : "", body);
    /* a fresh socket's buffer takes a few hundred bytes */
    if (send(g->fd, resp, (size_t)n, MSG_NOSIGNAL) != n) {
        gate_free(g, 1);
        return;
    }
    count_request(P, H_OTHER, code);
    P->heads_refused++;
    TOLK_LOG(P->host, P->inst, TOLK_LOG_VERB, "request refused with %d before lws", code);
    /* lingering close: read what the client still sends, so the kernel
     * does not answer it with a reset that could discard the response */
    shutdown(g->fd, SHUT_WR);
    g->answered = 1;
    set_lowat(g->fd, 1);
    ev_timer_stop(P->host->loop, &g->timer);
    ev_timer_set(&g->timer, 2.0, 0.);
    ev_timer_start(P->host->loop, &g->timer);
    gate_drain(g);
}

static void gate_adopt(gate *g) {
    prom *P = g->P;
    int fd = g->fd;
    struct in6_addr addr = g->addr;
    set_lowat(fd, 1);
    gate_free(g, 0);
    lws_adopt_desc_t ad = {.vh = P->vh,
                           .type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP,
                           .fd = {.sockfd = fd},
                           .opaque = P};
    struct lws *wsi = lws_adopt_descriptor_vhost_via_info(&ad);
    if (!wsi) { /* lws closed the fd */
        TOLK_LOG(P->host, P->inst, TOLK_LOG_WARN, "lws could not adopt a connection");
        return;
    }
    if (track_conn(P, wsi, &addr) != 0) {
        lws_set_opaque_user_data(wsi, NULL);
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
        return;
    }
    /* until the request is read and between keep-alive requests */
    set_idle(P, wsi, PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE);
}

static void gate_readable(struct ev_loop *loop, ev_io *w, int revents) {
    gate *g = w->data;
    if (g->answered) {
        gate_drain(g);
        return;
    }
    char buf[GATE_HEAD_MAX + 1];
    ssize_t n = recv(g->fd, buf, sizeof buf, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    /* gone, or readable with nothing new: the client shut down its side
     * before the head was complete */
    if (n <= 0 || n == g->peeked) {
        gate_free(g, 1);
        return;
    }
    g->peeked = n;
    int v = gate_verdict(buf, (size_t)n);
    if (v == 0)
        gate_adopt(g);
    else if (v > 0)
        gate_refuse(g, v);
    else
        set_lowat(g->fd, (int)n + 1); /* wake when more has come */
}

static void gate_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    gate *g = w->data;
    if (!g->answered) {
        g->P->header_timeouts++;
        TOLK_LOG(g->P->host, g->P->inst, TOLK_LOG_VERB,
                 "closing a connection: no complete request head within %d s",
                 g->P->header_timeout);
    }
    gate_free(g, 1);
}

static void gate_start(prom *P, int fd, const struct in6_addr *addr) {
    gate *g = calloc(1, sizeof *g);
    if (!g) {
        close(fd);
        return;
    }
    g->P = P;
    g->fd = fd;
    g->addr = *addr;
    ev_io_init(&g->io, gate_readable, fd, EV_READ);
    g->io.data = g;
    int secs = P->header_timeout < P->idle_timeout ? P->header_timeout : P->idle_timeout;
    ev_timer_init(&g->timer, gate_timeout, (double)secs, 0.);
    g->timer.data = g;
    g->next = P->gates;
    if (P->gates) P->gates->prev = g;
    P->gates = g;
    P->ngates++;
    ev_io_start(P->host->loop, &g->io);
    ev_timer_start(P->host->loop, &g->timer);
}

static void close_gates(prom *P) {
    while (P->gates) gate_free(P->gates, 1);
}

static void resume_accept(void *ud) {
    prom *P = ud;
    P->accept_pause = NULL; /* a one-shot timer frees itself */
    if (P->lfd >= 0) ev_io_start(P->host->loop, &P->accept_w);
}

/* accept() failed for a reason that does not go away by itself (no file
 * descriptors left): the pending connection keeps the listener readable,
 * so retrying at once would spin. Rest a while; log once per interval. */
static void pause_accept(prom *P, int err) {
    P->accept_errors++;
    double now = P->host->now();
    if (P->accept_errors == 1 || now - P->accept_logged_at >= ACCEPT_LOG_EVERY_S) {
        if (P->accept_errors_unlogged)
            P->host->log(P->inst, TOLK_LOG_WARN,
                         "accept: %s: not accepting for %.1f s (%" PRIu64
                         " more failures since the last message)",
                         strerror(err), ACCEPT_PAUSE_S, P->accept_errors_unlogged);
        else
            P->host->log(P->inst, TOLK_LOG_WARN, "accept: %s: not accepting for %.1f s",
                         strerror(err), ACCEPT_PAUSE_S);
        P->accept_logged_at = now;
        P->accept_errors_unlogged = 0;
    } else {
        P->accept_errors_unlogged++;
    }
    ev_io_stop(P->host->loop, &P->accept_w);
    if (!P->accept_pause)
        P->accept_pause = P->host->timer_start(P->inst, ACCEPT_PAUSE_S, 0, resume_accept, P);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
    prom *P = w->data;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(P->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            /* nothing waiting, or a client that gave up: carry on */
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED &&
                errno != EPROTO && errno != EPERM)
                pause_accept(P, errno);
            return;
        }
        P->accepted++;
        if (P->conns + P->ngates >= P->max_conns) {
            P->refused++;
            TOLK_LOG(P->host, P->inst, TOLK_LOG_VERB,
                     "refusing a connection: %d open (max_connections)", P->conns + P->ngates);
            close(fd);
            continue;
        }
        struct in6_addr addr = addr_key(&ss);
        if (clients_from(P, &addr) >= P->max_per_client) {
            P->refused++;
            P->refused_per_client++;
            TOLK_LOG(P->host, P->inst, TOLK_LOG_VERB,
                     "refusing a connection: its address has %d open (max_connections_per_client)",
                     P->max_per_client);
            close(fd);
            continue;
        }
        gate_start(P, fd, &addr);
    }
}

static int is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
}

static int parse_addr(const char *s, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

/* 0: listening; -1: failed with errno set. */
static int try_listen(prom *P) {
    int fd = socket(P->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&P->addr, P->addrlen) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    if (getsockname(fd, (struct sockaddr *)&got, &gl) == 0)
        P->port = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                 : ((struct sockaddr_in6 *)&got)->sin6_port);
    P->lfd = fd;
    ev_io_init(&P->accept_w, on_accept, fd, EV_READ);
    P->accept_w.data = P;
    ev_io_start(P->host->loop, &P->accept_w);
    P->bind_error[0] = 0;
    const char *fmt = P->addr.ss_family == AF_INET6 ? "listening on http://[%s]:%d/metrics"
                                                    : "listening on http://%s:%d/metrics";
    P->host->log(P->inst, TOLK_LOG_INFO, fmt, P->bind, P->port);
    return 0;
}

static void retry_bind(void *ud) {
    prom *P = ud;
    if (try_listen(P) == 0) {
        P->host->timer_stop(P->retry);
        P->retry = NULL;
        return;
    }
    snprintf(P->bind_error, sizeof P->bind_error, "%s", strerror(errno));
    if (++P->bind_failures % BIND_RETRY_LOG_EVERY == 0)
        P->host->log(P->inst, TOLK_LOG_ERR, "still cannot listen on %s:%d: %s (%u tries)",
                     P->bind, P->port_cfg, P->bind_error, P->bind_failures);
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */

/* The vhost this instance serves from. On a 1.2 host it lives on the
 * process's one lws context (host->lws_context()), which the core created
 * on its loop with its log routing; on an older host the instance makes a
 * context of its own, as before. */
static tolk_status attach_lws(prom *P) {
    const tolk_host *host = P->host;
    struct lws_context_creation_info ci;
    memset(&ci, 0, sizeof ci);
    if (TOLK_HOST_HAS(host, lws_context)) P->ctx = host->lws_context();
    if (P->ctx) {
        P->shared_ctx = 1;
    } else {
        void *loops[1] = {host->loop};
        ci.options = LWS_SERVER_OPTION_LIBEV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
        ci.foreign_loops = loops;
        ci.signal_cb = ignore_signal;
        ci.pcontext = &P->ctx;
        ci.gid = -1;
        ci.uid = -1;
        ci.server_string = "tolkd";
        /* a small fd table: lws otherwise sizes it by the process's fd limit */
        ci.fd_limit_per_thread = (unsigned)P->max_conns + 16;
        ci.max_http_header_data = 8192; /* as the core's: the gate passes 6 KiB heads */
        P->ctx = lws_create_context(&ci);
        if (!P->ctx) {
            host->log(P->inst, TOLK_LOG_ERR,
                      "libwebsockets could not create its context on the core's libev loop (is "
                      "the package libwebsockets-evlib-ev installed?)");
            return TOLK_E_FATAL;
        }
        memset(&ci, 0, sizeof ci);
    }
    unsigned idle = (unsigned)P->idle_timeout;
    ci.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    ci.protocols = protocols;
    ci.vhost_name = "metrics";
    ci.user = P; /* lws_vhost_user() in http_cb */
    ci.gid = -1;
    ci.uid = -1;
    ci.server_string = "tolkd";
    ci.keepalive_timeout = (int)idle;
    ci.timeout_secs = idle;
    ci.timeout_secs_ah_idle = idle;
    P->vh = lws_create_vhost(P->ctx, &ci);
    if (!P->vh) {
        host->log(P->inst, TOLK_LOG_ERR, "libwebsockets could not create its vhost");
        return TOLK_E_FATAL;
    }
    return TOLK_OK;
}

static tolk_status check_config(const json_t *cfg, tolk_config_error *err) {
    const char *bind = json_string_value(json_object_get(cfg, "bind"));
    struct sockaddr_storage ss;
    socklen_t len;
    if (bind && parse_addr(bind, 0, &ss, &len) != 0) {
        err->key = "bind";
        snprintf(err->message, sizeof err->message,
                 "'%s' is not an IPv4 or IPv6 address (write 127.0.0.1, ::1, 0.0.0.0 or ::)", bind);
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static void destroy(void *self);

static tolk_status create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                          void **self) {
    prom *P = calloc(1, sizeof *P);
    if (!P) return TOLK_E_NOMEM;
    P->host = host;
    P->inst = inst;
    P->lfd = -1;
    ev_init(&P->kick, kick_lws);
    P->kick.repeat = 1.0;
    P->kick.data = P;
    const char *bind = host->cfg_string(cfg, "bind");
    snprintf(P->bind, sizeof P->bind, "%s", bind ? bind : "127.0.0.1");
    P->port_cfg = P->port = (int)host->cfg_int(cfg, "port");
    P->idle_timeout = (int)host->cfg_int(cfg, "idle_timeout");
    if (P->idle_timeout <= 0) P->idle_timeout = 10;
    P->max_conns = (int)host->cfg_int(cfg, "max_connections");
    if (P->max_conns <= 0) P->max_conns = 64;
    P->max_per_client = (int)host->cfg_int(cfg, "max_connections_per_client");
    if (P->max_per_client <= 0) P->max_per_client = 8;
    P->header_timeout = (int)host->cfg_int(cfg, "header_timeout");
    if (P->header_timeout <= 0) P->header_timeout = 5;
    P->process_metrics = host->cfg_bool(cfg, "process_metrics");
    if (parse_addr(P->bind, P->port_cfg, &P->addr, &P->addrlen) != 0) {
        host->log(inst, TOLK_LOG_ERR, "bind: '%s' is not an IPv4 or IPv6 address", P->bind);
        free(P);
        return TOLK_E_INVAL;
    }
    if (!is_loopback(&P->addr))
        host->log(inst, TOLK_LOG_WARN,
                  "bind = \"%s\": metrics and health are served beyond loopback, without "
                  "authentication; restrict who can reach port %d",
                  P->bind, P->port_cfg);

    static const double render_b[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                      0.01,   0.025,   0.05,   0.1,   0.25};
    P->m_requests = host->metric_family("metrics_http_requests_total",
                                        "HTTP requests to the metrics exporter by handler and status code",
                                        TOLK_METRIC_COUNTER, "handler,code", NULL, 0);
    P->m_render = host->metric_family("metrics_render_seconds",
                                      "Time to snapshot the registry and format /metrics",
                                      TOLK_METRIC_HISTOGRAM, NULL, render_b,
                                      sizeof render_b / sizeof render_b[0]);
    P->s_render = host->metric_series(P->m_render, NULL);

    if (attach_lws(P) != TOLK_OK) {
        destroy(P);
        return TOLK_E_FATAL;
    }

    if (try_listen(P) != 0) {
        int e = errno;
        snprintf(P->bind_error, sizeof P->bind_error, "%s", strerror(e));
        if (e == EADDRINUSE && !port_held_here(P)) {
            host->log(inst, TOLK_LOG_ERR,
                      "cannot listen on %s:%d: %s: another process has the port; free it or "
                      "set another port",
                      P->bind, P->port_cfg, P->bind_error);
            destroy(P);
            return TOLK_E_FATAL;
        }
        if (e != EADDRINUSE && e != EADDRNOTAVAIL) {
            host->log(inst, TOLK_LOG_ERR, "cannot listen on %s:%d: %s", P->bind, P->port_cfg,
                      P->bind_error);
            destroy(P);
            return e == EACCES ? TOLK_E_INVAL : TOLK_E_FATAL;
        }
        /* in use by the instance this one replaces on a reload, or the
         * address is not up yet: keep trying */
        host->log(inst, TOLK_LOG_ERR, "cannot listen on %s:%d: %s; retrying every %.0f s",
                  P->bind, P->port_cfg, P->bind_error, BIND_RETRY_S);
        P->bind_failures = 1;
        P->retry = host->timer_start(inst, BIND_RETRY_S, BIND_RETRY_S, retry_bind, P);
    }
    P->next_live = g_live;
    g_live = P;
    *self = P;
    return TOLK_OK;
}

static void destroy(void *self) {
    prom *P = self;
    if (!P) return;
    live_remove(P);
    if (P->retry) P->host->timer_stop(P->retry);
    if (P->accept_pause) P->host->timer_stop(P->accept_pause);
    if (P->lfd >= 0) {
        ev_io_stop(P->host->loop, &P->accept_w);
        close(P->lfd);
    }
    close_gates(P);
    close_conns(P); /* their conn buffers are freed in CLOSED_HTTP */
    if (P->shared_ctx) {
        /* lws frees the vhost itself later */
        if (P->vh) lws_vhost_destroy(P->vh);
    } else if (P->ctx) {
        /* closes every connection and stops lws's watchers on the core's
         * loop; with libev this finishes inside the call and clears P->ctx */
        lws_context_destroy(P->ctx);
        if (P->ctx)
            P->host->log(P->inst, TOLK_LOG_WARN,
                         "libwebsockets did not finish destroying its context");
    }
    ev_timer_stop(P->host->loop, &P->kick);
    free(P);
}

static tolk_health health(void *self, json_t **detail_new) {
    prom *P = self;
    int listening = P->lfd >= 0;
    if (detail_new) {
        json_t *d = json_pack("{s:s, s:i, s:b, s:i, s:I, s:I, s:{s:I, s:I, s:I}, s:I, s:f, s:f, s:I}",
                              "bind", P->bind, "port", P->port, "listening", listening, "connections",
                              P->conns + P->ngates, "accepted", (json_int_t)P->accepted, "refused",
                              (json_int_t)P->refused, "requests", "metrics",
                              (json_int_t)P->requests[H_METRICS], "healthz",
                              (json_int_t)P->requests[H_HEALTHZ], "other",
                              (json_int_t)P->requests[H_OTHER], "renders",
                              (json_int_t)P->render_count, "last_render_seconds", P->last_render_s,
                              "max_render_seconds", P->max_render_s, "last_body_bytes",
                              (json_int_t)P->last_body_bytes);
        if (d && P->bind_error[0]) json_object_set_new(d, "bind_error", json_string(P->bind_error));
        if (d) {
            json_object_set_new(d, "accept_errors", json_integer((json_int_t)P->accept_errors));
            json_object_set_new(d, "refused_per_client",
                                json_integer((json_int_t)P->refused_per_client));
            json_object_set_new(d, "header_timeouts", json_integer((json_int_t)P->header_timeouts));
            json_object_set_new(d, "heads_refused", json_integer((json_int_t)P->heads_refused));
        }
        *detail_new = d;
    }
    return listening ? TOLK_HEALTHY : TOLK_UNHEALTHY;
}

static const tolk_metrics metrics_prometheus = {
    .base = {TOLK_PLUGIN_INIT(tolk_metrics, TOLK_KIND_METRICS),
             .name = "metrics_prometheus",
             .version = "1.0.0",
             .description = "Prometheus text format 0.0.4 at /metrics and a health check at "
                            "/healthz, served from the core's loop with libwebsockets",
             .options = options,
             .check_config = check_config,
             .create = create,
             .destroy = destroy,
             .health = health},
};

TOLK_PLUGIN_DEFINE(metrics_prometheus)
