/*
 * stt_mock -- a deterministic stand-in for a streaming speech recogniser.
 *
 * It recognises nothing. An energy detector cuts the 16 kHz audio it is fed
 * into phrases, and each phrase is "recognised" as the next line of a script
 * (`phrases`, cycling, per stream). The same audio therefore always yields the
 * same results at the same sample positions, which is what tests, benchmarks
 * and the README demo need, and the fault settings let the recovery code be
 * exercised against a recogniser that fails on cue.
 *
 * Detection, per 20 ms frame (320 samples):
 *   - a frame is voiced if its RMS is above `threshold`;
 *   - a phrase starts at the first voiced frame and ends once `silence_ms` of
 *     unvoiced audio follows the last voiced frame (or at flush());
 *   - phrases shorter than `min_speech_ms` (first voiced frame start to last
 *     voiced frame end) are noise and are dropped without using a script line;
 *   - while speaking, a partial result every `partial_ms` of speech holds the
 *     first k words of the phrase, k = number of partials so far;
 *   - `latency_ms` after the end of a phrase, a final result with the script
 *     line, start_sample/end_sample of the speech, confidence 0.9.
 *
 * Settings (all optional):
 *   threshold      int   300          RMS above which a frame is voiced
 *   silence_ms     int   300          silence that ends a phrase
 *   min_speech_ms  int   100          shorter phrases are noise
 *   partial_ms     int   200          partial result period, 0 = none
 *   latency_ms     int   50           delay of a final result
 *   phrases        list  ["hello world"]  script, one line per phrase
 *   fail_every     int   0            every Nth phrase fails (0 = off)
 *   fail_after     int   0            after N good phrases all fail (0 = off)
 *   fail_status    str   "backend"    backend | again | fatal | timeout
 *   hang           bool  false        take audio, never answer
 *   garbage        bool  false        transcripts are invalid UTF-8
 *   drop_after_ms  int   0            the stream breaks after this much audio
 *   fail_severity  str   "auto"       severity of injected failures (see mock_fault.h)
 *   open_delay_ms  int   0            open() is asynchronous: ready after this long
 *   report_after_ms int  0            host->report() trouble this long after create
 *
 * Tentative ends (TOLK_TRANSCRIPT_EAGER_END, as Deepgram Flux's
 * EagerEndOfTurn): with eager_ms > 0, after eager_ms of silence in a phrase
 * the phrase's whole text comes as a partial with the flag (after
 * latency_ms); speech resuming before silence_ms withdraws it (a partial
 * without the flag, as TurnResumed), and the phrase's final confirms it.
 * eager_differ_every N: every Nth tentative end is followed by a final whose
 * text differs from it (" indeed" added), as a recogniser that changed its
 * mind. health() counts eager_ends and eager_withdrawn.
 *
 * ABI 1.2: partial results carry a stability (k/(k+1) for the k-th partial of
 * a phrase); finalize() ends the phrase being heard now (its final comes
 * after latency_ms, an empty one when nothing is being heard); health()
 * shows the last stream's parameters (channel, leg, target language), how
 * many streams opened asynchronously, how many finalize() calls came, and
 * any feed() before a stream was ready (a core bug).
 *
 * Faults. A "request" is a phrase that reached its end. A failing phrase
 * breaks its stream: host->stt_failed(fail_status) after latency_ms, with a
 * severity that grows with the status (again LOW, timeout MEDIUM, backend
 * HIGH, fatal CRITICAL), and the stream ignores further audio until the core
 * closes it. drop_after_ms simulates a provider socket dying mid-phrase: the
 * pending results are lost and stt_failed(TOLK_E_BACKEND, HIGH) follows at
 * once. health() is TOLK_FAILED while fail_after is in force; reset() clears
 * the counters and restarts fail_every/fail_after counting.
 *
 * Every result reaches the core from a timer, never from inside feed() or
 * flush(), as it would from a real provider's socket; results of one stream
 * keep their order.
 */
#define _POSIX_C_SOURCE 200809L /* strdup(), strndup() also under -std=c11 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

#include "mock_fault.h"

#define MS_SAMPLES(ms) ((uint64_t)(ms) * (TOLK_SAMPLE_RATE / 1000))
#define DEFAULT_PHRASE "hello world"
#define FINAL_CONFIDENCE 0.9
#define PARTIAL_CONFIDENCE 0.5

static const tolk_option stt_mock_options[] = {
    {.key = "threshold", .type = TOLK_OPT_INT, .default_value = "300", .min = 0, .max = 32767,
     .help = "frame RMS above which a 20 ms frame counts as speech"},
    {.key = "silence_ms", .type = TOLK_OPT_INT, .default_value = "300", .min = 20, .max = 60000,
     .help = "milliseconds of silence after the last speech frame that end a phrase"},
    {.key = "min_speech_ms", .type = TOLK_OPT_INT, .default_value = "100", .min = 0,
     .max = 60000, .help = "phrases shorter than this are ignored as noise"},
    {.key = "partial_ms", .type = TOLK_OPT_INT, .default_value = "200", .min = 0, .max = 60000,
     .help = "a partial result every this many ms of speech; 0 = no partials"},
    {.key = "latency_ms", .type = TOLK_OPT_INT, .default_value = "50", .min = 0, .max = 600000,
     .help = "delay between the end of a phrase and its final result"},
    {.key = "phrases", .type = TOLK_OPT_STRING_LIST, .default_value = DEFAULT_PHRASE,
     .help = "script of transcripts, one per phrase, cycling per stream; [] = \"hello world\""},
    {.key = "fail_every", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "every Nth phrase fails and breaks its stream; 0 = off"},
    {.key = "fail_after", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "after N successful phrases every phrase fails, until reset; 0 = off"},
    {.key = "fail_status", .type = TOLK_OPT_STRING, .default_value = "backend",
     .help = "status of injected failures: backend, again, fatal or timeout"},
    {.key = "hang", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "accept audio but never produce a result"},
    {.key = "garbage", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "transcripts contain invalid UTF-8"},
    {.key = "drop_after_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "the stream breaks (TOLK_E_BACKEND) after this much audio; 0 = off"},
    {.key = "fail_severity", .type = TOLK_OPT_STRING, .default_value = "auto",
     .help = "severity of injected failures: auto, low, medium, high, critical, permanent"},
    {.key = "open_delay_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 600000,
     .help = "open() returns PENDING and the stream is ready this much later (0: at once)"},
    {.key = "report_after_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "report trouble outside any request (host->report) this long after create; 0 = off"},
    {.key = "choose", .type = TOLK_OPT_STRING, .default_value = "sequence",
     .help = "which phrase a segment gets: sequence (the script in order) or audio (picked by "
             "the segment's sound, so any stream given the same audio says the same)"},
    {.key = "eager_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 60000,
     .help = "silence after which a tentative end (TOLK_TRANSCRIPT_EAGER_END) is sent; 0: never"},
    {.key = "eager_differ_every", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "every Nth tentative end gets a final with other text; 0: never"},
    {.key = NULL},
};

/* ------------------------------------------------------------------ */
/* State                                                               */

typedef enum ev_kind { EV_PARTIAL, EV_FINAL, EV_FAILED } ev_kind;

/* A result waiting for its time to be delivered. */
typedef struct stt_event {
    struct stt_event *next;
    ev_kind kind;
    double due; /* host->now() time */
    uint64_t start, end;
    tolk_status st;
    tolk_severity sev;
    double stability; /* partials */
    unsigned flags;   /* TOLK_TRANSCRIPT_* */
    char *text; /* transcript, or why the stream failed */
} stt_event;

typedef struct stt_mock stt_mock;

typedef struct stt_stream {
    struct stt_stream *prev, *next; /* stt_mock.streams */
    stt_mock *m;
    tolk_stream *stream;

    /* Audio not yet forming a whole frame: feed() takes any n. */
    int16_t acc[TOLK_FRAME_SAMPLES];
    size_t nacc;
    uint64_t pos; /* samples analysed since open */

    int in_phrase;
    uint64_t phrase_start, phrase_end; /* first voiced frame start, last voiced frame end */
    uint64_t silence;                  /* unvoiced samples since phrase_end */
    uint64_t next_partial;             /* speech length that triggers the next partial */
    unsigned npartials;
    int eager_sent;    /* a tentative end of this phrase is out */
    size_t script_pos; /* next line of `phrases` */
    uint64_t crossings; /* zero crossings of the phrase's voiced frames */
    int broken;        /* failed: audio is ignored until close() */

    stt_event *head, *tail;
    tolk_timer *timer; /* armed for head, NULL while none or while it fires */
    int busy;          /* inside a host callback */
    int ready;         /* open() completed (at once or after open_delay_ms) */
    tolk_timer *ready_timer;
    int flushing;      /* flush() returned PENDING: stt_flushed() when the queue empties */
    int closed;        /* close() came during a host callback: free on return */
} stt_stream;

struct stt_mock {
    const tolk_host *host;
    tolk_instance *inst;
    int64_t threshold, silence_ms, min_speech_ms, partial_ms, latency_ms, drop_after_ms;
    int64_t open_delay_ms, report_after_ms, eager_ms, eager_differ_every;
    uint64_t eager_ends, eager_withdrawn;
    tolk_timer *report_timer;
    uint64_t async_opens, finalizes, early_feeds, reports;
    char last_channel[96], last_target[16];
    int last_leg;
    int choose_audio;
    char **phrases;
    size_t nphrases;
    fault_cfg fault;
    fault_count count;
    uint64_t drops, noise;
    stt_stream *streams;
    size_t nstreams;
};

/* ------------------------------------------------------------------ */
/* Text helpers                                                        */

/* The first k space-separated words of s (all of it if it has fewer). */
static char *first_words(const char *s, unsigned k)
{
    const char *p = s;
    while (*p == ' ') p++;
    for (unsigned w = 0; *p && w < k; w++) {
        while (*p && *p != ' ') p++;
        if (w + 1 < k)
            while (*p == ' ') p++;
    }
    return strndup(s, (size_t)(p - s));
}

/* Invalid UTF-8 after every word (a stray lead byte, a lead byte followed
 * by ASCII), so every partial made from it is broken as well, while the
 * words stay readable in logs. */
static char *garble(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 3);
    if (!out) return NULL;
    size_t o = 0, word = 0;
    for (size_t i = 0; i <= n; i++) {
        int end_of_word = i > 0 && s[i - 1] != ' ' && (s[i] == ' ' || s[i] == '\0');
        if (end_of_word) {
            if (word++ % 2 == 0) {
                out[o++] = (char)0xff;
            } else {
                out[o++] = (char)0xc3;
                out[o++] = '(';
            }
        }
        if (i < n) out[o++] = s[i];
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* Event queue: results leave in order, each at or after its due time   */

static void event_free(stt_event *e)
{
    free(e->text);
    free(e);
}

static void queue_clear(stt_stream *s)
{
    while (s->head) {
        stt_event *e = s->head;
        s->head = e->next;
        event_free(e);
    }
    s->tail = NULL;
}

static void stream_timer_cb(void *ud);

static void stream_arm(stt_stream *s)
{
    const tolk_host *h = s->m->host;
    if (s->timer || !s->head || s->closed) return;
    double after = s->head->due - h->now();
    s->timer = h->timer_start(s->m->inst, after > 0 ? after : 0, 0, stream_timer_cb, s);
    if (!s->timer)
        h->log(s->m->inst, TOLK_LOG_ERR, "cannot start a timer: results of a stream are stuck");
}

/* Takes ownership of text. Due times never go backwards so that the single
 * timer on the head delivers everything in the order it was produced. */
static int stream_push(stt_stream *s, ev_kind kind, double delay_s, char *text, uint64_t start,
                       uint64_t end, tolk_status st, tolk_severity sev)
{
    stt_event *e = calloc(1, sizeof *e);
    if (!e || !text) {
        free(e);
        free(text);
        return -1;
    }
    e->kind = kind;
    e->due = s->m->host->now() + delay_s;
    if (s->tail && e->due < s->tail->due) e->due = s->tail->due;
    e->text = text;
    e->start = start;
    e->end = end;
    e->st = st;
    e->sev = sev;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    stream_arm(s);
    return 0;
}

static void stream_free(stt_stream *s)
{
    queue_clear(s);
    free(s);
}

static void stream_timer_cb(void *ud)
{
    stt_stream *s = ud;
    const tolk_host *h = s->m->host;

    /* A one-shot timer frees itself after this returns: forget it now so
     * that close() from inside the host callback does not stop it. */
    s->timer = NULL;
    stt_event *e = s->head;
    if (!e) return;
    s->head = e->next;
    if (!s->head) s->tail = NULL;

    s->busy++;
    if (e->kind == EV_FAILED) {
        h->stt_failed(s->stream, e->st, e->sev, e->text);
    } else {
        tolk_transcript t = {
            .size = sizeof t,
            .text = e->text,
            .is_final = e->kind == EV_FINAL,
            .confidence = e->kind == EV_FINAL ? FINAL_CONFIDENCE : PARTIAL_CONFIDENCE,
            .start_sample = e->start,
            .end_sample = e->end,
            .stability = e->kind == EV_FINAL ? 1.0 : e->stability,
            .flags = e->flags,
        };
        h->stt_result(s->stream, &t);
    }
    s->busy--;
    event_free(e);

    /* The core may close the stream from within the callback (it does after
     * stt_failed); close() left the freeing to us. */
    if (s->closed) {
        if (!s->busy) stream_free(s);
        return;
    }
    if (s->flushing && !s->head) {
        s->flushing = 0;
        s->busy++;
        h->stt_flushed(s->stream);
        s->busy--;
        if (s->closed) {
            if (!s->busy) stream_free(s);
            return;
        }
    }
    stream_arm(s);
}

/* ------------------------------------------------------------------ */
/* Detection                                                           */

static void stream_break(stt_stream *s, tolk_status st, tolk_severity sev, double delay_s,
                         const char *why)
{
    s->broken = 1;
    s->in_phrase = 0;
    stream_push(s, EV_FAILED, delay_s, strdup(why), 0, 0, st, sev);
}

/* The line the phrase being heard will be recognised as.
 * choose = audio: a recogniser's answer depends on the sound, not on how
 * many phrases this stream has heard; a backup stream fed the same audio
 * again (recovery replay) then says the same thing. */
static const char *phrase_line(const stt_stream *s)
{
    const stt_mock *m = s->m;
    size_t pick = m->choose_audio ? (size_t)((s->crossings / 64) * 2654435761u % 1000003u)
                                  : s->script_pos;
    return m->phrases[pick % m->nphrases];
}

static void eager_end(stt_stream *s)
{
    stt_mock *m = s->m;
    s->eager_sent = 1;
    m->eager_ends++;
    if (stream_push(s, EV_PARTIAL, (double)m->latency_ms / 1000.0, strdup(phrase_line(s)),
                    s->phrase_start, s->phrase_end, TOLK_OK, TOLK_SEV_LOW) == 0) {
        s->tail->stability = 0.6;
        s->tail->flags = TOLK_TRANSCRIPT_EAGER_END;
    }
}

static void eager_withdraw(stt_stream *s)
{
    stt_mock *m = s->m;
    s->eager_sent = 0;
    m->eager_withdrawn++;
    if (stream_push(s, EV_PARTIAL, (double)m->latency_ms / 1000.0, strdup(phrase_line(s)),
                    s->phrase_start, s->phrase_end, TOLK_OK, TOLK_SEV_LOW) == 0)
        s->tail->stability = 0.5;
}

static void phrase_end(stt_stream *s)
{
    stt_mock *m = s->m;
    int eager = s->eager_sent;
    s->in_phrase = 0;
    s->eager_sent = 0;
    if (s->phrase_end - s->phrase_start < MS_SAMPLES(m->min_speech_ms)) {
        m->noise++;
        return;
    }
    const char *line = phrase_line(s);
    s->script_pos++;
    double latency = (double)m->latency_ms / 1000.0;
    char differ[512];
    if (eager && m->eager_differ_every && m->eager_ends % (uint64_t)m->eager_differ_every == 0) {
        snprintf(differ, sizeof differ, "%s indeed", line);
        line = differ;
    }

    switch (fault_decide(&m->fault, &m->count)) {
    case FATE_HANG:
        break;
    case FATE_FAIL:
        stream_break(s, m->fault.fail_status, fault_severity(&m->fault, m->fault.fail_status),
                     latency, "stt_mock: injected phrase failure");
        break;
    case FATE_OK:
        if (stream_push(s, EV_FINAL, latency, m->fault.garbage ? garble(line) : strdup(line),
                        s->phrase_start, s->phrase_end, TOLK_OK, TOLK_SEV_LOW))
            m->host->log(m->inst, TOLK_LOG_ERR, "out of memory: a result is lost");
        break;
    }
    TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "phrase %llu..%llu: \"%s\"",
             (unsigned long long)s->phrase_start, (unsigned long long)s->phrase_end, line);
}

static void partial_maybe(stt_stream *s)
{
    stt_mock *m = s->m;
    uint64_t period = MS_SAMPLES(m->partial_ms);
    uint64_t speech = s->phrase_end - s->phrase_start;
    if (!period || m->fault.hang || speech < s->next_partial) return;
    /* No partial for what may still turn out to be noise. */
    if (speech < MS_SAMPLES(m->min_speech_ms)) return;
    s->next_partial = (speech / period + 1) * period;
    s->npartials++;
    const char *line = m->phrases[s->script_pos % m->nphrases];
    char *text = m->fault.garbage ? garble(line) : strdup(line);
    char *words = text ? first_words(text, s->npartials) : NULL;
    free(text);
    if (stream_push(s, EV_PARTIAL, 0, words, s->phrase_start, s->phrase_end, TOLK_OK,
                    TOLK_SEV_LOW))
        m->host->log(m->inst, TOLK_LOG_ERR, "out of memory: a partial result is lost");
    else
        s->tail->stability = (double)s->npartials / (double)(s->npartials + 1);
}

static void frame_analyse(stt_stream *s, const int16_t *pcm)
{
    stt_mock *m = s->m;
    /* RMS > threshold, squared on both sides: exact and without libm. */
    int64_t energy = 0;
    for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++) energy += (int64_t)pcm[i] * pcm[i];
    int voiced = energy > m->threshold * m->threshold * (int64_t)TOLK_FRAME_SAMPLES;

    uint64_t start = s->pos;
    s->pos += TOLK_FRAME_SAMPLES;
    if (voiced) {
        if (!s->in_phrase) {
            s->in_phrase = 1;
            s->phrase_start = start;
            s->crossings = 0;
            s->npartials = 0;
            s->next_partial = MS_SAMPLES(m->partial_ms);
        }
        s->phrase_end = s->pos;
        s->silence = 0;
        if (s->eager_sent) eager_withdraw(s);
        for (size_t i = 1; i < TOLK_FRAME_SAMPLES; i++)
            s->crossings += (pcm[i - 1] < 0) != (pcm[i] < 0);
        partial_maybe(s);
    } else if (s->in_phrase) {
        s->silence += TOLK_FRAME_SAMPLES;
        if (s->silence >= MS_SAMPLES(m->silence_ms))
            phrase_end(s);
        else if (m->eager_ms && !s->eager_sent && !m->fault.hang &&
                 s->silence >= MS_SAMPLES(m->eager_ms) &&
                 s->phrase_end - s->phrase_start >= MS_SAMPLES(m->min_speech_ms))
            eager_end(s);
    }

    if (m->drop_after_ms && !s->broken && s->pos >= MS_SAMPLES(m->drop_after_ms)) {
        /* A dead socket loses whatever the provider had not sent yet. */
        if (s->timer) {
            m->host->timer_stop(s->timer);
            s->timer = NULL;
        }
        queue_clear(s);
        m->drops++;
        m->count.failures++;
        stream_break(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, 0,
                     "stt_mock: connection dropped (drop_after_ms)");
    }
}

/* ------------------------------------------------------------------ */
/* Stream functions                                                    */

static void stream_ready_cb(void *ud)
{
    stt_stream *s = ud;
    s->ready_timer = NULL;
    s->ready = 1;
    s->busy++;
    s->m->host->stt_ready(s->stream);
    s->busy--;
    if (s->closed && !s->busy) stream_free(s);
}

static tolk_status stt_mock_open(void *self, tolk_stream *stream, const tolk_stt_params *p,
                                 void **state)
{
    stt_mock *m = self;
    unsigned rate = p && TOLK_HAS(p, tolk_stt_params, sample_rate) ? p->sample_rate : 0;
    if (rate != TOLK_SAMPLE_RATE) {
        m->host->log(m->inst, TOLK_LOG_ERR, "sample rate %u refused: only %d Hz", rate,
                     TOLK_SAMPLE_RATE);
        return TOLK_E_INVAL;
    }
    stt_stream *s = calloc(1, sizeof *s);
    if (!s) return TOLK_E_NOMEM;
    s->m = m;
    s->stream = stream;
    s->next = m->streams;
    if (m->streams) m->streams->prev = s;
    m->streams = s;
    m->nstreams++;
    *state = s;
    if (p && TOLK_HAS(p, tolk_stt_params, call_options)) {
        snprintf(m->last_channel, sizeof m->last_channel, "%s", p->channel_id ? p->channel_id : "");
        snprintf(m->last_target, sizeof m->last_target, "%s",
                 p->target_language ? p->target_language : "");
        m->last_leg = (int)p->leg;
    }
    if (m->open_delay_ms > 0 && TOLK_HOST_HAS(m->host, stt_ready)) {
        m->async_opens++;
        s->ready_timer = m->host->timer_start(m->inst, (double)m->open_delay_ms / 1000.0, 0,
                                              stream_ready_cb, s);
        if (s->ready_timer) return TOLK_PENDING;
    }
    s->ready = 1;
    return TOLK_OK;
}

static tolk_status stt_mock_feed(void *state, const int16_t *pcm, size_t n)
{
    stt_stream *s = state;
    if (!s->ready) s->m->early_feeds++;
    while (n > 0 && !s->broken) {
        if (s->nacc == 0 && n >= TOLK_FRAME_SAMPLES) {
            frame_analyse(s, pcm);
            pcm += TOLK_FRAME_SAMPLES;
            n -= TOLK_FRAME_SAMPLES;
            continue;
        }
        size_t take = TOLK_FRAME_SAMPLES - s->nacc;
        if (take > n) take = n;
        memcpy(s->acc + s->nacc, pcm, take * sizeof *pcm);
        s->nacc += take;
        pcm += take;
        n -= take;
        if (s->nacc == TOLK_FRAME_SAMPLES) {
            s->nacc = 0;
            frame_analyse(s, s->acc);
        }
    }
    /* Audio after a failure is dropped quietly: the failure is already on
     * its way and the core will close the stream. */
    return TOLK_OK;
}

static tolk_status stt_mock_flush(void *state)
{
    stt_stream *s = state;
    if (s->in_phrase && !s->broken) phrase_end(s);
    /* Results still on their way (latency_ms), or the failure of a broken
     * stream: the core waits for them. */
    if (s->head) {
        s->flushing = 1;
        return TOLK_PENDING;
    }
    return TOLK_OK;
}

/* ABI 1.2: the phrase being heard ends now. */
static tolk_status stt_mock_finalize(void *state)
{
    stt_stream *s = state;
    s->m->finalizes++;
    if (s->broken) return TOLK_DECLINED;
    if (s->in_phrase) {
        phrase_end(s);
        return TOLK_OK;
    }
    if (stream_push(s, EV_FINAL, (double)s->m->latency_ms / 1000.0, strdup(""), s->pos, s->pos,
                    TOLK_OK, TOLK_SEV_LOW))
        return TOLK_E_NOMEM;
    return TOLK_OK;
}

static void stt_mock_close(void *state)
{
    stt_stream *s = state;
    stt_mock *m = s->m;
    if (s->ready_timer) {
        m->host->timer_stop(s->ready_timer);
        s->ready_timer = NULL;
    }
    if (s->timer) {
        m->host->timer_stop(s->timer);
        s->timer = NULL;
    }
    queue_clear(s);
    if (s->prev)
        s->prev->next = s->next;
    else
        m->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    m->nstreams--;
    if (s->busy)
        s->closed = 1;
    else
        stream_free(s);
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status stt_mock_check_config(const json_t *cfg, tolk_config_error *err)
{
    const char *choose = json_string_value(json_object_get(cfg, "choose"));
    if (choose && strcmp(choose, "sequence") && strcmp(choose, "audio")) {
        err->key = "choose";
        snprintf(err->message, sizeof err->message, "'%s' is not one of sequence, audio", choose);
        return TOLK_E_INVAL;
    }
    return fault_check_config(cfg, err);
}

static void stt_mock_destroy(void *self)
{
    stt_mock *m = self;
    /* The core closes streams first; this only guards against leaks and late
     * timers if it did not. */
    while (m->streams) {
        stt_stream *s = m->streams;
        m->streams = s->next;
        if (s->timer) m->host->timer_stop(s->timer);
        if (s->ready_timer) m->host->timer_stop(s->ready_timer);
        stream_free(s);
    }
    if (m->report_timer) m->host->timer_stop(m->report_timer);
    for (size_t i = 0; i < m->nphrases; i++) free(m->phrases[i]);
    free(m->phrases);
    free(m);
}

static void report_cb(void *ud)
{
    stt_mock *m = ud;
    m->report_timer = NULL;
    m->reports++;
    tolk_severity sev = m->fault.fail_severity >= 0 ? (tolk_severity)m->fault.fail_severity
                                                    : TOLK_SEV_HIGH;
    m->host->report(m->inst, TOLK_E_BACKEND, sev,
                    "stt_mock: connection to the provider lost while idle (report_after_ms)");
}

static tolk_status stt_mock_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                   void **self)
{
    stt_mock *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->threshold = host->cfg_int(cfg, "threshold");
    m->silence_ms = host->cfg_int(cfg, "silence_ms");
    m->min_speech_ms = host->cfg_int(cfg, "min_speech_ms");
    m->partial_ms = host->cfg_int(cfg, "partial_ms");
    m->latency_ms = host->cfg_int(cfg, "latency_ms");
    m->drop_after_ms = host->cfg_int(cfg, "drop_after_ms");
    m->open_delay_ms = host->cfg_int(cfg, "open_delay_ms");
    m->report_after_ms = host->cfg_int(cfg, "report_after_ms");
    m->eager_ms = host->cfg_int(cfg, "eager_ms");
    m->eager_differ_every = host->cfg_int(cfg, "eager_differ_every");
    m->choose_audio = !strcmp(host->cfg_string(cfg, "choose"), "audio");
    if (fault_read(host, inst, cfg, &m->fault)) {
        free(m);
        return TOLK_E_INVAL;
    }

    size_t n = host->cfg_list_size(cfg, "phrases");
    m->phrases = calloc(n ? n : 1, sizeof *m->phrases);
    if (!m->phrases) goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *line = host->cfg_list_string(cfg, "phrases", i);
        if (!(m->phrases[m->nphrases] = strdup(line ? line : ""))) goto nomem;
        m->nphrases++;
    }
    if (!m->nphrases) {
        if (!(m->phrases[0] = strdup(DEFAULT_PHRASE))) goto nomem;
        m->nphrases = 1;
    }

    TOLK_LOG(host, inst, TOLK_LOG_VERB,
             "threshold %lld, silence %lld ms, latency %lld ms, %zu phrase(s)",
             (long long)m->threshold, (long long)m->silence_ms, (long long)m->latency_ms,
             m->nphrases);
    if (m->report_after_ms > 0)
        m->report_timer = host->timer_start(inst, (double)m->report_after_ms / 1000.0, 0, report_cb, m);
    *self = m;
    return TOLK_OK;

nomem:
    stt_mock_destroy(m);
    return TOLK_E_NOMEM;
}

static tolk_status stt_mock_reset(void *self)
{
    stt_mock *m = self;
    memset(&m->count, 0, sizeof m->count);
    m->drops = m->noise = 0;
    return TOLK_OK;
}

static tolk_health stt_mock_health(void *self, json_t **detail_new)
{
    stt_mock *m = self;
    int failing = fault_failing(&m->fault, &m->count);
    if (detail_new)
        *detail_new = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:b, s:I, s:I, s:I, s:I, s:s, s:s, s:i, s:I, s:I}", "requests",
            (json_int_t)m->count.requests, "failures", (json_int_t)m->count.failures, "drops",
            (json_int_t)m->drops, "noise", (json_int_t)m->noise, "streams", (json_int_t)m->nstreams,
            "failing", failing, "async_opens", (json_int_t)m->async_opens, "finalizes",
            (json_int_t)m->finalizes, "early_feeds", (json_int_t)m->early_feeds, "reports",
            (json_int_t)m->reports, "last_channel", m->last_channel, "last_target", m->last_target,
            "last_leg", m->last_leg, "eager_ends", (json_int_t)m->eager_ends, "eager_withdrawn",
            (json_int_t)m->eager_withdrawn);
    return failing ? TOLK_FAILED : TOLK_HEALTHY;
}

static const tolk_stt stt_mock_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT),
            .name = "stt_mock",
            .version = "1.0.0",
            .description = "deterministic mock recogniser: energy VAD, scripted transcripts, "
                           "fault injection",
            .options = stt_mock_options,
            .check_config = stt_mock_check_config,
            .create = stt_mock_create,
            .destroy = stt_mock_destroy,
            .reset = stt_mock_reset,
            .health = stt_mock_health,
        },
    .open = stt_mock_open,
    .feed = stt_mock_feed,
    .flush = stt_mock_flush,
    .close = stt_mock_close,
    .finalize = stt_mock_finalize,
};

TOLK_PLUGIN_DEFINE(stt_mock_desc)
