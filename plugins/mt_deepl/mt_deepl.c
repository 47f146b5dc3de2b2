/*
 * mt_deepl -- machine translation through DeepL's REST API v2
 * (POST /v2/translate), over the core's HTTP client (host->http_request,
 * ABI 1.2): the plugin drives no socket itself.
 *
 * One request per phrase: {"text":[phrase], "source_lang", "target_lang",
 * "context" (the call's previous phrases in this direction: not billed, and
 * short phone phrases translate better with it), "model_type", "formality",
 * "glossary_id"}, with `Authorization: DeepL-Auth-Key <key>`. The key comes
 * from the settings or DEEPL_AUTH_KEY and is never logged; a key ending in
 * ":fx" is a Free key and goes to api-free.deepl.com unless `url` is set.
 *
 * Language codes: sources are sent as their base ("en-US" -> "EN"); targets
 * that DeepL wants with a variant get one ("en" -> english_variant, "pt" ->
 * portuguese_variant, "zh" -> "ZH-HANS").
 *
 * Errors, as DeepL's own SDKs treat them:
 *   429, 5xx (529 included), connection failures, timeouts
 *       retried here, up to max_retries, after 1 s x 1.6^n (cap 120 s,
 *       jitter +-23%), or the Retry-After header when the answer has one;
 *       then the request fails with TOLK_E_AGAIN and the core's recovery
 *       takes over (retry_after passed on);
 *   403 (bad key, wrong host), 456 (quota used up)
 *       reported as permanent (host->report): the core moves to the chain's
 *       backup at once, with no retry;
 *   400, 413, 414
 *       the request itself is wrong: logged with its size, not retried.
 * A 200 whose body is not the documented JSON is a backend failure.
 *
 * Batching (batch_ms > 0, off by default): phrases of the same language
 * pair, formality and glossary that arrive within batch_ms share one
 * request ({"text": [up to batch_max phrases]}; DeepL answers in the same
 * order). Such a request carries no context: DeepL applies one context to
 * every text, and the phrases come from different calls. A phrase waits at
 * most batch_ms more; a batch is sent as soon as it is full. Retries and
 * failures apply to the whole request; a phrase cancelled meanwhile gets
 * no answer (and, before the batch is sent, is left out of it).
 *
 * Health: FAILED from a request's failure until DeepL answers again; while
 * failing, health() probes GET /v2/usage at most every probe_interval
 * seconds, so a provider the core failed over from is taken back (failback)
 * once the network, the key or the quota is good again.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

#define PRO_URL "https://api.deepl.com"
#define FREE_URL "https://api-free.deepl.com"
#define BATCH_LIMIT 50 /* texts per request: DeepL's documented limit */

static const tolk_option deepl_options[] = {
    {.key = "auth_key", .type = TOLK_OPT_STRING, .flags = TOLK_OPT_SECRET,
     .help = "DeepL API key (default: the environment variable DEEPL_AUTH_KEY)"},
    {.key = "url", .type = TOLK_OPT_STRING,
     .help = "API base URL (default: api.deepl.com, or api-free.deepl.com for a :fx key)"},
    {.key = "model_type", .type = TOLK_OPT_STRING, .default_value = "latency_optimized",
     .help = "latency_optimized, quality_optimized or prefer_quality_optimized"},
    {.key = "formality", .type = TOLK_OPT_STRING,
     .help = "default formality when the endpoint says none: more, less, prefer_more, prefer_less"},
    {.key = "glossaries", .type = TOLK_OPT_MAP,
     .help = "glossary ids, by endpoint glossary name or by language pair (\"en-es\")"},
    {.key = "english_variant", .type = TOLK_OPT_STRING, .default_value = "EN-US",
     .help = "target code for English: EN-US or EN-GB"},
    {.key = "portuguese_variant", .type = TOLK_OPT_STRING, .default_value = "PT-BR",
     .help = "target code for Portuguese: PT-BR or PT-PT"},
    {.key = "timeout", .type = TOLK_OPT_DOUBLE, .default_value = "5", .min = 0.1, .max = 600,
     .help = "seconds for one HTTP attempt"},
    {.key = "max_retries", .type = TOLK_OPT_INT, .default_value = "2", .min = 0, .max = 10,
     .help = "retries of a 429/5xx/network failure inside one request"},
    {.key = "backoff_initial", .type = TOLK_OPT_DOUBLE, .default_value = "1.0", .min = 0, .max = 600,
     .help = "first retry delay, seconds (DeepL's SDKs: 1.0, x1.6 per retry)"},
    {.key = "batch_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1000,
     .help = "> 0: phrases of the same language pair (and formality, glossary) arriving within this many ms "
             "share one request, up to batch_max texts, sent without context; 0: one request per phrase"},
    {.key = "batch_max", .type = TOLK_OPT_INT, .default_value = "50", .min = 1, .max = BATCH_LIMIT,
     .help = "texts per batched request (DeepL takes up to 50)"},
    {.key = "probe_interval", .type = TOLK_OPT_DOUBLE, .default_value = "10", .min = 0.05, .max = 3600,
     .help = "seconds between GET /v2/usage probes while DeepL is failing"},
    {.key = "ca_file", .type = TOLK_OPT_STRING, .help = "CA bundle for TLS (default: the system's)"},
    {.key = "insecure", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "skip TLS verification (local tests only)"},
    {.key = NULL},
};

typedef struct deepl deepl;

typedef struct job {
    struct job *prev, *next;
    deepl *d;
    /* the phrases it carries: one, or with batch_ms up to batch_max; a
     * member cancelled meanwhile is NULL */
    tolk_request *rs[BATCH_LIMIT];
    size_t nr;
    json_t *texts;    /* an open batch: the members' texts (rs order) */
    json_t *base;     /* an open batch: the request without its texts */
    char *key;        /* an open batch: pair, formality, glossary */
    tolk_timer *open; /* an open batch: sends it after batch_ms */
    int delivering;   /* results are being handed out: cancel only clears */
    char *body;       /* the JSON request, resent on retries */
    size_t body_len;
    int attempts;
    tolk_http *http;  /* the attempt in flight, or NULL */
    tolk_timer *wait; /* the backoff before the next attempt, or NULL */
} job;

struct deepl {
    const tolk_host *host;
    tolk_instance *inst;
    char *url, *auth_header, *model_type, *formality, *en_variant, *pt_variant, *ca_file;
    json_t *glossaries;
    double timeout, backoff, probe_interval, last_probe;
    int max_retries, insecure;
    int failing;        /* the last request or probe failed */
    tolk_http *probe;   /* GET /v2/usage in flight */
    job *jobs;
    long batch_ms, batch_max;
    uint64_t requests, failures, retries, permanent, batches, batched_texts;
    int last_status;
    unsigned rng;
};

/* ------------------------------------------------------------------ */
/* Language codes                                                      */

static void upper_base(const char *in, char *out, size_t len) {
    size_t i = 0;
    for (; in && in[i] && in[i] != '-' && in[i] != '_' && i + 1 < len; i++)
        out[i] = (char)toupper((unsigned char)in[i]);
    out[i] = '\0';
}

static void target_code(const deepl *d, const char *in, char *out, size_t len) {
    char base[16];
    upper_base(in, base, sizeof base);
    const char *variant = strchr(in ? in : "", '-');
    if (!variant) variant = strchr(in ? in : "", '_');
    if (variant) {
        snprintf(out, len, "%s-", base);
        size_t n = strlen(out);
        for (const char *p = variant + 1; *p && n + 1 < len; p++) out[n++] = (char)toupper((unsigned char)*p);
        out[n] = '\0';
        return;
    }
    if (!strcmp(base, "EN"))
        snprintf(out, len, "%s", d->en_variant);
    else if (!strcmp(base, "PT"))
        snprintf(out, len, "%s", d->pt_variant);
    else if (!strcmp(base, "ZH"))
        snprintf(out, len, "ZH-HANS");
    else
        snprintf(out, len, "%s", base);
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

static void job_free(job *j) {
    deepl *d = j->d;
    if (j->http) d->host->http_cancel(j->http);
    if (j->wait) d->host->timer_stop(j->wait);
    if (j->open) d->host->timer_stop(j->open);
    if (j->prev)
        j->prev->next = j->next;
    else
        d->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    json_decref(j->texts);
    json_decref(j->base);
    free(j->key);
    free(j->body);
    free(j);
}

/* Hands each member its result: texts[i] (a JSON array of translations in
 * the members' order) or, when texts is NULL, text (NULL on failure). A
 * member cancelled meanwhile (also from inside mt_result) gets nothing. */
static void job_deliver(job *j, tolk_status st, const char *text, json_t *texts, double retry_after) {
    deepl *d = j->d;
    j->http = NULL; /* finished: nothing to cancel */
    if (st != TOLK_OK) d->failures++;
    /* a refused request (400) says nothing about DeepL's health */
    if (st != TOLK_E_INVAL) d->failing = st != TOLK_OK;
    j->delivering = 1;
    for (size_t i = 0; i < j->nr; i++) {
        tolk_request *r = j->rs[i];
        if (!r) continue;
        j->rs[i] = NULL;
        const char *t = texts ? json_string_value(json_object_get(json_array_get(texts, i), "text")) : text;
        tolk_mt_result res = {.size = sizeof res, .status = st, .text = t, .retry_after = retry_after};
        d->host->mt_result(r, &res);
    }
    job_free(j);
}

static void job_finish(job *j, tolk_status st, const char *text, double retry_after) {
    job_deliver(j, st, text, NULL, retry_after);
}

static void attempt(job *j);

static void on_wait(void *ud) {
    job *j = ud;
    j->wait = NULL;
    attempt(j);
}

/* 1 s x 1.6^n, at most 120 s, +-23%: what deepl-python and deepl-node do. */
static double backoff_delay(deepl *d, int retry) {
    double delay = d->backoff;
    for (int i = 0; i < retry; i++) delay *= 1.6;
    if (delay > 120) delay = 120;
    d->rng = d->rng * 1103515245u + 12345u;
    double jitter = ((double)(d->rng >> 8 & 0xffff) / 65535.0) * 0.46 - 0.23;
    return delay * (1.0 + jitter);
}

/* A failure that DeepL's SDKs retry: again here while retries are left. */
static void retry_or_fail(job *j, double retry_after, const char *why) {
    deepl *d = j->d;
    if (j->attempts <= d->max_retries) {
        double delay = backoff_delay(d, j->attempts - 1);
        if (retry_after > delay) delay = retry_after;
        d->retries++;
        TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "%s: retry %d in %.2f s", why, j->attempts, delay);
        j->wait = d->host->timer_start(d->inst, delay, 0, on_wait, j);
        if (j->wait) return;
    }
    d->host->log(d->inst, TOLK_LOG_WARN, "%s (after %d attempt%s)", why, j->attempts,
                 j->attempts == 1 ? "" : "s");
    job_finish(j, TOLK_E_AGAIN, NULL, retry_after);
}

static double retry_after_of(deepl *d, tolk_http *h) {
    const char *v = d->host->http_header(h, "Retry-After");
    if (!v) return 0;
    char *end;
    double s = strtod(v, &end);
    return end != v && s > 0 && s < 3600 ? s : 0; /* an HTTP date is not worth honouring */
}

/* The message of an error body, for the log; never the request. */
static void error_message(const tolk_http_result *res, char *out, size_t len) {
    out[0] = '\0';
    if (!res->body || !res->body_len) return;
    json_t *j = json_loadb(res->body, res->body_len, 0, NULL);
    const char *m = json_string_value(json_object_get(j, "message"));
    if (m) snprintf(out, len, ": %s", m);
    json_decref(j);
}

static void on_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    job *j = ud;
    deepl *d = j->d;
    double retry_after = res->http_status ? retry_after_of(d, h) : 0;
    j->http = NULL;
    d->last_status = res->http_status;
    char why[300], msg[200];
    if (res->status != TOLK_OK) {
        snprintf(why, sizeof why, "no answer from DeepL: %s", res->error ? res->error : "?");
        retry_or_fail(j, 0, why);
        return;
    }
    int code = res->http_status;
    error_message(res, msg, sizeof msg);
    if (code == 429 || code >= 500) {
        snprintf(why, sizeof why, "DeepL answered %d%s", code, msg);
        retry_or_fail(j, retry_after, why);
        return;
    }
    if (code == 403 || code == 456) {
        d->permanent++;
        snprintf(why, sizeof why, "DeepL answered %d (%s)%s", code,
                 code == 456 ? "quota for this billing period used up" : "key refused or wrong host", msg);
        d->host->report(d->inst, TOLK_E_BACKEND, TOLK_SEV_PERMANENT, why);
        job_finish(j, TOLK_E_BACKEND, NULL, 0);
        return;
    }
    if (code != 200) {
        d->host->log(d->inst, TOLK_LOG_ERR, "DeepL refused a request of %zu bytes: %d%s", j->body_len,
                     code, msg);
        job_finish(j, TOLK_E_INVAL, NULL, 0);
        return;
    }
    json_t *doc = json_loadb(res->body ? res->body : "", res->body_len, 0, NULL);
    json_t *all = json_object_get(doc, "translations");
    const char *text = NULL;
    int whole = json_array_size(all) == j->nr;
    for (size_t i = 0; whole && i < j->nr; i++) whole = json_is_string(json_object_get(json_array_get(all, i), "text"));
    if (whole) text = json_string_value(json_object_get(json_array_get(all, 0), "text"));
    if (whole && j->nr > 1) {
        job_deliver(j, TOLK_OK, NULL, all, 0);
        json_decref(doc);
        return;
    }
    if (!text) {
        json_decref(doc);
        snprintf(why, sizeof why, "DeepL answered 200 with a body that is not a translation (%zu bytes)",
                 res->body_len);
        retry_or_fail(j, 0, why);
        return;
    }
    char *copy = strdup(text);
    json_decref(doc);
    job_finish(j, copy ? TOLK_OK : TOLK_E_NOMEM, copy, 0);
    free(copy);
}

static void attempt(job *j) {
    deepl *d = j->d;
    char url[1024];
    snprintf(url, sizeof url, "%s/v2/translate", d->url);
    const char *headers[] = {d->auth_header, "Content-Type: application/json",
                             "User-Agent: tolk-mt_deepl/1.0", NULL};
    tolk_http_request req = {
        .size = sizeof req,
        .method = "POST",
        .url = url,
        .headers = headers,
        .body = j->body,
        .body_len = j->body_len,
        .total_timeout = d->timeout,
        .ca_file = d->ca_file,
        .insecure = d->insecure,
        .max_body = 1 << 20,
        .on_done = on_done,
        .ud = j,
    };
    j->attempts++;
    d->requests++;
    j->http = d->host->http_request(d->inst, &req);
    if (!j->http) job_finish(j, TOLK_E_INVAL, NULL, 0);
}

static const char *glossary_id(deepl *d, const tolk_mt_request *q, const char *pair) {
    const char *id = NULL;
    if (q->glossary) id = json_string_value(json_object_get(d->glossaries, q->glossary));
    if (!id) id = json_string_value(json_object_get(d->glossaries, pair));
    return id;
}

/* ---- batching (batch_ms > 0) ---- */

/* An open batch is sent: its live members' texts into the request. */
static void batch_send(job *j) {
    deepl *d = j->d;
    size_t n = 0;
    json_t *texts = json_array();
    for (size_t i = 0; i < j->nr; i++)
        if (j->rs[i]) {
            json_array_append(texts, json_array_get(j->texts, i));
            j->rs[n++] = j->rs[i];
        }
    j->nr = n;
    free(j->key);
    j->key = NULL; /* closed: no more members */
    if (n == 0) {
        json_decref(texts);
        job_free(j);
        return;
    }
    json_object_set_new(j->base, "text", texts);
    j->body = json_dumps(j->base, JSON_COMPACT);
    json_decref(j->base);
    j->base = NULL;
    json_decref(j->texts);
    j->texts = NULL;
    if (!j->body) {
        job_finish(j, TOLK_E_NOMEM, NULL, 0);
        return;
    }
    j->body_len = strlen(j->body);
    d->batches++;
    d->batched_texts += n;
    attempt(j);
}

static void on_batch_timer(void *ud) {
    job *j = ud;
    j->open = NULL;
    batch_send(j);
}

/* Joins the open batch of the same pair, formality and glossary, or opens
 * one; body (stolen) is this phrase's request, whose context is dropped:
 * DeepL applies one context to every text of a request, and the phrases of
 * a batch come from different calls. */
static tolk_status batch_add(deepl *d, tolk_request *r, const char *text, json_t *body, const char *src,
                             const char *dst, const char *formality, const char *gid) {
    char key[256];
    snprintf(key, sizeof key, "%s>%s|%s|%s", src, dst, formality ? formality : "", gid ? gid : "");
    job *j = d->jobs;
    while (j && !(j->key && !strcmp(j->key, key) && j->nr < (size_t)d->batch_max)) j = j->next;
    if (!j) {
        j = calloc(1, sizeof *j);
        if (!j || !(j->key = strdup(key)) || !(j->texts = json_array())) {
            if (j) free(j->key);
            free(j);
            json_decref(body);
            return TOLK_E_NOMEM;
        }
        json_object_del(body, "context");
        json_object_del(body, "text");
        j->base = body;
        body = NULL;
        j->d = d;
        j->next = d->jobs;
        if (d->jobs) d->jobs->prev = j;
        d->jobs = j;
        j->open = d->host->timer_start(d->inst, (double)d->batch_ms / 1000.0, 0, on_batch_timer, j);
    }
    json_decref(body);
    json_array_append_new(j->texts, json_string(text));
    j->rs[j->nr++] = r;
    if (j->nr >= (size_t)d->batch_max || !j->open) {
        if (j->open) d->host->timer_stop(j->open);
        j->open = NULL;
        batch_send(j);
    }
    return TOLK_PENDING;
}

static tolk_status deepl_translate_req(void *self, tolk_request *r, const tolk_mt_request *q) {
    deepl *d = self;
    if (!q || !TOLK_HAS(q, tolk_mt_request, leg) || !q->text) return TOLK_E_INVAL;
    char src[16], dst[24], pair[64];
    upper_base(q->from, src, sizeof src);
    target_code(d, q->to, dst, sizeof dst);
    snprintf(pair, sizeof pair, "%s-%s", q->from ? q->from : "", q->to ? q->to : "");
    json_t *body = json_pack("{s:[s], s:s, s:s, s:s}", "text", q->text, "source_lang", src,
                             "target_lang", dst, "model_type", d->model_type);
    if (!body) return TOLK_E_NOMEM;
    if (q->ncontext) {
        /* one string: DeepL applies it to every text of the request */
        size_t len = 1;
        for (size_t i = 0; i < q->ncontext; i++) len += strlen(q->context[i]) + 1;
        char *ctx = malloc(len), *p = ctx;
        if (ctx) {
            for (size_t i = 0; i < q->ncontext; i++) p += sprintf(p, "%s%s", i ? " " : "", q->context[i]);
            json_object_set_new(body, "context", json_string(ctx));
            free(ctx);
        }
    }
    const char *formality = q->formality ? q->formality : d->formality;
    if (formality) json_object_set_new(body, "formality", json_string(formality));
    const char *gid = glossary_id(d, q, pair);
    if (gid) json_object_set_new(body, "glossary_id", json_string(gid));
    if (d->batch_ms > 0) return batch_add(d, r, q->text, body, src, dst, formality, gid);
    job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(body);
        return TOLK_E_NOMEM;
    }
    j->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!j->body) {
        free(j);
        return TOLK_E_NOMEM;
    }
    j->body_len = strlen(j->body);
    j->d = d;
    j->rs[0] = r;
    j->nr = 1;
    j->next = d->jobs;
    if (d->jobs) d->jobs->prev = j;
    d->jobs = j;
    attempt(j);
    return TOLK_PENDING;
}

/* ABI 1.1 hosts never get here (create refuses them); 1.2 calls translate_req. */
static tolk_status deepl_translate(void *self, tolk_request *r, const char *text, const char *from,
                                   const char *to) {
    tolk_mt_request q = {.size = sizeof q, .text = text, .from = from, .to = to};
    return deepl_translate_req(self, r, &q);
}

static void deepl_cancel(void *self, tolk_request *r) {
    deepl *d = self;
    for (job *j = d->jobs; j; j = j->next) {
        for (size_t i = 0; i < j->nr; i++) {
            if (j->rs[i] != r) continue;
            j->rs[i] = NULL;
            if (j->delivering || j->key) return; /* handed out, or an open batch: sent without it */
            for (size_t k = 0; k < j->nr; k++)
                if (j->rs[k]) return; /* the others still want the answer */
            job_free(j);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status deepl_check_config(const json_t *cfg, tolk_config_error *err) {
    const char *mt = json_string_value(json_object_get(cfg, "model_type"));
    if (mt && strcmp(mt, "latency_optimized") && strcmp(mt, "quality_optimized") &&
        strcmp(mt, "prefer_quality_optimized")) {
        err->key = "model_type";
        snprintf(err->message, sizeof err->message,
                 "'%s' is not one of latency_optimized, quality_optimized, prefer_quality_optimized", mt);
        return TOLK_E_INVAL;
    }
    const char *f = json_string_value(json_object_get(cfg, "formality"));
    if (f && strcmp(f, "default") && strcmp(f, "more") && strcmp(f, "less") &&
        strcmp(f, "prefer_more") && strcmp(f, "prefer_less")) {
        err->key = "formality";
        snprintf(err->message, sizeof err->message,
                 "'%s' is not one of default, more, less, prefer_more, prefer_less", f);
        return TOLK_E_INVAL;
    }
    const char *url = json_string_value(json_object_get(cfg, "url"));
    if (url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
        err->key = "url";
        snprintf(err->message, sizeof err->message, "must start with http:// or https://");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static void deepl_destroy(void *self) {
    deepl *d = self;
    while (d->jobs) job_free(d->jobs);
    if (d->probe) d->host->http_cancel(d->probe);
    free(d->url);
    free(d->auth_header);
    free(d->model_type);
    free(d->formality);
    free(d->en_variant);
    free(d->pt_variant);
    free(d->ca_file);
    json_decref(d->glossaries);
    free(d);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static tolk_status deepl_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                void **self) {
    if (!TOLK_HOST_HAS(host, mt_result)) {
        host->log(inst, TOLK_LOG_ERR, "needs a tolkd with plugin ABI 1.2 (HTTP client): this one has %u.%u",
                  host->abi_major, host->abi_minor);
        return TOLK_E_FATAL;
    }
    const char *key = host->cfg_string(cfg, "auth_key");
    if (!key || !*key) key = getenv("DEEPL_AUTH_KEY");
    if (!key || !*key) {
        host->log(inst, TOLK_LOG_ERR, "no DeepL key: set auth_key or DEEPL_AUTH_KEY");
        return TOLK_E_INVAL;
    }
    deepl *d = calloc(1, sizeof *d);
    if (!d) return TOLK_E_NOMEM;
    d->host = host;
    d->inst = inst;
    const char *url = host->cfg_string(cfg, "url");
    size_t klen = strlen(key);
    int free_key = klen > 3 && !strcmp(key + klen - 3, ":fx");
    d->url = strdup(url ? url : free_key ? FREE_URL : PRO_URL);
    if (d->url) {
        size_t n = strlen(d->url);
        while (n > 0 && d->url[n - 1] == '/') d->url[--n] = '\0';
    }
    d->auth_header = malloc(klen + 32);
    if (d->auth_header) snprintf(d->auth_header, klen + 32, "Authorization: DeepL-Auth-Key %s", key);
    d->model_type = dup_or_null(host->cfg_string(cfg, "model_type"));
    d->formality = dup_or_null(host->cfg_string(cfg, "formality"));
    d->en_variant = dup_or_null(host->cfg_string(cfg, "english_variant"));
    d->pt_variant = dup_or_null(host->cfg_string(cfg, "portuguese_variant"));
    d->ca_file = dup_or_null(host->cfg_string(cfg, "ca_file"));
    d->insecure = host->cfg_bool(cfg, "insecure");
    d->timeout = host->cfg_double(cfg, "timeout");
    d->max_retries = (int)host->cfg_int(cfg, "max_retries");
    d->backoff = host->cfg_double(cfg, "backoff_initial");
    d->rng = (unsigned)(uintptr_t)d;
    d->probe_interval = host->cfg_double(cfg, "probe_interval");
    d->batch_ms = (long)host->cfg_int(cfg, "batch_ms");
    d->batch_max = (long)host->cfg_int(cfg, "batch_max");
    /* a map setting is a JSON object of strings: kept as it is */
    json_t *gm = json_object_get(cfg, "glossaries");
    d->glossaries = gm ? json_deep_copy(gm) : json_object();
    if (!d->url || !d->auth_header || !d->model_type || !d->en_variant || !d->pt_variant) {
        deepl_destroy(d);
        return TOLK_E_NOMEM;
    }
    TOLK_LOG(host, inst, TOLK_LOG_VERB, "DeepL at %s (%s key), model %s", d->url,
             free_key ? "Free" : "Pro", d->model_type);
    *self = d;
    return TOLK_OK;
}

static void on_probe(void *ud, tolk_http *h, const tolk_http_result *res) {
    deepl *d = ud;
    d->probe = NULL;
    if (res->status == TOLK_OK && res->http_status == 200) {
        if (d->failing) d->host->log(d->inst, TOLK_LOG_INFO, "DeepL answers again");
        d->failing = 0;
    }
}

static void probe_start(deepl *d) {
    char url[1024];
    snprintf(url, sizeof url, "%s/v2/usage", d->url);
    const char *headers[] = {d->auth_header, "User-Agent: tolk-mt_deepl/1.0", NULL};
    tolk_http_request req = {.size = sizeof req, .method = "GET", .url = url, .headers = headers,
                             .total_timeout = d->timeout, .ca_file = d->ca_file,
                             .insecure = d->insecure, .max_body = 1 << 16, .on_done = on_probe,
                             .ud = d};
    d->last_probe = d->host->now();
    d->probe = d->host->http_request(d->inst, &req);
}

static tolk_health deepl_health(void *self, json_t **detail_new) {
    deepl *d = self;
    if (d->failing && !d->probe && d->host->now() - d->last_probe >= d->probe_interval) probe_start(d);
    size_t pending = 0;
    for (job *j = d->jobs; j; j = j->next) pending++;
    if (detail_new)
        *detail_new = json_pack("{s:s, s:I, s:I, s:I, s:I, s:i, s:I, s:I, s:I}", "url", d->url, "requests",
                                (json_int_t)d->requests, "failures", (json_int_t)d->failures,
                                "retries", (json_int_t)d->retries, "permanent_failures",
                                (json_int_t)d->permanent, "last_status", d->last_status, "pending",
                                (json_int_t)pending, "batches", (json_int_t)d->batches, "batched_texts",
                                (json_int_t)d->batched_texts);
    return d->failing ? TOLK_FAILED : TOLK_HEALTHY;
}

static const tolk_mt deepl_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT),
            .name = "mt_deepl",
            .version = "1.0.0",
            .description = "DeepL API v2 translation (POST /v2/translate) over the core's HTTP client",
            .options = deepl_options,
            .check_config = deepl_check_config,
            .create = deepl_create,
            .destroy = deepl_destroy,
            .health = deepl_health,
        },
    .translate = deepl_translate,
    .cancel = deepl_cancel,
    .translate_req = deepl_translate_req,
    .mt_flags = TOLK_MT_USES_CONTEXT,
};

TOLK_PLUGIN_DEFINE(deepl_desc)
