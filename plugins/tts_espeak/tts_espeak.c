/*
 * tts_espeak -- speech synthesis with libespeak-ng, streamed in chunks.
 *
 * THE ENGINE THREAD
 *
 * libespeak-ng keeps all its state in globals: it is not thread-safe and
 * espeak_Synth() blocks until the text is spoken. So the plugin has ONE
 * synthesis thread, the engine, that owns the library: it initialises it
 * (AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth() runs the synthesis on the
 * calling thread and calls our synth callback for every buffer it fills),
 * then serves jobs from a FIFO queue, one at a time, in the order speak()
 * was called. The library is a process-wide singleton, so the engine is too:
 * every instance of this plugin in the process shares it (a reference count;
 * the first create() starts the thread, the last destroy() stops and joins
 * it). That is the only global state of the plugin; everything else lives in
 * the instance.
 *
 * For each buffer espeak hands to the callback (about 50 ms of 22.05 kHz
 * audio; see README.md), the engine resamples it to 16 kHz with the host's
 * speexdsp resampler (one per request, used only on the engine thread),
 * appends the result to the instance's outbox and wakes the loop with
 * host->async_send(). On the loop, the async callback passes the chunks to
 * host->tts_audio() in order and ends the request with host->tts_done().
 * When espeak has finished, the engine flushes the resampler's tail (it
 * feeds zeros and keeps exactly round(n * 16000 / rate) samples in all) and
 * posts a DONE message, in the same critical section in which it stops
 * being busy with the job: from then on the loop may free the job, and the
 * engine does not touch it again.
 *
 * CANCELLATION
 *
 * cancel() runs on the loop: it marks the job cancelled (an atomic flag),
 * forgets its request, and, if the engine has not started the job yet,
 * takes it off the queue and frees it. A job the engine is working on sees
 * the flag in the synth callback, which returns 1 so that espeak aborts the
 * synthesis. Chunks already posted are dropped by the loop, which checks the
 * flag before every host callback (also after each tts_audio(), from inside
 * which the core may cancel). So after cancel() returns nothing fires for
 * the request. A job's memory is freed on the loop when its DONE message is
 * read (or by cancel() for a job still queued), never by the engine.
 *
 * destroy() cancels the instance's jobs, waits (briefly: at most one
 * espeak buffer) until the engine is not working on one of them, frees what
 * is left in the outbox, and drops its engine reference; the last one stops
 * and joins the thread.
 *
 * libespeak-ng is initialised once per process and never terminated: in
 * libespeak-ng 1.51, espeak_Terminate() after a second espeak_Initialize()
 * deadlocks (its internal fifo thread), so the engine keeps the library
 * initialised across thread restarts, and the module is linked -z nodelete
 * so that dlclose() does not unmap the library under its internal threads.
 *
 * VOICES
 *
 * The engine lists espeak's voices and variants once, at initialisation,
 * into an immutable table, so speak() can pick a voice on the loop without
 * touching the library. A request in language L is spoken with:
 *   1. the `voice` argument of speak(), "NAME[+VARIANT]", if NAME is an
 *      espeak voice (its name, identifier or the file name of its identifier:
 *      "en-us", "gmw/en-US", "English (America)") that speaks L, i.e. one of
 *      its languages has the same primary subtag;
 *   2. else the voice of L in `voices` (built in: en = "en-us", es = "es";
 *      the setting adds and replaces entries; "" removes one), looked up by
 *      L and then by its primary subtag ("es-MX" -> "es");
 *   3. else, with other_languages, espeak's own best voice for L;
 *   4. else speak() returns TOLK_DECLINED.
 * A VARIANT of the `voice` argument ("+f3"; or the argument is just a variant
 * name, "f3" / "Annie") is kept whichever voice is chosen; an unknown one is
 * ignored. A voice that speaks another language is not used: the
 * translation of an English speaker's words is Spanish, and an English voice
 * would read it with English rules.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <espeak-ng/speak_lib.h>
#include <tolk/plugin.h>

/* espeak_Initialize()'s buffer length. libespeak-ng 1.51 does not call back
 * with less than about 49 ms (1081 samples at 22.05 kHz) whatever is asked
 * below that, so 20 means "as small as it goes". */
#define ESPEAK_BUFFER_MS 20
/* zeros fed per step to push the resampler's tail out */
#define FLUSH_BLOCK 256
#define FLUSH_MAX_BLOCKS 16
#define MAX_LANG 32
#define BUILTIN_VOICES "en=en-us|es=es"

static const tolk_option tts_espeak_options[] = {
    {.key = "voices", .type = TOLK_OPT_MAP, .default_value = NULL,
     .help = "language = \"espeak voice\" (built in: en = \"en-us\", es = \"es\"; \"\" removes one)"},
    {.key = "other_languages", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "languages not in voices use espeak's own voice for them; false: declined"},
    {.key = "rate", .type = TOLK_OPT_INT, .default_value = "175", .min = 80, .max = 450,
     .help = "speaking rate, words per minute"},
    {.key = "honour_rate", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "the core's rate hint (faster speech when a call runs behind) scales rate "
             "(80..450 wpm); false: always rate"},
    {.key = "pitch", .type = TOLK_OPT_INT, .default_value = "50", .min = 0, .max = 100,
     .help = "base pitch, 0..100 (50 = the voice's normal)"},
    {.key = "volume", .type = TOLK_OPT_INT, .default_value = "100", .min = 0, .max = 200,
     .help = "volume in percent (100 = normal; above it may clip)"},
    {.key = "resample_quality", .type = TOLK_OPT_INT, .default_value = "5", .min = 0, .max = 10,
     .help = "speexdsp quality of the 22.05 -> 16 kHz resampler, 0..10"},
    {.key = "max_text_bytes", .type = TOLK_OPT_INT, .default_value = "4000", .min = 1,
     .max = 1000000, .help = "longer texts are refused with TOLK_E_INVAL"},
    {.key = "max_pending", .type = TOLK_OPT_INT, .default_value = "256", .min = 0, .max = 1e9,
     .help = "requests of this instance queued or in synthesis; more get TOLK_E_LIMIT; 0 = no limit"},
    {.key = "data_path", .type = TOLK_OPT_STRING, .default_value = NULL,
     .help = "directory holding espeak-ng-data; unset: the library's default"},
    {.key = NULL},
};

/* ------------------------------------------------------------------ */
/* Types                                                               */

typedef struct tts_espeak tts_espeak;

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_FINISHED } job_state;

typedef struct job {
    struct job *next;             /* engine queue (under the lock) */
    struct job *lprev, *lnext;    /* instance's live jobs (loop thread) */
    tts_espeak *self;
    tolk_request *r;
    atomic_int cancelled;
    job_state state; /* under the engine lock */
    int live;        /* in self's live list (loop thread) */
    char *text;
    char voice[160]; /* as given to espeak_SetVoiceByName() */
    int rate, pitch, volume, quality;
    /* engine side */
    tolk_resampler *rs;
    uint64_t in_samples, out_samples;
    int16_t *rbuf;
    size_t rcap;
    /* results, written by the engine before DONE, read on the loop after */
    double cpu_s;
    tolk_status status;
    /* loop side */
    double t_speak, t_first;
    uint64_t chunks;
} job;

typedef enum msg_kind { MSG_AUDIO, MSG_DONE } msg_kind;

typedef struct msg {
    struct msg *next;
    job *j;
    msg_kind kind;
    size_t n;
    int16_t pcm[];
} msg;

typedef struct ev_voice {
    char *name, *ident, *file; /* file: identifier after its last '/' */
    char **langs;              /* "en-us", "en", ... */
    size_t nlangs;
    int *prio;
} ev_voice;

typedef struct lang_voice {
    char lang[MAX_LANG];
    int voice;       /* index in the engine's voices */
    char variant[64];
} lang_voice;

/* The engine: one per process, because libespeak-ng is. */
typedef struct engine {
    pthread_mutex_t lock;
    pthread_cond_t work; /* a job was queued, or stop */
    pthread_cond_t idle; /* init finished, or the current job changed */
    int refs;
    int running, stop, init_done, init_ok;
    char init_error[200];
    pthread_t thread;
    job *head, *tail;
    size_t queued;
    job *current;
    /* set once by the first engine thread, immutable afterwards */
    int inited;
    int rate;
    char *data_path; /* the one espeak was initialised with, NULL: default */
    char version[32];
    ev_voice *voices, *variants;
    size_t nvoices, nvariants;
    /* engine thread only */
    char cur_voice[160];
    int cur_rate, cur_pitch, cur_volume;
    /* totals, under the lock */
    uint64_t jobs_done;
    double cpu_s, audio_s, wall_s;
} engine;

static engine g_eng = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
};

typedef struct lang_stat {
    char lang[MAX_LANG];
    char voice[160];
    uint64_t n;
} lang_stat;

struct tts_espeak {
    const tolk_host *host;
    tolk_instance *inst;
    int rate, pitch, volume, quality, other_languages, honour_rate;
    int64_t max_text, max_pending;
    int last_wpm;     /* the rate the last request was spoken at */
    uint64_t faster; /* requests spoken faster than rate (the core's hint) */
    lang_voice *langs;
    size_t nlangs;
    tolk_async *async;
    msg *out_head, *out_tail; /* outbox, under g_eng.lock */
    job *live;                /* live jobs, loop thread */
    size_t nlive;
    /* counters, loop thread */
    uint64_t requests, completed, failed, cancelled, declined, refused, chunks, out_samples;
    double cpu_s, audio_s; /* of this instance's jobs, engine measurements */
    double first_last, first_sum, first_max;
    uint64_t first_n;
    char last_voice[160], last_language[MAX_LANG];
    lang_stat *used;
    size_t nused;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *xstrdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* "es-MX" -> "es"; also accepts '_'. Writes at most cap-1 bytes. */
static void primary_subtag(const char *lang, char *out, size_t cap)
{
    size_t i = 0;
    for (; lang[i] && lang[i] != '-' && lang[i] != '_' && i + 1 < cap; i++) out[i] = lang[i];
    out[i] = 0;
}

/* Compares language tags without regard to case or '-'/'_'. */
static int lang_eq(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y) return 0;
        if (!x) return 1;
    }
}

static int valid_lang(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= MAX_LANG) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Voice table (built on the engine thread, read anywhere afterwards)  */

static void voice_list_free(ev_voice *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].ident);
        for (size_t k = 0; k < v[i].nlangs; k++) free(v[i].langs[k]);
        free(v[i].langs);
        free(v[i].prio);
    }
    free(v);
}

/* Copies espeak's list (its array is static and reused by the next call). */
static int voice_list_copy(const espeak_VOICE **src, ev_voice **out, size_t *nout)
{
    size_t n = 0;
    while (src && src[n]) n++;
    ev_voice *v = calloc(n ? n : 1, sizeof *v);
    if (!v) return -1;
    for (size_t i = 0; i < n; i++) {
        const espeak_VOICE *e = src[i];
        v[i].name = strdup(e->name ? e->name : "");
        v[i].ident = strdup(e->identifier ? e->identifier : "");
        if (!v[i].name || !v[i].ident) goto fail;
        const char *slash = strrchr(v[i].ident, '/');
        v[i].file = slash ? (char *)slash + 1 : v[i].ident;
        /* languages: { prio byte, "name", 0 }*, 0 */
        size_t nl = 0;
        for (const char *p = e->languages; p && *p; p += strlen(p + 1) + 2) nl++;
        v[i].langs = calloc(nl ? nl : 1, sizeof *v[i].langs);
        v[i].prio = calloc(nl ? nl : 1, sizeof *v[i].prio);
        if (!v[i].langs || !v[i].prio) goto fail;
        for (const char *p = e->languages; p && *p; p += strlen(p + 1) + 2) {
            v[i].prio[v[i].nlangs] = (unsigned char)p[0];
            if (!(v[i].langs[v[i].nlangs] = strdup(p + 1))) goto fail;
            v[i].nlangs++;
        }
    }
    *out = v;
    *nout = n;
    return 0;
fail:
    voice_list_free(v, n);
    return -1;
}

/* An espeak voice by name, identifier or identifier file name; -1 if none. */
static int voice_find(const char *name)
{
    if (!name || !*name) return -1;
    for (size_t i = 0; i < g_eng.nvoices; i++) {
        const ev_voice *v = &g_eng.voices[i];
        if (!strcasecmp(name, v->ident) || !strcasecmp(name, v->file) || !strcasecmp(name, v->name))
            return (int)i;
    }
    return -1;
}

/* A variant ("f3", "Annie", "!v/f3"); returns its file name or NULL. */
static const char *variant_find(const char *name)
{
    if (!name || !*name) return NULL;
    if (!strncmp(name, "!v/", 3)) name += 3;
    for (size_t i = 0; i < g_eng.nvariants; i++)
        if (!strcasecmp(name, g_eng.variants[i].file)) return g_eng.variants[i].file;
    return NULL;
}

/* Does voice i speak lang (same primary subtag as one of its languages)? */
static int voice_speaks(int i, const char *lang)
{
    char want[MAX_LANG], have[MAX_LANG];
    primary_subtag(lang, want, sizeof want);
    const ev_voice *v = &g_eng.voices[i];
    for (size_t k = 0; k < v->nlangs; k++) {
        primary_subtag(v->langs[k], have, sizeof have);
        if (lang_eq(want, have)) return 1;
    }
    return 0;
}

/* espeak's own choice for a language: the voice listing it exactly with the
 * best priority, else one listing its primary subtag; -1 if none. */
static int voice_for_language(const char *lang)
{
    char prim[MAX_LANG];
    primary_subtag(lang, prim, sizeof prim);
    for (int pass = 0; pass < 2; pass++) {
        const char *want = pass ? prim : lang;
        int best = -1, best_prio = 1 << 30;
        for (size_t i = 0; i < g_eng.nvoices; i++) {
            const ev_voice *v = &g_eng.voices[i];
            for (size_t k = 0; k < v->nlangs; k++) {
                if (lang_eq(v->langs[k], want) && v->prio[k] < best_prio) {
                    best = (int)i;
                    best_prio = v->prio[k];
                }
            }
        }
        if (best >= 0) return best;
    }
    return -1;
}

/* Splits "NAME+VARIANT". */
static void split_voice(const char *s, char *name, size_t ncap, char *variant, size_t vcap)
{
    const char *plus = strchr(s, '+');
    size_t n = plus ? (size_t)(plus - s) : strlen(s);
    if (n >= ncap) n = ncap - 1;
    memcpy(name, s, n);
    name[n] = 0;
    snprintf(variant, vcap, "%s", plus ? plus + 1 : "");
}

/* ------------------------------------------------------------------ */
/* Engine thread                                                       */

static void outbox_post(tts_espeak *m, msg *x)
{
    pthread_mutex_lock(&g_eng.lock);
    x->next = NULL;
    if (m->out_tail)
        m->out_tail->next = x;
    else
        m->out_head = x;
    m->out_tail = x;
    pthread_mutex_unlock(&g_eng.lock);
    /* The instance lives: destroy() waits while the engine works on its job. */
    m->host->async_send(m->async);
}

/* Resamples n input samples and posts what comes out (at most up to
 * cap_total samples in all for the request; 0: no cap). */
static int post_audio(job *j, const int16_t *pcm, size_t n, uint64_t cap_total)
{
    const tolk_host *h = j->self->host;
    size_t need = n * TOLK_SAMPLE_RATE / (size_t)g_eng.rate + 64;
    if (need > j->rcap) {
        int16_t *b = realloc(j->rbuf, need * sizeof *b);
        if (!b) return -1;
        j->rbuf = b;
        j->rcap = need;
    }
    size_t out = h->resample(j->rs, pcm, n, j->rbuf, j->rcap);
    if (cap_total && j->out_samples + out > cap_total) out = (size_t)(cap_total - j->out_samples);
    if (out == 0) return 0;
    msg *x = malloc(sizeof *x + out * sizeof(int16_t));
    if (!x) return -1;
    x->j = j;
    x->kind = MSG_AUDIO;
    x->n = out;
    memcpy(x->pcm, j->rbuf, out * sizeof(int16_t));
    j->out_samples += out;
    outbox_post(j->self, x);
    return 0;
}

static int synth_cb(short *wav, int n, espeak_EVENT *ev)
{
    job *j = ev ? ev->user_data : NULL;
    if (!j) return 0; /* not ours (cannot happen: every Synth passes a job) */
    if (atomic_load(&j->cancelled)) return 1;
    if (!wav || n <= 0) return 0; /* NULL: end of synthesis; 0: no audio this time */
    j->in_samples += (uint64_t)n;
    if (post_audio(j, wav, (size_t)n, 0)) {
        j->status = TOLK_E_NOMEM;
        return 1;
    }
    return atomic_load(&j->cancelled);
}

static void set_params(job *j)
{
    if (strcmp(g_eng.cur_voice, j->voice) != 0) {
        if (espeak_SetVoiceByName(j->voice) != EE_OK) {
            g_eng.cur_voice[0] = 0;
            j->status = TOLK_E_BACKEND;
            return;
        }
        snprintf(g_eng.cur_voice, sizeof g_eng.cur_voice, "%s", j->voice);
        g_eng.cur_rate = g_eng.cur_pitch = g_eng.cur_volume = -1; /* a voice resets them */
    }
    if (g_eng.cur_rate != j->rate) espeak_SetParameter(espeakRATE, j->rate, 0);
    if (g_eng.cur_pitch != j->pitch) espeak_SetParameter(espeakPITCH, j->pitch, 0);
    if (g_eng.cur_volume != j->volume) espeak_SetParameter(espeakVOLUME, j->volume, 0);
    g_eng.cur_rate = j->rate;
    g_eng.cur_pitch = j->pitch;
    g_eng.cur_volume = j->volume;
}

static void run_job(job *j)
{
    const tolk_host *h = j->self->host;
    double c0 = thread_cpu(), w0 = h->now();
    j->status = TOLK_OK;
    set_params(j);
    if (j->status == TOLK_OK && !atomic_load(&j->cancelled)) {
        j->rs = h->resampler_new((unsigned)g_eng.rate, TOLK_SAMPLE_RATE, j->quality);
        if (!j->rs) j->status = TOLK_E_NOMEM;
    }
    if (j->status == TOLK_OK && !atomic_load(&j->cancelled)) {
        espeak_ERROR e = espeak_Synth(j->text, strlen(j->text) + 1, 0, POS_CHARACTER, 0,
                                      espeakCHARS_UTF8, NULL, j);
        if (e != EE_OK && j->status == TOLK_OK && !atomic_load(&j->cancelled))
            j->status = TOLK_E_BACKEND;
    }
    if (j->status == TOLK_OK && !atomic_load(&j->cancelled) && j->in_samples) {
        /* The tail: what the filter still holds. Zeros push it out; the
         * total is cut to the length of the input at 16 kHz. */
        uint64_t want = (j->in_samples * TOLK_SAMPLE_RATE + (uint64_t)g_eng.rate / 2) /
                        (uint64_t)g_eng.rate;
        static const int16_t zeros[FLUSH_BLOCK];
        for (int k = 0; k < FLUSH_MAX_BLOCKS && j->out_samples < want; k++) {
            if (post_audio(j, zeros, FLUSH_BLOCK, want)) {
                j->status = TOLK_E_NOMEM;
                break;
            }
        }
    }
    if (j->rs) h->resampler_free(j->rs);
    j->rs = NULL;
    free(j->rbuf);
    j->rbuf = NULL;
    free(j->text);
    j->text = NULL;
    j->cpu_s = thread_cpu() - c0;

    /* DONE goes out even for a cancelled job: the loop frees the job when
     * it reads it, so j is not touched after the post. */
    msg *x;
    while (!(x = malloc(sizeof *x))) {
        /* Without it the request would never end: wait for memory. */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    x->j = j;
    x->kind = MSG_DONE;
    x->n = 0;
    x->next = NULL;
    tts_espeak *m = j->self;
    double wall = h->now() - w0;
    pthread_mutex_lock(&g_eng.lock);
    g_eng.jobs_done++;
    g_eng.cpu_s += j->cpu_s;
    g_eng.wall_s += wall;
    g_eng.audio_s += (double)j->in_samples / g_eng.rate;
    j->state = JOB_FINISHED;
    if (m->out_tail)
        m->out_tail->next = x;
    else
        m->out_head = x;
    m->out_tail = x;
    /* In one critical section with clearing `current`: destroy() waits for
     * that under this lock, so the instance (and its async) is alive here,
     * and the loop cannot free j before we are done with it. */
    g_eng.current = NULL;
    h->async_send(m->async);
    pthread_cond_broadcast(&g_eng.idle);
    pthread_mutex_unlock(&g_eng.lock);
}

static int engine_init_library(void)
{
    voice_list_free(g_eng.voices, g_eng.nvoices); /* a failed earlier attempt */
    voice_list_free(g_eng.variants, g_eng.nvariants);
    g_eng.voices = g_eng.variants = NULL;
    g_eng.nvoices = g_eng.nvariants = 0;
    int rate = espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ESPEAK_BUFFER_MS, g_eng.data_path,
                                 espeakINITIALIZE_DONT_EXIT);
    if (rate <= 0) {
        snprintf(g_eng.init_error, sizeof g_eng.init_error,
                 "espeak_Initialize() failed (%d): is espeak-ng-data installed%s%s?", rate,
                 g_eng.data_path ? " in " : "", g_eng.data_path ? g_eng.data_path : "");
        return -1;
    }
    espeak_SetSynthCallback(synth_cb);
    const char *v = espeak_Info(NULL);
    snprintf(g_eng.version, sizeof g_eng.version, "%s", v ? v : "?");
    if (voice_list_copy(espeak_ListVoices(NULL), &g_eng.voices, &g_eng.nvoices)) goto nomem;
    espeak_VOICE spec = {.languages = "variant"};
    if (voice_list_copy(espeak_ListVoices(&spec), &g_eng.variants, &g_eng.nvariants)) goto nomem;
    if (g_eng.nvoices == 0) {
        snprintf(g_eng.init_error, sizeof g_eng.init_error, "espeak lists no voices");
        return -1;
    }
    g_eng.rate = rate;
    return 0;
nomem:
    snprintf(g_eng.init_error, sizeof g_eng.init_error, "out of memory listing voices");
    return -1;
}

static void *engine_main(void *arg)
{
    (void)arg;
    int ok = 1;
    if (!g_eng.inited) {
        /* The library is initialised on the thread that uses it. */
        ok = engine_init_library() == 0;
    }
    pthread_mutex_lock(&g_eng.lock);
    if (ok) g_eng.inited = 1;
    g_eng.init_ok = ok;
    g_eng.init_done = 1;
    pthread_cond_broadcast(&g_eng.idle);
    while (ok) {
        while (!g_eng.head && !g_eng.stop) pthread_cond_wait(&g_eng.work, &g_eng.lock);
        if (!g_eng.head) break; /* stop */
        job *j = g_eng.head;
        g_eng.head = j->next;
        if (!g_eng.head) g_eng.tail = NULL;
        g_eng.queued--;
        j->next = NULL;
        j->state = JOB_RUNNING;
        g_eng.current = j;
        pthread_mutex_unlock(&g_eng.lock);
        run_job(j); /* posts DONE and clears current; j may be gone after */
        pthread_mutex_lock(&g_eng.lock);
    }
    pthread_mutex_unlock(&g_eng.lock);
    return NULL;
}

/* Takes a reference; starts the thread (and the library) if needed. Loop
 * thread. On failure fills why. */
static int engine_ref(const char *data_path, char *why, size_t whylen)
{
    pthread_mutex_lock(&g_eng.lock);
    if (g_eng.inited) {
        int same = (!data_path && !g_eng.data_path) ||
                   (data_path && g_eng.data_path && !strcmp(data_path, g_eng.data_path));
        if (!same) {
            snprintf(why, whylen,
                     "data_path: libespeak-ng is already initialised in this process with %s; "
                     "all instances must use the same data_path",
                     g_eng.data_path ? g_eng.data_path : "its default data");
            pthread_mutex_unlock(&g_eng.lock);
            return -1;
        }
    } else if (!g_eng.running) {
        free(g_eng.data_path);
        g_eng.data_path = xstrdup_or_null(data_path);
    }
    if (!g_eng.running) {
        g_eng.stop = 0;
        g_eng.init_done = 0;
        g_eng.init_error[0] = 0;
        /* The engine takes no signals: they belong to the loop thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int rc = pthread_create(&g_eng.thread, NULL, engine_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0) {
            snprintf(why, whylen, "cannot start the synthesis thread: %s", strerror(rc));
            pthread_mutex_unlock(&g_eng.lock);
            return -1;
        }
        g_eng.running = 1;
        /* A one-time wait of a few ms for the library to load its data, so
         * that create() can fail cleanly if it cannot. */
        while (!g_eng.init_done) pthread_cond_wait(&g_eng.idle, &g_eng.lock);
        if (!g_eng.init_ok) {
            snprintf(why, whylen, "%s", g_eng.init_error);
            pthread_mutex_unlock(&g_eng.lock);
            pthread_join(g_eng.thread, NULL);
            pthread_mutex_lock(&g_eng.lock);
            g_eng.running = 0;
            pthread_mutex_unlock(&g_eng.lock);
            return -1;
        }
    }
    g_eng.refs++;
    pthread_mutex_unlock(&g_eng.lock);
    return 0;
}

static void engine_unref(void)
{
    pthread_mutex_lock(&g_eng.lock);
    int last = --g_eng.refs == 0;
    if (last) {
        g_eng.stop = 1;
        pthread_cond_broadcast(&g_eng.work);
    }
    pthread_mutex_unlock(&g_eng.lock);
    if (!last) return;
    pthread_join(g_eng.thread, NULL);
    pthread_mutex_lock(&g_eng.lock);
    g_eng.running = 0;
    pthread_mutex_unlock(&g_eng.lock);
}

/* ------------------------------------------------------------------ */
/* Loop side                                                           */

static void live_unlink(tts_espeak *m, job *j)
{
    if (!j->live) return;
    if (j->lprev)
        j->lprev->lnext = j->lnext;
    else
        m->live = j->lnext;
    if (j->lnext) j->lnext->lprev = j->lprev;
    j->lprev = j->lnext = NULL;
    j->live = 0;
    m->nlive--;
}

static void job_free(job *j)
{
    free(j->text);
    free(j->rbuf);
    free(j);
}

static void note_voice_used(tts_espeak *m, const char *lang, const char *voice)
{
    snprintf(m->last_voice, sizeof m->last_voice, "%s", voice);
    snprintf(m->last_language, sizeof m->last_language, "%s", lang);
    for (size_t i = 0; i < m->nused; i++) {
        if (!strcmp(m->used[i].voice, voice) && lang_eq(m->used[i].lang, lang)) {
            m->used[i].n++;
            return;
        }
    }
    lang_stat *u = realloc(m->used, (m->nused + 1) * sizeof *u);
    if (!u) return;
    m->used = u;
    snprintf(u[m->nused].lang, sizeof u[m->nused].lang, "%s", lang);
    snprintf(u[m->nused].voice, sizeof u[m->nused].voice, "%s", voice);
    u[m->nused].n = 1;
    m->nused++;
}

/* The loop's half: hands chunks to the core, ends requests, frees jobs. */
static void on_async(void *ud)
{
    tts_espeak *m = ud;
    const tolk_host *h = m->host;
    pthread_mutex_lock(&g_eng.lock);
    msg *list = m->out_head;
    m->out_head = m->out_tail = NULL;
    pthread_mutex_unlock(&g_eng.lock);

    while (list) {
        msg *x = list;
        list = x->next;
        job *j = x->j;
        if (x->kind == MSG_AUDIO) {
            /* cancel() may have come, also from inside the previous tts_audio() */
            if (!atomic_load(&j->cancelled)) {
                if (!j->chunks) {
                    j->t_first = h->now();
                    double ms = (j->t_first - j->t_speak) * 1000.0;
                    m->first_last = ms;
                    m->first_sum += ms;
                    m->first_n++;
                    if (ms > m->first_max) m->first_max = ms;
                }
                j->chunks++;
                m->chunks++;
                m->out_samples += x->n;
                h->tts_audio(j->r, x->pcm, x->n);
            }
        } else {
            m->cpu_s += j->cpu_s;
            m->audio_s += (double)j->in_samples / g_eng.rate;
            if (!atomic_load(&j->cancelled)) {
                live_unlink(m, j);
                tolk_status st = j->status;
                if (st == TOLK_OK && j->chunks == 0) st = TOLK_E_BACKEND; /* no audio at all */
                if (st == TOLK_OK)
                    m->completed++;
                else
                    m->failed++;
                if (st != TOLK_OK)
                    TOLK_LOG(h, m->inst, TOLK_LOG_WARN, "synthesis failed (%d) with voice %s",
                             (int)st, j->voice);
                else
                    TOLK_LOG(h, m->inst, TOLK_LOG_DBG,
                             "done: %llu chunks, %.2f s of audio, %.1f ms CPU, first chunk after "
                             "%.1f ms",
                             (unsigned long long)j->chunks, (double)j->out_samples / TOLK_SAMPLE_RATE,
                             j->cpu_s * 1000.0, (j->t_first - j->t_speak) * 1000.0);
                tolk_request *r = j->r;
                job_free(j);
                h->tts_done(r, st);
            } else {
                job_free(j);
            }
        }
        free(x);
    }
}

/* The voice for a request, as "IDENT[+VARIANT]"; -1 if the language has
 * none (declined). Loop thread; reads only the immutable tables. */
static int pick_voice(const tts_espeak *m, const char *language, const char *voice, char *out,
                      size_t cap)
{
    char name[128] = "", var_in[64] = "";
    const char *variant = NULL;
    int vi = -1;
    if (voice && *voice) {
        split_voice(voice, name, sizeof name, var_in, sizeof var_in);
        variant = variant_find(var_in);
        int cand = voice_find(name);
        if (cand >= 0 && voice_speaks(cand, language))
            vi = cand;
        else if (cand < 0 && !*var_in && variant_find(name))
            variant = variant_find(name); /* just a variant: "f3" */
    }
    if (vi < 0) {
        char prim[MAX_LANG];
        primary_subtag(language, prim, sizeof prim);
        const lang_voice *lv = NULL;
        for (size_t i = 0; i < m->nlangs && !lv; i++)
            if (lang_eq(m->langs[i].lang, language)) lv = &m->langs[i];
        for (size_t i = 0; i < m->nlangs && !lv; i++)
            if (lang_eq(m->langs[i].lang, prim)) lv = &m->langs[i];
        if (lv) {
            vi = lv->voice;
            if (!variant && lv->variant[0]) variant = lv->variant;
        } else if (m->other_languages) {
            vi = voice_for_language(language);
        }
    }
    if (vi < 0) return -1;
    snprintf(out, cap, "%s%s%s", g_eng.voices[vi].ident, variant ? "+" : "", variant ? variant : "");
    return 0;
}

/* How much of a rise in words per minute shows as shorter audio: espeak
 * does not shorten everything with the rate (measured, espeak-ng 1.51,
 * en-us and es, 175..375 wpm: 1.5x the rate gives audio 1.4x shorter, 2x
 * gives 1.8-1.9x). */
#define WPM_YIELD 0.86

/* The words per minute of a request: `rate` scaled so that the audio comes
 * out as many times shorter as the core's hint asks (plugin.h: 1.3 = 30%
 * faster), within what espeak speaks. */
static int wpm_for(const tts_espeak *m, double hint)
{
    if (!m->honour_rate || !(hint > 0)) return m->rate;
    double scale = hint > 1.0 ? 1.0 + (hint - 1.0) / WPM_YIELD : hint;
    double w = m->rate * scale + 0.5;
    if (w < 80) w = 80;
    if (w > 450) w = 450;
    return (int)w;
}

static tolk_status speak_at(tts_espeak *m, tolk_request *r, const char *text, const char *language,
                            const char *voice, int wpm);

static tolk_status tts_espeak_speak(void *self, tolk_request *r, const char *text,
                                    const char *language, const char *voice)
{
    tts_espeak *m = self;
    return speak_at(m, r, text, language, voice, m->rate);
}

/* ABI 1.2: the request's rate hint sets the words per minute (honour_rate). */
static tolk_status tts_espeak_speak_req(void *self, tolk_request *r, const tolk_tts_request *req)
{
    tts_espeak *m = self;
    if (!req || !TOLK_HAS(req, tolk_tts_request, rate)) return TOLK_E_INVAL;
    return speak_at(m, r, req->text, req->language, req->voice, wpm_for(m, req->rate));
}

static tolk_status speak_at(tts_espeak *m, tolk_request *r, const char *text, const char *language,
                            const char *voice, int wpm)
{
    const tolk_host *h = m->host;
    if (!r || !text || !language) return TOLK_E_INVAL;
    size_t len = strlen(text);
    if ((int64_t)len > m->max_text) {
        m->refused++;
        TOLK_LOG(h, m->inst, TOLK_LOG_WARN, "text of %zu bytes refused (max_text_bytes %lld)", len,
                 (long long)m->max_text);
        return TOLK_E_INVAL;
    }
    if (m->max_pending > 0 && (int64_t)m->nlive >= m->max_pending) {
        m->refused++;
        TOLK_LOG(h, m->inst, TOLK_LOG_WARN, "%zu requests pending (max_pending): refused",
                 m->nlive);
        return TOLK_E_LIMIT;
    }
    char vname[160];
    if (pick_voice(m, language, voice, vname, sizeof vname)) {
        m->declined++;
        TOLK_LOG(h, m->inst, TOLK_LOG_VERB, "no espeak voice for language '%s': declined",
                 language);
        return TOLK_DECLINED;
    }
    job *j = calloc(1, sizeof *j);
    if (!j || !(j->text = strdup(text))) {
        free(j);
        return TOLK_E_NOMEM;
    }
    j->self = m;
    j->r = r;
    atomic_init(&j->cancelled, 0);
    snprintf(j->voice, sizeof j->voice, "%s", vname);
    j->rate = wpm;
    m->last_wpm = wpm;
    if (wpm > m->rate) m->faster++;
    j->pitch = m->pitch;
    j->volume = m->volume;
    j->quality = m->quality;
    j->t_speak = h->now();
    j->state = JOB_QUEUED;

    j->lnext = m->live;
    if (m->live) m->live->lprev = j;
    m->live = j;
    j->live = 1;
    m->nlive++;
    m->requests++;
    note_voice_used(m, language, vname);
    TOLK_LOG(h, m->inst, TOLK_LOG_DBG, "speak %zu bytes in %s with %s (voice asked: %s)", len,
             language, vname, voice ? voice : "-");

    pthread_mutex_lock(&g_eng.lock);
    if (g_eng.tail)
        g_eng.tail->next = j;
    else
        g_eng.head = j;
    g_eng.tail = j;
    g_eng.queued++;
    pthread_cond_signal(&g_eng.work);
    pthread_mutex_unlock(&g_eng.lock);
    return TOLK_PENDING;
}

/* Takes j off the engine queue if it is still there; 1 if it was. Lock held. */
static int dequeue_locked(job *j)
{
    if (j->state != JOB_QUEUED) return 0;
    for (job **pp = &g_eng.head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            if (g_eng.tail == j) g_eng.tail = prev;
            g_eng.queued--;
            j->next = NULL;
            return 1;
        }
    }
    return 0;
}

static void tts_espeak_cancel(void *self, tolk_request *r)
{
    tts_espeak *m = self;
    for (job *j = m->live; j; j = j->lnext) {
        if (j->r != r) continue;
        live_unlink(m, j);
        m->cancelled++;
        pthread_mutex_lock(&g_eng.lock);
        atomic_store(&j->cancelled, 1);
        int was_queued = dequeue_locked(j);
        pthread_mutex_unlock(&g_eng.lock);
        /* Queued: the engine never saw it. Otherwise its DONE frees it. */
        if (was_queued) job_free(j);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status tts_espeak_check_config(const json_t *cfg, tolk_config_error *err)
{
    const json_t *voices = json_object_get(cfg, "voices");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)voices, k, v) {
        if (!valid_lang(k)) {
            err->key = "voices";
            snprintf(err->message, sizeof err->message,
                     "'%.60s' is no language code (letters, digits, '-' or '_', at most %d)", k,
                     MAX_LANG - 1);
            return TOLK_E_INVAL;
        }
        const char *s = json_string_value(v);
        if (s && strlen(s) >= 128) {
            err->key = "voices";
            snprintf(err->message, sizeof err->message, "voice of '%s' is too long", k);
            return TOLK_E_INVAL;
        }
    }
    const char *dp = json_string_value(json_object_get(cfg, "data_path"));
    if (dp) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/espeak-ng-data", dp);
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            err->key = "data_path";
            snprintf(err->message, sizeof err->message, "no espeak-ng-data directory in %.200s",
                     dp);
            return TOLK_E_INVAL;
        }
    }
    return TOLK_OK;
}

/* Adds or replaces language -> voice; "" removes. 0, or -1 with why. */
static int lang_set(tts_espeak *m, const char *lang, const char *voice, char *why, size_t wl)
{
    size_t i = 0;
    while (i < m->nlangs && !lang_eq(m->langs[i].lang, lang)) i++;
    if (!voice || !*voice) {
        if (i < m->nlangs) m->langs[i] = m->langs[--m->nlangs];
        return 0;
    }
    char name[128], var[64];
    split_voice(voice, name, sizeof name, var, sizeof var);
    int vi = voice_find(name);
    if (vi < 0) {
        snprintf(why, wl, "voices: '%s' (for %s) is no espeak voice (see `espeak-ng --voices`)",
                 voice, lang);
        return -1;
    }
    const char *vv = var[0] ? variant_find(var) : NULL;
    if (var[0] && !vv) {
        snprintf(why, wl, "voices: '%s' (for %s): no espeak variant '%s' (see `espeak-ng "
                          "--voices=variant`)",
                 voice, lang, var);
        return -1;
    }
    if (i == m->nlangs) {
        lang_voice *n = realloc(m->langs, (m->nlangs + 1) * sizeof *n);
        if (!n) {
            snprintf(why, wl, "out of memory");
            return -1;
        }
        m->langs = n;
        m->nlangs++;
    }
    lang_voice *lv = &m->langs[i];
    snprintf(lv->lang, sizeof lv->lang, "%s", lang);
    lv->voice = vi;
    snprintf(lv->variant, sizeof lv->variant, "%s", vv ? vv : "");
    return 0;
}

static tolk_status tts_espeak_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                     void **self)
{
    tts_espeak *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->rate = (int)host->cfg_int(cfg, "rate");
    m->honour_rate = host->cfg_bool(cfg, "honour_rate");
    m->last_wpm = m->rate;
    m->pitch = (int)host->cfg_int(cfg, "pitch");
    m->volume = (int)host->cfg_int(cfg, "volume");
    m->quality = (int)host->cfg_int(cfg, "resample_quality");
    m->other_languages = host->cfg_bool(cfg, "other_languages");
    m->max_text = host->cfg_int(cfg, "max_text_bytes");
    m->max_pending = host->cfg_int(cfg, "max_pending");

    char why[320];
    if (engine_ref(host->cfg_string(cfg, "data_path"), why, sizeof why)) {
        host->log(inst, TOLK_LOG_ERR, "%s", why);
        free(m);
        return TOLK_E_FATAL;
    }
    /* Voices: the built-in pairs, then the setting over them. */
    char builtin[] = BUILTIN_VOICES, *save = NULL;
    for (char *t = strtok_r(builtin, "|", &save); t; t = strtok_r(NULL, "|", &save)) {
        char *eq = strchr(t, '=');
        *eq = 0;
        if (lang_set(m, t, eq + 1, why, sizeof why))
            /* an espeak-ng-data without them: the language is simply absent */
            TOLK_LOG(host, inst, TOLK_LOG_WARN, "built-in %s", why);
    }
    const char *k;
    const json_t *v;
    json_object_foreach(json_object_get(cfg, "voices"), k, v) {
        if (lang_set(m, k, json_string_value(v), why, sizeof why)) {
            host->log(inst, TOLK_LOG_ERR, "%s", why);
            free(m->langs);
            free(m);
            engine_unref();
            return TOLK_E_INVAL;
        }
    }
    m->async = host->async_new(inst, on_async, m);
    if (!m->async) {
        free(m->langs);
        free(m);
        engine_unref();
        return TOLK_E_NOMEM;
    }
    if (host->log_enabled(inst, TOLK_LOG_VERB)) {
        char list[512] = "";
        size_t off = 0;
        for (size_t i = 0; i < m->nlangs && off < sizeof list; i++) {
            int n = snprintf(list + off, sizeof list - off, "%s%s=%s%s%s", i ? ", " : "",
                             m->langs[i].lang, g_eng.voices[m->langs[i].voice].ident,
                             m->langs[i].variant[0] ? "+" : "", m->langs[i].variant);
            if (n < 0) break;
            off += (size_t)n;
        }
        host->log(inst, TOLK_LOG_VERB,
                  "espeak-ng %s, %d Hz, %zu voices; %s%s; rate %d wpm, pitch %d, volume %d",
                  g_eng.version, g_eng.rate, g_eng.nvoices, list,
                  m->other_languages ? "; other languages: espeak's choice" : "", m->rate,
                  m->pitch, m->volume);
    }
    *self = m;
    return TOLK_OK;
}

static void tts_espeak_destroy(void *self)
{
    tts_espeak *m = self;
    job *freed = NULL;
    pthread_mutex_lock(&g_eng.lock);
    for (job *j = m->live; j; j = j->lnext) {
        atomic_store(&j->cancelled, 1);
        if (dequeue_locked(j)) {
            j->next = freed; /* reuse the queue link: j is off the queue */
            freed = j;
        }
    }
    /* At most one espeak buffer: the synth callback aborts a cancelled job. */
    while (g_eng.current && g_eng.current->self == m) pthread_cond_wait(&g_eng.idle, &g_eng.lock);
    msg *list = m->out_head;
    m->out_head = m->out_tail = NULL;
    pthread_mutex_unlock(&g_eng.lock);

    while (freed) {
        job *j = freed;
        freed = j->next;
        job_free(j);
    }
    /* Every job the engine took has its DONE here (or was read already). */
    while (list) {
        msg *x = list;
        list = x->next;
        if (x->kind == MSG_DONE) job_free(x->j);
        free(x);
    }
    m->host->async_free(m->async);
    free(m->langs);
    free(m->used);
    free(m);
    engine_unref();
}

static tolk_health tts_espeak_health(void *self, json_t **detail_new)
{
    tts_espeak *m = self;
    if (!detail_new) return TOLK_HEALTHY;
    pthread_mutex_lock(&g_eng.lock);
    size_t queued = g_eng.queued;
    int busy = g_eng.current != NULL;
    double ecpu = g_eng.cpu_s, eaudio = g_eng.audio_s, ewall = g_eng.wall_s;
    uint64_t ejobs = g_eng.jobs_done;
    pthread_mutex_unlock(&g_eng.lock);

    json_t *used = json_array();
    for (size_t i = 0; i < m->nused; i++)
        json_array_append_new(used, json_pack("{s:s, s:s, s:I}", "language", m->used[i].lang,
                                              "voice", m->used[i].voice, "requests",
                                              (json_int_t)m->used[i].n));
    json_t *langs = json_object();
    for (size_t i = 0; i < m->nlangs; i++) {
        char buf[200];
        snprintf(buf, sizeof buf, "%s%s%s", g_eng.voices[m->langs[i].voice].ident,
                 m->langs[i].variant[0] ? "+" : "", m->langs[i].variant);
        json_object_set_new(langs, m->langs[i].lang, json_string(buf));
    }
    *detail_new = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f,"
        " s:{s:f, s:f, s:f, s:I}, s:s, s:s, s:i, s:I, s:o, s:o,"
        " s:{s:s, s:i, s:I, s:I, s:b, s:I, s:I, s:f, s:f, s:f, s:f}}",
        "requests", (json_int_t)m->requests, "completed", (json_int_t)m->completed, "failed",
        (json_int_t)m->failed, "cancelled", (json_int_t)m->cancelled, "declined",
        (json_int_t)m->declined, "refused", (json_int_t)m->refused, "pending",
        (json_int_t)m->nlive, "chunks", (json_int_t)m->chunks, "samples_out",
        (json_int_t)m->out_samples, "audio_seconds", m->audio_s, "synth_cpu_seconds", m->cpu_s,
        "rtf", m->cpu_s > 0 ? m->audio_s / m->cpu_s : 0.0, "first_chunk_ms", "last",
        m->first_last, "mean", m->first_n ? m->first_sum / (double)m->first_n : 0.0, "max",
        m->first_max, "count", (json_int_t)m->first_n, "last_voice", m->last_voice,
        "last_language", m->last_language, "last_wpm", m->last_wpm, "faster_requests",
        (json_int_t)m->faster, "voices_used", used, "languages", langs, "engine",
        "version", g_eng.version, "sample_rate", g_eng.rate, "voices", (json_int_t)g_eng.nvoices,
        "variants", (json_int_t)g_eng.nvariants, "busy", busy, "queued", (json_int_t)queued,
        "jobs", (json_int_t)ejobs, "audio_seconds", eaudio, "cpu_seconds", ecpu, "busy_seconds",
        ewall, "rtf",
        ecpu > 0 ? eaudio / ecpu : 0.0);
    return TOLK_HEALTHY;
}

static const tolk_tts tts_espeak_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_tts, TOLK_KIND_TTS),
            .name = "tts_espeak",
            .version = "1.0.0",
            .description = "speech synthesis with libespeak-ng on one thread, streamed in "
                           "~50 ms chunks, resampled to 16 kHz",
            .options = tts_espeak_options,
            .check_config = tts_espeak_check_config,
            .create = tts_espeak_create,
            .destroy = tts_espeak_destroy,
            .health = tts_espeak_health,
        },
    .speak = tts_espeak_speak,
    .cancel = tts_espeak_cancel,
    .speak_req = tts_espeak_speak_req,
};

TOLK_PLUGIN_DEFINE(tts_espeak_desc)
