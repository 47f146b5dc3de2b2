/*
 * stt_pocketsphinx -- streaming speech recognition with CMU PocketSphinx
 * (the 5prealpha API that Debian 12 ships as libpocketsphinx3).
 *
 * Per stream: the 20 ms frames fed on the loop are appended to a buffer;
 * whenever no decoding job of the stream is running, the buffer is handed
 * to a job on the stream's own ordered work queue (host->workq_new). The job,
 * on a worker thread, runs ps_process_raw() over it 10 ms at a time and
 * watches the decoder's voice activity detector (ps_get_in_speech):
 *
 *   - in_speech rising: a phrase starts;
 *   - in_speech falling: the detector has seen `silence_ms` of non-speech
 *     (its -vad_postspeech): the utterance is ended (ps_end_utt), and if it
 *     holds words the hypothesis is the final transcript. start_sample and
 *     end_sample are the first and last real word of the word segmentation,
 *     whose frames PocketSphinx counts from ps_start_stream(), i.e. from the
 *     open of the tolk stream (10 ms per frame): where speech ended, not
 *     where the end was detected;
 *   - while in speech, every `partial_ms` of audio, ps_get_hyp() gives a
 *     partial result if it changed;
 *   - a phrase longer than `max_phrase_ms` (or one the core asks to end,
 *     finalize()) is cut at its next pause between words: `cut_pause_ms`
 *     of audio that is quiet (near the line's noise between phrases, or
 *     30 dB under the phrase's loudest) while the search's best path ends
 *     in a filler (silence) after a word; looked for during at most
 *     `cut_search_ms`, after which it is cut where it is. The audio after
 *     the cut opens the next phrase, so no word is lost at a pause.
 *     Either sign alone split words in the test recording: the closure
 *     of a stop consonant (the "b" of "amiable") is as quiet as a pause,
 *     and the best path's last word exit is often a filler inside a word.
 *
 * What the end of a phrase costs: ps_end_utt() runs the second search
 * pass (fwdflat) over the whole utterance, so its time grows with the
 * phrase; the plugin turns fwdflat off by default (setting `fwdflat`),
 * which leaves the lattice (`bestpath`), and with the cut above no phrase
 * is longer than max_phrase_ms + cut_search_ms.
 *
 * Results are collected in the job and delivered by its done callback, on
 * the loop, in order. Nothing of the decoder is touched on the loop while a
 * job runs; at most one job per stream is queued or running, so the
 * batches grow by themselves when decoding falls behind.
 *
 * An utterance without words (a cough, line noise: the detector fired but
 * the search found only fillers) is dropped, and the live cepstral mean is
 * put back to what it was after the last real phrase: PocketSphinx updates
 * it at every utterance end, and a second of noise pulls it so far that the
 * next sentence is recognised as nonsense (measured: "he was not an illness
 * those young man" became "you push up" after 1.5 s of +-1 LSB noise at the
 * start of the call, which the detector takes for speech: its noise estimate
 * starts at zero).
 *
 * Decoders (about 93 MB RSS and 0.5 s to load each, measured) are pooled per
 * instance: `preload` are loaded at create() (the first synchronously, the
 * rest in background jobs), more on demand up to `max_decoders`, and a
 * closed stream's decoder goes back to the pool. open() takes an idle
 * decoder, or waits for one being loaded (audio is buffered meanwhile), or
 * starts loading one; with `max_decoders` in use it returns TOLK_E_LIMIT.
 *
 * Cancellation: close() sets the stream's atomic `cancelled` flag; a job that
 * is queued or running sees it and stops at the next 10 ms step, and its done
 * callback, on the loop, only returns the decoder and frees the stream: the
 * stream state lives until the last job's done ran. Nothing reaches the host
 * for a closed stream.
 *
 * PocketSphinx logs through process-wide hooks (err_set_callback,
 * err_set_logfp): they are set once, to `logfn` of the first instance
 * (default /dev/null). Errors are also kept per thread, so a decoder that
 * fails to load names the reason in tolk's own log.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pocketsphinx.h>
#include <sphinxbase/cmn.h>
#include <sphinxbase/err.h>
#include <sphinxbase/feat.h>
#include <sphinxbase/logmath.h>

#include <tolk/plugin.h>

#define PLUGIN_NAME "stt_pocketsphinx"
#define MODEL_DIR "/usr/share/pocketsphinx/model/en-us"
#define MS_SAMPLES(ms) ((uint64_t)(ms) * (TOLK_SAMPLE_RATE / 1000))
/* The decoder is given audio in steps of one frame shift (10 ms at 100
 * frames/s), so the detector's state is read as often as it can change. */
#define STEP_SAMPLES 160
#define FRAME_SHIFT_SAMPLES 160
#define CMN_MAX 64

/* ------------------------------------------------------------------ */
/* Settings                                                            */

static const tolk_option psx_options[] = {
    {.key = "hmm", .type = TOLK_OPT_STRING, .default_value = MODEL_DIR "/en-us",
     .help = "acoustic model directory (holds mdef, means, variances, ...)"},
    {.key = "dict", .type = TOLK_OPT_STRING, .default_value = MODEL_DIR "/cmudict-en-us.dict",
     .help = "pronunciation dictionary"},
    {.key = "lm", .type = TOLK_OPT_STRING, .default_value = MODEL_DIR "/en-us.lm.bin",
     .help = "n-gram language model (ARPA or binary)"},
    {.key = "language", .type = TOLK_OPT_STRING_LIST, .default_value = "en",
     .help = "languages the model serves; open() declines others (\"en\" matches \"en-US\")"},
    {.key = "silence_ms", .type = TOLK_OPT_INT, .default_value = "250", .min = 30, .max = 5000,
     .help = "non-speech the detector waits for before it ends a phrase (vad_postspeech)"},
    {.key = "partial_ms", .type = TOLK_OPT_INT, .default_value = "300", .min = 0, .max = 60000,
     .help = "a partial result at most every this many ms of speech; 0 = none"},
    {.key = "max_phrase_ms", .type = TOLK_OPT_INT, .default_value = "15000", .min = 1000,
     .max = 600000, .help = "a phrase this long is cut at its next pause"},
    {.key = "cut_search_ms", .type = TOLK_OPT_INT, .default_value = "3000", .min = 0, .max = 60000,
     .help = "how long a cut waits for a pause before it cuts where it is"},
    {.key = "cut_pause_ms", .type = TOLK_OPT_INT, .default_value = "150", .min = 10, .max = 1000,
     .help = "quiet audio that counts as a pause for a cut (10 ms steps)"},
    {.key = "fwdflat", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "PocketSphinx's second pass (fwdflat) at the end of each phrase; its time grows "
             "with the phrase"},
    {.key = "bestpath", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "rescore the phrase's lattice (bestpath) at its end; gives the confidence"},
    {.key = "max_decoders", .type = TOLK_OPT_INT, .default_value = "4", .min = 1, .max = 256,
     .help = "decoders per instance (about 93 MB each); open() beyond returns TOLK_E_LIMIT"},
    {.key = "preload", .type = TOLK_OPT_INT, .default_value = "1", .min = 0, .max = 256,
     .help = "decoders loaded at start (the first one synchronously, 0.5 s)"},
    {.key = "max_backlog_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1e9,
     .help = "undecoded audio a stream may hold before it fails (TOLK_E_BACKEND); 0 = no limit"},
    {.key = "logfn", .type = TOLK_OPT_STRING, .default_value = "/dev/null",
     .help = "file for PocketSphinx's own log (process-wide: the first instance's wins)"},
    {.key = "ps_options", .type = TOLK_OPT_MAP,
     .help = "further PocketSphinx options without the dash, e.g. { beam = \"1e-40\"; }"},
    {.key = NULL},
};

/* Options the plugin sets itself; ps_options may not name them. */
static const char *const reserved_ps_options[] = {
    "hmm",          "dict",    "lm",       "samprate", "vad_postspeech", "logfn", "remove_silence",
    "input_endian", "fwdflat", "bestpath", NULL,
};

/* ------------------------------------------------------------------ */
/* PocketSphinx's log (process-wide by its design)                      */

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *g_log_fp;     /* NULL: discarded */
static char *g_log_path;   /* what the first instance asked for */
static unsigned g_log_refs;
static _Thread_local char t_last_error[256];

static void ps_log_cb(void *ud, err_lvl_t level, const char *fmt, ...)
{
    (void)ud;
    va_list ap;
    if (level >= ERR_ERROR) {
        va_start(ap, fmt);
        vsnprintf(t_last_error, sizeof t_last_error, fmt, ap);
        va_end(ap);
        size_t n = strlen(t_last_error);
        while (n && (t_last_error[n - 1] == '\n' || t_last_error[n - 1] == ' '))
            t_last_error[--n] = '\0';
    }
    pthread_mutex_lock(&g_log_lock);
    if (g_log_fp) {
        va_start(ap, fmt);
        vfprintf(g_log_fp, fmt, ap);
        va_end(ap);
        fflush(g_log_fp);
    }
    pthread_mutex_unlock(&g_log_lock);
}

/* Returns 0, or 1 if the log already goes elsewhere (another instance's
 * logfn), or -1 if the file cannot be opened (errno). */
static int log_acquire(const char *path)
{
    int rc = 0;
    pthread_mutex_lock(&g_log_lock);
    if (g_log_refs == 0) {
        FILE *fp = NULL;
        if (path && *path && strcmp(path, "/dev/null") != 0) {
            fp = fopen(path, "a");
            if (!fp) {
                pthread_mutex_unlock(&g_log_lock);
                return -1;
            }
        }
        g_log_fp = fp;
        free(g_log_path);
        g_log_path = strdup(path ? path : "");
        err_set_callback(ps_log_cb, NULL);
        /* cmd_ln's configuration dump writes to the log FILE directly */
        err_set_logfp(fp);
    } else if (strcmp(g_log_path ? g_log_path : "", path ? path : "") != 0) {
        rc = 1;
    }
    g_log_refs++;
    pthread_mutex_unlock(&g_log_lock);
    return rc;
}

static void log_release(void)
{
    pthread_mutex_lock(&g_log_lock);
    if (g_log_refs > 0 && --g_log_refs == 0) {
        /* back to sphinxbase's own handler (with no file: silent), so that
         * nothing points into this plugin once it is unloaded */
        err_set_callback(err_logfp_cb, NULL);
        err_set_logfp(NULL);
        if (g_log_fp) fclose(g_log_fp);
        g_log_fp = NULL;
        free(g_log_path);
        g_log_path = NULL;
    }
    pthread_mutex_unlock(&g_log_lock);
}

/* ------------------------------------------------------------------ */
/* State                                                               */

typedef struct psx psx;
typedef struct pstream pstream;

/* A loaded decoder. Touched only by the job of the stream that holds it,
 * or on the loop while no job has it. */
typedef struct psdec {
    struct psdec *next; /* idle list */
    ps_decoder_t *ps;
    mfcc_t cmn0[CMN_MAX]; /* the model's initial cepstral mean */
    int cmn_len;
    int utt_open; /* ps_start_utt() without ps_end_utt() */
} psdec;

typedef struct result {
    struct result *next;
    char *text;
    int is_final;
    double confidence;
    uint64_t start, end;
    uint64_t detected; /* final: decoder position when the end was found */
    double finish_ms;  /* final: time in ps_end_utt() and the hypothesis */
    double finish_cpu_ms;
} result;

/* One decoding job: audio in, results out. */
typedef struct job {
    pstream *s;
    int16_t *pcm;
    size_t n;
    int flush; /* finalise the phrase in progress after the audio */
    int cut;   /* finalize(): cut the phrase in progress at its next pause */
    result *head, *tail;
    unsigned finals, partials, noise, forced, cuts_at_pause;
    double wall_s, cpu_s; /* time spent in the decoder */
    const char *error;
} job;

/* A decoder being loaded. */
typedef struct loadjob {
    psx *x;
    psdec *dec;
    double wall_s;
    char error[256];
} loadjob;

struct pstream {
    psx *x;
    tolk_stream *stream;
    tolk_workq *q;
    pstream *prev, *next; /* psx.streams */
    pstream *wnext;       /* psx waiting list */
    int waiting;          /* no decoder yet */
    psdec *dec;

    /* loop side */
    int16_t *buf; /* audio not yet handed to a job */
    size_t nbuf, cap;
    uint64_t fed;  /* samples received */
    job *inflight; /* the one job queued or running */
    int flush_req; /* flush() asked; the next job finalises */
    int cut_req;   /* finalize() asked; the next job cuts at a pause */
    int flushing;  /* flush() returned PENDING: stt_flushed() due */
    int busy;      /* inside a host callback */
    int closed;    /* close() was called */
    int broken;    /* failed: audio is dropped until close() */
    atomic_int cancelled;

    /* decoder side: written only by the stream's job (one at a time), read
     * on the loop only while no job is in flight */
    int started; /* ps_start_stream() done */
    uint64_t pos;        /* samples given to the decoder */
    int in_speech;       /* detector state after the last step */
    uint64_t rise_pos;   /* where in_speech rose */
    uint64_t next_partial;
    char *last_partial;
    mfcc_t cmn_good[CMN_MAX]; /* cepstral mean after the last real phrase */
    /* cutting a long phrase at a pause */
    int cutting;           /* looking for a pause to cut at */
    uint64_t cut_deadline; /* cut where it is at this position */
    double floor_db;       /* level of the non-speech between phrases */
    double peak_db;        /* loudest step of the phrase in progress */
    int quiet_steps;       /* consecutive quiet steps */
};

struct psx {
    const tolk_host *host;
    tolk_instance *inst;

    /* settings */
    char **langs;
    size_t nlangs;
    int64_t silence_ms, partial_ms, max_phrase_ms, max_backlog_ms, cut_search_ms, cut_pause_ms;
    unsigned max_decoders, preload;
    int argc;
    char **argv; /* PocketSphinx command line, argv[0] a name */

    /* pool */
    psdec *idle;
    unsigned nidle;
    unsigned ndec;     /* loaded or loading, <= max_decoders */
    unsigned nloading; /* load jobs in flight */
    pstream *wait_head, *wait_tail;
    unsigned nwaiting;

    pstream *streams;
    unsigned nstreams;
    unsigned outstanding; /* jobs whose done callback has not run */
    unsigned inflight;    /* decoding jobs in flight */
    int destroyed;
    int log_ref;

    /* counters */
    uint64_t phrases, partials, noise, forced, cuts_at_pause, refused, declined, load_failures,
        loads, stream_failures, jobs_cancelled;
    double audio_s, decode_s, decode_cpu_s, load_s, backlog_max_s;
    char last_error[256];
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread: the decoder's cost, whatever else the
 * machine is doing. */
static double cpu_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ */
/* Decoders                                                            */

static psdec *dec_load(const psx *x, char *err, size_t errlen)
{
    t_last_error[0] = '\0';
    /* A configuration per decoder: ps_init() writes into it. */
    cmd_ln_t *cfg = cmd_ln_parse_r(NULL, ps_args(), x->argc, x->argv, TRUE);
    if (!cfg) {
        snprintf(err, errlen, "bad PocketSphinx options%s%s", t_last_error[0] ? ": " : "",
                 t_last_error);
        return NULL;
    }
    ps_decoder_t *ps = ps_init(cfg);
    cmd_ln_free_r(cfg); /* the decoder holds its own reference */
    if (!ps) {
        snprintf(err, errlen, "cannot load the model%s%s", t_last_error[0] ? ": " : "",
                 t_last_error);
        return NULL;
    }
    feat_t *feat = ps_get_feat(ps);
    if (!feat || !feat->cmn_struct || feat->cmn_struct->veclen > CMN_MAX ||
        feat->cmn_struct->veclen <= 0) {
        snprintf(err, errlen, "unsupported feature type (no live cepstral mean)");
        ps_free(ps);
        return NULL;
    }
    psdec *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        ps_free(ps);
        return NULL;
    }
    d->ps = ps;
    d->cmn_len = feat->cmn_struct->veclen;
    cmn_live_get(feat->cmn_struct, d->cmn0);
    return d;
}

static void dec_free(psdec *d)
{
    if (!d) return;
    ps_free(d->ps);
    free(d);
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static int push_result(job *j, const char *text, int is_final, double conf, uint64_t start,
                       uint64_t end)
{
    result *r = calloc(1, sizeof *r);
    if (!r || !(r->text = strdup(text))) {
        free(r);
        return -1;
    }
    r->is_final = is_final;
    r->confidence = conf;
    r->start = start;
    r->end = end;
    if (j->tail)
        j->tail->next = r;
    else
        j->head = r;
    j->tail = r;
    return 0;
}

static void job_free(job *j)
{
    while (j->head) {
        result *r = j->head;
        j->head = r->next;
        free(r->text);
        free(r);
    }
    free(j->pcm);
    free(j);
}

static int is_filler(const char *w)
{
    return !w || !*w || w[0] == '<' || w[0] == '[' || w[0] == '+';
}

/* ------------------------------------------------------------------ */
/* Decoding (worker thread)                                            */

static void stream_begin(pstream *s)
{
    psdec *d = s->dec;
    feat_t *feat = ps_get_feat(d->ps);
    if (d->utt_open) {
        /* left open by the decoder's previous stream */
        ps_end_utt(d->ps);
        d->utt_open = 0;
    }
    /* a new call: a new channel, back to the model's cepstral mean */
    cmn_live_set(feat->cmn_struct, d->cmn0);
    memcpy(s->cmn_good, d->cmn0, sizeof s->cmn_good);
    ps_start_stream(d->ps); /* sample (and so frame) counters from 0 */
    if (ps_start_utt(d->ps) == 0) d->utt_open = 1;
    s->started = 1;
    s->pos = 0;
    s->in_speech = 0;
    s->cutting = 0;
    s->floor_db = -100; /* unknown until the first non-speech step */
    s->peak_db = -100;
    s->quiet_steps = 0;
}

/* Level of a 10 ms step in dB (full scale 0 dB, digital silence -100). */
static double step_db(const int16_t *p, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) e += (double)p[i] * p[i];
    e = n ? e / (double)n : 0;
    return e < 1e-2 ? -100.0 : 10.0 * log10(e / (32768.0 * 32768.0));
}

/* Quiet: near the line's noise between phrases, or far under the phrase's
 * loudest step. */
static int step_quiet(const pstream *s, double db)
{
    if (s->floor_db > -100 && db < s->floor_db + 10.0) return 1;
    return db < s->peak_db - 30.0;
}

/* The search's best path so far ends in at least `frames` frames of a
 * filler (silence, breath, noise) after a real word: the speaker is
 * between two words. */
static int at_word_pause(ps_decoder_t *ps, int frames)
{
    int last_filler = 0, last_len = 0, words = 0;
    for (ps_seg_t *seg = ps_seg_iter(ps); seg; seg = ps_seg_next(seg)) {
        int sf = 0, ef = 0;
        ps_seg_frames(seg, &sf, &ef);
        last_filler = is_filler(ps_seg_word(seg));
        last_len = ef - sf + 1;
        if (!last_filler) words++;
    }
    return words > 0 && last_filler && last_len >= frames;
}

/* A phrase was cut while the detector is still in speech: what follows
 * (the rest of the pause, the next words) is the next phrase. */
static void phrase_continue(pstream *s, uint64_t partial)
{
    s->quiet_steps = 0;
    s->in_speech = 1;
    s->rise_pos = s->pos;
    s->next_partial = s->pos + partial;
}

/* End the utterance; a final result if it holds words. */
static void phrase_end(job *j, int forced)
{
    pstream *s = j->s;
    psdec *d = s->dec;
    ps_decoder_t *ps = d->ps;
    feat_t *feat = ps_get_feat(ps);

    double t0 = mono_now(), c0 = cpu_now();
    ps_end_utt(ps);
    d->utt_open = 0;
    int32 score = 0;
    const char *hyp = ps_get_hyp(ps, &score);
    if (hyp && *hyp) {
        /* Frames count from ps_start_stream(), that is from the open of
         * the stream, 10 ms each. */
        int first = -1, last = -1, nwords = 0, nposterior = 0;
        double posterior = 0;
        logmath_t *lmath = ps_get_logmath(ps);
        for (ps_seg_t *seg = ps_seg_iter(ps); seg; seg = ps_seg_next(seg)) {
            if (is_filler(ps_seg_word(seg))) continue;
            int sf = 0, ef = 0;
            ps_seg_frames(seg, &sf, &ef);
            if (first < 0) first = sf;
            last = ef;
            /* the word's posterior in the lattice (0 without -bestpath) */
            int32 ascr, lscr, lback;
            int32 lp = ps_seg_prob(seg, &ascr, &lscr, &lback);
            nwords++;
            if (lp != 0) nposterior++;
            posterior += logmath_exp(lmath, lp);
        }
        uint64_t start, end;
        if (first >= 0 && last >= first) {
            start = (uint64_t)first * FRAME_SHIFT_SAMPLES;
            end = (uint64_t)(last + 1) * FRAME_SHIFT_SAMPLES;
        } else {
            start = s->rise_pos;
            end = s->pos;
        }
        if (end > s->pos) end = s->pos;
        if (start >= end) start = end > FRAME_SHIFT_SAMPLES ? end - FRAME_SHIFT_SAMPLES : 0;
        /* confidence: the mean word posterior, unknown without a lattice */
        double conf = nposterior ? posterior / nwords : -1;
        if (!(conf >= 0.0 && conf <= 1.0)) conf = -1;
        if (push_result(j, hyp, 1, conf, start, end) == 0) {
            j->finals++;
            j->tail->detected = s->pos;
            j->tail->finish_ms = (mono_now() - t0) * 1000.0;
            j->tail->finish_cpu_ms = (cpu_now() - c0) * 1000.0;
        }
        if (forced) j->forced++;
        cmn_live_get(feat->cmn_struct, s->cmn_good);
    } else {
        /* Noise: forget what it did to the cepstral mean. */
        cmn_live_set(feat->cmn_struct, s->cmn_good);
        j->noise++;
    }
    if (ps_start_utt(ps) == 0) d->utt_open = 1;
    s->in_speech = 0;
    s->cutting = 0;
    free(s->last_partial);
    s->last_partial = NULL;
}

static void partial_maybe(job *j)
{
    pstream *s = j->s;
    const char *hyp = ps_get_hyp(s->dec->ps, NULL);
    if (!hyp || !*hyp) return;
    if (s->last_partial && !strcmp(s->last_partial, hyp)) return;
    char *copy = strdup(hyp);
    if (!copy) return;
    free(s->last_partial);
    s->last_partial = copy;
    /* The detector fires after -vad_startspeech frames and keeps
     * -vad_prespeech before: speech began about 0.1 s before the rise. */
    uint64_t lead = 10 * FRAME_SHIFT_SAMPLES;
    uint64_t start = s->rise_pos > lead ? s->rise_pos - lead : 0;
    if (push_result(j, hyp, 0, -1, start, s->pos) == 0) j->partials++;
}

static void job_work(void *ud)
{
    job *j = ud;
    pstream *s = j->s;
    const psx *x = s->x;
    if (atomic_load(&s->cancelled)) return;
    double t0 = mono_now(), c0 = cpu_now();
    if (!s->started) stream_begin(s);
    ps_decoder_t *ps = s->dec->ps;
    uint64_t partial = MS_SAMPLES(x->partial_ms), max_phrase = MS_SAMPLES(x->max_phrase_ms);
    int pause_steps = (int)((x->cut_pause_ms + 5) / 10);
    if (j->cut && s->in_speech && !s->cutting) {
        s->cutting = 1;
        s->cut_deadline = s->pos + MS_SAMPLES(x->cut_search_ms);
    }
    const int16_t *p = j->pcm;
    size_t n = j->n;
    while (n > 0) {
        if (atomic_load_explicit(&s->cancelled, memory_order_relaxed)) break;
        size_t k = n < STEP_SAMPLES ? n : STEP_SAMPLES;
        if (ps_process_raw(ps, p, k, FALSE, FALSE) < 0) {
            j->error = "ps_process_raw() failed";
            break;
        }
        double db = step_db(p, k);
        p += k;
        n -= k;
        s->pos += k;
        int sp = ps_get_in_speech(ps) != 0;
        if (!sp && !s->in_speech) /* between phrases: the line's noise */
            s->floor_db = s->floor_db <= -100 ? db : 0.95 * s->floor_db + 0.05 * db;
        if (sp && !s->in_speech) {
            s->in_speech = 1;
            s->rise_pos = s->pos;
            s->next_partial = s->pos + partial;
            s->peak_db = db;
            s->quiet_steps = 0;
        } else if (!sp && s->in_speech) {
            phrase_end(j, 0);
        } else if (sp) {
            if (db > s->peak_db) s->peak_db = db;
            s->quiet_steps = step_quiet(s, db) ? s->quiet_steps + 1 : 0;
            if (!s->cutting && s->pos - s->rise_pos >= max_phrase) {
                s->cutting = 1;
                s->cut_deadline = s->pos + MS_SAMPLES(x->cut_search_ms);
            }
            if (s->cutting) {
                /* at a pause the words so far are complete; past the
                 * deadline the phrase is cut where it is */
                int pause = s->quiet_steps >= pause_steps && at_word_pause(ps, pause_steps);
                if (pause || s->pos >= s->cut_deadline) {
                    if (pause) j->cuts_at_pause++;
                    phrase_end(j, 1);
                    phrase_continue(s, partial);
                }
            }
        }
        if (s->in_speech && partial && s->pos >= s->next_partial) {
            partial_maybe(j);
            s->next_partial = s->pos + partial;
        }
    }
    if (j->flush && s->in_speech && !j->error && !atomic_load(&s->cancelled)) phrase_end(j, 1);
    j->wall_s = mono_now() - t0;
    j->cpu_s = cpu_now() - c0;
}

/* ------------------------------------------------------------------ */
/* Streams (loop thread)                                               */

static void job_done(void *ud);
static void psx_maybe_free(psx *x);

static void waiting_remove(psx *x, pstream *s)
{
    if (!s->waiting) return;
    pstream **pp = &x->wait_head, *prev = NULL;
    while (*pp && *pp != s) {
        prev = *pp;
        pp = &(*pp)->wnext;
    }
    if (*pp) {
        *pp = s->wnext;
        if (x->wait_tail == s) x->wait_tail = prev;
        x->nwaiting--;
    }
    s->wnext = NULL;
    s->waiting = 0;
}

static pstream *waiting_pop(psx *x)
{
    pstream *s = x->wait_head;
    if (!s) return NULL;
    x->wait_head = s->wnext;
    if (!x->wait_head) x->wait_tail = NULL;
    x->nwaiting--;
    s->wnext = NULL;
    s->waiting = 0;
    return s;
}

static void stream_free(pstream *s)
{
    free(s->buf);
    free(s->last_partial);
    free(s);
}

static void stream_finish(pstream *s);

/* Fail a stream from the loop (not from inside close()). The stream may be
 * gone when it returns. */
static void stream_fail(pstream *s, tolk_status st, const char *why)
{
    psx *x = s->x;
    if (s->broken || s->closed) return;
    s->broken = 1;
    x->stream_failures++;
    snprintf(x->last_error, sizeof x->last_error, "%s", why);
    s->busy++;
    x->host->stt_failed(s->stream, st, TOLK_SEV_HIGH, why);
    s->busy--;
    /* the core closes a failed stream, usually from inside stt_failed */
    if (s->closed && !s->busy) stream_finish(s);
}

/* Hands the audio gathered so far (and a pending flush) to a job. Returns
 * TOLK_OK or TOLK_E_NOMEM. */
static tolk_status stream_kick(pstream *s)
{
    psx *x = s->x;
    if (s->inflight || !s->dec || s->closed || s->broken) return TOLK_OK;
    if (s->nbuf == 0 && !s->flush_req && !s->cut_req) return TOLK_OK;
    job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    j->s = s;
    j->pcm = s->buf;
    j->n = s->nbuf;
    /* while a flush is pending every job finalises: audio that came after
     * the flush() is part of it */
    j->flush = s->flush_req || s->flushing;
    j->cut = s->cut_req;
    if (x->host->submit(s->q, job_work, job_done, j) != TOLK_OK) {
        free(j);
        return TOLK_E_NOMEM;
    }
    /* audio waiting when the decoder gets to it: how far it lags */
    double backlog = (double)s->nbuf / TOLK_SAMPLE_RATE;
    if (backlog > x->backlog_max_s) x->backlog_max_s = backlog;
    s->buf = NULL;
    s->nbuf = s->cap = 0;
    s->flush_req = 0;
    s->cut_req = 0;
    s->inflight = j;
    x->outstanding++;
    x->inflight++;
    return TOLK_OK;
}

/* A decoder comes free: to the first stream waiting, else to the pool. */
static void dec_release(psx *x, psdec *d)
{
    if (x->destroyed) {
        dec_free(d);
        x->ndec--;
        return;
    }
    pstream *w = waiting_pop(x);
    if (w) {
        w->dec = d;
        if (stream_kick(w) != TOLK_OK) stream_fail(w, TOLK_E_NOMEM, "out of memory");
        return;
    }
    d->next = x->idle;
    x->idle = d;
    x->nidle++;
}

/* The stream is closed and no job of it is in flight: let go of it. */
static void stream_finish(pstream *s)
{
    psx *x = s->x;
    psdec *d = s->dec;
    s->dec = NULL;
    stream_free(s);
    if (d) dec_release(x, d);
}

static void job_done(void *ud)
{
    job *j = ud;
    pstream *s = j->s;
    psx *x = s->x;
    const tolk_host *h = x->host;
    s->inflight = NULL;
    x->outstanding--;
    x->inflight--;
    if (s->closed) {
        /* close() came while the job was queued or running: nothing goes
         * to the host, and the host may be gone (destroy). */
        x->jobs_cancelled++;
        job_free(j);
        stream_finish(s);
        psx_maybe_free(x);
        return;
    }
    x->audio_s += (double)j->n / TOLK_SAMPLE_RATE;
    x->decode_s += j->wall_s;
    x->decode_cpu_s += j->cpu_s;
    x->phrases += j->finals;
    x->partials += j->partials;
    x->noise += j->noise;
    x->forced += j->forced;
    x->cuts_at_pause += j->cuts_at_pause;

    s->busy++;
    for (result *r = j->head; r && !s->closed; r = r->next) {
        tolk_transcript t = {.size = sizeof t,
                             .text = r->text,
                             .is_final = r->is_final,
                             .confidence = r->confidence,
                             .start_sample = r->start,
                             .end_sample = r->end};
        if (r->is_final)
            TOLK_LOG(h, x->inst, TOLK_LOG_DBG,
                     "final %.2f-%.2f s, end found at %.2f s, end_utt %.0f ms (CPU %.0f ms), "
                     "conf %.2f: %s",
                     (double)r->start / TOLK_SAMPLE_RATE, (double)r->end / TOLK_SAMPLE_RATE,
                     (double)r->detected / TOLK_SAMPLE_RATE, r->finish_ms, r->finish_cpu_ms,
                     r->confidence, r->text);
        h->stt_result(s->stream, &t);
    }
    if (!s->closed && j->error) {
        char why[128];
        snprintf(why, sizeof why, PLUGIN_NAME ": %s", j->error);
        stream_fail(s, TOLK_E_BACKEND, why);
    }
    int flushed = j->flush;
    job_free(j);
    if (!s->closed && !s->broken && s->flushing && flushed && s->nbuf == 0 && !s->flush_req) {
        s->flushing = 0;
        h->stt_flushed(s->stream);
    }
    s->busy--;
    if (s->closed) {
        if (!s->busy) stream_finish(s);
        return;
    }
    if (stream_kick(s) != TOLK_OK) stream_fail(s, TOLK_E_NOMEM, "out of memory");
}

static int language_ok(const psx *x, const char *lang)
{
    if (!lang) return 1;
    for (size_t i = 0; i < x->nlangs; i++) {
        const char *l = x->langs[i];
        size_t n = strlen(l);
        /* "en" serves "en", "en-US", "en_GB"; "en-US" serves only itself */
        if (!strncasecmp(lang, l, n) && (lang[n] == '\0' || lang[n] == '-' || lang[n] == '_'))
            return 1;
    }
    return 0;
}

static void load_work(void *ud);
static void load_done(void *ud);

static tolk_status start_load(psx *x)
{
    loadjob *lj = calloc(1, sizeof *lj);
    if (!lj) return TOLK_E_NOMEM;
    lj->x = x;
    if (x->host->submit(NULL, load_work, load_done, lj) != TOLK_OK) {
        free(lj);
        return TOLK_E_NOMEM;
    }
    x->ndec++;
    x->nloading++;
    x->outstanding++;
    return TOLK_OK;
}

static tolk_status psx_open(void *self, tolk_stream *stream, const tolk_stt_params *p,
                            void **state)
{
    psx *x = self;
    const tolk_host *h = x->host;
    unsigned rate = p && TOLK_HAS(p, tolk_stt_params, sample_rate) ? p->sample_rate : 0;
    if (rate != TOLK_SAMPLE_RATE) {
        h->log(x->inst, TOLK_LOG_ERR, "sample rate %u refused: only %d Hz", rate,
               TOLK_SAMPLE_RATE);
        return TOLK_E_INVAL;
    }
    const char *lang = p && TOLK_HAS(p, tolk_stt_params, language) ? p->language : NULL;
    if (!language_ok(x, lang)) {
        x->declined++;
        TOLK_LOG(h, x->inst, TOLK_LOG_VERB, "language %s declined", lang);
        return TOLK_DECLINED;
    }
    psdec *d = NULL;
    int wait = 0;
    if (x->idle) {
        d = x->idle;
        x->idle = d->next;
        d->next = NULL;
        x->nidle--;
    } else if (x->nwaiting < x->nloading) {
        wait = 1; /* a decoder is on its way and nobody waits for it yet */
    } else if (x->ndec < x->max_decoders) {
        tolk_status st = start_load(x);
        if (st != TOLK_OK) return st;
        wait = 1;
    } else {
        x->refused++;
        h->log(x->inst, TOLK_LOG_WARN, "all %u decoders busy: stream refused (max_decoders)",
               x->max_decoders);
        return TOLK_E_LIMIT;
    }
    pstream *s = calloc(1, sizeof *s);
    tolk_workq *q = s ? h->workq_new(x->inst) : NULL;
    if (!s || !q) {
        free(s);
        if (d) dec_release(x, d);
        return TOLK_E_NOMEM;
    }
    s->x = x;
    s->stream = stream;
    s->q = q;
    s->dec = d;
    atomic_init(&s->cancelled, 0);
    if (wait) {
        s->waiting = 1;
        if (x->wait_tail)
            x->wait_tail->wnext = s;
        else
            x->wait_head = s;
        x->wait_tail = s;
        x->nwaiting++;
        TOLK_LOG(h, x->inst, TOLK_LOG_VERB, "stream waits for a decoder being loaded");
    }
    s->next = x->streams;
    if (x->streams) x->streams->prev = s;
    x->streams = s;
    x->nstreams++;
    *state = s;
    return TOLK_OK;
}

static tolk_status psx_feed(void *state, const int16_t *pcm, size_t n)
{
    pstream *s = state;
    psx *x = s->x;
    if (s->broken || n == 0) return TOLK_OK;
    if (s->nbuf + n > s->cap) {
        size_t cap = s->cap ? s->cap : 16 * TOLK_FRAME_SAMPLES;
        while (cap < s->nbuf + n) cap *= 2;
        int16_t *b = realloc(s->buf, cap * sizeof *b);
        if (!b) return TOLK_E_NOMEM;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->nbuf, pcm, n * sizeof *pcm);
    s->nbuf += n;
    s->fed += n;
    if (x->max_backlog_ms && s->nbuf > MS_SAMPLES(x->max_backlog_ms)) {
        /* The caller is told by the return value; the core fails the
         * stream and closes it. */
        x->stream_failures++;
        snprintf(x->last_error, sizeof x->last_error,
                 "%.1f s of audio waiting for the decoder (max_backlog_ms)",
                 (double)s->nbuf / TOLK_SAMPLE_RATE);
        x->host->log(x->inst, TOLK_LOG_ERR, "%s", x->last_error);
        s->broken = 1;
        return TOLK_E_BACKEND;
    }
    return stream_kick(s);
}

/* The core asks for the phrase to end (core.max_phrase_seconds): it is
 * cut at its next pause, as at max_phrase_ms. */
static tolk_status psx_finalize(void *state)
{
    pstream *s = state;
    if (s->broken) return TOLK_DECLINED;
    s->cut_req = 1;
    tolk_status st = stream_kick(s);
    return st == TOLK_OK ? TOLK_PENDING : st;
}

static tolk_status psx_flush(void *state)
{
    pstream *s = state;
    if (s->broken) return TOLK_OK;
    /* Nothing heard, nothing on its way: done. */
    if (!s->inflight && s->nbuf == 0 && !s->in_speech) return TOLK_OK;
    s->flush_req = 1;
    s->flushing = 1;
    tolk_status st = stream_kick(s);
    if (st != TOLK_OK) {
        s->flushing = 0;
        return st;
    }
    return TOLK_PENDING;
}

static void psx_close(void *state)
{
    pstream *s = state;
    psx *x = s->x;
    s->closed = 1;
    atomic_store(&s->cancelled, 1);
    waiting_remove(x, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        x->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    x->nstreams--;
    /* Frees the queue once the job in it (if any) has run; its done
     * callback still fires and does the rest. */
    x->host->workq_free(s->q);
    s->q = NULL;
    if (s->inflight || s->busy) return;
    stream_finish(s);
}

/* ------------------------------------------------------------------ */
/* Loading decoders in the background                                  */

static void load_work(void *ud)
{
    loadjob *lj = ud;
    double t0 = mono_now();
    lj->dec = dec_load(lj->x, lj->error, sizeof lj->error);
    lj->wall_s = mono_now() - t0;
}

static void load_done(void *ud)
{
    loadjob *lj = ud;
    psx *x = lj->x;
    psdec *d = lj->dec;
    x->nloading--;
    x->outstanding--;
    if (x->destroyed) {
        if (d) dec_free(d);
        x->ndec--;
        free(lj);
        psx_maybe_free(x);
        return;
    }
    if (d) {
        x->loads++;
        x->load_s += lj->wall_s;
        TOLK_LOG(x->host, x->inst, TOLK_LOG_VERB, "decoder loaded in %.2f s (%u of at most %u)",
                 lj->wall_s, x->ndec, x->max_decoders);
        dec_release(x, d);
    } else {
        x->ndec--;
        x->load_failures++;
        snprintf(x->last_error, sizeof x->last_error, "%s", lj->error);
        x->host->log(x->inst, TOLK_LOG_ERR, "decoder not loaded: %s", lj->error);
        /* A stream that counted on it gets nothing: fail it. */
        if (x->nwaiting > x->nloading) {
            pstream *w = waiting_pop(x);
            char why[300];
            snprintf(why, sizeof why, PLUGIN_NAME ": decoder not loaded: %s", lj->error);
            stream_fail(w, TOLK_E_BACKEND, why);
        }
    }
    free(lj);
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static int file_readable(const char *path, int want_dir)
{
    struct stat st;
    if (!path || stat(path, &st) != 0) return 0;
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) return 0;
    return access(path, R_OK) == 0;
}

static const arg_t *ps_option_find(const char *name)
{
    for (const arg_t *a = ps_args(); a->name; a++)
        if (a->name[0] == '-' && !strcmp(a->name + 1, name)) return a;
    return NULL;
}

/* cmd_ln takes "abc" for a number (as 0): check the value's form here. */
static const char *ps_option_bad_value(const arg_t *a, const char *v)
{
    char *end = NULL;
    if (a->type & ARG_INTEGER) {
        errno = 0;
        long long n = strtoll(v, &end, 0);
        (void)n;
        if (!*v || *end || errno) return "an integer";
    } else if (a->type & ARG_FLOATING) {
        errno = 0;
        double d = strtod(v, &end);
        (void)d;
        if (!*v || *end || errno) return "a number";
    } else if (a->type & ARG_BOOLEAN) {
        static const char *const ok[] = {"yes", "no", "true", "false", "1", "0", NULL};
        for (size_t i = 0; ok[i]; i++)
            if (!strcasecmp(v, ok[i])) return NULL;
        return "yes or no";
    }
    return NULL;
}

static tolk_status psx_check_config(const json_t *cfg, tolk_config_error *err)
{
    static const char *const files[] = {"hmm", "dict", "lm"};
    for (size_t i = 0; i < 3; i++) {
        const char *path = json_string_value(json_object_get(cfg, files[i]));
        int dir = i == 0;
        if (!file_readable(path, dir)) {
            err->key = files[i];
            snprintf(err->message, sizeof err->message, "%s: not a readable %s",
                     path ? path : "(unset)", dir ? "directory" : "file");
            return TOLK_E_INVAL;
        }
        if (dir) {
            char mdef[4096];
            snprintf(mdef, sizeof mdef, "%s/mdef", path);
            if (!file_readable(mdef, 0)) {
                err->key = files[i];
                snprintf(err->message, sizeof err->message,
                         "%s: not an acoustic model (no mdef file)", path);
                return TOLK_E_INVAL;
            }
        }
    }
    const json_t *langs = json_object_get(cfg, "language");
    if (json_is_array(langs) && json_array_size(langs) == 0) {
        err->key = "language";
        snprintf(err->message, sizeof err->message, "needs at least one language");
        return TOLK_E_INVAL;
    }
    json_int_t max = json_integer_value(json_object_get(cfg, "max_decoders"));
    json_int_t pre = json_integer_value(json_object_get(cfg, "preload"));
    if (json_object_get(cfg, "max_decoders") && pre > max) {
        err->key = "preload";
        snprintf(err->message, sizeof err->message, "%lld is more than max_decoders (%lld)",
                 (long long)pre, (long long)max);
        return TOLK_E_INVAL;
    }
    const json_t *opts = json_object_get(cfg, "ps_options");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)opts, k, v) {
        for (size_t i = 0; reserved_ps_options[i]; i++) {
            if (!strcmp(k, reserved_ps_options[i])) {
                err->key = "ps_options";
                snprintf(err->message, sizeof err->message,
                         "%s is set by the plugin (use the setting of its own, if any)", k);
                return TOLK_E_INVAL;
            }
        }
        const arg_t *a = ps_option_find(k);
        if (!a) {
            err->key = "ps_options";
            snprintf(err->message, sizeof err->message, "%s: not a PocketSphinx option", k);
            return TOLK_E_INVAL;
        }
        if (!json_is_string(v)) {
            err->key = "ps_options";
            snprintf(err->message, sizeof err->message, "%s: value must be a string", k);
            return TOLK_E_INVAL;
        }
        const char *want = ps_option_bad_value(a, json_string_value(v));
        if (want) {
            err->key = "ps_options";
            snprintf(err->message, sizeof err->message, "%s: \"%s\" is not %s", k,
                     json_string_value(v), want);
            return TOLK_E_INVAL;
        }
    }
    return TOLK_OK;
}

static void psx_free(psx *x)
{
    while (x->idle) {
        psdec *d = x->idle;
        x->idle = d->next;
        dec_free(d);
    }
    for (size_t i = 0; i < x->nlangs; i++) free(x->langs[i]);
    free(x->langs);
    for (int i = 0; i < x->argc; i++) free(x->argv[i]);
    free(x->argv);
    if (x->log_ref) log_release();
    free(x);
}

static void psx_maybe_free(psx *x)
{
    if (x->destroyed && x->outstanding == 0) psx_free(x);
}

static void psx_destroy(void *self)
{
    psx *x = self;
    TOLK_LOG(x->host, x->inst, TOLK_LOG_VERB,
             "%.1f s of audio decoded in %.1f s, %.1f s CPU (real-time factor %.3f, CPU %.3f), "
             "most audio waiting %.2f s, %llu phrase(s), %u decoder(s), %.2f s per load",
             x->audio_s, x->decode_s, x->decode_cpu_s,
             x->audio_s > 0 ? x->decode_s / x->audio_s : 0.0,
             x->audio_s > 0 ? x->decode_cpu_s / x->audio_s : 0.0, x->backlog_max_s,
             (unsigned long long)x->phrases, x->ndec,
             x->loads ? x->load_s / (double)x->loads : 0.0);
    /* The core closes every stream first; this only guards against leaks
     * if it did not. Their jobs (and load jobs) free what they hold when
     * their done callbacks run; the last one frees the instance. */
    while (x->streams) psx_close(x->streams);
    x->destroyed = 1;
    while (x->idle) {
        psdec *d = x->idle;
        x->idle = d->next;
        dec_free(d);
        x->ndec--;
    }
    x->nidle = 0;
    psx_maybe_free(x);
}

static int argv_add(psx *x, const char *name, const char *value)
{
    char **v = realloc(x->argv, (size_t)(x->argc + 3) * sizeof *v);
    if (!v) return -1;
    x->argv = v;
    char *n = malloc(strlen(name) + 2);
    char *val = strdup(value);
    if (!n || !val) {
        free(n);
        free(val);
        return -1;
    }
    n[0] = '-';
    strcpy(n + 1, name);
    x->argv[x->argc++] = n;
    x->argv[x->argc++] = val;
    x->argv[x->argc] = NULL;
    return 0;
}

static tolk_status psx_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                              void **self)
{
    psx *x = calloc(1, sizeof *x);
    if (!x) return TOLK_E_NOMEM;
    x->host = host;
    x->inst = inst;
    x->silence_ms = host->cfg_int(cfg, "silence_ms");
    x->partial_ms = host->cfg_int(cfg, "partial_ms");
    x->max_phrase_ms = host->cfg_int(cfg, "max_phrase_ms");
    x->max_backlog_ms = host->cfg_int(cfg, "max_backlog_ms");
    x->cut_search_ms = host->cfg_int(cfg, "cut_search_ms");
    x->cut_pause_ms = host->cfg_int(cfg, "cut_pause_ms");
    x->max_decoders = (unsigned)host->cfg_int(cfg, "max_decoders");
    x->preload = (unsigned)host->cfg_int(cfg, "preload");
    if (x->preload > x->max_decoders) x->preload = x->max_decoders;

    size_t nl = host->cfg_list_size(cfg, "language");
    x->langs = calloc(nl ? nl : 1, sizeof *x->langs);
    if (!x->langs) goto nomem;
    for (size_t i = 0; i < nl; i++) {
        const char *l = host->cfg_list_string(cfg, "language", i);
        if (!l || !*l) continue;
        if (!(x->langs[x->nlangs] = strdup(l))) goto nomem;
        x->nlangs++;
    }
    if (!x->nlangs) {
        if (!(x->langs[0] = strdup("en"))) goto nomem;
        x->nlangs = 1;
    }

    /* The PocketSphinx command line, argv[0] being a name. */
    x->argv = calloc(2, sizeof *x->argv);
    if (!x->argv || !(x->argv[0] = strdup(PLUGIN_NAME))) goto nomem;
    x->argc = 1;
    char post[32];
    /* the detector counts frames of 10 ms */
    snprintf(post, sizeof post, "%lld", (long long)((x->silence_ms + 5) / 10));
    if (argv_add(x, "hmm", host->cfg_string(cfg, "hmm")) ||
        argv_add(x, "dict", host->cfg_string(cfg, "dict")) ||
        argv_add(x, "lm", host->cfg_string(cfg, "lm")) || argv_add(x, "samprate", "16000") ||
        argv_add(x, "vad_postspeech", post) || argv_add(x, "remove_silence", "yes") ||
        argv_add(x, "fwdflat", host->cfg_bool(cfg, "fwdflat") ? "yes" : "no") ||
        argv_add(x, "bestpath", host->cfg_bool(cfg, "bestpath") ? "yes" : "no"))
        goto nomem;
    const json_t *opts = json_object_get(cfg, "ps_options");
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)opts, k, v) {
        if (json_is_string(v) && argv_add(x, k, json_string_value(v))) goto nomem;
    }

    const char *logfn = host->cfg_string(cfg, "logfn");
    int lr = log_acquire(logfn);
    if (lr < 0) {
        host->log(inst, TOLK_LOG_ERR, "logfn %s: %s", logfn, strerror(errno));
        psx_free(x);
        return TOLK_E_INVAL;
    }
    x->log_ref = 1;
    if (lr > 0)
        host->log(inst, TOLK_LOG_WARN,
                  "logfn %s ignored: PocketSphinx's log is process-wide and goes to %s", logfn,
                  g_log_path && *g_log_path ? g_log_path : "/dev/null");

    /* One decoder now, so that a broken model is an error at start and the
     * first call does not wait; the rest in the background. */
    if (x->preload > 0) {
        char err[256];
        double t0 = mono_now();
        psdec *d = dec_load(x, err, sizeof err);
        if (!d) {
            host->log(inst, TOLK_LOG_ERR, "decoder not loaded: %s", err);
            psx_free(x);
            return TOLK_E_INVAL;
        }
        x->load_s += mono_now() - t0;
        x->loads++;
        x->ndec = 1;
        d->next = x->idle;
        x->idle = d;
        x->nidle = 1;
        for (unsigned i = 1; i < x->preload; i++)
            if (start_load(x) != TOLK_OK) break;
    }
    TOLK_LOG(host, inst, TOLK_LOG_VERB,
             "model %s, silence %lld ms, %u decoder(s) loaded or loading, at most %u",
             host->cfg_string(cfg, "hmm"), (long long)x->silence_ms, x->ndec, x->max_decoders);
    *self = x;
    return TOLK_OK;

nomem:
    psx_free(x);
    return TOLK_E_NOMEM;
}

/* Decoders are reset at the start of every stream anyway; a reset only
 * forgets past failures (health goes back to healthy). */
static tolk_status psx_reset(void *self)
{
    psx *x = self;
    x->load_failures = 0;
    x->stream_failures = 0;
    x->last_error[0] = '\0';
    return TOLK_OK;
}

static tolk_health psx_health(void *self, json_t **detail_new)
{
    psx *x = self;
    tolk_health hl = TOLK_HEALTHY;
    if (x->load_failures && x->ndec == 0)
        hl = TOLK_FAILED;
    else if (x->load_failures || x->stream_failures)
        hl = TOLK_DEGRADED;
    if (detail_new) {
        json_t *d = json_object();
        json_object_set_new(d, "decoders", json_integer(x->ndec));
        json_object_set_new(d, "decoders_idle", json_integer(x->nidle));
        json_object_set_new(d, "decoders_loading", json_integer(x->nloading));
        json_object_set_new(d, "max_decoders", json_integer(x->max_decoders));
        json_object_set_new(d, "streams", json_integer(x->nstreams));
        json_object_set_new(d, "streams_waiting", json_integer(x->nwaiting));
        json_object_set_new(d, "jobs", json_integer(x->inflight));
        json_object_set_new(d, "jobs_cancelled", json_integer((json_int_t)x->jobs_cancelled));
        json_object_set_new(d, "phrases", json_integer((json_int_t)x->phrases));
        json_object_set_new(d, "partials", json_integer((json_int_t)x->partials));
        json_object_set_new(d, "noise", json_integer((json_int_t)x->noise));
        json_object_set_new(d, "forced", json_integer((json_int_t)x->forced));
        json_object_set_new(d, "cuts_at_pause", json_integer((json_int_t)x->cuts_at_pause));
        json_object_set_new(d, "refused", json_integer((json_int_t)x->refused));
        json_object_set_new(d, "declined", json_integer((json_int_t)x->declined));
        json_object_set_new(d, "loads", json_integer((json_int_t)x->loads));
        json_object_set_new(d, "load_failures", json_integer((json_int_t)x->load_failures));
        json_object_set_new(d, "stream_failures", json_integer((json_int_t)x->stream_failures));
        json_object_set_new(d, "audio_s", json_real(x->audio_s));
        json_object_set_new(d, "decode_s", json_real(x->decode_s));
        json_object_set_new(d, "decode_cpu_s", json_real(x->decode_cpu_s));
        json_object_set_new(d, "rtf", json_real(x->audio_s > 0 ? x->decode_s / x->audio_s : 0));
        json_object_set_new(d, "rtf_cpu",
                            json_real(x->audio_s > 0 ? x->decode_cpu_s / x->audio_s : 0));
        json_object_set_new(d, "backlog_max_s", json_real(x->backlog_max_s));
        json_object_set_new(d, "load_s", json_real(x->loads ? x->load_s / (double)x->loads : 0));
        json_object_set_new(d, "last_error",
                            x->last_error[0] ? json_string(x->last_error) : json_null());
        *detail_new = d;
    }
    return hl;
}

static const tolk_stt psx_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT),
            .name = PLUGIN_NAME,
            .version = "1.0.0",
            .description = "offline streaming recognition with CMU PocketSphinx",
            .options = psx_options,
            .check_config = psx_check_config,
            .create = psx_create,
            .destroy = psx_destroy,
            .reset = psx_reset,
            .health = psx_health,
        },
    .open = psx_open,
    .feed = psx_feed,
    .flush = psx_flush,
    .finalize = psx_finalize,
    .close = psx_close,
};

TOLK_PLUGIN_DEFINE(psx_desc)
