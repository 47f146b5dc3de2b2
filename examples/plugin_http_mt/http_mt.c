/*
 * http_mt.c -- a networked tolk MT plugin, meant to be copied: it translates
 * through an HTTP JSON service with the core's HTTP client
 * (host->http_request, ABI 1.2), so it needs no libcurl and no event-loop
 * plumbing of its own.
 *
 * The service is LibreTranslate-shaped:
 *
 *     POST /translate  {"q": "...", "source": "en", "target": "es", "api_key": "..."}
 *     200              {"translatedText": "..."}
 *
 * Build (jansson comes with tolk-plugin.pc, which requires it):
 *     cc -shared -fPIC $(pkg-config --cflags tolk-plugin) http_mt.c -o http_mt.so \
 *        $(pkg-config --libs tolk-plugin) -Wl,--no-undefined
 *
 * What a network plugin must get right, and where this file does it:
 *   - one request in flight per translate(), found again by cancel()
 *     (struct job, http_mt_cancel);
 *   - the HTTP outcome mapped onto the statuses the recovery manager reads
 *     (status_of_response): 429/5xx are worth retrying, 401/403 will not get
 *     better by themselves (reported as permanent), other 4xx are our fault;
 *   - nothing secret in a log line: the key travels in the body, and the
 *     core's client never logs bodies or query strings.
 */
#define _POSIX_C_SOURCE 200809L /* strdup() also under -std=c11 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

static const tolk_option http_mt_options[] = {
    {.key = "url", .type = TOLK_OPT_STRING, .default_value = "http://127.0.0.1:5000/translate",
     .help = "the service's translate endpoint (http:// or https://)"},
    {.key = "api_key", .type = TOLK_OPT_STRING, .flags = TOLK_OPT_SECRET,
     .default_value = NULL, .help = "API key sent with every request, if the service wants one"},
    {.key = "timeout", .type = TOLK_OPT_DOUBLE, .default_value = "5", .min = 0.1, .max = 300,
     .help = "seconds a translation may take, connection included"},
    {.key = "ca_file", .type = TOLK_OPT_STRING, .default_value = NULL,
     .help = "PEM file of the CA that signed the service's certificate (default: the system's)"},
    {.key = NULL},
};

/* One translate() in flight. */
struct job {
    struct http_mt *owner;
    tolk_request *req; /* the core's handle: valid until mt_done or cancel */
    tolk_http *http;   /* the host's handle: valid until on_done or http_cancel */
    struct job *next;
};

struct http_mt {
    const tolk_host *host;
    tolk_instance *inst;
    char *url, *api_key, *ca_file;
    double timeout;
    struct job *jobs;
};

static void job_unlink(struct http_mt *m, struct job *j)
{
    for (struct job **pp = &m->jobs; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            return;
        }
    }
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ------------------------------------------------------------------ */
/* Settings and lifecycle                                              */

/* No host here, but jansson is at hand: a bad URL is reported with the
 * FILE:LINE of the `url` key. */
static tolk_status http_mt_check_config(const json_t *cfg, tolk_config_error *err)
{
    const char *url = json_string_value(json_object_get(cfg, "url"));
    if (url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
        err->key = "url";
        snprintf(err->message, sizeof err->message, "must start with http:// or https://");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static void http_mt_destroy(void *self);

static tolk_status http_mt_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                  void **self)
{
    /* The HTTP client arrived with ABI 1.2. The core refuses a plugin built
     * for a newer minor than its own, so this cannot fail today; the check
     * costs nothing and stays right if this file is ever built with
     * TOLK_PLUGIN_DEFINE_COMPAT to load on older hosts. */
    if (!TOLK_HOST_HAS(host, http_request)) {
        host->log(inst, TOLK_LOG_ERR, "this tolkd has no HTTP client (plugin ABI 1.2 needed)");
        return TOLK_E_FATAL;
    }
    struct http_mt *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->url = dup_or_null(host->cfg_string(cfg, "url"));
    m->api_key = dup_or_null(host->cfg_string(cfg, "api_key"));
    m->ca_file = dup_or_null(host->cfg_string(cfg, "ca_file"));
    m->timeout = host->cfg_double(cfg, "timeout");
    if (!m->url) {
        http_mt_destroy(m);
        return TOLK_E_NOMEM;
    }
    /* The URL, never the key. */
    TOLK_LOG(host, inst, TOLK_LOG_VERB, "translating through %s%s", m->url,
             m->api_key ? " (with an API key)" : "");
    *self = m;
    return TOLK_OK;
}

static void http_mt_destroy(void *self)
{
    struct http_mt *m = self;
    /* The core cancels every request before destroying an instance, and
     * cancels what is left here with a warning. Do it ourselves anyway. */
    while (m->jobs) {
        struct job *j = m->jobs;
        m->jobs = j->next;
        m->host->http_cancel(j->http);
        free(j);
    }
    free(m->url);
    free(m->api_key);
    free(m->ca_file);
    free(m);
}

/* ------------------------------------------------------------------ */
/* The answer                                                          */

/* What the recovery manager should make of a complete HTTP response. */
static tolk_status status_of_response(struct http_mt *m, tolk_http *h, int http_status)
{
    const tolk_host *host = m->host;
    if (http_status >= 200 && http_status < 300) return TOLK_OK;
    if (http_status == 429 || http_status >= 500) {
        /* Worth another try, soon. ABI 1.2's mt_result() can carry the
         * server's Retry-After to the core; this skeleton still answers
         * with ABI 1.1's mt_done() and only logs it. */
        const char *retry = host->http_header(h, "Retry-After");
        TOLK_LOG(host, m->inst, TOLK_LOG_WARN, "service busy (HTTP %d)%s%s", http_status,
                 retry ? ", retry after " : "", retry ? retry : "");
        return TOLK_E_AGAIN;
    }
    if (http_status == 401 || http_status == 403) {
        /* A wrong or expired key: no retry or reset will fix it. The core
         * fails over at once and keeps new calls away from this instance. */
        char why[96];
        snprintf(why, sizeof why, "the service refused the API key (HTTP %d)", http_status);
        host->report(m->inst, TOLK_E_BACKEND, TOLK_SEV_PERMANENT, why);
        return TOLK_E_BACKEND;
    }
    if (http_status >= 400) return TOLK_E_INVAL; /* our request was wrong */
    return TOLK_E_BACKEND; /* 1xx, 3xx: not what this service answers */
}

/* The HTTP request ended. The handle h is freed when this returns. */
static void http_mt_on_done(void *ud, tolk_http *h, const tolk_http_result *res)
{
    struct job *j = ud;
    struct http_mt *m = j->owner;
    const tolk_host *host = m->host;
    job_unlink(m, j); /* finished: cancel() must no longer find it */

    tolk_status st = res->status;
    const char *text = NULL;
    json_t *answer = NULL;
    if (st == TOLK_OK) st = status_of_response(m, h, res->http_status);
    if (st == TOLK_OK) {
        answer = json_loadb(res->body, res->body_len, 0, NULL);
        text = json_string_value(json_object_get(answer, "translatedText"));
        if (!text) {
            TOLK_LOG(host, m->inst, TOLK_LOG_WARN, "HTTP %d without translatedText",
                     res->http_status);
            st = TOLK_E_BACKEND;
        }
    } else if (res->status != TOLK_OK) {
        /* Transport trouble: timeouts stay timeouts, the rest means the
         * service is out of reach, which a backup may not be. */
        TOLK_LOG(host, m->inst, TOLK_LOG_WARN, "request failed: %s", res->error);
        if (st != TOLK_E_TIMEOUT && st != TOLK_E_NOMEM) st = TOLK_E_BACKEND;
    }
    host->mt_done(j->req, st, st == TOLK_OK ? text : NULL);
    json_decref(answer); /* text was borrowed from it for the call */
    free(j);
}

/* ------------------------------------------------------------------ */
/* translate and cancel                                                */

static tolk_status http_mt_translate(void *self, tolk_request *r, const char *text,
                                     const char *from, const char *to)
{
    struct http_mt *m = self;
    json_t *q = json_pack("{s:s, s:s, s:s, s:s}", "q", text, "source", from, "target", to,
                          "format", "text");
    if (q && m->api_key) json_object_set_new(q, "api_key", json_string(m->api_key));
    char *body = q ? json_dumps(q, JSON_COMPACT) : NULL;
    json_decref(q);
    struct job *j = body ? calloc(1, sizeof *j) : NULL;
    if (!j) {
        free(body);
        return TOLK_E_NOMEM;
    }
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: application/json", NULL};
    tolk_http_request req = {
        .size = sizeof req,
        .url = m->url,
        .headers = headers,
        .body = body,
        .body_len = strlen(body),
        .connect_timeout = m->timeout,
        .total_timeout = m->timeout,
        .ca_file = m->ca_file,
        .max_body = 1 << 20,
        .on_done = http_mt_on_done,
        .ud = j,
    };
    j->owner = m;
    j->req = r;
    j->http = m->host->http_request(m->inst, &req); /* copies the body */
    free(body);
    if (!j->http) { /* refused at once (the host logged why); no on_done follows */
        free(j);
        return TOLK_E_INVAL;
    }
    j->next = m->jobs;
    m->jobs = j;
    return TOLK_PENDING; /* mt_done() follows from http_mt_on_done, unless cancelled */
}

static void http_mt_cancel(void *self, tolk_request *r)
{
    struct http_mt *m = self;
    for (struct job *j = m->jobs; j; j = j->next) {
        if (j->req == r) {
            job_unlink(m, j);
            m->host->http_cancel(j->http); /* no on_done after this */
            free(j);
            return;
        }
    }
}

static const tolk_mt http_mt = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT),
            .name = "http_mt",
            .version = "1.0.0",
            .description = "example MT plugin: a LibreTranslate-shaped HTTP JSON service",
            .options = http_mt_options,
            .check_config = http_mt_check_config,
            .create = http_mt_create,
            .destroy = http_mt_destroy,
        },
    .translate = http_mt_translate,
    .cancel = http_mt_cancel,
};

TOLK_PLUGIN_DEFINE(http_mt)
