/* stt_pocketsphinx through the real core: recorded speech (LibriVox clips
 * shipped with pocketsphinx-testdata) is read by transport_file, recognised
 * by the plugin, "translated" by mt_mock and "spoken" by tts_mock; the
 * phrase reports of the core are compared with the reference transcription
 * by word error rate. Every transcript checked here came out of the
 * recogniser: the tests only make audio (silence, cuts, 8 kHz copies) and
 * compare what comes back with the references shipped beside the clips.
 *
 * The WER bounds are a little above what was measured with Debian 12's
 * pocketsphinx 0.8+5prealpha+1-15 and pocketsphinx-en-us (see README.md);
 * decoding is deterministic, so a change in them means the recognition
 * changed. Without the model or the test data the tests are skipped. */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "testutil.h"

#define LIBRIVOX "/usr/share/pocketsphinx/test/data/librivox"
#define CLIP_PREFIX "sense_and_sensibility_01_austen_64kb-"
#define MODEL_HMM "/usr/share/pocketsphinx/model/en-us/en-us/mdef"
#define MAX_PHRASES 64
#define CALL_TIMEOUT 120.0

typedef struct T {
    char *dir;
    core *c;
    size_t n; /* phrase reports */
    char *text[MAX_PHRASES];
    double start_s[MAX_PHRASES], end_s[MAX_PHRASES], stt_ms[MAX_PHRASES];
    int ok[MAX_PHRASES];
    int ended; /* calls ended */
    unsigned ncalls;
} T;

/* ------------------------------------------------------------------ */
/* WAV files                                                           */

typedef struct pcm {
    int16_t *s;
    size_t n;
    unsigned rate;
} pcm;

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* 16-bit mono PCM WAV, chunks walked. */
static int wav_read(const char *path, pcm *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char h[12], ch[8];
    int rc = -1;
    memset(out, 0, sizeof *out);
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4)) goto out;
    unsigned rate = 0, bits = 0, chans = 0;
    while (fread(ch, 1, 8, f) == 8) {
        uint32_t len = rd32(ch + 4);
        if (!memcmp(ch, "fmt ", 4)) {
            unsigned char fmt[16];
            if (len < 16 || fread(fmt, 1, 16, f) != 16) goto out;
            chans = fmt[2] | fmt[3] << 8;
            rate = rd32(fmt + 4);
            bits = fmt[14] | fmt[15] << 8;
            fseek(f, (long)(len - 16 + (len & 1)), SEEK_CUR);
        } else if (!memcmp(ch, "data", 4)) {
            if (bits != 16 || chans != 1) goto out;
            out->n = len / 2;
            out->s = malloc(out->n * 2 + 2);
            if (!out->s || fread(out->s, 2, out->n, f) != out->n) goto out;
            out->rate = rate;
            rc = 0;
            break;
        } else {
            fseek(f, (long)(len + (len & 1)), SEEK_CUR);
        }
    }
out:
    fclose(f);
    return rc;
}

static void wav_write(const char *path, const int16_t *s, size_t n, unsigned rate) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint32_t data = (uint32_t)(n * 2), riff = data + 36, fmtlen = 16, br = rate * 2;
    uint16_t pcmfmt = 1, chans = 1, align = 2, bits = 16;
    fwrite("RIFF", 1, 4, f);
    fwrite(&riff, 4, 1, f);
    fwrite("WAVEfmt ", 1, 8, f);
    fwrite(&fmtlen, 4, 1, f);
    fwrite(&pcmfmt, 2, 1, f);
    fwrite(&chans, 2, 1, f);
    fwrite(&rate, 4, 1, f);
    fwrite(&br, 4, 1, f);
    fwrite(&align, 2, 1, f);
    fwrite(&bits, 2, 1, f);
    fwrite("data", 1, 4, f);
    fwrite(&data, 4, 1, f);
    if (n) fwrite(s, 2, n, f);
    fclose(f);
}

static char *clip_path(const char *id) { return xasprintf("%s/%s%s.wav", LIBRIVOX, CLIP_PREFIX, id); }

/* Where the talking is, from the audio alone: first and last 10 ms window
 * whose RMS is above `rms`. */
static void speech_extent(const pcm *p, double rms, double *start, double *end) {
    size_t w = p->rate / 100, first = SIZE_MAX, last = 0;
    for (size_t i = 0; i + w <= p->n; i += w) {
        double e = 0;
        for (size_t k = 0; k < w; k++) e += (double)p->s[i + k] * p->s[i + k];
        if (sqrt(e / (double)w) > rms) {
            if (first == SIZE_MAX) first = i;
            last = i + w;
        }
    }
    *start = first == SIZE_MAX ? -1 : (double)first / p->rate;
    *end = (double)last / p->rate;
}

/* ------------------------------------------------------------------ */
/* Word error rate                                                     */

typedef struct words {
    char **w;
    size_t n;
} words;

/* Lower case; letters, digits and apostrophes; everything else splits. */
static words tokenize(const char *s) {
    words r = {0};
    size_t cap = 0;
    while (*s) {
        while (*s && !(isalnum((unsigned char)*s) || *s == '\'')) s++;
        if (!*s) break;
        const char *b = s;
        while (*s && (isalnum((unsigned char)*s) || *s == '\'')) s++;
        if (r.n == cap) {
            cap = cap ? cap * 2 : 16;
            r.w = xrealloc(r.w, cap * sizeof *r.w);
        }
        char *w = xcalloc(1, (size_t)(s - b) + 1);
        memcpy(w, b, (size_t)(s - b));
        for (char *p = w; *p; p++) *p = (char)tolower((unsigned char)*p);
        r.w[r.n++] = w;
    }
    return r;
}

static void words_free(words *w) {
    for (size_t i = 0; i < w->n; i++) free(w->w[i]);
    free(w->w);
}

/* Levenshtein distance over words: substitutions + deletions + insertions. */
static size_t word_errors(const words *ref, const words *hyp) {
    size_t *d = xcalloc(hyp->n + 1, sizeof *d);
    for (size_t j = 0; j <= hyp->n; j++) d[j] = j;
    for (size_t i = 1; i <= ref->n; i++) {
        size_t prev = d[0];
        d[0] = i;
        for (size_t j = 1; j <= hyp->n; j++) {
            size_t sub = prev + (strcmp(ref->w[i - 1], hyp->w[j - 1]) != 0);
            size_t del = d[j] + 1, ins = d[j - 1] + 1;
            prev = d[j];
            d[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    size_t e = d[hyp->n];
    free(d);
    return e;
}

/* The reference line "<s> words </s> (ID)" of the clip. */
static char *reference(const char *id) {
    char *path = xasprintf("%s/transcription", LIBRIVOX), line[2048], *found = NULL;
    char *tag = xasprintf("(%s%s)", CLIP_PREFIX, id);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (!found && fgets(line, sizeof line, f)) {
        char *t = strstr(line, tag);
        if (!t) continue;
        *t = '\0';
        char *b = strstr(line, "<s>");
        b = b ? b + 3 : line;
        char *e = strstr(b, "</s>");
        if (e) *e = '\0';
        found = xstrdup(b);
    }
    fclose(f);
    free(tag);
    free(path);
    assert_non_null(found);
    return found;
}

/* WER of the phrases [from, to) of the run against the clip's reference. */
static double wer(T *t, size_t from, size_t to, const char *id, size_t *errors, size_t *nref) {
    char *ref_text = reference(id);
    size_t len = 1;
    for (size_t i = from; i < to; i++) len += strlen(t->text[i]) + 1;
    char *hyp_text = xcalloc(1, len);
    for (size_t i = from; i < to; i++) {
        strcat(hyp_text, t->text[i]);
        strcat(hyp_text, " ");
    }
    words ref = tokenize(ref_text), hyp = tokenize(hyp_text);
    size_t e = word_errors(&ref, &hyp);
    print_message("  %s: \"%s\"\n  %*s  reference \"%s\"\n", id, hyp_text, (int)strlen(id), "",
                  ref_text);
    *errors = e;
    *nref = ref.n;
    double r = ref.n ? (double)e / (double)ref.n : 0;
    words_free(&ref);
    words_free(&hyp);
    free(ref_text);
    free(hyp_text);
    return r;
}

/* ------------------------------------------------------------------ */
/* The core                                                            */

static void on_phrase(void *ud, const phrase_report *r) {
    T *t = ud;
    if (t->n >= MAX_PHRASES) return;
    t->text[t->n] = xstrdup(r->text ? r->text : "");
    t->start_s[t->n] = r->start_s;
    t->end_s[t->n] = r->end_s;
    t->stt_ms[t->n] = r->stt_ms;
    t->ok[t->n] = r->ok;
    t->n++;
}

static void on_end(void *ud, tolk_channel *ch) { ((T *)ud)->ended++; }

static int have_data(void) {
    char *clip = clip_path("0880");
    int ok = access(MODEL_HMM, R_OK) == 0 && access(clip, R_OK) == 0;
    free(clip);
    return ok;
}

static int setup(void **state) {
    T *t = xcalloc(1, sizeof *t);
    t->dir = tu_tmpdir();
    *state = t;
    return 0;
}

static int teardown(void **state) {
    T *t = *state;
    if (t->c) core_free(t->c);
    for (size_t i = 0; i < t->n; i++) free(t->text[i]);
    tu_rm_rf(t->dir);
    free(t->dir);
    free(t);
    tu_log_clear();
    log_set_hook(NULL, NULL);
    log_set_level(TOLK_LOG_WARN);
    return 0;
}

/* Further settings of the core group, for one test. */
static const char *core_extra = "";

/* The pipeline with stt_pocketsphinx; `stt_settings` go into its group. */
static void start_core(T *t, const char *stt_settings) {
    if (!have_data()) skip();
    tu_write(t->dir, "tolk.conf",
             "core: { max_channels = 8; drain_timeout = 120.0; workers = 2; log_level = \"warn\"; "
             "%s };\n",
             core_extra);
    tu_write(t->dir, "20-stt.conf",
             "instance: { name = \"stt-ps\"; plugin = \"stt_pocketsphinx\";\n"
             "  settings: { %s }; };\n",
             stt_settings);
    tu_write(t->dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 1; }; };\n");
    tu_write(t->dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 1; ms_per_char = 1; }; };\n");
    tu_write(t->dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-ps\" ]; },\n"
             "           { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
             "           { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n");
    t->c = core_new(t->dir, NULL);
    t->c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = t};
    assert_int_equal(core_load(t->c), 0);
}

/* Opens a call reading `wav` (transport_file, fast unless realtime). */
static void call_start(T *t, const char *wav, int realtime) {
    char *name = xasprintf("file-%u", ++t->ncalls);
    char *out = xasprintf("%s/out-%u.wav", t->dir, t->ncalls);
    json_t *s = json_pack("{s:s, s:s, s:s, s:s, s:b}", "input", wav, "output", out, "from", "en",
                          "to", "es", "realtime", realtime);
    conf_errors errs = {0};
    tolk_instance *inst = core_add_instance(t->c, name, "transport_file", s, &errs);
    for (size_t i = 0; i < errs.msgs.n; i++) print_error("%s\n", (char *)errs.msgs.v[i]);
    conf_errors_free(&errs);
    assert_non_null(inst);
    assert_int_equal(instance_start_transport(inst), TOLK_OK);
    json_decref(s);
    free(name);
    free(out);
}

typedef struct want_ended {
    T *t;
    int n;
} want_ended;

static int calls_ended(void *ud) {
    want_ended *w = ud;
    return w->t->ended >= w->n && w->t->c->active == 0;
}

static void run_until_ended(T *t, int n) {
    want_ended w = {t, n};
    assert_true(tu_run_until(t->c, calls_ended, &w, CALL_TIMEOUT));
}

/* One clip as one call; returns the index of its first phrase. */
static size_t run_clip(T *t, const char *wav) {
    size_t first = t->n;
    int ended = t->ended;
    call_start(t, wav, 0);
    run_until_ended(t, ended + 1);
    return first;
}

static long long ps_health(T *t, const char *key) { return tu_health_int(t->c, "stt-ps", key); }

/* ------------------------------------------------------------------ */
/* Tests                                                               */

typedef struct clip_case {
    const char *id;
    double max_wer; /* measured + about one word */
} clip_case;

/* LibriVox clips through the whole pipeline: the concatenated final
 * transcripts against the reference, and each phrase where the speech is. */
static void test_librivox_wer(void **state) {
    T *t = *state;
    start_core(t, "silence_ms = 250; preload = 1; max_decoders = 2;");
    /* measured WER (fwdflat off, the default): 0870 5/22 = 22.7 %, 0880 2/8 =
     * 25.0 %, 0920 8/19 = 42.1 % (with fwdflat: 7/22, 2/8, 4/19) */
    static const clip_case clips[] = {{"0870", 0.28}, {"0880", 0.38}, {"0920", 0.48}};
    size_t all_e = 0, all_n = 0;
    for (size_t c = 0; c < ARRAY_LEN(clips); c++) {
        char *wav = clip_path(clips[c].id);
        pcm p;
        assert_int_equal(wav_read(wav, &p), 0);
        double sp_start, sp_end, dur = (double)p.n / p.rate;
        speech_extent(&p, 400, &sp_start, &sp_end);
        size_t first = run_clip(t, wav);
        assert_true(t->n > first);
        size_t e, nref;
        double w = wer(t, first, t->n, clips[c].id, &e, &nref);
        print_message("  %s: WER %.1f %% (%zu/%zu), %zu phrase(s), bound %.0f %%\n", clips[c].id,
                      100 * w, e, nref, t->n - first, 100 * clips[c].max_wer);
        assert_true(w <= clips[c].max_wer);
        all_e += e;
        all_n += nref;
        for (size_t i = first; i < t->n; i++) {
            assert_true(t->ok[i]);
            assert_true(t->start_s[i] >= 0 && t->start_s[i] < t->end_s[i]);
            assert_true(t->end_s[i] <= dur + 0.02);
            if (i > first) assert_true(t->start_s[i] >= t->end_s[i - 1] - 0.02);
        }
        /* the phrases cover the talking, to within a few frames */
        assert_true(fabs(t->start_s[first] - sp_start) < 0.25);
        assert_true(fabs(t->end_s[t->n - 1] - sp_end) < 0.3);
        free(p.s);
        free(wav);
    }
    print_message("  all: WER %.1f %% (%zu/%zu)\n", 100.0 * all_e / all_n, all_e, all_n);
    assert_true((double)all_e / all_n <= 0.33);
    /* three calls, one decoder: it went back to the pool each time */
    assert_int_equal(ps_health(t, "loads"), 1);
    assert_int_equal(ps_health(t, "streams"), 0);
    assert_true(ps_health(t, "phrases") >= 3);
}

/* Telephone audio: the clip at 8 kHz, as a phone line carries it, which
 * transport_file brings back to 16 kHz. The model was trained on 16 kHz
 * speech and loses the 4-8 kHz band: the same clips at 16 kHz go through
 * the same core for comparison. */
static void test_telephone_8k(void **state) {
    T *t = *state;
    start_core(t, "silence_ms = 250;");
    static const char *const ids[] = {"0920"};
    /* measured at 8 kHz: 0920 12/19 = 63.2 % (16 kHz: 4/19 = 21.1 %); 0870,
     * not run here to keep the test short: 15/22 = 68.2 % (7/22) */
    static const double bound[] = {0.74};
    size_t e16 = 0, e8 = 0;
    for (size_t c = 0; c < ARRAY_LEN(ids); c++) {
        char *wav = clip_path(ids[c]);
        pcm p;
        assert_int_equal(wav_read(wav, &p), 0);
        size_t e, nref;
        size_t first = run_clip(t, wav);
        double w16 = wer(t, first, t->n, ids[c], &e, &nref);
        e16 += e;

        tolk_resampler *r = t->c->host.resampler_new(16000, 8000, 5);
        assert_non_null(r);
        size_t cap = p.n / 2 + 64;
        int16_t *low = xcalloc(cap, sizeof *low);
        size_t nlow = t->c->host.resample(r, p.s, p.n, low, cap);
        t->c->host.resampler_free(r);
        char *path = xasprintf("%s/%s-8k.wav", t->dir, ids[c]);
        wav_write(path, low, nlow, 8000);
        first = run_clip(t, path);
        double w8 = wer(t, first, t->n, ids[c], &e, &nref);
        e8 += e;
        print_message("  %s: WER %.1f %% at 16 kHz, %.1f %% (%zu/%zu) at 8 kHz, bound %.0f %%\n",
                      ids[c], 100 * w16, 100 * w8, e, nref, 100 * bound[c]);
        assert_true(w8 <= bound[c]);
        free(path);
        free(low);
        free(p.s);
        free(wav);
    }
    /* the loss is real, not noise of one clip */
    assert_true(e8 > e16);
}

/* Digital silence, then line noise: decoded, but no phrase. */
static void test_silence_gives_no_phrase(void **state) {
    T *t = *state;
    start_core(t, "silence_ms = 250;");
    size_t n = 4 * 16000;
    int16_t *s = xcalloc(n, sizeof *s);
    uint32_t seed = 12345;
    for (size_t i = n / 2; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        s[i] = (int16_t)((int)((seed >> 16) % 61) - 30); /* +-30, RMS about 17 */
    }
    char *path = xasprintf("%s/silence.wav", t->dir);
    wav_write(path, s, n, 16000);
    run_clip(t, path);
    assert_int_equal(t->n, 0);
    assert_int_equal(ps_health(t, "phrases"), 0);
    /* it was heard: all of it went through the decoder */
    json_t *h = tu_health(t->c, "stt-ps");
    assert_true(json_number_value(json_object_get(h, "audio_s")) >= 3.99);
    json_decref(h);
    free(path);
    free(s);
}

/* A WAV without samples: the call opens, nothing is heard, it ends. */
static void test_empty_wav_ends_call(void **state) {
    T *t = *state;
    start_core(t, "");
    char *path = xasprintf("%s/empty.wav", t->dir);
    wav_write(path, NULL, 0, 16000);
    run_clip(t, path);
    assert_int_equal(t->ended, 1);
    assert_int_equal(t->n, 0);
    assert_int_equal(ps_health(t, "streams"), 0);
    assert_int_equal(ps_health(t, "decoders_idle"), ps_health(t, "decoders"));
    free(path);
}

/* The end of a phrase is where the talking stopped, not where the detector
 * noticed (the core starts its latency clock there): the clip with 1 s of
 * silence before and after. */
static void test_phrase_positions_in_silence(void **state) {
    T *t = *state;
    start_core(t, "silence_ms = 250;");
    char *wav = clip_path("0880");
    pcm p;
    assert_int_equal(wav_read(wav, &p), 0);
    size_t pre = 16000, post = 16000, n = pre + p.n + post;
    int16_t *s = xcalloc(n, sizeof *s);
    memcpy(s + pre, p.s, p.n * sizeof *s);
    char *path = xasprintf("%s/padded.wav", t->dir);
    wav_write(path, s, n, 16000);
    pcm padded = {s, n, 16000};
    double sp_start, sp_end;
    speech_extent(&padded, 400, &sp_start, &sp_end);
    run_clip(t, path);
    assert_int_equal(t->n, 1);
    size_t e, nref;
    double w = wer(t, 0, 1, "0880", &e, &nref);
    print_message("  speech %.2f-%.2f s, phrase %.2f-%.2f s, WER %.1f %%\n", sp_start, sp_end,
                  t->start_s[0], t->end_s[0], 100 * w);
    assert_true(w <= 0.38);
    assert_true(fabs(t->start_s[0] - sp_start) < 0.15);
    assert_true(fabs(t->end_s[0] - sp_end) < 0.15);
    free(path);
    free(s);
    free(p.s);
    free(wav);
}

/* Input that stops in the middle of a sentence: flush() finalises it. */
static void test_flush_finalises_cut_sentence(void **state) {
    T *t = *state;
    start_core(t, "silence_ms = 250;");
    char *wav = clip_path("0880");
    pcm p;
    assert_int_equal(wav_read(wav, &p), 0);
    char *path = xasprintf("%s/cut.wav", t->dir);
    wav_write(path, p.s, 2 * 16000, 16000); /* "he was not an ill-" */
    run_clip(t, path);
    assert_int_equal(t->n, 1);
    assert_true(t->ok[0]);
    assert_true(t->end_s[0] <= 2.0 + 0.02);
    words hyp = tokenize(t->text[0]);
    static const char *const want[] = {"he", "was", "not", "an"};
    size_t found = 0;
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        for (size_t j = 0; j < hyp.n; j++)
            if (!strcmp(want[i], hyp.w[j])) {
                found++;
                break;
            }
    print_message("  cut at 2.0 s: \"%s\" (%.2f-%.2f s)\n", t->text[0], t->start_s[0],
                  t->end_s[0]);
    assert_true(found >= 3);
    words_free(&hyp);
    free(path);
    free(p.s);
    free(wav);
}

static int job_in_flight(void *ud) {
    T *t = ud;
    return ps_health(t, "jobs") > 0 && tu_health_int(t->c, "file-1", "frames_in") >= 100;
}

/* Hang up while a decoding job is running: its results never reach the
 * core, the decoder goes back to the pool and serves the next call. */
static void test_no_results_after_close(void **state) {
    T *t = *state;
    log_set_level(TOLK_LOG_DBG);
    tu_log_capture();
    start_core(t, "silence_ms = 250; max_decoders = 1;");
    log_set_level(TOLK_LOG_DBG);
    char *wav = clip_path("0870");
    call_start(t, wav, 0);
    assert_true(tu_run_until(t->c, job_in_flight, t, CALL_TIMEOUT));
    assert_non_null(t->c->channels);
    channel_end(t->c->channels, "test hangs up");
    run_until_ended(t, 1);
    /* let every job and done callback run */
    tu_run_until(t->c, NULL, NULL, 0.5);
    assert_int_equal(ps_health(t, "jobs"), 0);
    assert_true(ps_health(t, "jobs_cancelled") >= 1);
    assert_int_equal(ps_health(t, "streams"), 0);
    assert_int_equal(ps_health(t, "decoders"), 1);
    assert_int_equal(ps_health(t, "decoders_idle"), 1);
    assert_false(tu_log_has("result for a closed stream"));
    assert_false(tu_log_has("flushed for a closed"));
    size_t before = t->n;
    /* the decoder, left mid-utterance, is reset for the next call */
    char *next = clip_path("0880");
    size_t first = run_clip(t, next);
    assert_true(t->n > first);
    size_t e, nref;
    double w = wer(t, first, t->n, "0880", &e, &nref);
    assert_true(w <= 0.38);
    assert_int_equal(ps_health(t, "loads"), 1);
    print_message("  %zu phrase(s) before the hangup, next call WER %.1f %%\n", before, 100 * w);
    free(next);
    free(wav);
}

/* max_decoders = 2 with both preloaded (one still loading when the calls
 * come): the first call takes the loaded decoder, the second waits for the
 * one being loaded, the third is refused with TOLK_E_LIMIT. */
static void test_decoder_pool_limit(void **state) {
    T *t = *state;
    tu_log_capture();
    start_core(t, "silence_ms = 250; max_decoders = 2; preload = 2;");
    assert_int_equal(ps_health(t, "decoders"), 2);
    char *wav = clip_path("0880");
    for (int i = 0; i < 3; i++) call_start(t, wav, 0);
    /* no loop turn yet: the background load has not been handed over */
    assert_int_equal(ps_health(t, "streams"), 2);
    assert_int_equal(ps_health(t, "streams_waiting"), 1);
    assert_int_equal(ps_health(t, "refused"), 1);
    run_until_ended(t, 3);
    /* The core may retry the refused stream (recovery) once a decoder is
     * free and replay its audio; the first two calls are translated in any
     * case, and every transcript is the same recognition of the same clip. */
    assert_true(t->n >= 2);
    for (size_t i = 1; i < t->n; i++) assert_string_equal(t->text[0], t->text[i]);
    size_t e, nref;
    assert_true(wer(t, 0, 1, "0880", &e, &nref) <= 0.38);
    assert_int_equal(ps_health(t, "decoders_idle"), 2);
    assert_int_equal(ps_health(t, "loads"), 2);
    free(wav);
}

/* Languages other than the configured ones are declined, other rates
 * refused, before any decoder is taken. */
static void test_open_declines_language(void **state) {
    T *t = *state;
    start_core(t, "language = [ \"en\" ];");
    tolk_instance *inst = core_find_instance(t->c, "stt-ps");
    assert_non_null(inst);
    const tolk_stt *stt = (const tolk_stt *)inst->desc;
    tolk_stream dummy = {0}; /* never called back: nothing is fed */
    void *st = NULL;
    tolk_stt_params p = {.size = sizeof p, .language = "de", .sample_rate = 16000};
    assert_int_equal(stt->open(inst->self, &dummy, &p, &st), TOLK_DECLINED);
    p.language = "en-US";
    p.sample_rate = 8000;
    assert_int_equal(stt->open(inst->self, &dummy, &p, &st), TOLK_E_INVAL);
    p.sample_rate = 16000;
    assert_int_equal(stt->open(inst->self, &dummy, &p, &st), TOLK_OK);
    assert_int_equal(ps_health(t, "decoders_idle"), 0);
    assert_int_equal(stt->flush(st), TOLK_OK); /* nothing heard */
    stt->close(st);
    assert_int_equal(ps_health(t, "decoders_idle"), 1);
    assert_int_equal(ps_health(t, "declined"), 1);
}

/* A model path that is not there, or a PocketSphinx option with a value of
 * the wrong form, is a configuration error at load. */
static void test_bad_model_path_refused(void **state) {
    T *t = *state;
    if (!have_data()) skip();
    tu_log_capture();
    tu_write(t->dir, "tolk.conf", "core: { log_level = \"warn\"; };\n");
    tu_write(t->dir, "20-stt.conf",
             "instance: { name = \"stt-ps\"; plugin = \"stt_pocketsphinx\";\n"
             "  settings: { hmm = \"%s/nowhere\"; }; };\n",
             t->dir);
    t->c = core_new(t->dir, NULL);
    assert_int_not_equal(core_load(t->c), 0);
    assert_true(tu_log_has("not a readable directory"));
    core_free(t->c);
    /* PocketSphinx itself would read "abc" as 0 and decode with beam 0 */
    tu_write(t->dir, "20-stt.conf",
             "instance: { name = \"stt-ps\"; plugin = \"stt_pocketsphinx\";\n"
             "  settings: { ps_options: { beam = \"abc\"; }; }; };\n");
    t->c = core_new(t->dir, NULL);
    assert_int_not_equal(core_load(t->c), 0);
    assert_true(tu_log_has("beam: \"abc\" is not a number"));
}

/* Read speech without a pause long enough to end a phrase: clips 0870,
 * 0920, 0890 and 0880, each trimmed to its talking, joined with 300 ms of
 * quiet (the tests set silence_ms = 500, so the detector does not fall
 * there), about 20 s in all. Written to DIR/long.wav; the reference is the four transcripts. */
static char *long_speech(T *t, char **ref_out) {
    static const char *const ids[] = {"0870", "0920", "0890", "0880"};
    size_t cap = 0, n = 0, gap = 4800;
    int16_t *all = NULL;
    char *ref = xstrdup("");
    for (size_t c = 0; c < ARRAY_LEN(ids); c++) {
        char *wav = clip_path(ids[c]);
        pcm p;
        assert_int_equal(wav_read(wav, &p), 0);
        double a, b;
        speech_extent(&p, 400, &a, &b);
        size_t from = (size_t)(a * p.rate), to = (size_t)(b * p.rate);
        assert_true(to > from && to <= p.n);
        cap = n + (to - from) + gap;
        all = realloc(all, cap * sizeof *all);
        assert_non_null(all);
        memcpy(all + n, p.s + from, (to - from) * sizeof *all);
        n += to - from;
        for (size_t i = 0; i < gap; i++) all[n++] = (int16_t)((i * 7919 % 61) - 30); /* +-30 */
        char *r = reference(ids[c]), *joined = xasprintf("%s %s", ref, r);
        free(ref);
        free(r);
        ref = joined;
        free(p.s);
        free(wav);
    }
    char *path = xasprintf("%s/long.wav", t->dir);
    wav_write(path, all, n, 16000);
    free(all);
    *ref_out = ref;
    return path;
}

/* WER of all phrases of the run from `first` against `ref_text`. */
static double wer_text(T *t, size_t first, const char *ref_text) {
    size_t len = 1;
    for (size_t i = first; i < t->n; i++) len += strlen(t->text[i]) + 1;
    char *hyp_text = xcalloc(1, len);
    for (size_t i = first; i < t->n; i++) {
        strcat(hyp_text, t->text[i]);
        strcat(hyp_text, " ");
    }
    words ref = tokenize(ref_text), hyp = tokenize(hyp_text);
    double r = (double)word_errors(&ref, &hyp) / (double)ref.n;
    print_message("  \"%s\": WER %.1f %%\n", hyp_text, 100 * r);
    words_free(&ref);
    words_free(&hyp);
    free(hyp_text);
    return r;
}

/* The phrases from `first` follow each other in order. */
static void assert_phrases_in_order(T *t, size_t first) {
    for (size_t i = first; i < t->n; i++) {
        assert_true(t->ok[i]);
        assert_true(t->start_s[i] < t->end_s[i]);
        /* a cut phrase's successor may begin a few frames early: the
         * detector's pre-speech frames */
        if (i > first) assert_true(t->start_s[i] >= t->end_s[i - 1] - 0.25);
        print_message("  phrase %zu: %.2f-%.2f s \"%s\"\n", i - first + 1, t->start_s[i],
                      t->end_s[i], t->text[i]);
    }
}

/* 20 s of read speech without a pause that ends a phrase. Uncut it is one
 * to three phrases; with max_phrase_ms = 3000 it is cut, at pauses, into
 * phrases of at most 3 s + the search, and the words of the whole
 * recording are still there: the cut run's WER is the uncut run's, give
 * or take two words. */
static void test_long_phrase_cut_at_pause(void **state) {
    T *t = *state;
    /* only the plugin's own limit cuts here: the core's (20 s by default)
     * would also cut the 20 s recording when the recogniser runs late */
    core_extra = "max_phrase_seconds = 0;";
    start_core(t, "silence_ms = 500; max_phrase_ms = 60000; max_decoders = 1;");
    char *ref = NULL, *path = long_speech(t, &ref);
    words rw = tokenize(ref);
    size_t first = run_clip(t, path);
    size_t uncut = t->n - first;
    double wer_uncut = wer_text(t, first, ref);
    assert_true(uncut >= 1 && uncut <= 3);
    assert_int_equal(ps_health(t, "cuts_at_pause"), 0);
    core_free(t->c);
    t->c = NULL;

    start_core(t, "silence_ms = 500; max_phrase_ms = 3000; cut_search_ms = 6000; "
                  "cut_pause_ms = 150; max_decoders = 1;");
    first = run_clip(t, path);
    double wer_cut = wer_text(t, first, ref);
    assert_phrases_in_order(t, first);
    assert_true(t->n - first >= 3);
    for (size_t i = first; i < t->n; i++) assert_true(t->end_s[i] - t->start_s[i] <= 9.0 + 0.3);
    /* the cuts were made at pauses */
    assert_true(ps_health(t, "cuts_at_pause") >= 2);
    print_message("  uncut: %zu phrase(s), WER %.1f %%; cut: %zu phrases, WER %.1f %% "
                  "(%zu words)\n",
                  uncut, 100 * wer_uncut, t->n - first, 100 * wer_cut, rw.n);
    assert_true(wer_cut <= wer_uncut + 2.0 / (double)rw.n);
    words_free(&rw);
    free(ref);
    free(path);
    core_extra = "";
}

/* The core's own limit (core.max_phrase_seconds) calls finalize(): the
 * phrase is cut at a pause in the same way. */
static void test_core_finalize_cuts_at_pause(void **state) {
    T *t = *state;
    if (!have_data()) skip();
    char *ref = NULL, *path = long_speech(t, &ref);
    core_extra = "max_phrase_seconds = 5.0;";
    start_core(t, "silence_ms = 500; max_phrase_ms = 60000; max_decoders = 1;");
    core_extra = "";
    size_t first = t->n;
    call_start(t, path, 1); /* real time: the core's clock measures the phrase */
    run_until_ended(t, 1);
    double w = wer_text(t, first, ref);
    assert_phrases_in_order(t, first);
    assert_true(t->n - first >= 2);
    assert_true(ps_health(t, "cuts_at_pause") >= 1);
    assert_true(w <= 0.45);
    free(ref);
    free(path);
}

/* The new settings are checked: out of range values and the options the
 * plugin now sets itself through ps_options are refused. */
static void test_cut_settings_checked(void **state) {
    T *t = *state;
    if (!have_data()) skip();
    tu_log_capture();
    static const char *const bad[] = {
        "cut_pause_ms = 5;",
        "cut_search_ms = -1;",
        "max_phrase_ms = 500;",
        "ps_options: { fwdflat = \"yes\"; };",
        "ps_options: { bestpath = \"no\"; };",
        "fwdflat = 3;",
    };
    static const char *const why[] = {
        "cut_pause_ms",
        "cut_search_ms",
        "max_phrase_ms",
        "fwdflat is set by the plugin",
        "bestpath is set by the plugin",
        "fwdflat",
    };
    tu_write(t->dir, "tolk.conf", "core: { log_level = \"warn\"; };\n");
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        tu_log_clear();
        tu_write(t->dir, "20-stt.conf",
                 "instance: { name = \"stt-ps\"; plugin = \"stt_pocketsphinx\";\n"
                 "  settings: { %s }; };\n",
                 bad[i]);
        t->c = core_new(t->dir, NULL);
        assert_int_not_equal(core_load(t->c), 0);
        if (!tu_log_has(why[i])) print_error("%s: no \"%s\" in the log\n", bad[i], why[i]);
        assert_true(tu_log_has(why[i]));
        core_free(t->c);
        t->c = NULL;
    }
    /* and good ones are taken */
    tu_write(t->dir, "20-stt.conf",
             "instance: { name = \"stt-ps\"; plugin = \"stt_pocketsphinx\";\n"
             "  settings: { fwdflat = true; bestpath = false; cut_search_ms = 0; "
             "cut_pause_ms = 100; preload = 0; }; };\n");
    t->c = core_new(t->dir, NULL);
    assert_int_equal(core_load(t->c), 0);
}

int main(void) {
    log_set_level(TOLK_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_librivox_wer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_telephone_8k, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silence_gives_no_phrase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_wav_ends_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_phrase_positions_in_silence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_finalises_cut_sentence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_results_after_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decoder_pool_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_declines_language, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_model_path_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_phrase_cut_at_pause, setup, teardown),
        cmocka_unit_test_setup_teardown(test_core_finalize_cuts_at_pause, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_settings_checked, setup, teardown),
    };
    int rc = cmocka_run_group_tests_name("stt_pocketsphinx", tests, NULL, NULL);
    loader_unload_all();
    metrics_shutdown();
    return rc;
}
