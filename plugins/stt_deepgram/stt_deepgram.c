/*
 * stt_deepgram -- Deepgram live speech recognition: Nova models on
 * wss://api.deepgram.com/v1/listen, or Flux on /v2/listen (api = "v2"),
 * over the core's WebSocket client (host->ws_connect, ABI 1.2): the plugin
 * drives no socket itself.
 *
 * One WebSocket per stream (one direction of a call). open() connects and
 * returns TOLK_PENDING; host->stt_ready() follows on the WebSocket's open,
 * and the core then replays the audio it kept meanwhile. The query carries
 * every recognition setting (model, language, encoding=linear16,
 * sample_rate=16000, channels=1, interim_results, endpointing,
 * utterance_end_ms, vad_events, smart_format, punctuate, keyterm...), the
 * key goes in `Authorization: Token <key>` (settings or DEEPGRAM_API_KEY)
 * and is never logged.
 *
 * Audio: binary frames of 16-bit little-endian PCM, one per `chunk_ms`
 * (20 ms: every frame the core feeds goes out as it comes). If more than
 * `max_buffered` bytes wait in the core's queue, Deepgram is not keeping up
 * with real time: the stream fails (counted) and the core moves the call
 * to a backup with its replay, rather than the queue growing without bound.
 *
 * Results, as Deepgram documents them:
 *   - an interim `Results` (is_final false) is a partial: the phrase's
 *     finished segments plus the interim text, with a stability estimate
 *     (Deepgram gives none): it grows while successive interims only
 *     extend each other, and drops when one rewrites its predecessor;
 *   - `is_final` segments accumulate; the phrase is final on
 *     `speech_final` (endpointing), on `from_finalize` (our Finalize), or
 *     on `UtteranceEnd` (a gap between words of utterance_end_ms), and goes
 *     to the core as one final transcript whose start/end are Deepgram's
 *     start/duration in samples since the stream opened;
 *   - `SpeechStarted`, `Metadata` are counted; unknown types are ignored;
 *     a message that is not JSON is counted and logged, never fatal.
 *
 * Keeping the stream alive: Deepgram closes a stream that has received no
 * audio for about 10 s, whatever KeepAlives say, and one that receives
 * nothing at all. So audio goes first: a stream that has not been fed for
 * `keepalive_interval` seconds and never sent audio sends one 20 ms frame of
 * silence (result times are corrected for it), then `{"type":"KeepAlive"}`
 * every keepalive_interval while no audio flows.
 *
 * finalize(): `{"type":"Finalize"}`; the result marked from_finalize ends
 * the phrase. Deepgram answers only when audio is buffered, so after
 * `finalize_timeout` the phrase heard so far (maybe empty) is sent as final.
 * flush() (end of input): `{"type":"CloseStream"}`, TOLK_PENDING; the last
 * results come, then Metadata and a close 1000: host->stt_flushed(). After
 * `flush_timeout` the stream is flushed with what it has.
 * close(): ws_cancel(); no callback after it returns.
 *
 * Flux (v2): turn-based. TurnInfo Update/StartOfTurn are partials (the
 * whole turn so far), EagerEndOfTurn a partial flagged
 * TOLK_TRANSCRIPT_EAGER_END (stability: its end_of_turn_confidence: the
 * text stays if the turn has ended), TurnResumed a partial without the flag
 * (the tentative end withdrawn), EndOfTurn the final, its window the
 * phrase's place. No language= (the model decides; language_hint on
 * flux-general-multi); 80 ms chunks by default; finalize() sends
 * ForceEndTurn, since Flux has no Finalize; an Error message fails the
 * stream.
 *
 * Failures (host->stt_failed):
 *   upgrade refused 401/403  TOLK_E_BACKEND, TOLK_SEV_PERMANENT: a bad key;
 *                            the core moves to the backup with no retry;
 *                            health() says FAILED for `refused_hold` s
 *   upgrade refused 429      TOLK_E_AGAIN (too many concurrent streams)
 *   close 1011, other closes, network errors, upgrade 5xx
 *                            TOLK_E_BACKEND, HIGH: the core retries and
 *                            fails over, replaying the phrase being spoken
 *   close 1008 (DATA-0000)   the audio we sent could not be decoded: a bug
 *                            here, logged with what was sent; TOLK_E_BACKEND
 *   connect/ping timeout     TOLK_E_TIMEOUT
 *   results watchdog         a stream fed with speech that gets no message
 *                            for `results_timeout` s is dead (streams have
 *                            been seen to stay open and go quiet):
 *                            TOLK_E_TIMEOUT
 *
 * Reachability: a stream whose connection never opened (refused, DNS, TLS,
 * connect timeout, an upgrade refused other than 401/403/429) while no
 * other stream is open means Deepgram is unreachable: host->report() says
 * so once (TOLK_SEV_HIGH: the core marks the instance down) and health()
 * says FAILED until a connection opens again. Calls avoid a down instance,
 * so the plugin itself tries: every `probe_interval` s a WebSocket is
 * opened with the streams' URL and closed at once, without audio (Deepgram
 * bills audio). The first connection that opens, a probe's or a stream's,
 * ends it.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

#define DEFAULT_URL "wss://api.deepgram.com"
#define MAX_MALFORMED_LOGGED 5
#define VOICED_RMS 300.0 /* as stt_mock and the core: a frame above this is speech */

static const tolk_option dg_options[] = {
    {.key = "api_key", .type = TOLK_OPT_STRING, .flags = TOLK_OPT_SECRET,
     .help = "Deepgram API key (default: the environment variable DEEPGRAM_API_KEY)"},
    {.key = "url", .type = TOLK_OPT_STRING, .default_value = DEFAULT_URL,
     .help = "base URL, wss:// (ws:// for local tests); /v1/listen is appended"},
    {.key = "api", .type = TOLK_OPT_STRING, .default_value = "v1",
     .help = "v1: /v1/listen (Nova models); v2: /v2/listen (Flux, turn-based)"},
    {.key = "model", .type = TOLK_OPT_STRING,
     .help = "model (default: nova-3 on v1, flux-general-en on v2)"},
    {.key = "language", .type = TOLK_OPT_STRING,
     .help = "language sent to Deepgram (default: the stream's language; \"multi\" for code-switching)"},
    {.key = "interim_results", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "ask for interim results (partials)"},
    {.key = "endpointing", .type = TOLK_OPT_INT, .default_value = "300", .min = 0, .max = 60000,
     .help = "milliseconds of silence that end a phrase (speech_final); 0: endpointing off"},
    {.key = "utterance_end_ms", .type = TOLK_OPT_INT, .default_value = "1000", .min = 0, .max = 60000,
     .help = "word gap that sends UtteranceEnd (needs interim_results); 0: not asked"},
    {.key = "vad_events", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "ask for SpeechStarted events"},
    {.key = "smart_format", .type = TOLK_OPT_BOOL, .default_value = "true", .help = "smart formatting"},
    {.key = "punctuate", .type = TOLK_OPT_BOOL, .default_value = "true", .help = "punctuation"},
    {.key = "keyterms", .type = TOLK_OPT_STRING_LIST,
     .help = "key terms to boost (one keyterm= parameter each; Nova-3)"},
    {.key = "chunk_ms", .type = TOLK_OPT_INT, .default_value = "0", .min = 0, .max = 1000,
     .help = "audio per binary message, milliseconds (whole 20 ms frames); 0: 20 on v1, 80 on v2 (Flux's advice)"},
    {.key = "eot_threshold", .type = TOLK_OPT_DOUBLE, .min = 0.5, .max = 0.9,
     .help = "Flux: end-of-turn confidence that ends a turn (Deepgram's default 0.7)"},
    {.key = "eager_eot_threshold", .type = TOLK_OPT_DOUBLE, .min = 0.3, .max = 0.9,
     .help = "Flux: confidence for EagerEndOfTurn (tentative ends, TOLK_TRANSCRIPT_EAGER_END); unset: none"},
    {.key = "eot_timeout_ms", .type = TOLK_OPT_INT, .min = 500, .max = 10000,
     .help = "Flux: a turn ends after this much silence whatever the confidence (Deepgram's default 5000)"},
    {.key = "language_hints", .type = TOLK_OPT_STRING_LIST,
     .help = "Flux flux-general-multi: language_hint values (default: the stream's language)"},
    {.key = "max_buffered", .type = TOLK_OPT_INT, .default_value = "320000", .min = 1280, .max = 1e9,
     .help = "bytes of audio queued unsent above which the stream fails (10 s at 16 kHz)"},
    {.key = "keepalive_interval", .type = TOLK_OPT_DOUBLE, .default_value = "4", .min = 0.05, .max = 9,
     .help = "seconds without audio after which a KeepAlive is sent (Deepgram: 3-5 s)"},
    {.key = "finalize_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "2", .min = 0.05, .max = 60,
     .help = "seconds to wait for the from_finalize result of a Finalize"},
    {.key = "flush_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "5", .min = 0.05, .max = 60,
     .help = "seconds to wait for the last results and the close after CloseStream"},
    {.key = "results_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "15", .min = 0, .max = 600,
     .help = "a stream fed with speech that sends nothing for this long is dead (0: no watchdog)"},
    {.key = "connect_timeout", .type = TOLK_OPT_DOUBLE, .default_value = "10", .min = 0.1, .max = 120,
     .help = "seconds for the WebSocket upgrade"},
    {.key = "refused_hold", .type = TOLK_OPT_DOUBLE, .default_value = "60", .min = 0, .max = 86400,
     .help = "seconds health() says FAILED after the key was refused (401/403)"},
    {.key = "probe_interval", .type = TOLK_OPT_DOUBLE, .default_value = "5", .min = 0.05, .max = 3600,
     .help = "seconds between connection attempts while Deepgram is unreachable"},
    {.key = "ca_file", .type = TOLK_OPT_STRING, .help = "CA bundle for TLS (default: the system's)"},
    {.key = "insecure", .type = TOLK_OPT_BOOL, .default_value = "false",
     .help = "skip TLS verification (local tests only)"},
    {.key = NULL},
};

typedef struct dg dg;

typedef struct dg_stream {
    struct dg_stream *prev, *next;
    dg *d;
    tolk_stream *stream;
    tolk_ws *ws;
    int ready;     /* on_open came */
    int closed;    /* close() was called: free once no handler is running */
    int busy;      /* handlers running (re-entrancy: close() from a host call) */
    int ended;     /* failed or flushed: no more host calls */
    /* audio */
    unsigned char *chunk;
    size_t chunk_len, chunk_cap;
    uint64_t samples_sent;  /* including the silence sent for "audio first" */
    uint64_t offset_samples;/* silence we sent that the core never fed */
    uint64_t bytes_sent, audio_messages;
    size_t last_audio_message;
    double last_audio, last_keepalive;
    /* the phrase being heard: is_final segments so far */
    char *phrase;
    double phrase_start, phrase_end; /* seconds, Deepgram's clock */
    double confidence_sum;           /* of its segments, for the phrase's */
    int confidence_n;
    int has_phrase;
    char *last_interim;
    char *eager_text; /* Flux: the EagerEndOfTurn not yet resolved */
    int agreeing; /* successive interims that extended the previous one */
    /* control */
    int finalizing, flushing;
    double finalize_deadline, flush_deadline;
    /* watchdog: first speech fed since the last message, 0: none */
    double speech_unanswered_since;
    unsigned malformed_logged;
    tolk_timer *tick;
} dg_stream;

struct dg {
    const tolk_host *host;
    tolk_instance *inst;
    char *url, *auth_header, *model, *language, *ca_file;
    json_t *keyterms, *language_hints;
    int flux; /* api v2 */
    double eot_threshold, eager_eot_threshold; /* 0: not sent */
    int eot_timeout_ms;
    int interim, vad_events, smart_format, punctuate, insecure;
    int endpointing, utterance_end_ms;
    size_t chunk_bytes, max_buffered;
    double keepalive, finalize_timeout, flush_timeout, results_timeout, connect_timeout, refused_hold;
    double refused_at; /* 0: never */
    double probe_interval;
    /* no connection could be opened since unreachable_since (0: reachable) */
    double unreachable_since;
    char connect_error[200];
    tolk_timer *prober;
    tolk_ws *probe; /* a probe connection in flight */
    dg_stream *streams;
    /* health counters */
    uint64_t probes, unreachable;
    uint64_t streams_opened, messages, malformed, failures, refused, rate_limited, undecodable,
        watchdog, backpressure, keepalives, finalizes, finalize_timeouts, flush_timeouts, finals,
        partials, utterance_ends, speech_started, metadata, eager_ends, turns_resumed, errors;
    int last_close_code, last_http_status;
};

/* ------------------------------------------------------------------ */
/* Stream life                                                         */

static void stream_free(dg_stream *s) {
    dg *d = s->d;
    if (s->ws) d->host->ws_cancel(s->ws);
    if (s->tick) d->host->timer_stop(s->tick);
    if (s->prev)
        s->prev->next = s->next;
    else
        d->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    free(s->chunk);
    free(s->phrase);
    free(s->last_interim);
    free(s->eager_text);
    free(s);
}

/* Handlers bracket their work with enter/leave: the core may close() the
 * stream from inside any host call, and the memory must outlive the handler. */
static void enter(dg_stream *s) { s->busy++; }
static int leave(dg_stream *s) {
    if (--s->busy == 0 && s->closed) {
        stream_free(s);
        return 1;
    }
    return 0;
}
/* May the handler still call the host for this stream? */
static int live(const dg_stream *s) { return !s->closed && !s->ended; }

static void fail(dg_stream *s, tolk_status st, tolk_severity sev, const char *why) {
    if (!live(s)) return;
    s->ended = 1;
    s->d->failures++;
    if (s->ws) {
        s->d->host->ws_cancel(s->ws);
        s->ws = NULL;
    }
    s->d->host->stt_failed(s->stream, st, sev, why);
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static uint64_t to_samples(const dg_stream *s, double seconds) {
    if (!(seconds > 0)) return 0;
    double n = seconds * TOLK_SAMPLE_RATE - (double)s->offset_samples;
    return n > 0 ? (uint64_t)llround(n) : 0;
}

static void phrase_append(dg_stream *s, const char *text, double confidence, double start, double end) {
    if (!text || !*text) return;
    if (confidence >= 0) {
        s->confidence_sum += confidence;
        s->confidence_n++;
    }
    size_t old = s->phrase ? strlen(s->phrase) : 0, n = strlen(text);
    char *p = realloc(s->phrase, old + n + 2);
    if (!p) return;
    if (old) p[old++] = ' ';
    memcpy(p + old, text, n + 1);
    s->phrase = p;
    if (!s->has_phrase) s->phrase_start = start;
    s->has_phrase = 1;
    if (end > s->phrase_end) s->phrase_end = end;
}

static void deliver_flags(dg_stream *s, const char *text, int is_final, double confidence, double stability,
                          double start, double end, unsigned flags) {
    tolk_transcript t = {.size = sizeof t,
                         .text = text ? text : "",
                         .is_final = is_final,
                         .confidence = confidence,
                         .start_sample = to_samples(s, start),
                         .end_sample = to_samples(s, end),
                         .stability = stability,
                         .flags = flags};
    if (t.end_sample < t.start_sample) t.end_sample = t.start_sample;
    if (is_final)
        s->d->finals++;
    else
        s->d->partials++;
    s->d->host->stt_result(s->stream, &t);
}

static void deliver(dg_stream *s, const char *text, int is_final, double confidence, double stability,
                    double start, double end) {
    deliver_flags(s, text, is_final, confidence, stability, start, end, 0);
}

/* The phrase is over: its segments as one final (an empty one only when
 * the core asked for it with finalize()). */
static void phrase_end(dg_stream *s, int even_empty) {
    int had = s->has_phrase;
    char *text = s->phrase;
    double start = s->phrase_start, end = s->phrase_end;
    double confidence = s->confidence_n ? s->confidence_sum / s->confidence_n : -1;
    s->confidence_sum = 0;
    s->confidence_n = 0;
    s->phrase = NULL;
    s->has_phrase = 0;
    s->phrase_start = s->phrase_end = 0;
    free(s->last_interim);
    s->last_interim = NULL;
    s->agreeing = 0;
    if (s->finalizing) even_empty = 1;
    s->finalizing = 0;
    if ((had || even_empty) && live(s)) deliver(s, had ? text : "", 1, had ? confidence : -1, 1.0, start, end);
    free(text);
}

/* Deepgram gives no stability: successive interims that only extend each
 * other make the text likelier to stay; a rewrite starts over. */
static double interim_stability(dg_stream *s, const char *text) {
    const char *prev = s->last_interim;
    if (prev && !strncmp(text, prev, strlen(prev)))
        s->agreeing++;
    else
        s->agreeing = 0;
    free(s->last_interim);
    s->last_interim = strdup(text);
    return 1.0 - 1.0 / (s->agreeing + 2.0);
}

static void on_results(dg_stream *s, json_t *msg) {
    json_t *alt = json_array_get(json_object_get(json_object_get(msg, "channel"), "alternatives"), 0);
    const char *text = json_string_value(json_object_get(alt, "transcript"));
    if (!text) text = "";
    double confidence = json_is_number(json_object_get(alt, "confidence"))
                            ? json_number_value(json_object_get(alt, "confidence"))
                            : -1;
    double start = json_number_value(json_object_get(msg, "start"));
    double end = start + json_number_value(json_object_get(msg, "duration"));
    int is_final = json_is_true(json_object_get(msg, "is_final"));
    int speech_final = json_is_true(json_object_get(msg, "speech_final"));
    int from_finalize = json_is_true(json_object_get(msg, "from_finalize"));
    if (!is_final) {
        if (!*text) return; /* Deepgram sends empty interims during silence */
        double stability = interim_stability(s, text);
        const char *shown = text;
        char *joined = NULL;
        if (s->has_phrase) {
            size_t n = strlen(s->phrase) + strlen(text) + 2;
            joined = malloc(n);
            if (joined) snprintf(joined, n, "%s %s", s->phrase, text);
            shown = joined ? joined : text;
        }
        deliver(s, shown, 0, confidence, stability, s->has_phrase ? s->phrase_start : start, end);
        free(joined);
        return;
    }
    phrase_append(s, text, confidence, start, end);
    free(s->last_interim);
    s->last_interim = NULL;
    s->agreeing = 0;
    if (speech_final || (from_finalize && s->finalizing))
        phrase_end(s, 0);
    else if (*text && s->d->interim)
        deliver(s, s->phrase, 0, confidence, 0.9, s->phrase_start, s->phrase_end);
}

static void on_utterance_end(dg_stream *s, json_t *msg) {
    s->d->utterance_ends++;
    json_t *lwe = json_object_get(msg, "last_word_end");
    /* -1: no word; the end we have is better */
    if (json_is_number(lwe) && json_number_value(lwe) > s->phrase_end) s->phrase_end = json_number_value(lwe);
    if (s->has_phrase) phrase_end(s, 0);
}

/* Flux: one TurnInfo per event of a turn; the transcript is the whole
 * turn so far, and the window the audio it covers. */
static void on_turn_info(dg_stream *s, json_t *msg) {
    dg *d = s->d;
    const char *event = json_string_value(json_object_get(msg, "event"));
    const char *text = json_string_value(json_object_get(msg, "transcript"));
    if (!event || !text) {
        d->malformed++;
        return;
    }
    double start = json_number_value(json_object_get(msg, "audio_window_start"));
    double end = json_number_value(json_object_get(msg, "audio_window_end"));
    double eot = json_is_number(json_object_get(msg, "end_of_turn_confidence"))
                     ? json_number_value(json_object_get(msg, "end_of_turn_confidence"))
                     : -1;
    if (!strcmp(event, "EndOfTurn")) {
        /* the turn is the phrase: one final, even after ForceEndTurn with nothing heard */
        int asked = s->finalizing;
        s->finalizing = 0;
        free(s->eager_text);
        s->eager_text = NULL;
        free(s->last_interim);
        s->last_interim = NULL;
        s->agreeing = 0;
        if (*text || asked) deliver(s, text, 1, -1, 1.0, start, end);
    } else if (!strcmp(event, "EagerEndOfTurn")) {
        /* tentative: confirmed by an EndOfTurn with the same text, or
         * withdrawn by TurnResumed */
        d->eager_ends++;
        free(s->eager_text);
        s->eager_text = strdup(text);
        /* the text stays if the turn has ended: its end-of-turn confidence is the stability */
        deliver_flags(s, text, 0, -1, eot, start, end, TOLK_TRANSCRIPT_EAGER_END);
    } else if (!strcmp(event, "TurnResumed")) {
        d->turns_resumed++;
        free(s->eager_text);
        s->eager_text = NULL;
        deliver(s, text, 0, -1, interim_stability(s, text), start, end); /* without the flag: withdrawn */
    } else if (*text) { /* Update, StartOfTurn, and events added later */
        if (!strcmp(event, "StartOfTurn")) d->speech_started++;
        /* An Update between EagerEndOfTurn and its outcome that says the same
         * words still stands on the tentative end: a partial without the
         * flag would tell the core the turn resumed (tolk_transcript). */
        unsigned flags = s->eager_text && !strcmp(s->eager_text, text) ? TOLK_TRANSCRIPT_EAGER_END : 0;
        deliver_flags(s, text, 0, -1, interim_stability(s, text), start, end, flags);
    } else if (!strcmp(event, "StartOfTurn")) {
        d->speech_started++;
    }
}

static void on_message(void *ud, tolk_ws *ws, const void *data, size_t n, int binary) {
    dg_stream *s = ud;
    dg *d = s->d;
    if (!live(s)) return;
    enter(s);
    d->messages++;
    s->speech_unanswered_since = 0;
    json_error_t err;
    json_t *msg = binary ? NULL : json_loadb(data, n, 0, &err);
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!type) {
        d->malformed++;
        if (s->malformed_logged++ < MAX_MALFORMED_LOGGED)
            d->host->log(d->inst, TOLK_LOG_WARN, "Deepgram sent a %s message of %zu bytes that is not %s%s%s; ignored",
                         binary ? "binary" : "text", n, msg ? "a typed JSON object" : "JSON",
                         msg || binary ? "" : ": ", msg || binary ? "" : err.text);
    } else if (d->flux && !strcmp(type, "TurnInfo")) {
        on_turn_info(s, msg);
    } else if (d->flux && !strcmp(type, "Error")) {
        char why[300];
        const char *code = json_string_value(json_object_get(msg, "code"));
        const char *desc = json_string_value(json_object_get(msg, "description"));
        d->errors++;
        snprintf(why, sizeof why, "Deepgram Flux error %s: %s", code ? code : "?", desc ? desc : "");
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
    } else if (d->flux && !strcmp(type, "Connected")) {
        TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "Deepgram Flux request %s",
                 json_string_value(json_object_get(msg, "request_id")) ? json_string_value(json_object_get(msg, "request_id")) : "?");
    } else if (!strcmp(type, "Results")) {
        on_results(s, msg);
    } else if (!strcmp(type, "UtteranceEnd")) {
        on_utterance_end(s, msg);
    } else if (!strcmp(type, "SpeechStarted")) {
        d->speech_started++;
    } else if (!strcmp(type, "Metadata")) {
        d->metadata++;
        const char *id = json_string_value(json_object_get(msg, "request_id"));
        TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "Deepgram request %s: %.2f s of audio", id ? id : "?",
                 json_number_value(json_object_get(msg, "duration")));
    } /* other types (new ones Deepgram adds) are ignored */
    json_decref(msg);
    (void)ws;
    leave(s);
}

/* ------------------------------------------------------------------ */
/* Sending                                                             */

static int send_text(dg_stream *s, const char *json) {
    return s->ws && s->d->host->ws_send(s->ws, json, strlen(json), 0) == TOLK_OK;
}

/* The pending chunk goes out; 0 when the stream failed doing it. `force`
 * (flush, finalize): one more chunk past the bound, and no host callback
 * from inside those calls. */
static int send_chunk(dg_stream *s, int force) {
    dg *d = s->d;
    if (!s->chunk_len || !s->ws) return 1;
    size_t queued = d->host->ws_buffered(s->ws);
    if (queued > d->max_buffered && !force) {
        char why[160];
        d->backpressure++;
        snprintf(why, sizeof why, "Deepgram is not taking audio in real time: %zu bytes queued", queued);
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
        return 0;
    }
    /* never a zero-length frame: Deepgram once read it as end of stream */
    if (d->host->ws_send(s->ws, s->chunk, s->chunk_len, 1) != TOLK_OK) return 1;
    s->samples_sent += s->chunk_len / 2;
    s->bytes_sent += s->chunk_len;
    s->audio_messages++;
    s->last_audio_message = s->chunk_len;
    s->chunk_len = 0;
    s->last_audio = d->host->now();
    return 1;
}

static void chunk_add(dg_stream *s, const int16_t *pcm, size_t n) {
    size_t bytes = n * 2;
    if (s->chunk_len + bytes > s->chunk_cap) {
        size_t cap = s->chunk_cap ? s->chunk_cap : s->d->chunk_bytes;
        while (cap < s->chunk_len + bytes) cap *= 2;
        unsigned char *c = realloc(s->chunk, cap);
        if (!c) return;
        s->chunk = c;
        s->chunk_cap = cap;
    }
    /* linear16 is little-endian on the wire */
    for (size_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)pcm[i];
        s->chunk[s->chunk_len++] = (unsigned char)(v & 0xff);
        s->chunk[s->chunk_len++] = (unsigned char)(v >> 8);
    }
}

static int voiced(const int16_t *pcm, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)pcm[i] * pcm[i];
    return n && sqrt(sum / (double)n) > VOICED_RMS;
}

static tolk_status dg_feed(void *state, const int16_t *pcm, size_t n) {
    dg_stream *s = state;
    if (!live(s) || !s->ws) return TOLK_E_BACKEND;
    if (s->flushing) return TOLK_E_INVAL;
    if (!n) return TOLK_OK;
    if (voiced(pcm, n) && !s->speech_unanswered_since) s->speech_unanswered_since = s->d->host->now();
    chunk_add(s, pcm, n);
    if (s->chunk_len >= s->d->chunk_bytes) {
        /* a failure here is reported through stt_failed, not twice */
        enter(s);
        send_chunk(s, 0);
        leave(s);
    }
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Timers: keepalive, finalize and flush deadlines, watchdog           */

static void flushed(dg_stream *s) {
    if (!live(s)) return;
    if (s->has_phrase) phrase_end(s, 0);
    if (!live(s)) return;
    s->ended = 1;
    s->flushing = 0;
    s->d->host->stt_flushed(s->stream);
}

static void on_tick(void *ud) {
    dg_stream *s = ud;
    dg *d = s->d;
    if (!live(s) || !s->ready) return;
    enter(s);
    double now = d->host->now();
    if (s->flushing) {
        if (now >= s->flush_deadline && s->speech_unanswered_since) {
            /* speech went in and nothing came back: the backup hears it again */
            char why[160];
            d->watchdog++;
            snprintf(why, sizeof why, "Deepgram sent nothing for %.1f s after CloseStream, speech unanswered",
                     d->flush_timeout);
            fail(s, TOLK_E_TIMEOUT, TOLK_SEV_HIGH, why);
        } else if (now >= s->flush_deadline) {
            d->flush_timeouts++;
            d->host->log(d->inst, TOLK_LOG_WARN, "Deepgram did not close the stream %.1f s after CloseStream",
                         d->flush_timeout);
            if (s->ws) {
                d->host->ws_cancel(s->ws);
                s->ws = NULL;
            }
            flushed(s);
        }
        leave(s);
        return;
    }
    if (s->finalizing && now >= s->finalize_deadline) {
        d->finalize_timeouts++;
        TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "no from_finalize result in %.1f s: the phrase ends as heard",
                 d->finalize_timeout);
        phrase_end(s, 1);
    }
    if (live(s) && s->chunk_len && now - s->last_audio >= d->keepalive) send_chunk(s, 0);
    if (live(s) && now - s->last_audio >= d->keepalive && now - s->last_keepalive >= d->keepalive) {
        if (!s->samples_sent) {
            /* audio first: a stream that never had audio is closed anyway */
            int16_t silence[TOLK_FRAME_SAMPLES] = {0};
            chunk_add(s, silence, TOLK_FRAME_SAMPLES);
            s->offset_samples += TOLK_FRAME_SAMPLES;
            send_chunk(s, 1);
        } else if (send_text(s, "{\"type\":\"KeepAlive\"}")) {
            d->keepalives++;
        }
        s->last_keepalive = now;
    }
    if (live(s) && d->results_timeout > 0 && s->speech_unanswered_since &&
        now - s->speech_unanswered_since >= d->results_timeout) {
        char why[160];
        d->watchdog++;
        snprintf(why, sizeof why, "Deepgram sent nothing for %.1f s while the caller spoke", d->results_timeout);
        fail(s, TOLK_E_TIMEOUT, TOLK_SEV_HIGH, why);
    }
    leave(s);
}

/* ------------------------------------------------------------------ */
/* Reachability                                                        */

static void probe_start(dg *d);
static char *listen_url(const dg *d, const char *language);

static void on_prober(void *ud) {
    dg *d = ud;
    if (!d->probe) probe_start(d);
}

/* A connection opened: Deepgram answers again. */
static void reachable(dg *d) {
    d->connect_error[0] = '\0';
    if (!d->unreachable_since) return;
    d->host->log(d->inst, TOLK_LOG_INFO, "Deepgram reachable again after %.1f s",
                 d->host->now() - d->unreachable_since);
    d->unreachable_since = 0;
    if (d->prober) d->host->timer_stop(d->prober);
    d->prober = NULL;
}

/* A connection could not be opened: reported once, until one opens. */
static void unreachable(dg *d, const char *why) {
    snprintf(d->connect_error, sizeof d->connect_error, "%s", why);
    if (d->unreachable_since) return;
    d->unreachable_since = d->host->now();
    d->unreachable++;
    if (!d->prober)
        d->prober =
            d->host->timer_start(d->inst, d->probe_interval, d->probe_interval, on_prober, d);
    char msg[260];
    snprintf(msg, sizeof msg, "Deepgram unreachable: %s", why);
    d->host->report(d->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, msg);
}

static int any_open(const dg *d) {
    for (const dg_stream *o = d->streams; o; o = o->next)
        if (o->ready && live(o)) return 1;
    return 0;
}

/* Why a connection that never opened failed; NULL when Deepgram answered
 * (a refused key or too many streams: reachable, handled per stream). */
static const char *connect_failure(const tolk_ws_close_info *info, char *buf, size_t cap) {
    const char *reason = info->reason && *info->reason ? info->reason : NULL;
    if (info->http_status == 401 || info->http_status == 403 || info->http_status == 429)
        return NULL;
    if (info->http_status)
        snprintf(buf, cap, "upgrade refused (HTTP %d)", info->http_status);
    else if (info->status == TOLK_E_TIMEOUT)
        snprintf(buf, cap, "connection timed out%s%s", reason ? ": " : "", reason ? reason : "");
    else
        snprintf(buf, cap, "%s", reason ? reason : "no connection");
    return buf;
}

static void on_probe_open(void *ud, tolk_ws *ws) {
    dg *d = ud;
    reachable(d);
    d->host->ws_close(ws, 1000, "probe");
}

static void on_probe_message(void *ud, tolk_ws *ws, const void *data, size_t n, int binary) {
    (void)ud, (void)ws, (void)data, (void)n, (void)binary;
}

static void on_probe_close(void *ud, tolk_ws *ws, const tolk_ws_close_info *info) {
    dg *d = ud;
    (void)ws;
    d->probe = NULL;
    if (!d->unreachable_since) return; /* it opened */
    char why[200];
    if (info->http_status == 401 || info->http_status == 403) {
        d->refused++;
        d->refused_at = d->host->now();
    }
    if (connect_failure(info, why, sizeof why))
        snprintf(d->connect_error, sizeof d->connect_error, "%s", why);
    else
        reachable(d); /* it answered the upgrade */
}

static void probe_start(dg *d) {
    char *url = listen_url(d, d->language ? d->language : "en");
    if (!url) return;
    const char *headers[] = {d->auth_header, "User-Agent: tolk-stt_deepgram/1.0", NULL};
    tolk_ws_params wp = {.size = sizeof wp,
                         .url = url,
                         .headers = headers,
                         .ca_file = d->ca_file,
                         .insecure = d->insecure,
                         .connect_timeout = d->connect_timeout,
                         .max_message = 1 << 16,
                         .on_open = on_probe_open,
                         .on_message = on_probe_message,
                         .on_close = on_probe_close,
                         .ud = d};
    d->probes++;
    d->probe = d->host->ws_connect(d->inst, &wp);
    free(url);
}

/* ------------------------------------------------------------------ */
/* The WebSocket                                                        */

static void on_open(void *ud, tolk_ws *ws) {
    dg_stream *s = ud;
    (void)ws;
    if (!live(s)) return;
    reachable(s->d);
    s->ready = 1;
    s->last_audio = s->last_keepalive = s->d->host->now();
    enter(s);
    s->d->host->stt_ready(s->stream);
    leave(s);
}

static void on_close(void *ud, tolk_ws *ws, const tolk_ws_close_info *info) {
    dg_stream *s = ud;
    dg *d = s->d;
    (void)ws;
    s->ws = NULL; /* freed when we return */
    if (!live(s)) return;
    enter(s);
    d->last_close_code = info->code;
    d->last_http_status = info->http_status;
    char why[400];
    const char *reason = info->reason ? info->reason : "";
    if (s->flushing && info->status == TOLK_OK && (info->code == 1000 || info->code == 1005)) {
        flushed(s);
    } else if (info->http_status == 401 || info->http_status == 403) {
        d->refused++;
        d->refused_at = d->host->now();
        snprintf(why, sizeof why, "Deepgram refused the key (HTTP %d)", info->http_status);
        fail(s, TOLK_E_BACKEND, TOLK_SEV_PERMANENT, why);
    } else if (info->http_status == 429) {
        d->rate_limited++;
        snprintf(why, sizeof why, "Deepgram refused the stream: too many concurrent streams (HTTP 429)");
        fail(s, TOLK_E_AGAIN, TOLK_SEV_MEDIUM, why);
    } else if (info->http_status) {
        snprintf(why, sizeof why, "Deepgram refused the stream (HTTP %d)", info->http_status);
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
    } else if (info->code == 1008) {
        d->undecodable++;
        /* the audio is ours: a bug here, not Deepgram's */
        d->host->log(d->inst, TOLK_LOG_ERR,
                     "BUG: Deepgram could not decode our audio (close 1008 %s): sent %llu bytes in %llu binary "
                     "messages, the last %zu bytes, as encoding=linear16 sample_rate=%d channels=1",
                     reason, (unsigned long long)s->bytes_sent, (unsigned long long)s->audio_messages,
                     s->last_audio_message, TOLK_SAMPLE_RATE);
        snprintf(why, sizeof why, "Deepgram could not decode the audio (close 1008 %s)", reason);
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
    } else if (info->status == TOLK_E_TIMEOUT) {
        snprintf(why, sizeof why, "Deepgram connection timed out%s%s", *reason ? ": " : "", reason);
        fail(s, TOLK_E_TIMEOUT, TOLK_SEV_MEDIUM, why);
    } else if (info->code == 1006) {
        snprintf(why, sizeof why, "no connection to Deepgram (%s)", *reason ? reason : "dropped");
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
    } else {
        snprintf(why, sizeof why, "Deepgram closed the stream (%d%s%s)", info->code, *reason ? " " : "", reason);
        fail(s, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
    }
    /* after the stream's own failure, which the core recovers first; while
     * other streams are open Deepgram is reachable (the report would move
     * every call off it for one failed connect) */
    char cwhy[200];
    if (!s->ready && connect_failure(info, cwhy, sizeof cwhy)) {
        if (any_open(d))
            snprintf(d->connect_error, sizeof d->connect_error, "%s", cwhy);
        else
            unreachable(d, cwhy);
    }
    leave(s);
}

/* ------------------------------------------------------------------ */
/* The URL                                                             */

static void url_put(char **buf, size_t *len, size_t *cap, const char *s, int encode) {
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[4];
        const char *out = tmp;
        size_t n = 1;
        if (!encode || isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            tmp[0] = (char)c;
        } else {
            snprintf(tmp, sizeof tmp, "%%%02X", c);
            n = 3;
        }
        if (*len + n + 1 > *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            char *b = realloc(*buf, nc);
            if (!b) return;
            *buf = b;
            *cap = nc;
        }
        memcpy(*buf + *len, out, n);
        *len += n;
        (*buf)[*len] = '\0';
    }
}

static void param(char **buf, size_t *len, size_t *cap, const char *key, const char *value) {
    url_put(buf, len, cap, strchr(*buf, '?') ? "&" : "?", 0);
    url_put(buf, len, cap, key, 0);
    url_put(buf, len, cap, "=", 0);
    url_put(buf, len, cap, value, 1);
}

/* Flux: its own parameters; the language comes with the model, hints only on multi */
static char *flux_url(const dg *d, const char *language) {
    char *buf = NULL, num[32];
    size_t len = 0, cap = 0;
    url_put(&buf, &len, &cap, d->url, 0);
    url_put(&buf, &len, &cap, "/v2/listen", 0);
    param(&buf, &len, &cap, "model", d->model);
    param(&buf, &len, &cap, "encoding", "linear16");
    snprintf(num, sizeof num, "%d", TOLK_SAMPLE_RATE);
    param(&buf, &len, &cap, "sample_rate", num);
    if (d->eot_threshold > 0) {
        snprintf(num, sizeof num, "%g", d->eot_threshold);
        param(&buf, &len, &cap, "eot_threshold", num);
    }
    if (d->eager_eot_threshold > 0) {
        snprintf(num, sizeof num, "%g", d->eager_eot_threshold);
        param(&buf, &len, &cap, "eager_eot_threshold", num);
    }
    if (d->eot_timeout_ms > 0) {
        snprintf(num, sizeof num, "%d", d->eot_timeout_ms);
        param(&buf, &len, &cap, "eot_timeout_ms", num);
    }
    for (size_t i = 0; i < json_array_size(d->keyterms); i++)
        param(&buf, &len, &cap, "keyterm", json_string_value(json_array_get(d->keyterms, i)));
    if (strstr(d->model, "multi")) {
        if (json_array_size(d->language_hints))
            for (size_t i = 0; i < json_array_size(d->language_hints); i++)
                param(&buf, &len, &cap, "language_hint", json_string_value(json_array_get(d->language_hints, i)));
        else if (language && strcmp(language, "multi"))
            param(&buf, &len, &cap, "language_hint", language);
    }
    return buf;
}

static char *listen_url(const dg *d, const char *language) {
    if (d->flux) return flux_url(d, language);
    char *buf = NULL, num[32];
    size_t len = 0, cap = 0;
    url_put(&buf, &len, &cap, d->url, 0);
    url_put(&buf, &len, &cap, "/v1/listen", 0);
    param(&buf, &len, &cap, "model", d->model);
    param(&buf, &len, &cap, "language", language);
    param(&buf, &len, &cap, "encoding", "linear16");
    snprintf(num, sizeof num, "%d", TOLK_SAMPLE_RATE);
    param(&buf, &len, &cap, "sample_rate", num);
    param(&buf, &len, &cap, "channels", "1");
    param(&buf, &len, &cap, "interim_results", d->interim ? "true" : "false");
    snprintf(num, sizeof num, "%d", d->endpointing);
    param(&buf, &len, &cap, "endpointing", d->endpointing ? num : "false");
    if (d->utterance_end_ms && d->interim) {
        snprintf(num, sizeof num, "%d", d->utterance_end_ms);
        param(&buf, &len, &cap, "utterance_end_ms", num);
    }
    param(&buf, &len, &cap, "vad_events", d->vad_events ? "true" : "false");
    param(&buf, &len, &cap, "smart_format", d->smart_format ? "true" : "false");
    param(&buf, &len, &cap, "punctuate", d->punctuate ? "true" : "false");
    for (size_t i = 0; i < json_array_size(d->keyterms); i++)
        param(&buf, &len, &cap, "keyterm", json_string_value(json_array_get(d->keyterms, i)));
    return buf;
}

/* ------------------------------------------------------------------ */
/* The STT table                                                       */

static tolk_status dg_open(void *self, tolk_stream *stream, const tolk_stt_params *p, void **state) {
    dg *d = self;
    const char *language = d->language ? d->language : p && p->language ? p->language : "en";
    dg_stream *s = calloc(1, sizeof *s);
    if (!s) return TOLK_E_NOMEM;
    s->d = d;
    s->stream = stream;
    char *url = listen_url(d, language);
    if (!url) {
        free(s);
        return TOLK_E_NOMEM;
    }
    const char *headers[] = {d->auth_header, "User-Agent: tolk-stt_deepgram/1.0", NULL};
    tolk_ws_params wp = {.size = sizeof wp,
                         .url = url,
                         .headers = headers,
                         .ca_file = d->ca_file,
                         .insecure = d->insecure,
                         .connect_timeout = d->connect_timeout,
                         .ping_interval = 10,
                         .max_message = 1 << 20,
                         .on_open = on_open,
                         .on_message = on_message,
                         .on_close = on_close,
                         .ud = s};
    s->ws = d->host->ws_connect(d->inst, &wp);
    if (!s->ws) {
        d->host->log(d->inst, TOLK_LOG_ERR, "cannot connect to %s", url);
        free(url);
        free(s);
        return TOLK_E_INVAL;
    }
    double tick = d->keepalive;
    if (d->finalize_timeout < tick) tick = d->finalize_timeout;
    if (d->results_timeout > 0 && d->results_timeout < tick) tick = d->results_timeout;
    tick /= 4;
    if (tick < 0.02) tick = 0.02;
    if (tick > 1) tick = 1;
    s->tick = d->host->timer_start(d->inst, tick, tick, on_tick, s);
    TOLK_LOG(d->host, d->inst, TOLK_LOG_VERB, "%s leg %c: %s", p && p->channel_id ? p->channel_id : "?",
             p && p->leg == TOLK_LEG_B ? 'b' : 'a', url);
    free(url);
    s->next = d->streams;
    if (d->streams) d->streams->prev = s;
    d->streams = s;
    d->streams_opened++;
    *state = s;
    return TOLK_PENDING;
}

static void dg_close(void *state) {
    dg_stream *s = state;
    s->closed = 1;
    if (s->ws) {
        s->d->host->ws_cancel(s->ws);
        s->ws = NULL;
    }
    if (s->tick) {
        s->d->host->timer_stop(s->tick);
        s->tick = NULL;
    }
    if (!s->busy) stream_free(s);
}

static tolk_status dg_finalize(void *state) {
    dg_stream *s = state;
    if (!live(s) || s->flushing) return TOLK_DECLINED;
    send_chunk(s, 1);
    if (s->finalizing) return TOLK_PENDING; /* the one asked for is still due */
    /* Flux has no Finalize: ForceEndTurn ends the turn and its EndOfTurn follows */
    if (!send_text(s, s->d->flux ? "{\"type\":\"ForceEndTurn\"}" : "{\"type\":\"Finalize\"}"))
        return TOLK_DECLINED;
    s->finalizing = 1;
    s->finalize_deadline = s->d->host->now() + s->d->finalize_timeout;
    s->d->finalizes++;
    return TOLK_PENDING;
}

static tolk_status dg_flush(void *state) {
    dg_stream *s = state;
    if (!live(s)) return TOLK_OK;
    if (s->flushing) return TOLK_PENDING;
    send_chunk(s, 1);
    if (!send_text(s, "{\"type\":\"CloseStream\"}")) return TOLK_OK; /* closing: nothing more comes */
    s->flushing = 1;
    s->flush_deadline = s->d->host->now() + s->d->flush_timeout;
    return TOLK_PENDING;
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status dg_check_config(const json_t *cfg, tolk_config_error *err) {
    const char *url = json_string_value(json_object_get(cfg, "url"));
    if (url && strncmp(url, "ws://", 5) && strncmp(url, "wss://", 6)) {
        err->key = "url";
        snprintf(err->message, sizeof err->message, "must start with wss:// (or ws:// for a local test)");
        return TOLK_E_INVAL;
    }
    const char *api = json_string_value(json_object_get(cfg, "api"));
    if (api && strcmp(api, "v1") && strcmp(api, "v2")) {
        err->key = "api";
        snprintf(err->message, sizeof err->message, "'%s' is not v1 (Nova) or v2 (Flux)", api);
        return TOLK_E_INVAL;
    }
    const char *model = json_string_value(json_object_get(cfg, "model"));
    int flux = api && !strcmp(api, "v2");
    if (model && flux != !strncmp(model, "flux", 4)) {
        err->key = "model";
        snprintf(err->message, sizeof err->message, "%s", flux ? "api v2 takes only Flux models (flux-general-en, flux-general-multi)"
                                                                : "Flux models need api = \"v2\"");
        return TOLK_E_INVAL;
    }
    json_t *chunk = json_object_get(cfg, "chunk_ms");
    if (json_is_integer(chunk) && json_integer_value(chunk) % 20) {
        err->key = "chunk_ms";
        snprintf(err->message, sizeof err->message, "must be a multiple of 20 (whole frames)");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static void dg_destroy(void *self) {
    dg *d = self;
    while (d->streams) stream_free(d->streams);
    if (d->probe) d->host->ws_cancel(d->probe);
    if (d->prober) d->host->timer_stop(d->prober);
    free(d->url);
    free(d->auth_header);
    free(d->model);
    free(d->language);
    free(d->ca_file);
    json_decref(d->keyterms);
    json_decref(d->language_hints);
    free(d);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static tolk_status dg_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg, void **self) {
    if (!TOLK_HOST_HAS(host, stt_ready)) {
        host->log(inst, TOLK_LOG_ERR, "needs a tolkd with plugin ABI 1.2 (WebSocket client): this one has %u.%u",
                  host->abi_major, host->abi_minor);
        return TOLK_E_FATAL;
    }
    const char *key = host->cfg_string(cfg, "api_key");
    if (!key || !*key) key = getenv("DEEPGRAM_API_KEY");
    if (!key || !*key) {
        host->log(inst, TOLK_LOG_ERR, "no Deepgram key: set api_key or DEEPGRAM_API_KEY");
        return TOLK_E_INVAL;
    }
    dg *d = calloc(1, sizeof *d);
    if (!d) return TOLK_E_NOMEM;
    d->host = host;
    d->inst = inst;
    const char *url = host->cfg_string(cfg, "url");
    d->url = strdup(url ? url : DEFAULT_URL);
    if (d->url) {
        size_t n = strlen(d->url);
        while (n > 0 && d->url[n - 1] == '/') d->url[--n] = '\0';
    }
    size_t klen = strlen(key);
    d->auth_header = malloc(klen + 32);
    if (d->auth_header) snprintf(d->auth_header, klen + 32, "Authorization: Token %s", key);
    const char *api = host->cfg_string(cfg, "api");
    d->flux = api && !strcmp(api, "v2");
    const char *model = host->cfg_string(cfg, "model");
    d->model = strdup(model ? model : d->flux ? "flux-general-en" : "nova-3");
    d->eot_threshold = host->cfg_double(cfg, "eot_threshold");
    d->eager_eot_threshold = host->cfg_double(cfg, "eager_eot_threshold");
    d->eot_timeout_ms = (int)host->cfg_int(cfg, "eot_timeout_ms");
    d->language_hints = json_array();
    for (size_t i = 0; i < host->cfg_list_size(cfg, "language_hints"); i++)
        json_array_append_new(d->language_hints, json_string(host->cfg_list_string(cfg, "language_hints", i)));
    d->language = dup_or_null(host->cfg_string(cfg, "language"));
    d->ca_file = dup_or_null(host->cfg_string(cfg, "ca_file"));
    d->keyterms = json_array();
    for (size_t i = 0; i < host->cfg_list_size(cfg, "keyterms"); i++)
        json_array_append_new(d->keyterms, json_string(host->cfg_list_string(cfg, "keyterms", i)));
    d->interim = host->cfg_bool(cfg, "interim_results");
    d->vad_events = host->cfg_bool(cfg, "vad_events");
    d->smart_format = host->cfg_bool(cfg, "smart_format");
    d->punctuate = host->cfg_bool(cfg, "punctuate");
    d->insecure = host->cfg_bool(cfg, "insecure");
    d->endpointing = (int)host->cfg_int(cfg, "endpointing");
    d->utterance_end_ms = (int)host->cfg_int(cfg, "utterance_end_ms");
    int64_t chunk_ms = host->cfg_int(cfg, "chunk_ms");
    if (chunk_ms <= 0) chunk_ms = d->flux ? 80 : 20;
    d->chunk_bytes = (size_t)chunk_ms / 20 * TOLK_FRAME_BYTES;
    if (!d->chunk_bytes) d->chunk_bytes = TOLK_FRAME_BYTES;
    d->max_buffered = (size_t)host->cfg_int(cfg, "max_buffered");
    d->keepalive = host->cfg_double(cfg, "keepalive_interval");
    d->finalize_timeout = host->cfg_double(cfg, "finalize_timeout");
    d->flush_timeout = host->cfg_double(cfg, "flush_timeout");
    d->results_timeout = host->cfg_double(cfg, "results_timeout");
    d->connect_timeout = host->cfg_double(cfg, "connect_timeout");
    d->refused_hold = host->cfg_double(cfg, "refused_hold");
    d->probe_interval = host->cfg_double(cfg, "probe_interval");
    if (!d->url || !d->auth_header || !d->model || !d->keyterms || !d->language_hints || d->keepalive <= 0) {
        dg_destroy(d);
        return TOLK_E_NOMEM;
    }
    TOLK_LOG(host, inst, TOLK_LOG_VERB, "Deepgram at %s%s, model %s", d->url, d->flux ? "/v2/listen" : "/v1/listen",
             d->model);
    *self = d;
    return TOLK_OK;
}

static tolk_status dg_reset(void *self) {
    dg *d = self;
    d->refused_at = 0;
    return TOLK_OK;
}

static tolk_health dg_health(void *self, json_t **detail_new) {
    dg *d = self;
    size_t open = 0;
    for (dg_stream *s = d->streams; s; s = s->next) open++;
    int refused = d->refused_at > 0 && d->host->now() - d->refused_at < d->refused_hold;
    if (detail_new)
        *detail_new = json_pack(
            "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
            "s:I, s:i, s:i, s:s, s:I, s:I, s:I}",
            "url", d->url, "model", d->model, "streams", (json_int_t)d->streams_opened, "streams_open",
            (json_int_t)open, "messages", (json_int_t)d->messages, "malformed", (json_int_t)d->malformed,
            "failures", (json_int_t)d->failures, "refused", (json_int_t)d->refused, "rate_limited",
            (json_int_t)d->rate_limited, "undecodable", (json_int_t)d->undecodable, "watchdog",
            (json_int_t)d->watchdog, "backpressure", (json_int_t)d->backpressure, "keepalives",
            (json_int_t)d->keepalives, "finalizes", (json_int_t)d->finalizes, "finalize_timeouts",
            (json_int_t)d->finalize_timeouts, "flush_timeouts", (json_int_t)d->flush_timeouts, "finals",
            (json_int_t)d->finals, "partials", (json_int_t)d->partials, "utterance_ends",
            (json_int_t)d->utterance_ends, "speech_started", (json_int_t)d->speech_started,
            "last_close_code", d->last_close_code, "last_http_status", d->last_http_status, "api",
            d->flux ? "v2" : "v1", "eager_ends", (json_int_t)d->eager_ends, "turns_resumed",
            (json_int_t)d->turns_resumed, "errors", (json_int_t)d->errors);
    if (detail_new && *detail_new) {
        json_object_set_new(*detail_new, "reachable", json_boolean(!d->unreachable_since));
        json_object_set_new(*detail_new, "connect_error", json_string(d->connect_error));
        json_object_set_new(*detail_new, "unreachable", json_integer((json_int_t)d->unreachable));
        json_object_set_new(*detail_new, "probes", json_integer((json_int_t)d->probes));
    }
    return refused || d->unreachable_since ? TOLK_FAILED : TOLK_HEALTHY;
}

static const tolk_stt dg_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT),
            .name = "stt_deepgram",
            .version = "1.0.0",
            .description = "Deepgram live recognition (wss /v1/listen) over the core's WebSocket client",
            .options = dg_options,
            .check_config = dg_check_config,
            .create = dg_create,
            .destroy = dg_destroy,
            .reset = dg_reset,
            .health = dg_health,
        },
    .open = dg_open,
    .feed = dg_feed,
    .close = dg_close,
    .flush = dg_flush,
    .finalize = dg_finalize,
};

TOLK_PLUGIN_DEFINE(dg_desc)
