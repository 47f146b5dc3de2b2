/*
 * tts_xtts -- speech synthesis by Coqui XTTS v2 streaming servers
 * (coqui-ai/xtts-streaming-server), over the core's HTTP client
 * (host->http_request, ABI 1.2): the plugin drives no socket itself.
 *
 * One phrase is one POST /tts_stream {"text", "language",
 * "speaker_embedding" (512 floats), "gpt_cond_latent" (32 x 1024 floats),
 * "add_wav_header": false, "stream_chunk_size": "20"}. The answer is a
 * chunked body of int16 24 kHz mono little-endian PCM in chunks of any
 * length; each is resampled to 16 kHz and handed to host->tts_audio as it
 * arrives (an odd byte waits for the next chunk). Old servers ignore
 * add_wav_header = false and start with a 44-byte WAV header whose sizes
 * are 0: it is recognised by "RIFF" and skipped, never played.
 *
 * The stock server synthesises one stream at a time (it is a demo server):
 * the plugin keeps a pool of server URLs, sends at most one stream to each,
 * and queues the rest, first in first out (tts_xtts_queue_depth and
 * tts_xtts_queue_wait_milliseconds). A URL that fails (no connection, 5xx,
 * a stream stalled past stall_timeout) leaves the pool; every probe_interval
 * it is asked GET /languages and comes back once it answers 200. When no
 * URL is left, a request fails at once with TOLK_E_BACKEND and
 * host->report() says so: the core fails over to the chain's backup. A stall
 * fails its request with TOLK_E_TIMEOUT for the core's recovery; a 4xx
 * (FastAPI's 422: a field or language the server does not take) fails only
 * that phrase, with TOLK_E_INVAL, and the server stays. Languages are sent
 * as bare lower-case codes ("es-MX" -> "es"); the rate hint is ignored (the
 * server's /tts_stream has no speed parameter).
 *
 * Voices: a request's voice names a profile in profiles_dir: <name>.json
 * holds the conditioning itself ({"speaker_embedding", "gpt_cond_latent"},
 * what /clone_speaker answers); <name>.wav is a reference recording, cloned
 * once through POST /clone_speaker (multipart, field wav_file) and cached on
 * disk as <name>.clone.json beside it (redone when the WAV is newer).
 * Conditioning is kept in memory in an LRU of voice_cache entries
 * (voice_embedding_cache_size{component}), serialised once as the JSON
 * members a request carries: each /tts_stream body splices the text,
 * language and options around it rather than formatting 33 000 numbers
 * per phrase. A voice that is unknown, or not
 * cloned yet, is spoken with default_voice, else the server's studio
 * speaker named by studio_speaker (GET /studio_speakers).
 *
 * voice_sample(): the first seconds of a party's speech, for endpoints
 * with clone_voice on, under the name "clone:<channel>:<a|b>": sent as a
 * 16 kHz WAV to /clone_speaker; requests for that name use it once the
 * answer is in, the default voice until then. It lives in the LRU only:
 * evicted, it is forgotten.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <tolk/plugin.h>

#define XTTS_RATE 24000
#define MAX_SERVERS 256 /* a GPU server per concurrent phrase: about 15 busy at 100 calls (bench_cloud) */
#define WAV_HEADER_BYTES 44
#define SPEAKER_EMBEDDING_SIZE 512
#define GPT_LATENT_WIDTH 1024

static const tolk_option xtts_options[] = {
    {.key = "urls", .type = TOLK_OPT_STRING_LIST, .flags = TOLK_OPT_REQUIRED,
     .help = "XTTS streaming server base URLs; each streams one phrase at a time"},
    {.key = "profiles_dir", .type = TOLK_OPT_STRING,
     .help = "directory of voice profiles: <name>.json (conditioning) or <name>.wav (cloned once)"},
    {.key = "default_voice", .type = TOLK_OPT_STRING,
     .help = "profile used when a request's voice is unknown or not ready"},
    {.key = "studio_speaker", .type = TOLK_OPT_STRING,
     .help = "a server studio speaker (GET /studio_speakers) used when no default profile is set"},
    {.key = "voice_cache", .type = TOLK_OPT_INT, .default_value = "64", .min = 1, .max = 100000,
     .help = "voice conditionings kept in memory (LRU)"},
    {.key = "stream_chunk_size", .type = TOLK_OPT_INT, .default_value = "20", .min = 1, .max = 1000,
     .help = "GPT tokens per streamed chunk (smaller: earlier first audio)"},
    {.key = "stall_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "8", .min = 0.05, .max = 600,
     .help = "seconds without a byte of a stream (first byte included) before it is a failure"},
    {.key = "connect_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "3", .min = 0.05, .max = 600,
     .help = "seconds to connect to a server"},
    {.key = "clone_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "30", .min = 0.1, .max = 600,
     .help = "seconds for one POST /clone_speaker"},
    {.key = "probe_interval", .type = TOLK_OPT_DOUBLE, .default_value = "5", .min = 0.05, .max = 3600,
     .help = "seconds between GET /languages probes of a server that left the pool"},
    {.key = "resample_quality", .type = TOLK_OPT_INT, .default_value = "5", .min = 0, .max = 10,
     .help = "speexdsp quality of the 24 -> 16 kHz resampler"},
    {.key = NULL},
};

typedef struct xtts xtts;
typedef struct server server;

/* One phrase: queued, then streaming from one server. */
typedef struct job {
    struct job *prev, *next; /* in d->queue or d->streaming */
    xtts *d;
    tolk_request *r;
    char *text, *language, *voice;
    double queued_at;
    server *srv;      /* while streaming */
    tolk_http *http;
    tolk_resampler *rs;
    unsigned char head[WAV_HEADER_BYTES]; /* the first bytes, until we know whether they are a header */
    size_t head_len;
    int head_decided;
    size_t header_skip; /* header bytes still to drop */
    int odd_byte;       /* -1, or a low byte waiting for its high byte */
    int http_status;    /* of the answer: only a 200's body is audio */
    int in_body;        /* inside on_body: cancel() defers the free */
    int cancelled;
} job;

struct server {
    xtts *d;
    char *url;
    job *busy;          /* the stream it serves, or NULL */
    int up;
    tolk_http *probe;
    char last_error[128];
    uint64_t streams, failures, timeouts, probes, clones;
};

/* A conditioning serialised once: the members
 * "speaker_embedding":[...],"gpt_cond_latent":[[...]...] without the
 * braces, about 300 KB, spliced as they are into every request body. */
typedef struct conditioning {
    char *members;
    size_t len;
} conditioning;

/* A voice's conditioning, as the JSON the server takes. */
typedef struct voice {
    struct voice *next;
    char *name;
    conditioning cond;
    uint64_t used;
    int pinned; /* the default voice: never evicted */
} voice;

/* A /clone_speaker in flight or waiting for a server. */
typedef struct clone {
    struct clone *next;
    xtts *d;
    char *name;
    char *save_path; /* where the answer is cached on disk, or NULL (a party's sample) */
    unsigned char *wav;
    size_t wav_len;
    tolk_http *http;
    server *srv; /* the server asked */
    int pin;
} clone;

struct xtts {
    const tolk_host *host;
    tolk_instance *inst;
    server servers[MAX_SERVERS];
    size_t nservers;
    char *profiles_dir, *default_voice, *studio_speaker;
    long voice_cache, chunk_size;
    double stall_timeout, connect_timeout, clone_timeout, probe_interval;
    int quality;
    job *queue, *queue_tail, *streaming;
    size_t queue_len;
    voice *voices;
    size_t nvoices;
    uint64_t tick;
    clone *clones;
    tolk_http *studio; /* GET /studio_speakers in flight */
    conditioning studio_cond;
    tolk_timer *prober;
    tolk_timer *fail_timer; /* fails the queue from the loop once no server is left */
    int all_down_reported;
    uint64_t requests, failures, queued, headers_stripped, pcm_bytes, clones_done, voice_samples;
    size_t queue_peak;
    tolk_series *qdepth_s, *qwait_s, *voices_s;
};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ------------------------------------------------------------------ */
/* Voices                                                              */

/* The shapes the server reshapes: 512 numbers, and rows of 1024. */
static int cond_valid(const json_t *cond) {
    json_t *se = json_object_get(cond, "speaker_embedding");
    json_t *gl = json_object_get(cond, "gpt_cond_latent");
    if (!json_is_array(se) || json_array_size(se) != SPEAKER_EMBEDDING_SIZE) return 0;
    if (!json_is_array(gl) || json_array_size(gl) == 0) return 0;
    size_t i;
    json_t *row;
    json_array_foreach(gl, i, row) if (!json_is_array(row) || json_array_size(row) != GPT_LATENT_WIDTH) return 0;
    return 1;
}

/* Only the two members the server wants, whatever else the file holds. */
static json_t *cond_of(const json_t *doc) {
    if (!cond_valid(doc)) return NULL;
    return json_pack("{s:O, s:O}", "speaker_embedding", json_object_get(doc, "speaker_embedding"),
                     "gpt_cond_latent", json_object_get(doc, "gpt_cond_latent"));
}

/* cond (a cond_of() result) as the members a body splices in; 0 on success. */
static int cond_serialise(const json_t *cond, conditioning *out) {
    char *s = cond ? json_dumps(cond, JSON_COMPACT) : NULL;
    size_t n = s ? strlen(s) : 0;
    if (n < 2 || s[0] != '{' || s[n - 1] != '}') {
        free(s);
        return -1;
    }
    memmove(s, s + 1, n - 2);
    s[n - 2] = '\0';
    out->members = s;
    out->len = n - 2;
    return 0;
}

static void cond_clear(conditioning *c) {
    free(c->members);
    c->members = NULL;
    c->len = 0;
}

static void voices_gauge(xtts *d) {
    if (d->voices_s) d->host->series_set(d->voices_s, (double)d->nvoices);
}

static voice *voice_find(xtts *d, const char *name) {
    for (voice *v = d->voices; v; v = v->next)
        if (!strcmp(v->name, name)) {
            v->used = ++d->tick;
            return v;
        }
    return NULL;
}

static void voice_free(voice *v) {
    free(v->name);
    cond_clear(&v->cond);
    free(v);
}

/* Keeps cond (stolen) under name, evicting the least recently used
 * unpinned entry when the cache is full. A voice cloned again gets the new
 * conditioning: the requests that follow carry it. */
static void voice_put(xtts *d, const char *name, conditioning cond, int pin) {
    voice *v = voice_find(d, name);
    if (v) {
        cond_clear(&v->cond);
        v->cond = cond;
        v->pinned |= pin;
        return;
    }
    while (d->nvoices >= (size_t)d->voice_cache) {
        voice **victim = NULL;
        for (voice **p = &d->voices; *p; p = &(*p)->next)
            if (!(*p)->pinned && (!victim || (*p)->used < (*victim)->used)) victim = p;
        if (!victim) break;
        voice *gone = *victim;
        *victim = gone->next;
        TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "voice '%s' leaves the cache", gone->name);
        voice_free(gone);
        d->nvoices--;
    }
    v = calloc(1, sizeof *v);
    if (!v || !(v->name = strdup(name))) {
        free(v);
        cond_clear(&cond);
        return;
    }
    v->cond = cond;
    v->pinned = pin;
    v->used = ++d->tick;
    v->next = d->voices;
    d->voices = v;
    d->nvoices++;
    voices_gauge(d);
}

static json_t *load_cond_file(const char *path) {
    json_t *doc = json_load_file(path, 0, NULL);
    json_t *cond = cond_of(doc);
    json_decref(doc);
    return cond;
}

static int mtime_of(const char *path, struct timespec *t) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    *t = st.st_mtim;
    return 0;
}

static int older(struct timespec a, struct timespec b) {
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static void clone_start(xtts *d, clone *c);

static clone *clone_find(xtts *d, const char *name) {
    for (clone *c = d->clones; c; c = c->next)
        if (!strcmp(c->name, name)) return c;
    return NULL;
}

/* Queues a /clone_speaker of wav (stolen) for name. */
static void clone_add(xtts *d, const char *name, unsigned char *wav, size_t len, const char *save_path,
                      int pin) {
    clone *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(name))) {
        free(c);
        free(wav);
        return;
    }
    c->d = d;
    c->wav = wav;
    c->wav_len = len;
    c->save_path = dup_or_null(save_path);
    c->pin = pin;
    c->next = d->clones;
    d->clones = c;
    clone_start(d, c);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n == cap) {
            unsigned char *nb = realloc(buf, cap = cap ? cap * 2 : 65536);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *len = n;
    return buf;
}

/* A profile from profiles_dir into the cache: <name>.json, else the clone
 * of <name>.wav cached on disk, else a clone is started (NULL now). */
static voice *profile_load(xtts *d, const char *name, int pin) {
    if (!d->profiles_dir || strchr(name, '/') || name[0] == '.') return NULL;
    char path[4096], cached[4096], wav[4096];
    snprintf(path, sizeof path, "%s/%s.json", d->profiles_dir, name);
    json_t *cond = load_cond_file(path);
    if (!cond) {
        struct timespec tw, tc;
        snprintf(wav, sizeof wav, "%s/%s.wav", d->profiles_dir, name);
        snprintf(cached, sizeof cached, "%s/%s.clone.json", d->profiles_dir, name);
        if (mtime_of(wav, &tw) != 0) return NULL; /* no such profile */
        if (mtime_of(cached, &tc) == 0 && !older(tc, tw)) cond = load_cond_file(cached);
        if (!cond) {
            if (!clone_find(d, name)) {
                size_t len;
                unsigned char *bytes = read_file(wav, &len);
                if (!bytes) return NULL;
                TOLK_LOG(d->host, d->inst, TOLK_LOG_INFO, "cloning voice '%s' from %s", name, wav);
                clone_add(d, name, bytes, len, cached, pin);
            }
            return NULL;
        }
    }
    conditioning c;
    int bad = cond_serialise(cond, &c);
    json_decref(cond);
    if (bad) return NULL;
    voice_put(d, name, c, pin);
    return voice_find(d, name);
}

/* ------------------------------------------------------------------ */
/* Servers                                                             */

static int any_up(const xtts *d) {
    for (size_t i = 0; i < d->nservers; i++)
        if (d->servers[i].up) return 1;
    return 0;
}

static server *first_up(xtts *d) {
    for (size_t i = 0; i < d->nservers; i++)
        if (d->servers[i].up) return &d->servers[i];
    return NULL;
}

static void pump(xtts *d);
static void fail_queue_soon(xtts *d);
static void studio_fetch(xtts *d);

static void server_down(server *s, const char *why) {
    xtts *d = s->d;
    snprintf(s->last_error, sizeof s->last_error, "%s", why);
    if (!s->up) return;
    s->up = 0;
    d->host->log(d->inst, TOLK_LOG_WARN, "%s leaves the pool: %s", s->url, why);
    if (!any_up(d) && !d->all_down_reported) {
        d->all_down_reported = 1;
        d->host->report(d->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, "every XTTS server is down");
    }
    if (!any_up(d) && d->queue) fail_queue_soon(d);
}

static void server_back(server *s) {
    xtts *d = s->d;
    if (s->up) return;
    s->up = 1;
    s->last_error[0] = '\0';
    d->all_down_reported = 0;
    d->host->log(d->inst, TOLK_LOG_INFO, "%s answers again: back in the pool", s->url);
    for (clone *c = d->clones; c; c = c->next) clone_start(d, c);
    if (d->studio_speaker && !d->studio_cond.members) studio_fetch(d);
    pump(d);
}

static void on_probe(void *ud, tolk_http *h, const tolk_http_result *res) {
    server *s = ud;
    (void)h;
    s->probe = NULL;
    if (res->status == TOLK_OK && res->http_status == 200)
        server_back(s);
    else if (res->status != TOLK_OK)
        snprintf(s->last_error, sizeof s->last_error, "probe: %s", res->error ? res->error : "?");
    else
        snprintf(s->last_error, sizeof s->last_error, "probe: HTTP %d", res->http_status);
}

static void probe_start(server *s) {
    xtts *d = s->d;
    char url[1100];
    snprintf(url, sizeof url, "%s/languages", s->url);
    tolk_http_request req = {.size = sizeof req, .method = "GET", .url = url,
                             .connect_timeout = d->connect_timeout,
                             .total_timeout = d->connect_timeout + 2, .max_body = 1 << 16,
                             .on_done = on_probe, .ud = s};
    s->probes++;
    s->probe = d->host->http_request(d->inst, &req);
}

/* Every probe_interval: ask the servers out of the pool whether they are
 * back, and retry what waits for a server (clones, the studio speaker). */
static void on_prober(void *ud) {
    xtts *d = ud;
    for (size_t i = 0; i < d->nservers; i++)
        if (!d->servers[i].up && !d->servers[i].probe) probe_start(&d->servers[i]);
    for (clone *c = d->clones; c; c = c->next) clone_start(d, c);
    if (d->studio_speaker && !d->studio_cond.members) studio_fetch(d);
}

/* ------------------------------------------------------------------ */
/* Cloning and the studio speaker                                      */

static void clone_free(clone *c) {
    xtts *d = c->d;
    for (clone **p = &d->clones; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    if (c->http) d->host->http_cancel(c->http);
    free(c->name);
    free(c->save_path);
    free(c->wav);
    free(c);
}

static void on_clone_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    clone *c = ud;
    xtts *d = c->d;
    (void)h;
    c->http = NULL;
    server *s = c->srv;
    if (res->status != TOLK_OK || res->http_status >= 500) {
        char why[200];
        if (res->status != TOLK_OK)
            snprintf(why, sizeof why, "clone_speaker: %s", res->error && *res->error ? res->error : "no answer");
        else
            snprintf(why, sizeof why, "clone_speaker: HTTP %d", res->http_status);
        d->host->log(d->inst, TOLK_LOG_WARN, "cloning voice '%s' failed (%s): retried later", c->name, why);
        /* a timeout may just be a long recording on a busy GPU: only a
         * server that does not answer at all leaves the pool */
        if (res->status == TOLK_E_BACKEND || res->http_status >= 500) server_down(s, why);
        return; /* the prober retries it */
    }
    json_t *doc = res->http_status == 200 ? json_loadb(res->body ? res->body : "", res->body_len, 0, NULL) : NULL;
    json_t *cond = cond_of(doc);
    json_decref(doc);
    if (!cond) {
        d->host->log(d->inst, TOLK_LOG_ERR, "cloning voice '%s' refused: HTTP %d, %zu bytes", c->name,
                     res->http_status, res->body_len);
        clone_free(c);
        return;
    }
    s->clones++;
    d->clones_done++;
    if (c->save_path && json_dump_file(cond, c->save_path, JSON_COMPACT) != 0)
        d->host->log(d->inst, TOLK_LOG_WARN, "cannot cache voice '%s' in %s", c->name, c->save_path);
    conditioning cs;
    int bad = cond_serialise(cond, &cs);
    json_decref(cond);
    if (bad) {
        d->host->log(d->inst, TOLK_LOG_ERR, "out of memory keeping voice '%s': cloned again later",
                     c->name);
        return;
    }
    TOLK_LOG(d->host, d->inst, TOLK_LOG_INFO, "voice '%s' cloned", c->name);
    voice_put(d, c->name, cs, c->pin);
    clone_free(c);
}

static const char BOUNDARY[] = "tolk-xtts-9f3c1a7e5b";

static void clone_start(xtts *d, clone *c) {
    if (c->http) return;
    server *s = first_up(d);
    if (!s) return; /* when a server is back */
    char head[256], url[1100];
    int hn = snprintf(head, sizeof head,
                      "--%s\r\nContent-Disposition: form-data; name=\"wav_file\"; filename=\"voice.wav\"\r\n"
                      "Content-Type: audio/wav\r\n\r\n",
                      BOUNDARY);
    char tail[64];
    int tn = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", BOUNDARY);
    size_t len = (size_t)hn + c->wav_len + (size_t)tn;
    char *body = malloc(len);
    if (!body) return;
    memcpy(body, head, (size_t)hn);
    memcpy(body + hn, c->wav, c->wav_len);
    memcpy(body + hn + c->wav_len, tail, (size_t)tn);
    char ctype[128];
    snprintf(ctype, sizeof ctype, "Content-Type: multipart/form-data; boundary=%s", BOUNDARY);
    const char *headers[] = {ctype, "Accept: application/json", NULL};
    snprintf(url, sizeof url, "%s/clone_speaker", s->url);
    tolk_http_request req = {.size = sizeof req, .method = "POST", .url = url, .headers = headers,
                             .body = body, .body_len = len, .connect_timeout = d->connect_timeout,
                             .total_timeout = d->clone_timeout, .max_body = 4 << 20,
                             .on_done = on_clone_done, .ud = c};
    c->srv = s;
    c->http = d->host->http_request(d->inst, &req);
    free(body);
}

/* 16 kHz mono s16 PCM as a WAV file, new. */
static unsigned char *wav_of(const int16_t *pcm, size_t n, size_t *len) {
    size_t data = n * 2;
    unsigned char *w = malloc(WAV_HEADER_BYTES + data);
    if (!w) return NULL;
    uint32_t v;
    memcpy(w, "RIFF", 4);
    v = (uint32_t)(36 + data);
    for (int i = 0; i < 4; i++) w[4 + i] = (unsigned char)(v >> (8 * i));
    memcpy(w + 8, "WAVEfmt ", 8);
    static const unsigned char fmt[20] = {16, 0, 0, 0, 1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0};
    memcpy(w + 16, fmt, sizeof fmt);
    memcpy(w + 36, "data", 4);
    v = (uint32_t)data;
    for (int i = 0; i < 4; i++) w[40 + i] = (unsigned char)(v >> (8 * i));
    for (size_t i = 0; i < n; i++) {
        uint16_t s = (uint16_t)pcm[i];
        w[WAV_HEADER_BYTES + 2 * i] = (unsigned char)(s & 0xff);
        w[WAV_HEADER_BYTES + 2 * i + 1] = (unsigned char)(s >> 8);
    }
    *len = WAV_HEADER_BYTES + data;
    return w;
}

static void on_studio(void *ud, tolk_http *h, const tolk_http_result *res) {
    xtts *d = ud;
    (void)h;
    d->studio = NULL;
    if (res->status != TOLK_OK || res->http_status != 200) return; /* retried by the prober */
    json_t *doc = json_loadb(res->body ? res->body : "", res->body_len, 0, NULL);
    json_t *cond = cond_of(json_object_get(doc, d->studio_speaker));
    json_decref(doc);
    if (!cond) {
        d->host->log(d->inst, TOLK_LOG_ERR, "the server has no studio speaker '%s'", d->studio_speaker);
        d->host->report(d->inst, TOLK_E_INVAL, TOLK_SEV_PERMANENT, "studio_speaker not found on the server");
        return;
    }
    int bad = cond_serialise(cond, &d->studio_cond);
    json_decref(cond);
    if (bad) return; /* out of memory: the prober asks again */
    TOLK_LOG(d->host, d->inst, TOLK_LOG_INFO, "studio speaker '%s' ready", d->studio_speaker);
}

static void studio_fetch(xtts *d) {
    server *s = first_up(d);
    if (d->studio || !s) return;
    char url[1100];
    snprintf(url, sizeof url, "%s/studio_speakers", s->url);
    tolk_http_request req = {.size = sizeof req, .method = "GET", .url = url,
                             .connect_timeout = d->connect_timeout, .total_timeout = d->clone_timeout,
                             .max_body = 64 << 20, .on_done = on_studio, .ud = d};
    d->studio = d->host->http_request(d->inst, &req);
}

/* The conditioning a request's voice gets: its own, else the default
 * profile, else the studio speaker; NULL when none is known. */
static const conditioning *cond_for(xtts *d, const char *name) {
    voice *v = name && *name ? voice_find(d, name) : NULL;
    if (!v && name && *name && strncmp(name, "clone:", 6)) v = profile_load(d, name, 0);
    if (v) return &v->cond;
    if (d->default_voice) {
        v = voice_find(d, d->default_voice);
        if (!v) v = profile_load(d, d->default_voice, 1);
        if (v) return &v->cond;
    }
    return d->studio_cond.members ? &d->studio_cond : NULL;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

static void queue_gauge(xtts *d) {
    if (d->qdepth_s) d->host->series_set(d->qdepth_s, (double)d->queue_len);
    if (d->queue_len > d->queue_peak) d->queue_peak = d->queue_len;
}

static void list_unlink(job **head, job **tail, job *j) {
    if (j->prev)
        j->prev->next = j->next;
    else
        *head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else if (tail)
        *tail = j->prev;
    j->prev = j->next = NULL;
}

static void job_free(job *j) {
    xtts *d = j->d;
    if (j->rs) d->host->resampler_free(j->rs);
    free(j->text);
    free(j->language);
    free(j->voice);
    free(j);
}

/* Takes a streaming job off its server (the HTTP request is over or cancelled). */
static void job_release(job *j) {
    xtts *d = j->d;
    if (j->srv) j->srv->busy = NULL;
    j->srv = NULL;
    list_unlink(&d->streaming, NULL, j);
}

static void pcm_out(job *j, const unsigned char *p, size_t n) {
    xtts *d = j->d;
    if (!n) return;
    size_t total = n + (j->odd_byte >= 0);
    size_t ns = total / 2;
    int16_t *in = malloc((ns + 1) * sizeof *in);
    size_t cap = ns * TOLK_SAMPLE_RATE / XTTS_RATE + 64;
    int16_t *out = malloc(cap * sizeof *out);
    if (!in || !out) {
        free(in);
        free(out);
        return;
    }
    size_t k = 0, i = 0;
    if (j->odd_byte >= 0 && n > 0) {
        in[k++] = (int16_t)(uint16_t)((unsigned)j->odd_byte | (unsigned)p[0] << 8);
        i = 1;
        j->odd_byte = -1;
    }
    for (; i + 1 < n; i += 2) in[k++] = (int16_t)(uint16_t)((unsigned)p[i] | (unsigned)p[i + 1] << 8);
    if (i < n) j->odd_byte = p[i];
    d->pcm_bytes += k * 2;
    size_t got = k ? d->host->resample(j->rs, in, k, out, cap) : 0;
    free(in);
    if (got) d->host->tts_audio(j->r, out, got);
    free(out);
}

static void on_stream_response(void *ud, tolk_http *h, int http_status) {
    job *j = ud;
    (void)h;
    j->http_status = http_status;
}

static int on_stream_body(void *ud, tolk_http *h, const void *data, size_t n) {
    job *j = ud;
    xtts *d = j->d;
    (void)h;
    const unsigned char *p = data;
    if (j->cancelled) return 1;
    if (j->http_status != 200) return 0; /* an error page, not audio: on_done judges it */
    j->in_body = 1;
    if (!j->head_decided) {
        /* "RIFF" first: the 44-byte header of add_wav_header, never played */
        size_t take = WAV_HEADER_BYTES - j->head_len;
        if (take > n) take = n;
        memcpy(j->head + j->head_len, p, take);
        j->head_len += take;
        p += take;
        n -= take;
        size_t cmp = j->head_len < 4 ? j->head_len : 4;
        if (memcmp(j->head, "RIFF", cmp) != 0) {
            j->head_decided = 1;
            pcm_out(j, j->head, j->head_len);
        } else if (j->head_len == WAV_HEADER_BYTES) {
            j->head_decided = 1;
            d->headers_stripped++;
        }
    }
    if (j->head_decided && !j->cancelled) pcm_out(j, p, n);
    j->in_body = 0;
    if (j->cancelled) {
        job_free(j); /* cancel() came from inside tts_audio: the request is already cancelled */
        return 1;
    }
    return 0;
}

static void on_stream_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    job *j = ud;
    xtts *d = j->d;
    server *s = j->srv;
    (void)h;
    j->http = NULL;
    tolk_status st = TOLK_OK;
    char why[200];
    if (res->status == TOLK_OK && res->http_status == 200) {
        if (!j->head_decided) pcm_out(j, j->head, j->head_len); /* a body shorter than a header */
    } else if (res->status == TOLK_E_TIMEOUT) {
        st = TOLK_E_TIMEOUT;
        s->timeouts++;
        snprintf(why, sizeof why, "stream stalled (%s)", res->error ? res->error : "timeout");
        server_down(s, why);
    } else if (res->status != TOLK_OK || res->http_status >= 500) {
        st = TOLK_E_BACKEND;
        if (res->status != TOLK_OK)
            snprintf(why, sizeof why, "%s", res->error && *res->error ? res->error : "no answer");
        else
            snprintf(why, sizeof why, "HTTP %d", res->http_status);
        server_down(s, why);
    } else {
        /* 422 and the like: this request is wrong, the server is fine */
        st = TOLK_E_INVAL;
        d->host->log(d->inst, TOLK_LOG_ERR, "%s refused a phrase of %zu bytes (language %s): HTTP %d",
                     s->url, strlen(j->text), j->language, res->http_status);
    }
    if (st != TOLK_OK) {
        s->failures++;
        d->failures++;
        if (st != TOLK_E_INVAL)
            d->host->log(d->inst, TOLK_LOG_WARN, "%s: phrase failed: %s", s->url, why);
    }
    tolk_request *r = j->r;
    job_release(j);
    job_free(j);
    d->host->tts_done(r, st);
    pump(d);
}

/* s as a JSON string, new: quoted and escaped as json_dumps escapes it. */
static char *json_quote(const char *s, size_t *len) {
    json_t *js = json_string(s); /* NULL for text that is not UTF-8 */
    char *q = js ? json_dumps(js, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    json_decref(js);
    if (q) *len = strlen(q);
    return q;
}

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

/* {"text":...,"language":...,<conditioning>,"add_wav_header":false,
 * "stream_chunk_size":"20"}: the members in the order (and the bytes) that
 * json_dumps gave the whole object, the conditioning copied as it was
 * serialised when the voice was loaded. */
static char *stream_body(const job *j, const conditioning *c, long chunk_size, size_t *len) {
    static const char k_text[] = "{\"text\":", k_lang[] = ",\"language\":";
    size_t tn = 0, ln = 0;
    char *text = json_quote(j->text, &tn), *lang = json_quote(j->language, &ln), *body = NULL;
    char tail[96];
    int n = snprintf(tail, sizeof tail, ",\"add_wav_header\":false,\"stream_chunk_size\":\"%ld\"}",
                     chunk_size);
    if (text && lang && c && n > 0 && (size_t)n < sizeof tail) {
        size_t total = sizeof k_text - 1 + tn + sizeof k_lang - 1 + ln + 1 + c->len + (size_t)n;
        body = malloc(total + 1);
        if (body) {
            char *p = put(body, k_text, sizeof k_text - 1);
            p = put(p, text, tn);
            p = put(p, k_lang, sizeof k_lang - 1);
            p = put(p, lang, ln);
            p = put(p, ",", 1);
            p = put(p, c->members, c->len);
            p = put(p, tail, (size_t)n);
            *p = '\0';
            *len = total;
        }
    }
    free(text);
    free(lang);
    return body;
}

static void stream_start(xtts *d, job *j, server *s) {
    double t0 = d->host->now();
    char url[1100];
    size_t len = 0;
    char *text = stream_body(j, cond_for(d, j->voice), d->chunk_size, &len);
    TOLK_LOG(d->host, d->inst, TOLK_LOG_DBG, "/tts_stream body: %zu bytes in %.3f ms", len,
             (d->host->now() - t0) * 1000.0);
    snprintf(url, sizeof url, "%s/tts_stream", s->url);
    const char *headers[] = {"Content-Type: application/json", "Accept: audio/wav", NULL};
    tolk_http_request req = {.size = sizeof req, .method = "POST", .url = url, .headers = headers,
                             .body = text, .body_len = len,
                             .connect_timeout = d->connect_timeout, .idle_timeout = d->stall_timeout,
                             .on_response = on_stream_response, .on_body = on_stream_body,
                             .on_done = on_stream_done, .ud = j};
    j->srv = s;
    s->busy = j;
    s->streams++;
    j->next = d->streaming;
    if (d->streaming) d->streaming->prev = j;
    d->streaming = j;
    j->http = text ? d->host->http_request(d->inst, &req) : NULL;
    free(text);
    if (!j->http) {
        /* refused at once (out of memory, a URL libcurl rejects): the server
         * leaves the pool and the phrase waits for another */
        job_release(j);
        j->next = d->queue;
        if (d->queue) d->queue->prev = j;
        else d->queue_tail = j;
        d->queue = j;
        d->queue_len++;
        server_down(s, "request refused by the HTTP client");
    }
}

/* Starts queued phrases on idle servers, oldest first. */
static void pump(xtts *d) {
    for (size_t i = 0; i < d->nservers && d->queue; i++) {
        server *s = &d->servers[i];
        if (!s->up || s->busy) continue;
        job *j = d->queue;
        list_unlink(&d->queue, &d->queue_tail, j);
        d->queue_len--;
        queue_gauge(d);
        if (d->qwait_s) d->host->series_observe(d->qwait_s, (d->host->now() - j->queued_at) * 1000.0);
        stream_start(d, j, s);
    }
}

/* No server is left: what waits fails now (from the loop, never from
 * inside speak), so the core's recovery moves it to the backup. */
static void on_fail_queue(void *ud) {
    xtts *d = ud;
    d->fail_timer = NULL;
    while (d->queue && !any_up(d)) {
        job *j = d->queue;
        list_unlink(&d->queue, &d->queue_tail, j);
        d->queue_len--;
        queue_gauge(d);
        d->failures++;
        tolk_request *r = j->r;
        job_free(j);
        d->host->tts_done(r, TOLK_E_BACKEND);
    }
}

static void fail_queue_soon(xtts *d) {
    if (!d->fail_timer) d->fail_timer = d->host->timer_start(d->inst, 0, 0, on_fail_queue, d);
}

/* ------------------------------------------------------------------ */
/* The TTS table                                                       */

/* XTTS takes bare lower-case codes ("es", "zh"): "es-MX" -> "es". */
static char *xtts_language(const char *in) {
    char code[16];
    size_t n = 0;
    for (; in && in[n] && in[n] != '-' && in[n] != '_' && n + 1 < sizeof code; n++)
        code[n] = (char)(in[n] >= 'A' && in[n] <= 'Z' ? in[n] - 'A' + 'a' : in[n]);
    code[n] = '\0';
    return strdup(n ? code : "en");
}

static tolk_status xtts_speak_req(void *self, tolk_request *r, const tolk_tts_request *q) {
    xtts *d = self;
    if (!q || !TOLK_HAS(q, tolk_tts_request, rate) || !q->text) return TOLK_E_INVAL;
    d->requests++;
    if (!any_up(d)) {
        if (!d->all_down_reported) {
            d->all_down_reported = 1;
            d->host->report(d->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, "every XTTS server is down");
        }
        d->failures++;
        return TOLK_E_BACKEND;
    }
    if (!cond_for(d, q->voice)) {
        /* the default voice is still being cloned or fetched: soon */
        if ((d->default_voice && clone_find(d, d->default_voice)) || (d->studio_speaker && !d->default_voice))
            return TOLK_E_AGAIN;
        d->host->log(d->inst, TOLK_LOG_ERR, "no conditioning for voice '%s' and no default voice",
                     q->voice ? q->voice : "");
        return TOLK_E_BACKEND;
    }
    job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    j->d = d;
    j->r = r;
    j->odd_byte = -1;
    j->text = strdup(q->text);
    j->language = xtts_language(q->language);
    j->voice = dup_or_null(q->voice);
    j->rs = d->host->resampler_new(XTTS_RATE, TOLK_SAMPLE_RATE, d->quality);
    if (!j->text || !j->language || (q->voice && !j->voice) || !j->rs) {
        job_free(j);
        return TOLK_E_NOMEM;
    }
    j->queued_at = d->host->now();
    j->prev = d->queue_tail;
    if (d->queue_tail)
        d->queue_tail->next = j;
    else
        d->queue = j;
    d->queue_tail = j;
    d->queue_len++;
    int idle = 0;
    for (size_t i = 0; i < d->nservers; i++) idle |= d->servers[i].up && !d->servers[i].busy;
    if (!idle) d->queued++;
    queue_gauge(d);
    pump(d);
    return TOLK_PENDING;
}

static tolk_status xtts_speak(void *self, tolk_request *r, const char *text, const char *language,
                              const char *voice_name) {
    tolk_tts_request q = {.size = sizeof q, .text = text, .language = language, .voice = voice_name, .rate = 1.0};
    return xtts_speak_req(self, r, &q);
}

static void xtts_cancel(void *self, tolk_request *r) {
    xtts *d = self;
    for (job *j = d->queue; j; j = j->next)
        if (j->r == r) {
            list_unlink(&d->queue, &d->queue_tail, j);
            d->queue_len--;
            queue_gauge(d);
            job_free(j);
            return;
        }
    for (job *j = d->streaming; j; j = j->next)
        if (j->r == r && !j->cancelled) {
            if (j->http) d->host->http_cancel(j->http);
            j->http = NULL;
            job_release(j);
            if (j->in_body)
                j->cancelled = 1; /* on_body frees it when tts_audio returns */
            else
                job_free(j);
            pump(d);
            return;
        }
}

static tolk_status xtts_voice_sample(void *self, const tolk_voice_sample *vs) {
    xtts *d = self;
    if (!vs || !TOLK_HAS(vs, tolk_voice_sample, n) || !vs->voice || !vs->pcm || !vs->n) return TOLK_E_INVAL;
    size_t len;
    unsigned char *wav = wav_of(vs->pcm, vs->n, &len);
    if (!wav) return TOLK_E_NOMEM;
    d->voice_samples++;
    clone *old = clone_find(d, vs->voice);
    if (old) clone_free(old);
    clone_add(d, vs->voice, wav, len, NULL, 0);
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static int url_ok(const char *u) { return u && (!strncmp(u, "http://", 7) || !strncmp(u, "https://", 8)); }

static tolk_status xtts_check_config(const json_t *cfg, tolk_config_error *err) {
    json_t *urls = json_object_get(cfg, "urls");
    size_t i;
    json_t *u;
    if (json_array_size(urls) == 0 || json_array_size(urls) > MAX_SERVERS) {
        err->key = "urls";
        snprintf(err->message, sizeof err->message, "between 1 and %d server URLs", MAX_SERVERS);
        return TOLK_E_INVAL;
    }
    json_array_foreach(urls, i, u) if (!url_ok(json_string_value(u))) {
        err->key = "urls";
        snprintf(err->message, sizeof err->message, "'%s' does not start with http:// or https://",
                 json_string_value(u) ? json_string_value(u) : "?");
        return TOLK_E_INVAL;
    }
    const char *dir = json_string_value(json_object_get(cfg, "profiles_dir"));
    struct stat st;
    if (dir && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
        err->key = "profiles_dir";
        snprintf(err->message, sizeof err->message, "'%s' is not a directory", dir);
        return TOLK_E_INVAL;
    }
    const char *dv = json_string_value(json_object_get(cfg, "default_voice"));
    if (dv && !dir) {
        err->key = "default_voice";
        snprintf(err->message, sizeof err->message, "a default profile needs profiles_dir");
        return TOLK_E_INVAL;
    }
    if (!dv && !json_string_value(json_object_get(cfg, "studio_speaker"))) {
        err->key = NULL;
        snprintf(err->message, sizeof err->message, "set default_voice (a profile) or studio_speaker");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static void xtts_destroy(void *self) {
    xtts *d = self;
    while (d->queue) {
        job *j = d->queue;
        list_unlink(&d->queue, &d->queue_tail, j);
        job_free(j);
    }
    while (d->streaming) {
        job *j = d->streaming;
        if (j->http) d->host->http_cancel(j->http);
        job_release(j);
        job_free(j);
    }
    while (d->clones) clone_free(d->clones);
    for (size_t i = 0; i < d->nservers; i++) {
        if (d->servers[i].probe) d->host->http_cancel(d->servers[i].probe);
        free(d->servers[i].url);
    }
    if (d->studio) d->host->http_cancel(d->studio);
    if (d->prober) d->host->timer_stop(d->prober);
    if (d->fail_timer) d->host->timer_stop(d->fail_timer);
    while (d->voices) {
        voice *v = d->voices;
        d->voices = v->next;
        voice_free(v);
    }
    d->nvoices = 0;
    voices_gauge(d);
    if (d->qdepth_s) d->host->series_set(d->qdepth_s, 0);
    cond_clear(&d->studio_cond);
    free(d->profiles_dir);
    free(d->default_voice);
    free(d->studio_speaker);
    free(d);
}

/* Reference WAVs without a fresh clone are cloned now, so their voice is
 * ready before the first phrase asks for it. */
static void clone_profiles(xtts *d) {
    DIR *dir = d->profiles_dir ? opendir(d->profiles_dir) : NULL;
    if (!dir) return;
    struct dirent *e;
    while ((e = readdir(dir))) {
        size_t n = strlen(e->d_name);
        if (n <= 4 || strcmp(e->d_name + n - 4, ".wav") || e->d_name[0] == '.') continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(n - 4), e->d_name);
        int pin = d->default_voice && !strcmp(name, d->default_voice);
        if (!voice_find(d, name)) profile_load(d, name, pin);
    }
    closedir(dir);
}

static tolk_status xtts_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg, void **self) {
    if (!TOLK_HOST_HAS(host, http_header)) {
        host->log(inst, TOLK_LOG_ERR, "needs a tolkd with plugin ABI 1.2 (HTTP client): this one has %u.%u",
                  host->abi_major, host->abi_minor);
        return TOLK_E_FATAL;
    }
    xtts *d = calloc(1, sizeof *d);
    if (!d) return TOLK_E_NOMEM;
    d->host = host;
    d->inst = inst;
    size_t n = host->cfg_list_size(cfg, "urls");
    for (size_t i = 0; i < n && i < MAX_SERVERS; i++) {
        server *s = &d->servers[d->nservers];
        s->d = d;
        s->up = 1; /* until it fails */
        s->url = dup_or_null(host->cfg_list_string(cfg, "urls", i));
        if (!s->url) {
            xtts_destroy(d);
            return TOLK_E_NOMEM;
        }
        size_t len = strlen(s->url);
        while (len > 0 && s->url[len - 1] == '/') s->url[--len] = '\0';
        d->nservers++;
    }
    d->profiles_dir = dup_or_null(host->cfg_string(cfg, "profiles_dir"));
    d->default_voice = dup_or_null(host->cfg_string(cfg, "default_voice"));
    d->studio_speaker = dup_or_null(host->cfg_string(cfg, "studio_speaker"));
    d->voice_cache = (long)host->cfg_int(cfg, "voice_cache");
    d->chunk_size = (long)host->cfg_int(cfg, "stream_chunk_size");
    d->stall_timeout = host->cfg_double(cfg, "stall_timeout");
    d->connect_timeout = host->cfg_double(cfg, "connect_timeout");
    d->clone_timeout = host->cfg_double(cfg, "clone_timeout");
    d->probe_interval = host->cfg_double(cfg, "probe_interval");
    d->quality = (int)host->cfg_int(cfg, "resample_quality");
    const char *label[1] = {host->instance_name(inst)};
    tolk_metric *fam = host->metric_family("voice_embedding_cache_size",
                                           "Speaker embeddings (cloned voices) a TTS provider keeps ready",
                                           TOLK_METRIC_GAUGE, "component", NULL, 0);
    d->voices_s = fam ? host->metric_series(fam, label) : NULL;
    fam = host->metric_family("tts_xtts_queue_depth", "Phrases waiting for a free XTTS server",
                              TOLK_METRIC_GAUGE, "component", NULL, 0);
    d->qdepth_s = fam ? host->metric_series(fam, label) : NULL;
    static const double wait_bounds[] = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
    fam = host->metric_family("tts_xtts_queue_wait_milliseconds",
                              "Time a phrase waited for a free XTTS server", TOLK_METRIC_HISTOGRAM,
                              "component", wait_bounds, sizeof wait_bounds / sizeof wait_bounds[0]);
    d->qwait_s = fam ? host->metric_series(fam, label) : NULL;
    voices_gauge(d);
    queue_gauge(d);
    d->prober = host->timer_start(inst, d->probe_interval, d->probe_interval, on_prober, d);
    if (d->default_voice) profile_load(d, d->default_voice, 1);
    clone_profiles(d);
    if (d->studio_speaker && !d->default_voice) studio_fetch(d);
    TOLK_LOG(host, inst, TOLK_LOG_VERB, "%zu XTTS server%s, default voice %s", d->nservers,
             d->nservers == 1 ? "" : "s", d->default_voice ? d->default_voice : d->studio_speaker);
    *self = d;
    return TOLK_OK;
}

static tolk_health xtts_health(void *self, json_t **detail_new) {
    xtts *d = self;
    if (detail_new) {
        json_t *servers = json_array();
        for (size_t i = 0; i < d->nservers; i++) {
            server *s = &d->servers[i];
            json_array_append_new(
                servers, json_pack("{s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:s}", "url", s->url, "up", s->up,
                                   "busy", s->busy != NULL, "streams", (json_int_t)s->streams, "failures",
                                   (json_int_t)s->failures, "timeouts", (json_int_t)s->timeouts, "probes",
                                   (json_int_t)s->probes, "clones", (json_int_t)s->clones, "last_error",
                                   s->last_error));
        }
        size_t pending = 0;
        for (clone *c = d->clones; c; c = c->next) pending++;
        *detail_new = json_pack(
            "{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "servers", servers, "requests",
            (json_int_t)d->requests, "failures", (json_int_t)d->failures, "queue_depth",
            (json_int_t)d->queue_len, "queue_peak", (json_int_t)d->queue_peak, "queued",
            (json_int_t)d->queued, "headers_stripped", (json_int_t)d->headers_stripped, "pcm_bytes",
            (json_int_t)d->pcm_bytes, "voices", (json_int_t)d->nvoices, "clones",
            (json_int_t)d->clones_done, "pending_clones", (json_int_t)pending, "voice_samples",
            (json_int_t)d->voice_samples);
    }
    return any_up(d) ? TOLK_HEALTHY : TOLK_FAILED;
}

static const tolk_tts xtts_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_tts, TOLK_KIND_TTS),
            .name = "tts_xtts",
            .version = "1.0.0",
            .description = "Coqui XTTS v2 streaming servers (POST /tts_stream), a pool with a queue, voice cloning",
            .options = xtts_options,
            .check_config = xtts_check_config,
            .create = xtts_create,
            .destroy = xtts_destroy,
            .health = xtts_health,
        },
    .speak = xtts_speak,
    .cancel = xtts_cancel,
    .speak_req = xtts_speak_req,
    .voice_sample = xtts_voice_sample,
};

TOLK_PLUGIN_DEFINE(xtts_desc)
