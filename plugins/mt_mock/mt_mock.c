/*
 * mt_mock -- a deterministic stand-in for a machine translation engine.
 *
 * With a `dictionary` it translates word by word: each whitespace-separated
 * word, stripped of leading and trailing punctuation, is looked up without
 * regard to case (ASCII and Latin-1 letters); a known word is replaced by its
 * translation, an unknown one is kept, and the punctuation and spacing around
 * words stay as they were ("Hello, world!" -> "Hola, mundo!"). Without a
 * dictionary it returns `prefix` + text, where "{to}" and "{from}" in the
 * prefix become the language codes ("[es] hello world").
 *
 * Every translate() is answered from a timer `latency_ms` later, even when
 * latency_ms is 0, so the core always walks the TOLK_PENDING -> mt_done()
 * path of a network engine. A language pair outside `languages` is declined
 * at once (TOLK_DECLINED), so the core asks the next provider.
 *
 * Settings (all optional):
 *   latency_ms   int    20         delay of every answer
 *   prefix       str    "[{to}] "  put before the text when there is no dictionary
 *   dictionary   map    (empty)    word = "translation"
 *   languages    list   (empty)    languages accepted on either side; empty = any
 *   fail_every   int    0          every Nth request fails (0 = off)
 *   fail_after   int    0          after N good requests all fail (0 = off)
 *   fail_status  str    "backend"  backend | again | fatal | timeout
 *   hang         bool   false      accept requests, never answer
 *   garbage      bool   false      answers are invalid UTF-8 with control chars
 *
 * Faults. A failing request is answered after latency_ms with
 * mt_done(fail_status, NULL): failures are asynchronous, as with a real
 * engine. A hung request stays pending until the core cancels it. health()
 * is TOLK_FAILED while fail_after is in force; reset() clears the counters
 * and restarts fail_every/fail_after counting. Declined requests are not
 * requests: they count only in the "declined" detail.
 */
#define _POSIX_C_SOURCE 200809L /* strdup() also under -std=c11 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <tolk/plugin.h>

#include "mock_fault.h"
#include "sbuf.h"

static const tolk_option mt_mock_options[] = {
    {.key = "latency_ms", .type = TOLK_OPT_INT, .default_value = "20", .min = 0, .max = 600000,
     .help = "delay before every answer, in ms (0 still answers from a timer)"},
    {.key = "prefix", .type = TOLK_OPT_STRING, .default_value = "[{to}] ",
     .help = "put before the text when there is no dictionary; {to}/{from} = language codes"},
    {.key = "dictionary", .type = TOLK_OPT_MAP, .default_value = NULL,
     .help = "word = \"translation\"; non-empty: translate word by word instead of prefixing"},
    {.key = "languages", .type = TOLK_OPT_STRING_LIST, .default_value = NULL,
     .help = "language codes served on either side; other pairs are declined; empty = any"},
    {.key = "fail_every", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "every Nth request fails; 0 = off"},
    {.key = "fail_after", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "after N successful requests every request fails, until reset; 0 = off"},
    {.key = "fail_status", .type = TOLK_OPT_STRING, .default_value = "backend",
     .help = "status of injected failures: backend, again, fatal or timeout"},
    {.key = "fail_severity", .type = TOLK_OPT_STRING, .default_value = "auto",
     .help = "permanent: injected failures are also reported as permanent (host->report), as a "
             "provider refusing a bad key would"},
    {.key = "hang", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "accept requests but never answer them"},
    {.key = "garbage", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "answer with bytes that are not UTF-8, mixed with control characters"},
    {.key = NULL},
};

/* ------------------------------------------------------------------ */
/* State                                                               */

typedef struct dict_entry {
    char *word; /* folded, see fold() */
    char *translation;
} dict_entry;

typedef struct mt_mock mt_mock;

typedef struct mt_job {
    struct mt_job *prev, *next; /* mt_mock.jobs */
    mt_mock *m;
    tolk_request *r;
    tolk_timer *timer; /* NULL while hung */
    tolk_status st;
    char *text; /* the answer when st is TOLK_OK */
} mt_job;

struct mt_mock {
    const tolk_host *host;
    tolk_instance *inst;
    int64_t latency_ms;
    char *prefix;
    dict_entry *dict; /* sorted by word for bsearch() */
    size_t ndict;
    char **languages;
    size_t nlanguages;
    fault_cfg fault;
    fault_count count;
    uint64_t declined;
    mt_job *jobs;
    size_t npending;
};

/* ------------------------------------------------------------------ */
/* Words                                                               */

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Punctuation that may stick to a word. Besides ASCII, the marks common in
 * the demo languages (Spanish opening marks, guillemets, curly quotes). */
static const char *const utf8_punct[] = {"\xc2\xbf", "\xc2\xa1", "\xc2\xab", "\xc2\xbb",
                                         "\xe2\x80\x9c", "\xe2\x80\x9d", "\xe2\x80\x98",
                                         "\xe2\x80\x99", "\xe2\x80\x9e", "\xe2\x80\xa6"};

static size_t punct_at(const char *p, const char *end)
{
    unsigned char c = (unsigned char)*p;
    if (c < 0x80) return (c > ' ' && c < 0x7f && !((c >= '0' && c <= '9') ||
                                                   (c >= 'a' && c <= 'z') ||
                                                   (c >= 'A' && c <= 'Z')))
                             ? 1
                             : 0;
    for (size_t i = 0; i < sizeof utf8_punct / sizeof utf8_punct[0]; i++) {
        size_t n = strlen(utf8_punct[i]);
        if ((size_t)(end - p) >= n && !memcmp(p, utf8_punct[i], n)) return n;
    }
    return 0;
}

static size_t punct_before(const char *start, const char *end)
{
    unsigned char c = (unsigned char)end[-1];
    if (c < 0x80) return punct_at(end - 1, end);
    for (size_t i = 0; i < sizeof utf8_punct / sizeof utf8_punct[0]; i++) {
        size_t n = strlen(utf8_punct[i]);
        if ((size_t)(end - start) >= n && !memcmp(end - n, utf8_punct[i], n)) return n;
    }
    return 0;
}

/* Case folding good enough for a mock: ASCII, and the Latin-1 capitals
 * U+00C0..U+00DE (except the multiplication sign) in their UTF-8 form, so
 * "Él" and "él" match. */
static char *fold(const char *p, size_t n)
{
    char *out = malloc(n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        out[i] = (char)c;
        if (c == 0xc3 && i + 1 < n) {
            unsigned char d = (unsigned char)p[i + 1];
            if (d >= 0x80 && d <= 0x9e && d != 0x97) d = (unsigned char)(d + 0x20);
            out[++i] = (char)d;
        }
    }
    out[n] = '\0';
    return out;
}

static int dict_cmp(const void *a, const void *b)
{
    return strcmp(((const dict_entry *)a)->word, ((const dict_entry *)b)->word);
}

static const char *dict_lookup(const mt_mock *m, const char *p, size_t n)
{
    char *key = fold(p, n);
    if (!key) return NULL;
    dict_entry probe = {.word = key};
    const dict_entry *e = bsearch(&probe, m->dict, m->ndict, sizeof *m->dict, dict_cmp);
    free(key);
    return e ? e->translation : NULL;
}

static char *translate_words(const mt_mock *m, const char *text)
{
    sbuf b = {0};
    const char *p = text;
    while (*p) {
        const char *t0 = p;
        if (is_space((unsigned char)*p)) {
            while (*p && is_space((unsigned char)*p)) p++;
            sb_add(&b, t0, (size_t)(p - t0));
            continue;
        }
        while (*p && !is_space((unsigned char)*p)) p++;
        const char *t1 = p, *w0 = t0, *w1 = t1;
        size_t k;
        while (w0 < w1 && (k = punct_at(w0, w1)) > 0) w0 += k;
        while (w1 > w0 && (k = punct_before(w0, w1)) > 0) w1 -= k;
        const char *tr = w0 < w1 ? dict_lookup(m, w0, (size_t)(w1 - w0)) : NULL;
        if (tr) {
            sb_add(&b, t0, (size_t)(w0 - t0));
            sb_str(&b, tr);
            sb_add(&b, w1, (size_t)(t1 - w1));
        } else {
            sb_add(&b, t0, (size_t)(t1 - t0));
        }
    }
    return sb_take(&b);
}

static char *translate_prefix(const mt_mock *m, const char *text, const char *from,
                              const char *to)
{
    sbuf b = {0};
    for (const char *p = m->prefix; *p;) {
        if (!strncmp(p, "{to}", 4)) {
            sb_str(&b, to ? to : "");
            p += 4;
        } else if (!strncmp(p, "{from}", 6)) {
            sb_str(&b, from ? from : "");
            p += 6;
        } else {
            sb_add(&b, p++, 1);
        }
    }
    sb_str(&b, text);
    return sb_take(&b);
}

/* Each byte with its top bit flipped (ASCII becomes stray continuation and
 * invalid lead bytes), a control character after every third byte, and an
 * invalid lead byte at both ends so that even an empty answer is broken. */
static char *garble(const char *s)
{
    static const unsigned char ctl[] = {0x01, 0x07, 0x08, 0x0b, 0x1b, 0x7f};
    size_t n = strlen(s);
    char *out = malloc(n + n / 3 + 3);
    if (!out) return NULL;
    size_t o = 0;
    out[o++] = (char)0xff;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i] ^ 0x80;
        out[o++] = (char)(c ? c : 0xfe);
        if (i % 3 == 2) out[o++] = (char)ctl[(i / 3) % sizeof ctl];
    }
    out[o++] = (char)0xc0;
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

static void job_unlink(mt_job *j)
{
    mt_mock *m = j->m;
    if (j->prev)
        j->prev->next = j->next;
    else
        m->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    m->npending--;
}

static void job_free(mt_job *j)
{
    free(j->text);
    free(j);
}

static void job_complete(void *ud)
{
    mt_job *j = ud;
    /* A one-shot timer frees itself after this returns; and once mt_done()
     * is called the core will not cancel() r, so the job must not be
     * findable any more. */
    j->timer = NULL;
    job_unlink(j);
    j->m->host->mt_done(j->r, j->st, j->st == TOLK_OK ? j->text : NULL);
    job_free(j);
}

static int language_ok(const mt_mock *m, const char *lang)
{
    if (!m->nlanguages || !lang) return 1;
    for (size_t i = 0; i < m->nlanguages; i++)
        if (!strcasecmp(m->languages[i], lang)) return 1;
    return 0;
}

static tolk_status mt_mock_translate(void *self, tolk_request *r, const char *text,
                                     const char *from, const char *to)
{
    mt_mock *m = self;
    if (!language_ok(m, from) || !language_ok(m, to)) {
        m->declined++;
        TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "%s->%s declined", from ? from : "?",
                 to ? to : "?");
        return TOLK_DECLINED;
    }
    if (!text) return TOLK_E_INVAL;

    mt_job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    j->m = m;
    j->r = r;
    j->st = TOLK_OK;

    fault_fate fate = fault_decide(&m->fault, &m->count);
    if (fate == FATE_OK) {
        j->text = m->ndict ? translate_words(m, text) : translate_prefix(m, text, from, to);
        if (j->text && m->fault.garbage) {
            char *g = garble(j->text);
            free(j->text);
            j->text = g;
        }
        if (!j->text) {
            free(j);
            return TOLK_E_NOMEM;
        }
    } else if (fate == FATE_FAIL) {
        j->st = m->fault.fail_status;
        if (m->fault.fail_severity == TOLK_SEV_PERMANENT && TOLK_HOST_HAS(m->host, stt_ready))
            m->host->report(m->inst, j->st, TOLK_SEV_PERMANENT, "mt_mock: injected permanent failure");
    }

    if (fate != FATE_HANG) {
        j->timer = m->host->timer_start(m->inst, (double)m->latency_ms / 1000.0, 0, job_complete,
                                        j);
        if (!j->timer) {
            job_free(j);
            return TOLK_E_NOMEM;
        }
    }
    j->next = m->jobs;
    if (m->jobs) m->jobs->prev = j;
    m->jobs = j;
    m->npending++;
    TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "request %llu %s->%s: %s",
             (unsigned long long)m->count.requests, from ? from : "?", to ? to : "?",
             fate == FATE_HANG ? "hung" : fate == FATE_FAIL ? "will fail" : "pending");
    return TOLK_PENDING;
}

static void mt_mock_cancel(void *self, tolk_request *r)
{
    mt_mock *m = self;
    for (mt_job *j = m->jobs; j; j = j->next) {
        if (j->r == r) {
            job_unlink(j);
            if (j->timer) m->host->timer_stop(j->timer);
            job_free(j);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status mt_mock_check_config(const json_t *cfg, tolk_config_error *err)
{
    return fault_check_config(cfg, err);
}

static void mt_mock_destroy(void *self)
{
    mt_mock *m = self;
    /* Normally the core has cancelled everything by now (hung requests
     * included); stop what is left so that no timer fires into freed memory. */
    while (m->jobs) {
        mt_job *j = m->jobs;
        job_unlink(j);
        if (j->timer) m->host->timer_stop(j->timer);
        job_free(j);
    }
    for (size_t i = 0; i < m->ndict; i++) {
        free(m->dict[i].word);
        free(m->dict[i].translation);
    }
    free(m->dict);
    for (size_t i = 0; i < m->nlanguages; i++) free(m->languages[i]);
    free(m->languages);
    free(m->prefix);
    free(m);
}

/* The host accessors look a map up by key but cannot list its keys, and a
 * case-insensitive lookup needs them all: walk the jansson object (the
 * core's form of a TOLK_OPT_MAP value) instead. */
static tolk_status load_dictionary(mt_mock *m, const json_t *cfg)
{
    json_t *map = json_object_get(cfg, "dictionary");
    if (!map || !json_is_object(map) || !json_object_size(map)) return TOLK_OK;
    m->dict = calloc(json_object_size(map), sizeof *m->dict);
    if (!m->dict) return TOLK_E_NOMEM;
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val)
    {
        const char *tr = json_string_value(val);
        if (!tr || !*key) continue;
        dict_entry *e = &m->dict[m->ndict];
        e->word = fold(key, strlen(key));
        e->translation = strdup(tr);
        m->ndict++; /* counted even if half-made, so destroy frees it */
        if (!e->word || !e->translation) return TOLK_E_NOMEM;
    }
    qsort(m->dict, m->ndict, sizeof *m->dict, dict_cmp);
    return TOLK_OK;
}

static tolk_status mt_mock_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                  void **self)
{
    mt_mock *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->latency_ms = host->cfg_int(cfg, "latency_ms");
    if (fault_read(host, inst, cfg, &m->fault)) {
        mt_mock_destroy(m);
        return TOLK_E_INVAL;
    }
    const char *prefix = host->cfg_string(cfg, "prefix");
    if (!(m->prefix = strdup(prefix ? prefix : ""))) goto nomem;

    size_t n = host->cfg_list_size(cfg, "languages");
    if (n && !(m->languages = calloc(n, sizeof *m->languages))) goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *lang = host->cfg_list_string(cfg, "languages", i);
        if (!(m->languages[m->nlanguages] = strdup(lang ? lang : ""))) goto nomem;
        m->nlanguages++;
    }
    if (load_dictionary(m, cfg) != TOLK_OK) goto nomem;

    TOLK_LOG(host, inst, TOLK_LOG_VERB, "latency %lld ms, %s, %zu language(s)",
             (long long)m->latency_ms, m->ndict ? "dictionary" : "prefix", m->nlanguages);
    *self = m;
    return TOLK_OK;

nomem:
    mt_mock_destroy(m);
    return TOLK_E_NOMEM;
}

static tolk_status mt_mock_reset(void *self)
{
    mt_mock *m = self;
    memset(&m->count, 0, sizeof m->count);
    m->declined = 0;
    return TOLK_OK;
}

static tolk_health mt_mock_health(void *self, json_t **detail_new)
{
    mt_mock *m = self;
    int failing = fault_failing(&m->fault, &m->count);
    if (detail_new)
        *detail_new = json_pack("{s:I, s:I, s:I, s:I, s:b}", "requests",
                                (json_int_t)m->count.requests, "failures",
                                (json_int_t)m->count.failures, "declined",
                                (json_int_t)m->declined, "pending", (json_int_t)m->npending,
                                "failing", failing);
    return failing ? TOLK_FAILED : TOLK_HEALTHY;
}

static const tolk_mt mt_mock_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT),
            .name = "mt_mock",
            .version = "1.0.0",
            .description = "deterministic mock translator: prefix or word dictionary, "
                           "fault injection",
            .options = mt_mock_options,
            .check_config = mt_mock_check_config,
            .create = mt_mock_create,
            .destroy = mt_mock_destroy,
            .reset = mt_mock_reset,
            .health = mt_mock_health,
        },
    .translate = mt_mock_translate,
    .cancel = mt_mock_cancel,
};

TOLK_PLUGIN_DEFINE(mt_mock_desc)
