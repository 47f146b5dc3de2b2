/*
 * tts_mock -- a deterministic stand-in for a streaming speech synthesiser.
 *
 * It "speaks" a text as a chain of tones, one per word, so that the audio is
 * cheap to make, identical on every run, and still looks like speech to a
 * level meter or to stt_mock's energy detector (the gaps between words are
 * shorter than its default silence_ms, so one text is one phrase there).
 *
 * Audio (16 kHz):
 *   - length: `ms_per_char` times the number of UTF-8 characters of the text
 *     (spaces and punctuation included), at least 200 ms, rounded up to whole
 *     20 ms frames;
 *   - that time is shared among the words (runs of non-blanks) in proportion
 *     to their characters, with 40 ms of near-silence (+-4) between words;
 *   - a word is a sine at `frequency` shifted by up to +-10% according to a
 *     hash of the word (the same word always sounds the same), of peak
 *     `amplitude`, with a 5 ms linear fade in and out;
 *   - a text without words is near-silence of the same length.
 * The sine is read from a per-instance table (4096 entries, linear
 * interpolation, phase = sample index * step mod 2^32), within 1 LSB of
 * amplitude * sin() and with no libm call per sample.
 * The audio goes to host->tts_audio in chunks of `chunk_ms`: the first one
 * `latency_ms` after speak(), then one every `chunk_interval_ms` (0 = all the
 * rest right after the first, in the same callback), then tts_done(TOLK_OK).
 * language is ignored.
 *
 * Voices. Like XTTS, which clones a speaker from a reference recording by
 * computing a speaker embedding and conditioning latents once and reuses
 * them, the mock keeps the last `voice_cache` voice profiles it was asked
 * for: a request naming a voice not kept yet waits `clone_ms` more before
 * its first chunk. The number kept is the gauge
 * voice_embedding_cache_size{component=<instance>}. The voice does not
 * change the tones.
 *
 * Settings (all optional):
 *   latency_ms         int    80       delay of the first chunk
 *   ms_per_char        int    60       audio per character of text
 *   frequency          double 440      base tone, Hz
 *   amplitude          int    8000     tone peak
 *   chunk_ms           int    100      audio per tts_audio() call
 *   chunk_interval_ms  int    0        time between chunks, 0 = no wait
 *   drop_after_chunks  int    0        fail after this many chunks (0 = off)
 *   fail_every         int    0        every Nth request fails (0 = off)
 *   fail_after         int    0        after N good requests all fail (0 = off)
 *   fail_status        str    "backend" backend | again | fatal | timeout
 *   hang               bool   false    accept requests, never answer
 *   garbage            bool   false    full-scale noise in odd-sized chunks
 *   clone_ms           int    0        extra first-chunk delay for a new voice
 *   voice_cache        int    16       voice profiles kept (0: none)
 *   honour_rate        bool   true     a speak_req() rate hint r makes the
 *                                      audio r times shorter (the core then
 *                                      leaves the speed-up to the mock);
 *                                      false: ignored, only recorded
 *
 * Faults. A failing request gets no audio and tts_done(fail_status) after
 * latency_ms. drop_after_chunks sends that many chunks, then
 * tts_done(TOLK_E_BACKEND) when the next one was due (a request short
 * enough to fit is not affected). garbage keeps the timing but sends
 * full-scale white noise, in chunks of an odd number of samples, for a total
 * that is no whole number of frames. A hung request stays pending until the
 * core cancels it. health() is TOLK_FAILED while fail_after is in force;
 * reset() clears the counters and restarts fail_every/fail_after counting.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

#include "mock_fault.h"

#define MS_SAMPLES(ms) ((uint64_t)(ms) * (TOLK_SAMPLE_RATE / 1000))
#define MIN_MS 200
#define GAP_MS 40
#define FADE_MS 5
#define FREQ_SPREAD 0.10
#define HUSH 4 /* peak of the near-silence between words */
#define TWO_PI 6.283185307179586 /* M_PI is not ISO C */
/* The tone comes from a sine table (one per instance, scaled by the
 * amplitude) read with a 32-bit phase and linear interpolation: no libm
 * call per sample, and within 1 LSB of amplitude * sin(). */
#define SINE_BITS 12
#define SINE_SIZE (1u << SINE_BITS)
#define SINE_FRAC_BITS (32 - SINE_BITS) /* phase bits below the table index */
#define SINE_Q 15                       /* table entries are amplitude * 2^15 * sin */

static const tolk_option tts_mock_options[] = {
    {.key = "latency_ms", .type = TOLK_OPT_INT, .default_value = "80", .min = 0, .max = 600000,
     .help = "delay between speak() and the first chunk of audio"},
    {.key = "ms_per_char", .type = TOLK_OPT_INT, .default_value = "60", .min = 1, .max = 10000,
     .help = "milliseconds of audio per UTF-8 character of text (at least 200 ms in all)"},
    {.key = "frequency", .type = TOLK_OPT_DOUBLE, .default_value = "440", .min = 20, .max = 7000,
     .help = "base tone in Hz; each word is shifted by up to +-10%"},
    {.key = "amplitude", .type = TOLK_OPT_INT, .default_value = "8000", .min = 0, .max = 32767,
     .help = "peak sample value of the tone"},
    {.key = "chunk_ms", .type = TOLK_OPT_INT, .default_value = "100", .min = 1, .max = 60000,
     .help = "milliseconds of audio per host->tts_audio() call"},
    {.key = "chunk_interval_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0,
     .max = 600000, .help = "time between chunks; 0 = all chunks right after the first"},
    {.key = "drop_after_chunks", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "after this many chunks the request fails with TOLK_E_BACKEND; 0 = off"},
    {.key = "honour_rate", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "the rate hint of speak_req() shortens the audio (false: only recorded)"},
    {.key = "fail_every", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "every Nth request fails; 0 = off"},
    {.key = "fail_after", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "after N successful requests every request fails, until reset; 0 = off"},
    {.key = "fail_status", .type = TOLK_OPT_STRING, .default_value = "backend",
     .help = "status of injected failures: backend, again, fatal or timeout"},
    {.key = "hang", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "accept requests but never answer them"},
    {.key = "garbage", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "send full-scale noise in chunks of an odd number of samples"},
    {.key = "clone_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 600000,
     .help = "extra delay of the first chunk for a voice whose embedding is not kept yet"},
    {.key = "voice_cache", .type = TOLK_OPT_INT, .default_value = "16", .min = 0, .max = 100000,
     .help = "voice embeddings kept, least recently used out first; 0 = none"},
    {.key = NULL},
};

/* ------------------------------------------------------------------ */
/* State                                                               */

typedef struct tts_word {
    uint64_t start, len; /* samples */
    double freq;
    uint32_t inc; /* phase step per sample: freq / TOLK_SAMPLE_RATE * 2^32 */
} tts_word;

typedef struct tts_mock tts_mock;

typedef struct tts_job {
    struct tts_job *prev, *next; /* tts_mock.jobs */
    tts_mock *m;
    tolk_request *r;
    tolk_timer *timer; /* NULL while hung, or while its callback runs */
    fault_fate fate;
    int garbage;
    uint32_t seed; /* of the noise, so garbage is reproducible too */

    tts_word *words;
    size_t nwords, wcur; /* wcur: rendering position in words */
    uint64_t total, sent; /* samples */
    size_t chunk;         /* samples per tts_audio() */
    uint64_t chunks_sent;
    int16_t *buf;

    int busy;      /* inside host->tts_audio() */
    int cancelled; /* cancel() came during it: free on return */
} tts_job;

struct tts_mock {
    const tolk_host *host;
    tolk_instance *inst;
    int64_t latency_ms, ms_per_char, amplitude, chunk_ms, chunk_interval_ms, drop_after_chunks;
    double frequency;
    fault_cfg fault;
    fault_count count;
    uint64_t drops;
    tts_job *jobs;
    size_t npending;
    int64_t clone_ms, voice_cache;
    char **voices; /* kept voice profiles, most recently used first */
    size_t nvoices;
    uint64_t clones;
    tolk_series *voices_s;
    /* ABI 1.2: voice samples lent by the core, and the last request's hints */
    uint64_t voice_samples;
    char last_voice[160], sampled_voice[160];
    double last_rate;
    /* rate hints: the one of the request being laid out (1 for speak()),
     * the highest seen, and how many asked for faster than normal */
    int honour_rate;
    double cur_rate, max_rate;
    uint64_t faster_requests;
    /* amplitude * 2^SINE_Q * sin(2 pi i / SINE_SIZE), plus a guard entry
     * (= entry 0) for the interpolation at the last index. */
    int32_t sine[SINE_SIZE + 1];
};

/* ------------------------------------------------------------------ */
/* Audio                                                               */

static uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static uint32_t fnv1a(const char *p, size_t n)
{
    uint32_t h = 2166136261U;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619U;
    return h;
}

static int is_blank(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static size_t utf8_chars(const char *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)p[i] & 0xc0) != 0x80) c++;
    return c;
}

/* Lays the text out on the time line; see the comment at the top. */
static int layout(tts_job *j, const tts_mock *m, const char *text)
{
    size_t len = strlen(text);
    uint64_t ms = (uint64_t)m->ms_per_char * utf8_chars(text, len);
    if (m->honour_rate && m->cur_rate > 0) ms = (uint64_t)((double)ms / m->cur_rate + 0.5);
    if (ms < MIN_MS) ms = MIN_MS;
    j->total = (MS_SAMPLES(ms) + TOLK_FRAME_SAMPLES - 1) / TOLK_FRAME_SAMPLES * TOLK_FRAME_SAMPLES;

    size_t nw = 0, sumc = 0;
    for (size_t i = 0; i < len; i++)
        if (!is_blank((unsigned char)text[i]) && (i == 0 || is_blank((unsigned char)text[i - 1])))
            nw++;
    if (!nw) return 0;
    j->words = calloc(nw, sizeof *j->words);
    if (!j->words) return -1;

    /* Many short words at a low ms_per_char would leave no room for tones:
     * never let the gaps take more than half. */
    uint64_t gap = MS_SAMPLES(GAP_MS);
    if (nw > 1 && gap * (nw - 1) > j->total / 2) gap = j->total / 2 / (nw - 1);
    uint64_t avail = j->total - gap * (nw - 1);

    size_t *chars = calloc(nw, sizeof *chars);
    if (!chars) return -1;
    for (size_t i = 0, w = 0; i < len; w++) {
        while (i < len && is_blank((unsigned char)text[i])) i++;
        if (i >= len) break;
        size_t s = i;
        while (i < len && !is_blank((unsigned char)text[i])) i++;
        chars[w] = utf8_chars(text + s, i - s);
        sumc += chars[w];
        uint32_t h = fnv1a(text + s, i - s);
        double shift = ((double)(h % 2001) - 1000.0) / 1000.0; /* -1..1 */
        j->words[w].freq = m->frequency * (1.0 + FREQ_SPREAD * shift);
        /* freq < TOLK_SAMPLE_RATE / 2, so the step fits in 31 bits */
        j->words[w].inc =
            (uint32_t)llround(j->words[w].freq / TOLK_SAMPLE_RATE * 4294967296.0);
    }
    uint64_t pos = 0, used = 0;
    for (size_t w = 0; w < nw; w++) {
        uint64_t wl = w + 1 == nw ? avail - used : avail * chars[w] / sumc;
        j->words[w].start = pos;
        j->words[w].len = wl;
        used += wl;
        pos += wl + gap;
    }
    free(chars);
    j->nwords = nw;
    return 0;
}

static void sine_init(tts_mock *m)
{
    int64_t amp = m->amplitude < 0 ? 0 : m->amplitude > 32767 ? 32767 : m->amplitude;
    double scale = (double)amp * (double)(1 << SINE_Q);
    for (unsigned i = 0; i < SINE_SIZE; i++)
        m->sine[i] = (int32_t)lrint(scale * sin(TWO_PI * i / SINE_SIZE));
    m->sine[SINE_SIZE] = m->sine[0];
}

/* amplitude * 2^SINE_Q * sin(2 pi phase / 2^32), interpolated. */
static inline int32_t sine_at(const int32_t *sine, uint32_t phase)
{
    uint32_t i = phase >> SINE_FRAC_BITS;
    int64_t frac = (phase >> (SINE_FRAC_BITS - 16)) & 0xffff;
    return sine[i] + (int32_t)(((int64_t)(sine[i + 1] - sine[i]) * frac) / 65536);
}

/* Samples t .. t+n-1 of word w. The phase is t * inc (mod 2^32), so a chunk
 * can start anywhere without carrying state. */
static void render_tone(const tts_word *w, const int32_t *sine, uint64_t t, size_t n,
                        int16_t *out)
{
    uint64_t fade = MS_SAMPLES(FADE_MS);
    if (2 * fade > w->len) fade = w->len / 2 ? w->len / 2 : 1;
    const int64_t den = (int64_t)fade << SINE_Q;
    uint32_t phase = (uint32_t)t * w->inc;
    for (size_t k = 0; k < n; k++, t++, phase += w->inc) {
        int32_t v = sine_at(sine, phase);
        uint64_t e = t < w->len - t ? t : w->len - t; /* distance to the nearer edge */
        if (e >= fade) {
            /* round to nearest; >> of a negative int is arithmetic in GCC/Clang */
            out[k] = (int16_t)((v + (1 << (SINE_Q - 1))) >> SINE_Q);
        } else {
            /* linear fade: v * e / fade, rounded half away from zero */
            int64_t num = (int64_t)v * (int64_t)e;
            out[k] = (int16_t)((num >= 0 ? num + den / 2 : num - den / 2) / den);
        }
    }
}

static int16_t hush_sample(uint64_t i)
{
    return (int16_t)((int)(mix32((uint32_t)i) % (2 * HUSH + 1)) - HUSH);
}

/* Span by span from the layout, so a long text costs no memory. */
static void render(tts_job *j, uint64_t off, size_t n, int16_t *out)
{
    if (j->garbage) {
        for (size_t k = 0; k < n; k++)
            out[k] = (int16_t)(mix32(j->seed * 0x9e3779b9U + (uint32_t)(off + k)) & 0xffff);
        return;
    }
    size_t k = 0;
    while (k < n) {
        uint64_t i = off + k;
        while (j->wcur < j->nwords && j->words[j->wcur].start + j->words[j->wcur].len <= i)
            j->wcur++;
        const tts_word *w = j->wcur < j->nwords ? &j->words[j->wcur] : NULL;
        size_t m = n - k;
        if (w && i >= w->start) {
            uint64_t t = i - w->start;
            if (w->len - t < m) m = (size_t)(w->len - t);
            render_tone(w, j->m->sine, t, m, out + k);
        } else {
            if (w && w->start - i < m) m = (size_t)(w->start - i);
            for (size_t q = 0; q < m; q++) out[k + q] = hush_sample(i + q);
        }
        k += m;
    }
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

static void job_unlink(tts_job *j)
{
    tts_mock *m = j->m;
    if (j->prev)
        j->prev->next = j->next;
    else
        m->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    m->npending--;
}

static void job_free(tts_job *j)
{
    free(j->words);
    free(j->buf);
    free(j);
}

static void job_finish(tts_job *j, tolk_status st)
{
    /* Unlinked first: once tts_done() is called the core will not cancel()
     * r, so the job must not be findable any more. */
    job_unlink(j);
    j->m->host->tts_done(j->r, st);
    job_free(j);
}

static void job_tick(void *ud)
{
    tts_job *j = ud;
    tts_mock *m = j->m;
    const tolk_host *h = m->host;

    /* A one-shot timer frees itself after this returns. */
    j->timer = NULL;
    if (j->fate == FATE_FAIL) {
        job_finish(j, m->fault.fail_status);
        return;
    }
    for (;;) {
        if (m->drop_after_chunks && j->chunks_sent >= (uint64_t)m->drop_after_chunks) {
            job_finish(j, TOLK_E_BACKEND);
            return;
        }
        uint64_t left = j->total - j->sent;
        size_t n = left < j->chunk ? (size_t)left : j->chunk;
        render(j, j->sent, n, j->buf);
        j->busy = 1;
        h->tts_audio(j->r, j->buf, n);
        j->busy = 0;
        /* The core may cancel from inside tts_audio (hangup, barge-in). */
        if (j->cancelled) {
            job_free(j);
            return;
        }
        j->sent += n;
        j->chunks_sent++;
        if (j->sent >= j->total) {
            job_finish(j, TOLK_OK);
            return;
        }
        if (m->chunk_interval_ms > 0) {
            j->timer = h->timer_start(m->inst, (double)m->chunk_interval_ms / 1000.0, 0, job_tick,
                                      j);
            if (!j->timer) job_finish(j, TOLK_E_NOMEM);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Voice embeddings                                                    */

/* The gauge moves by differences: after a reload the instance replacing
 * this one (same name, same series) may run beside it for a while. */
static void voices_count(tts_mock *m, double delta)
{
    if (m->voices_s && delta != 0) m->host->series_add(m->voices_s, delta);
}

static void voices_clear(tts_mock *m)
{
    for (size_t i = 0; i < m->nvoices; i++) free(m->voices[i]);
    voices_count(m, -(double)m->nvoices);
    m->nvoices = 0;
}

/* 1 if the voice's embedding had to be made now (the caller waits
 * clone_ms), 0 if it was kept or no voice was named. */
static int voice_use(tts_mock *m, const char *voice)
{
    if (!voice || !*voice || m->voice_cache <= 0) return 0;
    size_t i = 0;
    while (i < m->nvoices && strcmp(m->voices[i], voice)) i++;
    int made = i == m->nvoices;
    char *v;
    if (made) {
        if (!(v = strdup(voice))) return 1;
        if (m->nvoices == (size_t)m->voice_cache) {
            free(m->voices[--m->nvoices]);
            voices_count(m, -1);
        }
        i = m->nvoices++;
        m->clones++;
        voices_count(m, 1);
    } else {
        v = m->voices[i];
    }
    memmove(m->voices + 1, m->voices, i * sizeof *m->voices);
    m->voices[0] = v;
    return made;
}

static tolk_status tts_mock_speak(void *self, tolk_request *r, const char *text,
                                  const char *language, const char *voice)
{
    tts_mock *m = self;
    if (!text) return TOLK_E_INVAL;
    tts_job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    j->m = m;
    j->r = r;
    j->garbage = m->fault.garbage;
    j->chunk = (size_t)MS_SAMPLES(m->chunk_ms);
    if (j->garbage) j->chunk |= 1; /* odd-sized chunks, as a broken codec would send */
    if (layout(j, m, text) || !(j->buf = malloc(j->chunk * sizeof *j->buf))) {
        job_free(j);
        return TOLK_E_NOMEM;
    }
    if (j->garbage) j->total += 1; /* and a total that is no whole number of frames */

    j->fate = fault_decide(&m->fault, &m->count);
    j->seed = (uint32_t)m->count.requests;
    uint64_t nchunks = (j->total + j->chunk - 1) / j->chunk;
    if (j->fate == FATE_OK && m->drop_after_chunks && nchunks > (uint64_t)m->drop_after_chunks) {
        /* Known now, counted now: this one will not succeed. */
        m->count.successes--;
        m->count.failures++;
        m->drops++;
    }

    int64_t delay_ms = m->latency_ms + (voice_use(m, voice) ? m->clone_ms : 0);
    if (j->fate != FATE_HANG) {
        j->timer = m->host->timer_start(m->inst, (double)delay_ms / 1000.0, 0, job_tick, j);
        if (!j->timer) {
            job_free(j);
            return TOLK_E_NOMEM;
        }
    }
    j->next = m->jobs;
    if (m->jobs) m->jobs->prev = j;
    m->jobs = j;
    m->npending++;
    TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "request %llu (%s, %s): %llu samples, %s",
             (unsigned long long)m->count.requests, language ? language : "-",
             voice ? voice : "-", (unsigned long long)j->total,
             j->fate == FATE_HANG ? "hung" : j->fate == FATE_FAIL ? "will fail" : "pending");
    return TOLK_PENDING;
}

/* ABI 1.2: the request struct carries a rate hint; the mock notes it (and
 * with honour_rate makes the audio that much shorter) and the voice asked
 * for. */
static tolk_status tts_mock_speak_req(void *self, tolk_request *r, const tolk_tts_request *req)
{
    tts_mock *m = self;
    if (!req || !TOLK_HAS(req, tolk_tts_request, rate)) return TOLK_E_INVAL;
    m->last_rate = req->rate;
    if (req->rate > m->max_rate) m->max_rate = req->rate;
    if (req->rate > 1.0) m->faster_requests++;
    snprintf(m->last_voice, sizeof m->last_voice, "%s", req->voice ? req->voice : "");
    m->cur_rate = req->rate;
    tolk_status st = tts_mock_speak(self, r, req->text, req->language, req->voice);
    m->cur_rate = 1.0;
    return st;
}

/* ABI 1.2: a party's speech to clone. The mock makes the embedding at once
 * (it keeps the voice as a profile, as if cloned) and accepts. */
static tolk_status tts_mock_voice_sample(void *self, const tolk_voice_sample *vs)
{
    tts_mock *m = self;
    if (!vs || !vs->voice || !vs->pcm || vs->n == 0) return TOLK_E_INVAL;
    m->voice_samples++;
    snprintf(m->sampled_voice, sizeof m->sampled_voice, "%s", vs->voice);
    voice_use(m, vs->voice);
    return TOLK_OK;
}

static void tts_mock_cancel(void *self, tolk_request *r)
{
    tts_mock *m = self;
    for (tts_job *j = m->jobs; j; j = j->next) {
        if (j->r == r) {
            job_unlink(j);
            if (j->timer) m->host->timer_stop(j->timer);
            if (j->busy)
                j->cancelled = 1;
            else
                job_free(j);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status tts_mock_check_config(const json_t *cfg, tolk_config_error *err)
{
    return fault_check_config(cfg, err);
}

static tolk_status tts_mock_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                   void **self)
{
    tts_mock *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->latency_ms = host->cfg_int(cfg, "latency_ms");
    m->ms_per_char = host->cfg_int(cfg, "ms_per_char");
    m->honour_rate = host->cfg_bool(cfg, "honour_rate");
    m->cur_rate = 1.0;
    m->frequency = host->cfg_double(cfg, "frequency");
    m->amplitude = host->cfg_int(cfg, "amplitude");
    m->chunk_ms = host->cfg_int(cfg, "chunk_ms");
    m->chunk_interval_ms = host->cfg_int(cfg, "chunk_interval_ms");
    m->drop_after_chunks = host->cfg_int(cfg, "drop_after_chunks");
    if (fault_read(host, inst, cfg, &m->fault)) {
        free(m);
        return TOLK_E_INVAL;
    }
    if (m->chunk_ms < 1) m->chunk_ms = 1; /* a zero chunk would never finish */
    m->clone_ms = host->cfg_int(cfg, "clone_ms");
    m->voice_cache = host->cfg_int(cfg, "voice_cache");
    if (m->voice_cache > 0 && !(m->voices = calloc((size_t)m->voice_cache, sizeof *m->voices))) {
        free(m);
        return TOLK_E_NOMEM;
    }
    /* the same family the core declares: one gauge per TTS provider */
    tolk_metric *fam = host->metric_family("voice_embedding_cache_size",
                                           "Speaker embeddings (cloned voices) a TTS provider keeps ready",
                                           TOLK_METRIC_GAUGE, "component", NULL, 0);
    const char *label[1] = {host->instance_name(inst)};
    m->voices_s = fam ? host->metric_series(fam, label) : NULL;
    sine_init(m);
    TOLK_LOG(host, inst, TOLK_LOG_VERB, "latency %lld ms, %lld ms/char, %g Hz, chunks of %lld ms",
             (long long)m->latency_ms, (long long)m->ms_per_char, m->frequency,
             (long long)m->chunk_ms);
    *self = m;
    return TOLK_OK;
}

static void tts_mock_destroy(void *self)
{
    tts_mock *m = self;
    /* Normally the core has cancelled everything by now (hung requests
     * included); stop what is left so that no timer fires into freed memory. */
    while (m->jobs) {
        tts_job *j = m->jobs;
        job_unlink(j);
        if (j->timer) m->host->timer_stop(j->timer);
        job_free(j);
    }
    voices_clear(m);
    free(m->voices);
    free(m);
}

static tolk_status tts_mock_reset(void *self)
{
    tts_mock *m = self;
    memset(&m->count, 0, sizeof m->count);
    m->drops = 0;
    voices_clear(m); /* a restarted synthesiser has to clone its voices again */
    return TOLK_OK;
}

static tolk_health tts_mock_health(void *self, json_t **detail_new)
{
    tts_mock *m = self;
    int failing = fault_failing(&m->fault, &m->count);
    if (detail_new)
        *detail_new = json_pack(
            "{s:I, s:I, s:I, s:I, s:b, s:I, s:I, s:I, s:s, s:s, s:f, s:f, s:I}", "requests",
            (json_int_t)m->count.requests, "failures", (json_int_t)m->count.failures, "drops",
            (json_int_t)m->drops, "pending", (json_int_t)m->npending, "failing", failing, "voices",
            (json_int_t)m->nvoices, "clones", (json_int_t)m->clones, "voice_samples",
            (json_int_t)m->voice_samples, "sampled_voice", m->sampled_voice, "last_voice",
            m->last_voice, "last_rate", m->last_rate, "max_rate", m->max_rate, "faster_requests",
            (json_int_t)m->faster_requests);
    return failing ? TOLK_FAILED : TOLK_HEALTHY;
}

static const tolk_tts tts_mock_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_tts, TOLK_KIND_TTS),
            .name = "tts_mock",
            .version = "1.0.0",
            .description = "deterministic mock synthesiser: one tone per word, chunked, "
                           "fault injection",
            .options = tts_mock_options,
            .check_config = tts_mock_check_config,
            .create = tts_mock_create,
            .destroy = tts_mock_destroy,
            .reset = tts_mock_reset,
            .health = tts_mock_health,
        },
    .speak = tts_mock_speak,
    .cancel = tts_mock_cancel,
    .speak_req = tts_mock_speak_req,
    .voice_sample = tts_mock_voice_sample,
};

TOLK_PLUGIN_DEFINE(tts_mock_desc)
