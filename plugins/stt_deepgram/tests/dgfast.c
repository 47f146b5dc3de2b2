/* dgfast: dgfake.py's twin in C, for load (bench/bench_cloud).
 *
 * dgfake.py (beside this file) is the faithful fake of Deepgram's live API
 * and the one the tests use; it runs a Python thread per stream and takes a
 * whole core at 400 streams (20 000 audio messages a second), so a bench at
 * that size measured the fake, not the plugin. This is the same normal
 * service on libwebsockets, one thread, one poll loop, 127.0.0.1 only:
 *
 *   - GET /v1/listen and /v2/listen upgrades with `Authorization: Token
 *     <key>` (or `Sec-WebSocket-Protocol: token, <key>`); no key or the key
 *     "invalid": HTTP 401 with dg-request-id and dg-error and the same JSON
 *     body; another path: 404;
 *   - the same recogniser in audio time (20 ms frames, RMS above 300 as
 *     audioop.rms computes it, bursts heard as the script's lines), the same
 *     messages with the same JSON fields in the same order, formatted as
 *     Python's json.dumps formats them: v1 Results (interim, two is_final
 *     segments, speech_final), SpeechStarted, UtteranceEnd, Metadata;
 *     KeepAlive, Finalize (from_finalize), CloseStream (last results,
 *     Metadata, close 1000); the inactivity close (Metadata, 1011
 *     NET-0001); an odd-length audio message: close 1008 DATA-0000. Flux
 *     (v2): Connected, TurnInfo StartOfTurn / Update / EagerEndOfTurn /
 *     TurnResumed / EndOfTurn, ForceEndTurn, sequence_id on every message.
 *
 * Not here: the test controls under /_fake/ (reset, config, plan,
 * connections) and with them every injected fault; they answer 404 (lws
 * answers refusals in HTTP/1.0 where dgfake.py says HTTP/1.1). The
 * configuration is on the command line instead. Fault tests use dgfake.py;
 * tests/dgtwin_test.py checks that both send the same messages for the
 * same audio.
 *
 * Usage: dgfast [--interim-ms N] [--eager-ms N] [--eot-ms N]
 *               [--idle-timeout S] [--script "line|line|..."] [--stats]
 *               PORTFILE [PORT]
 * (binds 127.0.0.1:PORT, default 0 = any, and writes the port to PORTFILE
 * once it listens, as dgfake.py does). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libwebsockets.h>

#define FRAME_MS 20
#define VOICED_RMS 300
#define WORD_MS 200
#define SEGMENT_SILENCE_MS 100
#define UPDATE_MS 240
#define MODEL_UUID "40bd3654-e622-47c4-a111-63a61b23bfe8"

/* ---- configuration ---- */

static int cfg_interim_ms = 200, cfg_eager_ms = 100, cfg_eot_ms = 300;
static double cfg_idle_timeout = 10.0;
/* --stats: how late the audio that ended each phrase came, against the
 * wall clock (the bench paces it in real time): the arrival of the frame
 * that completed the endpointing silence, minus that of the last voiced
 * frame, minus the silence. Printed on exit; the fake's own time is not in
 * it, the client's sending and the network's are. v1 only: Flux's audio
 * comes in 80 ms chunks, which blur it. */
static int cfg_stats;
static double *stat_lag;
static size_t stat_n, stat_cap;
static char **script_words[64]; /* each line's words, NULL-terminated */
static int script_n[64];
static int script_lines;
static volatile sig_atomic_t stopping;

static void die(const char *what) {
    fprintf(stderr, "dgfast: %s\n", what);
    exit(1);
}

static void *xmalloc_(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static void set_script(const char *spec) {
    script_lines = 0;
    char *copy = strdup(spec), *save = NULL;
    if (!copy) die("out of memory");
    for (char *line = strtok_r(copy, "|", &save); line && script_lines < 64;
         line = strtok_r(NULL, "|", &save)) {
        char **w = xmalloc_(sizeof(char *) * (strlen(line) / 2 + 2));
        int n = 0;
        char *s2 = NULL;
        for (char *word = strtok_r(line, " ", &s2); word; word = strtok_r(NULL, " ", &s2))
            w[n++] = strdup(word);
        w[n] = NULL;
        script_words[script_lines] = w;
        script_n[script_lines++] = n;
    }
    /* the words point into their own copies: the line buffer may go */
    free(copy);
    if (!script_lines) die("empty script");
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void new_uuid(char out[37]) {
    static uint64_t s;
    if (!s) s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&s;
    unsigned char b[16];
    for (int i = 0; i < 16; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        b[i] = (unsigned char)(s >> 24);
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* ---- messages, formatted as Python's json.dumps ---- */

typedef struct out {
    struct out *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE, then the message */
} out;

typedef struct sb {
    char *p;
    size_t len, cap;
} sb;

static void sb_put(sb *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap = b->cap ? b->cap * 2 : 1024;
        b->p = realloc(b->p, b->cap);
        if (!b->p) die("out of memory");
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}
static void sb_s(sb *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_f(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_f(sb *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* repr(round(x, nd)): for the small non-negative audio times here the
 * correctly rounded decimal with its trailing zeros dropped (one kept). */
static void sb_round(sb *b, double x, int nd) {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.*f", nd, x);
    char *dot = strchr(tmp, '.');
    if (dot) {
        char *e = tmp + strlen(tmp) - 1;
        while (e > dot + 1 && *e == '0') *e-- = '\0';
    }
    if (!strcmp(tmp, "-0.0")) memmove(tmp, tmp + 1, strlen(tmp));
    sb_s(b, tmp);
}

/* A JSON string as json.dumps writes it (ensure_ascii). */
static void sb_str(sb *b, const char *s) {
    sb_s(b, "\"");
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            char e[3] = {'\\', (char)c, 0};
            sb_s(b, e);
            p++;
        } else if (c < 0x20) {
            const char *e = c == '\n'   ? "\\n"
                            : c == '\r' ? "\\r"
                            : c == '\t' ? "\\t"
                            : c == '\b' ? "\\b"
                            : c == '\f' ? "\\f"
                                        : NULL;
            if (e)
                sb_s(b, e);
            else
                sb_f(b, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            sb_put(b, (const char *)p, 1);
            p++;
        } else {
            /* UTF-8 to a code point; invalid bytes pass as U+FFFD */
            unsigned cp = 0xFFFD;
            int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
            int ok = n > 0;
            unsigned v = c & (0x3F >> n);
            for (int i = 1; ok && i <= n; i++) {
                if ((p[i] & 0xC0) != 0x80)
                    ok = 0;
                else
                    v = (v << 6) | (p[i] & 0x3F);
            }
            if (ok) cp = v;
            p += ok ? n + 1 : 1;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                sb_f(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                sb_f(b, "\\u%04x", cp);
            }
        }
    }
    sb_s(b, "\"");
}

/* ---- one stream ---- */

typedef struct seg {
    int line;
    double start, end;
    int voiced_ms, done;
} seg;

typedef struct conn {
    struct lws *wsi;
    char request_id[37];
    int flux, rate, frame_bytes;
    int endpointing; /* -1: endpointing=false */
    int utterance_end_ms, interim, vad_events, eager;
    /* the audio not yet a whole frame */
    unsigned char *pending;
    int pending_len;
    long frames;
    int line; /* next script line */
    int has_seg;
    seg seg;
    int has_utterance;
    double utterance;
    int silence_ms;
    int closed, close_code;
    char close_reason[124];
    long sequence_id;
    /* Flux: the turn being heard (words of its finished bursts) */
    int has_turn;
    const char **turn_words;
    int turn_n, turn_cap;
    double turn_start;
    int turn_eager, since_update, turn_index;
    /* an incoming message, maybe in fragments */
    unsigned char *rx;
    size_t rx_len, rx_cap;
    int rx_binary;
    /* inactivity */
    double opened, last_frame;
    double voiced_at; /* --stats: when the last voiced frame came */
    int had_audio;
    out *q, *q_tail;
    sb msg;
} conn;

/* The scratch for the message being written: the type first. */
static sb *msg_begin(conn *c, const char *type) {
    c->msg.len = 0;
    sb_s(&c->msg, "{\"type\": ");
    sb_str(&c->msg, type);
    return &c->msg;
}

static void msg_send(conn *c) {
    if (c->closed) return;
    sb *b = &c->msg;
    if (c->flux) sb_f(b, ", \"sequence_id\": %ld", c->sequence_id++);
    sb_s(b, "}");
    out *o = xmalloc_(sizeof *o + LWS_PRE + b->len);
    o->next = NULL;
    o->len = b->len;
    memcpy(o->buf + LWS_PRE, b->p, b->len);
    if (c->q_tail)
        c->q_tail->next = o;
    else
        c->q = o;
    c->q_tail = o;
    lws_callback_on_writable(c->wsi);
}

/* The close goes once the messages before it are out. */
static void conn_close(conn *c, int code, const char *reason) {
    if (c->closed) return;
    c->closed = 1;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason);
    lws_callback_on_writable(c->wsi);
}

static double now_t(const conn *c) { return (double)(c->frames * FRAME_MS) / 1000.0; }

static void metadata(conn *c) {
    char created[40];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
    sb *b = msg_begin(c, "Metadata");
    sb_s(b, ", \"transaction_key\": \"deprecated\", \"request_id\": ");
    sb_str(b, c->request_id);
    sb_s(b, ", \"sha256\": \"incomplete\", \"created\": ");
    sb_str(b, created);
    sb_s(b, ", \"duration\": ");
    sb_round(b, now_t(c), 3);
    sb_s(b, ", \"channels\": 1, \"models\": [\"" MODEL_UUID "\"], \"model_info\": {\"" MODEL_UUID
            "\": {\"name\": \"general-nova-3\", \"version\": \"2025-04-17.21547\", \"arch\": "
            "\"nova-3\"}}");
    msg_send(c);
}

static void results(conn *c, const char *const *words, int n, double start, double end,
                    int is_final, int speech_final, int from_finalize) {
    sb *b = msg_begin(c, "Results");
    sb_s(b, ", \"channel_index\": [0, 1], \"duration\": ");
    sb_round(b, end - start, 6);
    sb_s(b, ", \"start\": ");
    sb_round(b, start, 6);
    sb_f(b, ", \"is_final\": %s, \"speech_final\": %s, \"from_finalize\": %s",
         is_final ? "true" : "false", speech_final ? "true" : "false",
         from_finalize ? "true" : "false");
    sb_s(b, ", \"channel\": {\"alternatives\": [{\"transcript\": ");
    sb tmp = {0};
    for (int i = 0; i < n; i++) {
        if (i) sb_s(&tmp, " ");
        sb_s(&tmp, words[i]);
    }
    sb_str(b, tmp.p ? tmp.p : "");
    free(tmp.p);
    sb_f(b, ", \"confidence\": %s, \"words\": [", n ? "0.98" : "0.0");
    double step = n ? (end - start) / n : 0;
    for (int i = 0; i < n; i++) {
        sb_s(b, i ? ", {\"word\": " : "{\"word\": ");
        sb_str(b, words[i]);
        sb_s(b, ", \"start\": ");
        sb_round(b, start + i * step, 4);
        sb_s(b, ", \"end\": ");
        sb_round(b, start + (i + 1) * step, 4);
        sb_s(b, ", \"confidence\": 0.98, \"punctuated_word\": ");
        sb_str(b, words[i]);
        sb_s(b, "}");
    }
    sb_s(b, "]}]}, \"metadata\": {\"request_id\": ");
    sb_str(b, c->request_id);
    sb_s(b, ", \"model_info\": {\"name\": \"general-nova-3\", \"version\": \"2025-04-17.21547\", "
            "\"arch\": "
            "\"nova-3\"}, \"model_uuid\": \"" MODEL_UUID "\"}");
    msg_send(c);
}

/* ---- the recogniser ---- */

static int seg_nwords(const conn *c) { return script_n[c->seg.line]; }
static const char *const *seg_words(const conn *c) {
    return (const char *const *)script_words[c->seg.line];
}

/* Python's floor division: a burst that has not had its first frame yet
 * (TurnResumed is sent before it counts) has heard nothing */
static int heard(const conn *c) {
    int v = c->seg.voiced_ms - FRAME_MS;
    int n = 1 + (v >= 0 ? v / WORD_MS : -((-v + WORD_MS - 1) / WORD_MS));
    return n < seg_nwords(c) ? n : seg_nwords(c);
}

static void word_times(const conn *c, int a, int bb, double *ta, double *tb) {
    int nw = seg_nwords(c);
    double span = (c->seg.end - c->seg.start) / (nw > 1 ? nw : 1);
    *ta = c->seg.start + a * span;
    *tb = c->seg.start + bb * span;
}

static void stat_add(const conn *c, int silence_ms) {
    if (!cfg_stats) return;
    if (stat_n == stat_cap) {
        stat_cap = stat_cap ? stat_cap * 2 : 4096;
        stat_lag = realloc(stat_lag, stat_cap * sizeof(double));
        if (!stat_lag) die("out of memory");
    }
    stat_lag[stat_n++] = (mono() - c->voiced_at) * 1000.0 - silence_ms;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void stat_print(void) {
    if (!cfg_stats) return;
    if (!stat_n) {
        fprintf(stderr, "dgfast: no phrase ended on silence\n");
        return;
    }
    qsort(stat_lag, stat_n, sizeof(double), cmp_double);
    fprintf(
        stderr,
        "dgfast: %zu phrases ended on silence; the audio that ended them came late by p50 %.2f ms, "
        "p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
        stat_n, stat_lag[stat_n / 2], stat_lag[stat_n * 9 / 10], stat_lag[stat_n * 99 / 100],
        stat_lag[stat_n - 1]);
}

static void finish_segment(conn *c, int speech_final) {
    const char *const *w = seg_words(c);
    int nw = seg_nwords(c), done = c->seg.done, rest = nw - done;
    double a, bb;
    if (rest <= 0) {
        if (speech_final) results(c, NULL, 0, c->seg.end, c->seg.end, 1, 1, 0);
    } else if (rest == 1) {
        word_times(c, done, nw, &a, &bb);
        results(c, w + done, 1, a, bb, 1, speech_final, 0);
    } else {
        int half = done + rest / 2;
        word_times(c, done, half, &a, &bb);
        results(c, w + done, half - done, a, bb, 1, 0, 0);
        word_times(c, half, nw, &a, &bb);
        results(c, w + half, nw - half, a, bb, 1, speech_final, 0);
    }
    c->has_utterance = 1;
    c->utterance = c->seg.end;
    c->has_seg = 0;
}

static void new_seg(conn *c, double t) {
    c->seg = (seg){.line = c->line % script_lines, .start = t, .end = t};
    c->line++;
    c->has_seg = 1;
}

/* ---- Flux: turns ---- */

static void turn_push(conn *c, const char *w) {
    if (c->turn_n == c->turn_cap) {
        c->turn_cap = c->turn_cap ? c->turn_cap * 2 : 16;
        c->turn_words = realloc(c->turn_words, sizeof(char *) * (size_t)c->turn_cap);
        if (!c->turn_words) die("out of memory");
    }
    c->turn_words[c->turn_n++] = w;
}

/* The turn's words: its finished bursts', then those heard of the burst
 * going on, in a new array (*w, to free). Returns how many. */
static int turn_all(const conn *c, const char ***w) {
    int extra = c->has_seg ? heard(c) - c->seg.done : 0;
    if (extra < 0) extra = 0;
    const char **all = xmalloc_(sizeof(char *) * (size_t)(c->turn_n + extra + 1));
    for (int i = 0; i < c->turn_n; i++) all[i] = c->turn_words[i];
    for (int i = 0; i < extra; i++) all[c->turn_n + i] = seg_words(c)[c->seg.done + i];
    *w = all;
    return c->turn_n + extra;
}

static void turn_info(conn *c, const char *event, const char *confidence) {
    const char **w;
    int n = turn_all(c, &w);
    sb *b = msg_begin(c, "TurnInfo");
    sb_s(b, ", \"request_id\": ");
    sb_str(b, c->request_id);
    sb_s(b, ", \"event\": ");
    sb_str(b, event);
    sb_f(b, ", \"turn_index\": %d, \"audio_window_start\": ", c->turn_index);
    sb_round(b, c->turn_start, 6);
    sb_s(b, ", \"audio_window_end\": ");
    sb_round(b, now_t(c), 6);
    sb_s(b, ", \"transcript\": ");
    sb tmp = {0};
    for (int i = 0; i < n; i++) {
        if (i) sb_s(&tmp, " ");
        sb_s(&tmp, w[i]);
    }
    sb_str(b, tmp.p ? tmp.p : "");
    free(tmp.p);
    sb_s(b, ", \"words\": [");
    for (int i = 0; i < n; i++) {
        sb_s(b, i ? ", {\"word\": " : "{\"word\": ");
        sb_str(b, w[i]);
        sb_s(b, ", \"confidence\": 0.98}");
    }
    sb_f(b, "], \"end_of_turn_confidence\": %s", confidence);
    free(w);
    msg_send(c);
}

static void turn_open(conn *c) {
    c->has_turn = 1;
    c->turn_n = 0;
    c->turn_start = now_t(c);
    c->turn_eager = 0;
    c->since_update = 0;
}

static void end_turn(conn *c) {
    /* a burst still being heard goes on in the next turn with its other words */
    const char **w;
    int n = turn_all(c, &w);
    c->turn_n = 0;
    for (int i = 0; i < n; i++) turn_push(c, w[i]);
    free(w);
    if (c->has_seg) {
        int h = heard(c);
        if (h > c->seg.done) c->seg.done = h;
    }
    turn_info(c, "EndOfTurn", "0.9");
    c->has_turn = 0;
    c->turn_n = 0;
    c->turn_index++;
}

/* audioop.rms: the integer part of the root mean square */
static int frame_voiced(const unsigned char *pcm, int bytes) {
    int n = bytes / 2;
    if (!n) return 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        int16_t x = (int16_t)(pcm[2 * i] | (pcm[2 * i + 1] << 8));
        sum += (double)x * (double)x;
    }
    unsigned rms = (unsigned)sqrt(sum / (double)n);
    return rms > VOICED_RMS;
}

static void on_frame_flux(conn *c, int voiced) {
    double t = now_t(c);
    c->frames++;
    if (voiced) {
        if (!c->has_turn) {
            c->has_turn = 1;
            c->turn_n = 0;
            c->turn_start = t;
            c->turn_eager = 0;
            c->since_update = 0;
            turn_info(c, "StartOfTurn", "0.01");
        }
        if (!c->has_seg) {
            new_seg(c, t);
            if (c->turn_eager) {
                c->turn_eager = 0;
                turn_info(c, "TurnResumed", "0.2");
            }
        }
        c->silence_ms = 0;
        c->seg.voiced_ms += FRAME_MS;
        c->seg.end = t + FRAME_MS / 1000.0;
        if (cfg_stats) c->voiced_at = mono();
    } else if (c->has_turn) {
        c->silence_ms += FRAME_MS;
        if (c->has_seg && c->silence_ms >= SEGMENT_SILENCE_MS) {
            for (int i = c->seg.done; i < seg_nwords(c); i++) turn_push(c, seg_words(c)[i]);
            c->has_seg = 0;
        }
        if (c->eager && !c->turn_eager && c->silence_ms >= cfg_eager_ms) {
            c->turn_eager = 1;
            turn_info(c, "EagerEndOfTurn", "0.6");
        }
        if (c->silence_ms >= cfg_eot_ms) {
            end_turn(c);
            return;
        }
    }
    if (c->has_turn) {
        c->since_update += FRAME_MS;
        if (c->since_update >= UPDATE_MS) {
            c->since_update = 0;
            turn_info(c, "Update", "0.1");
        }
    }
}

static void on_frame(conn *c, const unsigned char *pcm) {
    int voiced = frame_voiced(pcm, c->frame_bytes);
    if (c->flux) {
        on_frame_flux(c, voiced);
        return;
    }
    double t = now_t(c);
    c->frames++;
    if (voiced) {
        c->silence_ms = 0;
        c->has_utterance = 0;
        if (!c->has_seg) {
            new_seg(c, t);
            if (c->vad_events) {
                sb *b = msg_begin(c, "SpeechStarted");
                sb_s(b, ", \"channel\": [0, 1], \"timestamp\": ");
                sb_round(b, t, 4);
                msg_send(c);
            }
        }
        c->seg.voiced_ms += FRAME_MS;
        c->seg.end = t + FRAME_MS / 1000.0;
        if (cfg_stats) c->voiced_at = mono();
        if (c->interim && c->seg.voiced_ms % cfg_interim_ms == 0) {
            int n = heard(c);
            if (n > c->seg.done) {
                double a, bb;
                word_times(c, c->seg.done, n, &a, &bb);
                results(c, seg_words(c) + c->seg.done, n - c->seg.done, a, c->seg.end, 0, 0, 0);
            }
        }
        return;
    }
    c->silence_ms += FRAME_MS;
    if (c->has_seg) {
        if (c->endpointing >= 0 &&
            c->silence_ms >= (c->endpointing > FRAME_MS ? c->endpointing : FRAME_MS)) {
            stat_add(c, c->silence_ms);
            finish_segment(c, 1);
        } else if (c->endpointing < 0 && c->silence_ms >= SEGMENT_SILENCE_MS)
            finish_segment(c, 0);
    }
    if (c->has_utterance && c->utterance_end_ms && c->interim &&
        c->silence_ms >= c->utterance_end_ms) {
        sb *b = msg_begin(c, "UtteranceEnd");
        sb_s(b, ", \"channel\": [0, 1], \"last_word_end\": ");
        sb_round(b, c->utterance, 4);
        msg_send(c);
        c->has_utterance = 0;
    }
}

static void on_audio(conn *c, const unsigned char *data, size_t len) {
    if (len % 2) {
        conn_close(c, 1008, "DATA-0000");
        return;
    }
    while (len && !c->closed) {
        size_t take = (size_t)(c->frame_bytes - c->pending_len);
        if (take > len) take = len;
        memcpy(c->pending + c->pending_len, data, take);
        c->pending_len += (int)take;
        data += take;
        len -= take;
        if (c->pending_len == c->frame_bytes) {
            on_frame(c, c->pending);
            c->pending_len = 0;
        }
    }
}

static void on_text(conn *c, const char *data, size_t len) {
    json_t *j = json_loadb(data, len, 0, NULL);
    const char *kind = json_is_object(j) ? json_string_value(json_object_get(j, "type")) : NULL;
    if (!kind) kind = "";
    if (c->flux && !strcmp(kind, "ForceEndTurn")) {
        if (!c->has_turn) turn_open(c);
        end_turn(c);
    } else if (c->flux && !strcmp(kind, "CloseStream")) {
        if (c->has_turn) end_turn(c);
        conn_close(c, 1000, "");
    } else if (!strcmp(kind, "Finalize")) {
        if (c->has_seg) {
            int n = heard(c);
            if (n > c->seg.done) {
                double a, bb;
                word_times(c, c->seg.done, n, &a, &bb);
                results(c, seg_words(c) + c->seg.done, n - c->seg.done, a, bb, 1, 0, 1);
                c->seg.done = n;
            }
        }
    } else if (!strcmp(kind, "CloseStream")) {
        if (c->has_seg) finish_segment(c, 1);
        metadata(c);
        conn_close(c, 1000, "");
    }
    json_decref(j);
}

/* ---- the connection ---- */

static const char *query_arg(struct lws *wsi, const char *name, char *buf, int cap) {
    size_t nl = strlen(name);
    for (int i = 0; lws_hdr_copy_fragment(wsi, buf, cap, WSI_TOKEN_HTTP_URI_ARGS, i) > 0; i++)
        if (!strncmp(buf, name, nl) && buf[nl] == '=') return buf + nl + 1;
    return NULL;
}

static int api_key_ok(struct lws *wsi) {
    char buf[512];
    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
        !strncmp(buf, "Token ", 6)) {
        char *k = buf + 6;
        while (*k == ' ') k++;
        size_t n = strlen(k);
        while (n && k[n - 1] == ' ') k[--n] = '\0';
        return n && strcmp(k, "invalid") != 0;
    }
    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_PROTOCOL) > 0) {
        /* "token, <key>" */
        char *comma = strchr(buf, ',');
        if (!comma) return 0;
        *comma = '\0';
        char *k = comma + 1;
        while (*k == ' ') k++;
        return !strcmp(buf, "token") && *k && !strchr(k, ',') && strcmp(k, "invalid") != 0;
    }
    return 0;
}

/* An HTTP answer with a JSON body; nonzero: the connection goes after it. */
static int http_json(struct lws *wsi, int status, const char *body, const char *request_id,
                     const char *dg_error) {
    unsigned char buf[LWS_PRE + 2048], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf;
    size_t n = strlen(body);
    if (lws_add_http_common_headers(wsi, (unsigned)status, "application/json", n, &p, end))
        return -1;
    if (request_id && (lws_add_http_header_by_name(wsi, (const unsigned char *)"dg-request-id:",
                                                   (const unsigned char *)request_id,
                                                   (int)strlen(request_id), &p, end) ||
                       lws_add_http_header_by_name(
                           wsi, (const unsigned char *)"dg-error:", (const unsigned char *)dg_error,
                           (int)strlen(dg_error), &p, end)))
        return -1;
    if (lws_add_http_header_by_name(
            wsi, (const unsigned char *)"connection:", (const unsigned char *)"close", 5, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
    memcpy(buf + LWS_PRE, body, n);
    if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP_FINAL) != (int)n) return -1;
    return 1;
}

/* The request id of the upgrade being answered, for its stream's Connected
 * (dgfake.py's Results carry another one, its stream's: so do these). */
static char upgrade_request_id[37];

static void conn_free(conn *c) {
    while (c->q) {
        out *o = c->q;
        c->q = o->next;
        free(o);
    }
    free(c->pending);
    free(c->rx);
    free(c->turn_words);
    free(c->msg.p);
    free(c);
}

static void arm_idle(conn *c) {
    double ref = c->had_audio ? c->last_frame : c->opened;
    double left = ref + cfg_idle_timeout - mono();
    if (left < 0.001) left = 0.001;
    lws_set_timer_usecs(c->wsi, (lws_usec_t)(left * 1e6));
}

static int on_established(struct lws *wsi, conn **slot) {
    conn *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    *slot = c;
    c->wsi = wsi;
    /* Deepgram's servers send at once: without TCP_NODELAY a message right
     * after another waits for the client's next packet (the next audio
     * frame, 20 ms); lws sets it too, this makes sure */
    int one = 1;
    setsockopt(lws_get_socket_fd(wsi), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char path[64] = "", arg[256];
    lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI);
    c->flux = !strcmp(path, "/v2/listen");
    new_uuid(c->request_id);
    const char *v = query_arg(wsi, "sample_rate", arg, sizeof arg);
    c->rate = v ? atoi(v) : 16000;
    if (c->rate <= 0) c->rate = 16000;
    c->frame_bytes = c->rate * FRAME_MS / 1000 * 2;
    c->pending = xmalloc_((size_t)c->frame_bytes);
    v = query_arg(wsi, "endpointing", arg, sizeof arg);
    c->endpointing = !v ? 10 : !strcmp(v, "false") ? -1 : atoi(v);
    v = query_arg(wsi, "utterance_end_ms", arg, sizeof arg);
    c->utterance_end_ms = v && *v ? atoi(v) : 0;
    v = query_arg(wsi, "interim_results", arg, sizeof arg);
    c->interim = v && !strcmp(v, "true");
    v = query_arg(wsi, "vad_events", arg, sizeof arg);
    c->vad_events = v && !strcmp(v, "true");
    c->eager = query_arg(wsi, "eager_eot_threshold", arg, sizeof arg) != NULL;
    c->opened = c->last_frame = mono();
    arm_idle(c);
    if (c->flux) {
        sb *b = msg_begin(c, "Connected");
        sb_s(b, ", \"request_id\": ");
        sb_str(b, upgrade_request_id);
        msg_send(c);
    }
    return 0;
}

static int on_receive(conn *c, struct lws *wsi, const void *in, size_t len) {
    if (lws_is_first_fragment(wsi)) {
        c->rx_len = 0;
        c->rx_binary = lws_frame_is_binary(wsi);
    }
    if (c->rx_len + len > c->rx_cap) {
        while (c->rx_len + len > c->rx_cap) c->rx_cap = c->rx_cap ? c->rx_cap * 2 : 4096;
        c->rx = realloc(c->rx, c->rx_cap);
        if (!c->rx) die("out of memory");
    }
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi)) return 0;
    c->last_frame = mono();
    if (c->closed) return 0;
    if (c->rx_binary) {
        c->had_audio = 1;
        on_audio(c, c->rx, c->rx_len);
    } else {
        on_text(c, (const char *)c->rx, c->rx_len);
    }
    return 0;
}

static int on_writeable(conn *c, struct lws *wsi) {
    while (c->q) {
        if (lws_send_pipe_choked(wsi)) {
            lws_callback_on_writable(wsi);
            return 0;
        }
        out *o = c->q;
        if (lws_write(wsi, o->buf + LWS_PRE, o->len, LWS_WRITE_TEXT) < (int)o->len) return -1;
        c->q = o->next;
        if (!c->q) c->q_tail = NULL;
        free(o);
    }
    if (c->closed && c->close_code) {
        lws_close_reason(wsi, (enum lws_close_status)c->close_code,
                         (unsigned char *)c->close_reason, strlen(c->close_reason));
        c->close_code = 0;
        return -1;
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
    conn **slot = user;
    conn *c = slot ? *slot : NULL;
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: {
        char path[64] = "";
        lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI);
        new_uuid(upgrade_request_id);
        char body[256];
        if (strcmp(path, "/v1/listen") && strcmp(path, "/v2/listen")) {
            snprintf(
                body, sizeof body,
                "{\"err_code\": \"NOT_FOUND\", \"err_msg\": \"Not found\", \"request_id\": \"%s\"}",
                upgrade_request_id);
            return http_json(wsi, 404, body, NULL, NULL);
        }
        if (!api_key_ok(wsi)) {
            snprintf(body, sizeof body,
                     "{\"err_code\": \"INVALID_AUTH\", \"err_msg\": \"Invalid credentials.\", "
                     "\"request_id\": "
                     "\"%s\"}",
                     upgrade_request_id);
            return http_json(wsi, 401, body, upgrade_request_id, "Invalid credentials.");
        }
        return 0;
    }
    case LWS_CALLBACK_ADD_HEADERS: {
        struct lws_process_html_args *args = in;
        if (lws_add_http_header_by_name(
                wsi,
                (const unsigned char *)"dg-request-id:", (const unsigned char *)upgrade_request_id,
                36, (unsigned char **)&args->p, (unsigned char *)args->p + args->max_len))
            return 1;
        return 0;
    }
    case LWS_CALLBACK_HTTP:
        /* no test controls here (dgfake.py has them) */
        if (http_json(wsi, 404, "{\"err_msg\": \"no such control\"}", NULL, NULL) < 0) return -1;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_ESTABLISHED: return on_established(wsi, slot);
    case LWS_CALLBACK_RECEIVE: return c ? on_receive(c, wsi, in, len) : 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: return c ? on_writeable(c, wsi) : 0;
    case LWS_CALLBACK_TIMER:
        if (!c || c->closed) return 0;
        if (mono() - (c->had_audio ? c->last_frame : c->opened) >= cfg_idle_timeout) {
            metadata(c);
            conn_close(c, 1011,
                       "Deepgram did not receive audio data or a text message within the timeout "
                       "window. See "
                       "https://dpgr.am/net0001");
        } else {
            arm_idle(c);
        }
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (c) {
            lws_set_timer_usecs(wsi, LWS_SET_TIMER_USEC_CANCEL);
            conn_free(c);
            *slot = NULL;
        }
        return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* Named "token" so that `Sec-WebSocket-Protocol: token, <key>` selects it
 * and is answered "token", as dgfake.py answers the first one offered. */
static const struct lws_protocols protocols[] = {
    {"token", callback, sizeof(conn *), 8192, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void on_stop(int sig) {
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"interim-ms", required_argument, NULL, 'i'},
                                         {"eager-ms", required_argument, NULL, 'e'},
                                         {"eot-ms", required_argument, NULL, 'o'},
                                         {"idle-timeout", required_argument, NULL, 't'},
                                         {"script", required_argument, NULL, 's'},
                                         {"stats", no_argument, NULL, 'S'},
                                         {NULL, 0, NULL, 0}};
    set_script("hello world|thank you|good morning");
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'i': cfg_interim_ms = atoi(optarg); break;
        case 'e': cfg_eager_ms = atoi(optarg); break;
        case 'o': cfg_eot_ms = atoi(optarg); break;
        case 't': cfg_idle_timeout = atof(optarg); break;
        case 's': set_script(optarg); break;
        case 'S': cfg_stats = 1; break;
        default: return 2;
        }
    }
    if (optind >= argc || cfg_interim_ms <= 0) {
        fprintf(stderr,
                "usage: dgfast [--interim-ms N] [--eager-ms N] [--eot-ms N] [--idle-timeout S] "
                "[--script \"line|line\"] [--stats] PORTFILE [PORT]\n");
        return 2;
    }
    const char *portfile = argv[optind];
    int want = optind + 1 < argc ? atoi(argv[optind + 1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    /* one fd per stream: the bench opens hundreds */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = want;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.server_string = "dgfast";
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.fd_limit_per_thread = 8192;
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) die("lws_create_context failed");
    struct lws_vhost *vh = lws_get_vhost_by_name(ctx, "default");
    int port = vh ? lws_get_vhost_listen_port(vh) : -1;
    if (port <= 0) die("not listening");
    char *tmp = xmalloc_(strlen(portfile) + 8);
    sprintf(tmp, "%s.tmp", portfile);
    FILE *f = fopen(tmp, "w");
    if (!f) die("cannot write the port file");
    fprintf(f, "%d", port);
    fclose(f);
    if (rename(tmp, portfile) != 0) die("cannot rename the port file");
    free(tmp);
    while (!stopping)
        if (lws_service(ctx, 0) < 0) break;
    lws_context_destroy(ctx);
    stat_print();
    return 0;
}
