/*
 * transport_rtp -- phone calls from Asterisk: call control over ARI (the
 * Asterisk REST Interface) and the audio of each party through an
 * ExternalMedia channel (RTP here; AudioSocket and WebSocket share media.h).
 *
 * The dialplan hands a call to the Stasis application:
 *
 *     exten => _X.,1,Stasis(tolk,dial=PJSIP/${EXTEN}@trunk,a_endpoint=alice)
 *
 * Arguments are key=value (a bare first argument is the dial string):
 *   dial=        who to call (an Asterisk dial string: PJSIP/bob, Local/x@ctx/n)
 *   a_endpoint=, b_endpoint=   endpoint names from conf.d (language, voice)
 *   a_language=, b_language=   override the languages
 *   a_voice=, b_voice=         override the voices
 *   mode=        bidirectional, unidirectional or passthrough
 * The arguments also go to the call's recognisers (tolk_channel_info.options).
 *
 * What tolk does with the call (A, the caller, is already in Stasis):
 *   answer A, open the call in the core (awaiting the answer), originate B
 *   into the same application, and, per translated party, a mixing bridge
 *   holding the party's channel and one ExternalMedia channel: what tolk
 *   receives from it is that party's voice, what tolk sends into it is what
 *   that party hears. The parties never share a bridge, so neither hears
 *   the other's original voice. In passthrough (by mode, or for a call over
 *   core.max_channels with over_limit = "passthrough") A and B share one
 *   bridge and no ExternalMedia channel exists. A direction that falls back
 *   to passthrough mid-call is relayed by the core through the media links
 *   (direction_mode declines), so the parties always hear each other.
 *
 * Either party hanging up (ChannelHangupRequest, StasisEnd, ChannelDestroyed)
 * or the core ending the call tears everything down: every channel and
 * bridge of the call is DELETEd.
 *
 * The events WebSocket (/ari/events?app=NAME) is connected at start(): the
 * Stasis application exists only while it is. When it drops, it is
 * reconnected with a growing delay (reconnect_min..reconnect_max); once it
 * is back, GET /channels tells which calls survived, and the others end.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <tolk/plugin.h>

#include "media.h"
#include "media_options.h"

#define PLUGIN_NAME "transport_rtp"
#define ID_MAX 128
#define URL_MAX 2048

/* The encapsulations, by the `media` setting (docs/asterisk.md says which
 * suits which Asterisk). */
static const tr_media_ops *const media_table[] = {
    &tr_media_rtp,
    &tr_media_audiosocket,
    &tr_media_websocket,
    NULL,
};

typedef enum party { PA = 0, PB = 1 } party;

typedef struct rtp_transport rtp_transport;
typedef struct call call;

typedef struct leg_ref {
    call *c;
    tolk_leg leg;
} leg_ref;

struct call {
    rtp_transport *t;
    call *prev, *next;
    int refs;     /* the list, plus REST requests in flight */
    int ending;   /* torn down; waiting for refs to drop */
    char id[96];             /* tolk's call id: the prefix of every id below */
    char chan[2][ID_MAX];    /* the parties' channels */
    char em[2][ID_MAX];      /* their ExternalMedia channels */
    char bridge[2][ID_MAX];  /* one bridge per party; bridge[0] alone when direct */
    int chan_gone[2], em_gone[2];
    int bridge_made[2], em_made[2], em_in[2], party_in[2], bridged[2];
    tr_media *m[2];
    leg_ref lref[2];
    tolk_channel *ch;
    int direct;  /* A and B in one bridge: passthrough */
    int answered;
    int ringing_told;
    char *dial;
    char *endpoint[2], *language[2], *voice[2];
    tolk_mode mode;
    json_t *options;
};

struct rtp_transport {
    const tolk_host *host;
    tolk_instance *inst;
    const tr_media_ops *media;
    tr_media_hub *hub;
    char *base;     /* http://host:port (no trailing slash) */
    char *ws_base;  /* ws://host:port */
    char *app;
    char *auth;     /* "Authorization: Basic ..." */
    char *dial_default;
    char *over_limit;
    tolk_mode mode;
    double rest_timeout, originate_timeout, ping_interval, reconnect_min, reconnect_max;
    int started, stopping;
    tolk_ws *ws;
    int connected, ever_connected;
    int failing; /* a connection failed or dropped, none made since */
    double backoff;
    tolk_timer *reconnect;
    call *calls;
    struct rest *rests;
    struct retry *retries;
    unsigned long seq;
    unsigned rand_tag;
    /* counters for health() and the tests */
    tr_media_stats media_done; /* counters of links that have closed */
    uint64_t n_calls, n_refused, n_direct, n_events, n_bad_events, n_rest_errors, n_reconnects,
        n_dtmf, n_survived, n_lost_calls;
};

/* ------------------------------------------------------------------ */
/* Settings                                                            */

static const tolk_option options[] = {
    {"url", TOLK_OPT_STRING, 0, "http://127.0.0.1:8088", 0, 0,
     "Asterisk's HTTP server (http.conf), ARI under /ari"},
    {"user", TOLK_OPT_STRING, 0, NULL, 0, 0, "ARI user (ari.conf); else env TOLK_ARI_USER"},
    {"password", TOLK_OPT_STRING, TOLK_OPT_SECRET, NULL, 0, 0,
     "ARI password; else env TOLK_ARI_PASSWORD"},
    {"app", TOLK_OPT_STRING, 0, "tolk", 0, 0, "Stasis application name (dialplan Stasis(NAME,...))"},
    {"media", TOLK_OPT_STRING, 0, "websocket", 0, 0,
     "ExternalMedia encapsulation: websocket (chan_websocket, Asterisk 22.6+: 16 kHz both ways, "
     "played-out feedback), audiosocket (22.7+ for 16 kHz labels), rtp (every Asterisk; 8 kHz "
     "back)"},
    {"dial", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "callee dial string when the Stasis arguments name none (else such a call is refused)"},
    {"mode", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "bidirectional, unidirectional or passthrough (unset: the core's defaults.mode)"},
    {"over_limit", TOLK_OPT_STRING, 0, "passthrough", 0, 0,
     "a call over core.max_channels: passthrough (bridged untranslated) or dialplan (continue)"},
    {"rest_timeout", TOLK_OPT_DOUBLE, 0, "10", 0.1, 600, "seconds for one ARI request"},
    {"originate_timeout", TOLK_OPT_INT, 0, "45", 1, 3600, "seconds the callee may ring"},
    {"ping_interval", TOLK_OPT_DOUBLE, 0, "5", 0.2, 3600,
     "seconds between pings on the events socket (a stalled socket is reconnected)"},
    {"reconnect_min", TOLK_OPT_DOUBLE, 0, "0.5", 0.05, 600, "first reconnect delay, seconds"},
    {"reconnect_max", TOLK_OPT_DOUBLE, 0, "10", 0.05, 3600, "longest reconnect delay, seconds"},
    {"rtp_bind", TOLK_OPT_STRING, 0, "127.0.0.1", 0, 0, "IPv4 address the RTP sockets bind to"},
    {"rtp_external_host", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "address Asterisk sends RTP to (unset: rtp_bind)"},
    {"rtp_port_min", TOLK_OPT_INT, 0, "0", 0, 65535, "RTP port range (0: any free port)"},
    {"rtp_port_max", TOLK_OPT_INT, 0, "0", 0, 65535, "RTP port range, last port"},
    {"rtp_shared_port", TOLK_OPT_INT, 0, "0", 0, 65535,
     "> 0: one RTP socket on this port for every call, told apart by Asterisk's port"},
    {"rtp_codec", TOLK_OPT_STRING, 0, "slin16", 0, 0,
     "slin16 (16 kHz from Asterisk, 8 kHz L16 back), ulaw or alaw (both ways)"},
    {"rtp_reorder_frames", TOLK_OPT_INT, 0, "3", 1, 12,
     "packets that may overtake a missing one before it counts as lost"},
    TR_MEDIA_AUDIOSOCKET_OPTIONS
    TR_MEDIA_WEBSOCKET_OPTIONS
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static tolk_mode mode_of(const char *s, int *ok) {
    *ok = 1;
    if (!s || !*s) return TOLK_MODE_DEFAULT;
    if (!strcmp(s, "bidirectional")) return TOLK_MODE_BIDIRECTIONAL;
    if (!strcmp(s, "unidirectional")) return TOLK_MODE_UNIDIRECTIONAL;
    if (!strcmp(s, "passthrough")) return TOLK_MODE_PASSTHROUGH;
    *ok = 0;
    return TOLK_MODE_DEFAULT;
}

static tolk_status tr_check_config(const json_t *cfg, tolk_config_error *err) {
    const char *url = json_string_value(json_object_get(cfg, "url"));
    if (url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
        err->key = "url";
        snprintf(err->message, sizeof err->message, "'%s' is not an http:// or https:// URL", url);
        return TOLK_E_INVAL;
    }
    const char *media = json_string_value(json_object_get(cfg, "media"));
    if (media) {
        int found = 0;
        for (size_t i = 0; media_table[i]; i++) found |= !strcmp(media_table[i]->name, media);
        if (!found) {
            err->key = "media";
            snprintf(err->message, sizeof err->message,
                     "unknown media '%s' (this build has: rtp, audiosocket, websocket)", media);
            return TOLK_E_INVAL;
        }
    }
    int ok;
    mode_of(json_string_value(json_object_get(cfg, "mode")), &ok);
    if (!ok) {
        err->key = "mode";
        snprintf(err->message, sizeof err->message,
                 "mode must be bidirectional, unidirectional or passthrough");
        return TOLK_E_INVAL;
    }
    const char *ol = json_string_value(json_object_get(cfg, "over_limit"));
    if (ol && strcmp(ol, "passthrough") && strcmp(ol, "dialplan")) {
        err->key = "over_limit";
        snprintf(err->message, sizeof err->message, "over_limit must be passthrough or dialplan");
        return TOLK_E_INVAL;
    }
    const char *codec = json_string_value(json_object_get(cfg, "rtp_codec"));
    if (codec && strcmp(codec, "slin16") && strcmp(codec, "ulaw") && strcmp(codec, "alaw")) {
        err->key = "rtp_codec";
        snprintf(err->message, sizeof err->message,
                 "rtp_codec must be slin16, ulaw or alaw (G.722: no codec library in this build)");
        return TOLK_E_INVAL;
    }
    json_int_t lo = json_integer_value(json_object_get(cfg, "rtp_port_min"));
    json_int_t hi = json_integer_value(json_object_get(cfg, "rtp_port_max"));
    if ((lo > 0) != (hi > 0) || lo > hi) {
        err->key = "rtp_port_max";
        snprintf(err->message, sizeof err->message,
                 "rtp_port_min..rtp_port_max must both be set, min <= max (or both 0)");
        return TOLK_E_INVAL;
    }
    const char *app = json_string_value(json_object_get(cfg, "app"));
    for (const char *p = app; p && *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
            err->key = "app";
            snprintf(err->message, sizeof err->message,
                     "app: letters, digits, '-', '_' and '.' only");
            return TOLK_E_INVAL;
        }
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static char *xstrdup0(const char *s) { return s ? strdup(s) : NULL; }

static void b64(const char *in, char *out, size_t outsz) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n && o + 5 < outsz; i += 3) {
        unsigned v = (unsigned)(unsigned char)in[i] << 16;
        if (i + 1 < n) v |= (unsigned)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n) v |= (unsigned char)in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
}

/* Percent-encodes s into buf (RFC 3986 unreserved kept). */
static void urlenc(const char *s, char *buf, size_t n) {
    size_t o = 0;
    for (; s && *s && o + 4 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~')
            buf[o++] = (char)ch;
        else
            o += (size_t)snprintf(buf + o, n - o, "%%%02X", ch);
    }
    buf[o] = 0;
}

static const char *party_name(int p) { return p == PA ? "caller" : "callee"; }

/* ------------------------------------------------------------------ */
/* REST                                                                */

typedef void (*rest_cb)(call *c, int status, json_t *body, const char *err);

typedef struct rest {
    rtp_transport *t;
    call *c;
    rest_cb cb;
    tolk_http *h;
    int quiet404; /* a DELETE during teardown: 404 is expected */
    /* what to DELETE if the request created something after its call
     * ended (a bridge, a media channel, the callee), so nothing is left */
    char undo[ID_MAX + 16];
    char path[ID_MAX + 64]; /* a teardown DELETE's path, for its retries */
    int tries;
    char what[160];
    struct rest *prev, *next;
} rest;

static void call_unref(call *c);
static rest *rest_send(rtp_transport *t, call *c, const char *method, const char *pathq,
                       const char *body, rest_cb cb, int quiet404);
static void teardown_delete(rtp_transport *t, const char *path);

static void rest_unlink(rest *r) {
    rtp_transport *t = r->t;
    if (r->prev)
        r->prev->next = r->next;
    else
        t->rests = r->next;
    if (r->next) r->next->prev = r->prev;
}

/* A teardown DELETE that did not reach Asterisk (connection refused or
 * timed out, or a 5xx from an overloaded Asterisk) is tried again, so no
 * bridge or channel is left behind. */
#define DELETE_TRIES 4
typedef struct retry {
    rtp_transport *t;
    tolk_timer *timer;
    char path[ID_MAX + 64];
    int tries;
    struct retry *prev, *next;
} retry;

static void retry_unlink(retry *y) {
    if (y->prev)
        y->prev->next = y->next;
    else
        y->t->retries = y->next;
    if (y->next) y->next->prev = y->prev;
}

static void on_retry(void *ud) {
    retry *y = ud;
    retry_unlink(y);
    rest *r = rest_send(y->t, NULL, "DELETE", y->path, NULL, NULL, 1);
    if (r) {
        snprintf(r->path, sizeof r->path, "%s", y->path);
        r->tries = y->tries;
    }
    free(y);
}

static void retry_later(rtp_transport *t, const char *path, int tries) {
    retry *y = calloc(1, sizeof *y);
    if (!y) return;
    y->t = t;
    y->tries = tries;
    snprintf(y->path, sizeof y->path, "%s", path);
    y->next = t->retries;
    if (t->retries) t->retries->prev = y;
    t->retries = y;
    y->timer = t->host->timer_start(t->inst, 0.5 * tries, 0, on_retry, y);
}

static void on_rest_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    (void)h;
    rest *r = ud;
    rtp_transport *t = r->t;
    rest_unlink(r);
    int st = res->status == TOLK_OK ? res->http_status : 0;
    json_t *body = NULL;
    if (res->status == TOLK_OK && res->body && res->body_len) body = json_loadb(res->body, res->body_len, 0, NULL);
    char err[256] = "";
    if (res->status != TOLK_OK) {
        snprintf(err, sizeof err, "%s", res->error && *res->error ? res->error : "request failed");
    } else if (st < 200 || st > 299) {
        const char *msg = json_string_value(json_object_get(body, "message"));
        snprintf(err, sizeof err, "HTTP %d%s%s", st, msg ? ": " : "", msg ? msg : "");
    }
    int again = r->path[0] && (st == 0 || st >= 500) && r->tries + 1 < DELETE_TRIES && t->started;
    if (*err && !(r->quiet404 && (st == 404 || st == 400))) {
        t->n_rest_errors++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "%s: %s%s", r->what, err, again ? ": trying again" : "");
    }
    if (again) retry_later(t, r->path, r->tries + 1);
    if (r->cb && r->c && !r->c->ending) r->cb(r->c, st, body, *err ? err : NULL);
    else if (r->c && r->c->ending && r->undo[0] && !*err) {
        TOLK_LOG(t->host, t->inst, TOLK_LOG_VERB, "%s: %s came after the call ended: deleting it", r->c->id,
                 r->undo);
        teardown_delete(t, r->undo);
    }
    json_decref(body);
    if (r->c) call_unref(r->c);
    free(r);
}

/* method path?query; body: JSON text or NULL. The call is kept alive until
 * the answer; cb is not called once the call has ended. */
static rest *rest_send(rtp_transport *t, call *c, const char *method, const char *pathq,
                       const char *body, rest_cb cb, int quiet404) {
    rest *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->t = t;
    r->c = c;
    r->cb = cb;
    r->quiet404 = quiet404;
    snprintf(r->what, sizeof r->what, "%s %.*s", method, 120, pathq);
    char *q = strchr(r->what, '?'); /* the query may name dial strings: keep logs short */
    if (q) *q = 0;
    char url[URL_MAX];
    snprintf(url, sizeof url, "%s/ari/%s", t->base, pathq);
    const char *headers[3] = {t->auth, body ? "Content-Type: application/json" : NULL, NULL};
    tolk_http_request req = {
        .size = sizeof req,
        .method = method,
        .url = url,
        .headers = headers,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .total_timeout = t->rest_timeout,
        .max_body = 4u << 20,
        .on_done = on_rest_done,
        .ud = r,
    };
    if (c) c->refs++;
    r->next = t->rests;
    if (t->rests) t->rests->prev = r;
    t->rests = r;
    r->h = t->host->http_request(t->inst, &req);
    if (!r->h) {
        rest_unlink(r);
        t->n_rest_errors++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_ERR, "%s: refused by the HTTP client", r->what);
        if (c) call_unref(c);
        free(r);
        return NULL;
    }
    return r;
}

/* ------------------------------------------------------------------ */
/* Calls                                                               */

static void call_free(call *c) {
    for (int i = 0; i < 2; i++) {
        free(c->endpoint[i]);
        free(c->language[i]);
        free(c->voice[i]);
    }
    free(c->dial);
    json_decref(c->options);
    free(c);
}

static void call_unref(call *c) {
    if (--c->refs == 0) call_free(c);
}

static call *call_find(rtp_transport *t, const char *chan_id, int *what, int *p) {
    for (call *c = t->calls; c && chan_id; c = c->next)
        for (int i = 0; i < 2; i++) {
            if (!strcmp(c->chan[i], chan_id)) {
                *what = 0;
                *p = i;
                return c;
            }
            if (!strcmp(c->em[i], chan_id)) {
                *what = 1;
                *p = i;
                return c;
            }
        }
    return NULL;
}

static void stats_add(tr_media_stats *sum, const tr_media_stats *s) {
    sum->rx_frames += s->rx_frames;
    sum->rx_lost += s->rx_lost;
    sum->rx_late += s->rx_late;
    sum->rx_duplicate += s->rx_duplicate;
    sum->rx_foreign += s->rx_foreign;
    sum->rx_malformed += s->rx_malformed;
    sum->tx_frames += s->tx_frames;
    sum->tx_dropped += s->tx_dropped;
}

static void teardown_delete(rtp_transport *t, const char *path) {
    rest *r = rest_send(t, NULL, "DELETE", path, NULL, NULL, 1);
    if (r) snprintf(r->path, sizeof r->path, "%s", path);
}

/* Ends everything of the call. core_gone: the core already ended it
 * (hangup()), so channel_close() is not called. */
static void call_end(call *c, const char *why, int core_gone) {
    rtp_transport *t = c->t;
    if (c->ending) return;
    c->ending = 1;
    TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "%s: ending: %s", c->id, why);
    tolk_channel *ch = c->ch;
    c->ch = NULL;
    for (int i = 0; i < 2; i++)
        if (c->m[i]) {
            tr_media_stats s;
            t->media->stats(c->m[i], &s);
            stats_add(&t->media_done, &s);
            TOLK_LOG(t->host, t->inst, TOLK_LOG_VERB,
                     "%s: %s media: rx %llu frames, lost %llu, late %llu, dup %llu, foreign %llu, "
                     "malformed %llu; tx %llu, dropped %llu",
                     c->id, party_name(i), (unsigned long long)s.rx_frames,
                     (unsigned long long)s.rx_lost, (unsigned long long)s.rx_late,
                     (unsigned long long)s.rx_duplicate, (unsigned long long)s.rx_foreign,
                     (unsigned long long)s.rx_malformed, (unsigned long long)s.tx_frames,
                     (unsigned long long)s.tx_dropped);
            t->media->close(c->m[i]);
            c->m[i] = NULL;
        }
    if (ch && !core_gone) t->host->channel_close(ch);
    char path[ID_MAX + 64];
    for (int i = 0; i < 2; i++) {
        if (c->em_made[i] && !c->em_gone[i]) {
            snprintf(path, sizeof path, "channels/%s", c->em[i]);
            teardown_delete(t, path);
        }
        if (c->chan[i][0] && !c->chan_gone[i]) {
            snprintf(path, sizeof path, "channels/%s", c->chan[i]);
            teardown_delete(t, path);
        }
        if (c->bridge_made[i]) {
            snprintf(path, sizeof path, "bridges/%s", c->bridge[i]);
            teardown_delete(t, path);
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        t->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    call_unref(c);
}

/* ---- media events ---- */

static void on_media_audio(void *ud, const int16_t *pcm, size_t n, double captured_at) {
    leg_ref *r = ud;
    call *c = r->c;
    if (!c->ch || c->ending) return;
    rtp_transport *t = c->t;
    if (TOLK_HOST_HAS(t->host, channel_audio_at))
        t->host->channel_audio_at(c->ch, r->leg, pcm, n, captured_at);
    else
        t->host->channel_audio(c->ch, r->leg, pcm, n);
}

static void on_media_dtmf(void *ud, char digit, unsigned duration_ms) {
    leg_ref *r = ud;
    call *c = r->c;
    if (c->ch && !c->ending && TOLK_HOST_HAS(c->t->host, channel_dtmf))
        c->t->host->channel_dtmf(c->ch, r->leg, digit, duration_ms);
}

static void on_media_played(void *ud, uint64_t frames) {
    leg_ref *r = ud;
    call *c = r->c;
    if (c->ch && !c->ending && TOLK_HOST_HAS(c->t->host, channel_played))
        c->t->host->channel_played(c->ch, r->leg, frames);
}

static void on_media_closed(void *ud, const char *why) {
    leg_ref *r = ud;
    call *c = r->c;
    char msg[256];
    snprintf(msg, sizeof msg, "the %s's media link closed: %s", party_name(r->leg), why ? why : "");
    call_end(c, msg, 0);
}

/* ---- bridging ---- */

static void on_added(call *c, int status, json_t *body, const char *err) {
    (void)status;
    (void)body;
    if (err) call_end(c, "a channel could not join its bridge", 0);
}

/* Joins a party and its ExternalMedia channel (or, when direct, both
 * parties) once the bridge, the channel and the media channel all exist. */
static void try_bridge(call *c, int p) {
    rtp_transport *t = c->t;
    if (c->ending || c->bridged[p] || !c->bridge_made[c->direct ? PA : p] || !c->party_in[p]) return;
    char chans[3 * ID_MAX + 8], path[5 * ID_MAX];
    if (c->direct) {
        /* one bridge for both: A joins at once, B when it answers */
        snprintf(chans, sizeof chans, "%s", c->chan[p]);
        snprintf(path, sizeof path, "bridges/%s/addChannel?channel=%s", c->bridge[PA], chans);
    } else {
        /* addChannel wants channels already in the application: the
         * ExternalMedia channel's StasisStart may come after the REST reply */
        if (!c->em_made[p] || !c->em_in[p]) return;
        snprintf(chans, sizeof chans, "%s,%s", c->chan[p], c->em[p]);
        snprintf(path, sizeof path, "bridges/%s/addChannel?channel=%s", c->bridge[p], chans);
    }
    c->bridged[p] = 1;
    rest_send(t, c, "POST", path, NULL, on_added, 0);
}

static void on_bridge_made(call *c, int status, json_t *body, const char *err, int p) {
    (void)status;
    (void)body;
    if (err) {
        call_end(c, "a bridge could not be created", 0);
        return;
    }
    c->bridge_made[p] = 1;
    try_bridge(c, p);
    if (c->direct && c->party_in[PB]) try_bridge(c, PB);
}
static void on_bridge_a(call *c, int s, json_t *b, const char *e) { on_bridge_made(c, s, b, e, PA); }
static void on_bridge_b(call *c, int s, json_t *b, const char *e) { on_bridge_made(c, s, b, e, PB); }

static void make_bridge(call *c, int p) {
    char path[4 * ID_MAX];
    snprintf(path, sizeof path, "bridges?type=mixing&bridgeId=%s&name=%s", c->bridge[p], c->bridge[p]);
    rest *r = rest_send(c->t, c, "POST", path, NULL, p == PA ? on_bridge_a : on_bridge_b, 0);
    if (r) snprintf(r->undo, sizeof r->undo, "bridges/%s", c->bridge[p]);
}

static void on_em_made(call *c, int status, json_t *body, const char *err, int p) {
    (void)status;
    rtp_transport *t = c->t;
    if (err) {
        call_end(c, "the ExternalMedia channel could not be created", 0);
        return;
    }
    c->em_made[p] = 1;
    if (!json_is_object(body) || !c->m[p] || t->media->attach(c->m[p], body) != TOLK_OK) {
        call_end(c, "the ExternalMedia reply named no media peer (channelvars)", 0);
        return;
    }
    try_bridge(c, p);
}
static void on_em_a(call *c, int s, json_t *b, const char *e) { on_em_made(c, s, b, e, PA); }
static void on_em_b(call *c, int s, json_t *b, const char *e) { on_em_made(c, s, b, e, PB); }

static void make_media(call *c, int p) {
    rtp_transport *t = c->t;
    char err[256] = "";
    c->lref[p].c = c;
    c->lref[p].leg = (tolk_leg)p;
    tr_media_events ev = {.ud = &c->lref[p],
                          .audio = on_media_audio,
                          .dtmf = on_media_dtmf,
                          .played = on_media_played,
                          .closed = on_media_closed};
    c->m[p] = t->media->open(t->hub, &ev, err, sizeof err);
    if (!c->m[p]) {
        char msg[300];
        snprintf(msg, sizeof msg, "no media link: %s", err);
        call_end(c, msg, 0);
        return;
    }
    char params[1024], app[256], path[URL_MAX];
    if (t->media->ari_params(c->m[p], params, sizeof params) < 0) {
        call_end(c, "media parameters too long", 0);
        return;
    }
    urlenc(t->app, app, sizeof app);
    snprintf(path, sizeof path, "channels/externalMedia?app=%s&channelId=%s&%s", app, c->em[p], params);
    rest *r = rest_send(t, c, "POST", path, NULL, p == PA ? on_em_a : on_em_b, 0);
    if (r) snprintf(r->undo, sizeof r->undo, "channels/%s", c->em[p]);
}

/* ---- the callee ---- */

static void on_originated(call *c, int status, json_t *body, const char *err) {
    (void)status;
    (void)body;
    if (err) {
        char msg[300];
        snprintf(msg, sizeof msg, "the callee could not be called (%s)", err);
        call_end(c, msg, 0);
    }
}

static void originate(call *c) {
    rtp_transport *t = c->t;
    char dial[1024], app[256], path[URL_MAX];
    urlenc(c->dial, dial, sizeof dial);
    urlenc(t->app, app, sizeof app);
    snprintf(path, sizeof path,
             "channels?endpoint=%s&app=%s&appArgs=tolk-callee&channelId=%s&originator=%s&timeout=%d",
             dial, app, c->chan[PB], c->chan[PA], (int)t->originate_timeout);
    rest *r = rest_send(t, c, "POST", path, NULL, on_originated, 0);
    if (r) snprintf(r->undo, sizeof r->undo, "channels/%s", c->chan[PB]);
    if (c->ch && TOLK_HOST_HAS(t->host, channel_progress) && !c->ringing_told) {
        c->ringing_told = 1;
        t->host->channel_progress(c->ch, TOLK_PROGRESS_RINGING, TOLK_LEG_B);
    }
}

static void callee_answered(call *c) {
    rtp_transport *t = c->t;
    if (c->answered || c->ending) return;
    c->answered = 1;
    c->party_in[PB] = 1;
    TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "%s: the callee answered", c->id);
    if (c->direct) {
        try_bridge(c, PB);
    } else {
        make_bridge(c, PB);
        make_media(c, PB);
    }
    if (!c->ending && c->ch && TOLK_HOST_HAS(t->host, channel_progress))
        t->host->channel_progress(c->ch, TOLK_PROGRESS_ANSWERED, TOLK_LEG_B);
}

/* ---- a new call ---- */

static void set_str(char **dst, const char *v) {
    free(*dst);
    *dst = strdup(v);
}

/* Stasis arguments: key=value, a bare first one is the dial string. */
static void parse_args(call *c, const json_t *args) {
    c->options = json_object();
    size_t i;
    json_t *a;
    json_array_foreach(args, i, a) {
        const char *s = json_string_value(a);
        if (!s) continue;
        const char *eq = strchr(s, '=');
        if (!eq) {
            if (i == 0) set_str(&c->dial, s);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(eq - s) < 63 ? (int)(eq - s) : 63, s);
        const char *v = eq + 1;
        json_object_set_new(c->options, key, json_string(v));
        if (!strcmp(key, "dial")) set_str(&c->dial, v);
        else if (!strcmp(key, "a_endpoint")) set_str(&c->endpoint[0], v);
        else if (!strcmp(key, "b_endpoint")) set_str(&c->endpoint[1], v);
        else if (!strcmp(key, "a_language")) set_str(&c->language[0], v);
        else if (!strcmp(key, "b_language")) set_str(&c->language[1], v);
        else if (!strcmp(key, "a_voice")) set_str(&c->voice[0], v);
        else if (!strcmp(key, "b_voice")) set_str(&c->voice[1], v);
        else if (!strcmp(key, "mode")) {
            int ok;
            tolk_mode m = mode_of(v, &ok);
            if (ok) c->mode = m;
            else
                TOLK_LOG(c->t->host, c->t->inst, TOLK_LOG_WARN, "%s: unknown mode '%s' ignored", c->id, v);
        }
    }
}

static void to_dialplan(rtp_transport *t, const char *chan_id) {
    char path[ID_MAX + 32];
    snprintf(path, sizeof path, "channels/%s/continue", chan_id);
    rest_send(t, NULL, "POST", path, NULL, NULL, 1);
}

static void new_call(rtp_transport *t, const json_t *chan, const json_t *args) {
    const char *cid = json_string_value(json_object_get(chan, "id"));
    const char *state = json_string_value(json_object_get(chan, "state"));
    if (!cid || strlen(cid) >= ID_MAX - 8) {
        t->n_bad_events++;
        return;
    }
    if (t->stopping) {
        TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "call %s: not taken (stopping): back to the dialplan", cid);
        to_dialplan(t, cid);
        return;
    }
    call *c = calloc(1, sizeof *c);
    if (!c) return;
    c->t = t;
    c->refs = 1;
    c->mode = t->mode;
    snprintf(c->id, sizeof c->id, "%.40s-%x-%lu", t->app, t->rand_tag, ++t->seq);
    snprintf(c->chan[PA], ID_MAX, "%s", cid);
    snprintf(c->chan[PB], ID_MAX, "%s-b", c->id);
    snprintf(c->em[PA], ID_MAX, "%s-ma", c->id);
    snprintf(c->em[PB], ID_MAX, "%s-mb", c->id);
    snprintf(c->bridge[PA], ID_MAX, "%s-xa", c->id);
    snprintf(c->bridge[PB], ID_MAX, "%s-xb", c->id);
    c->party_in[PA] = 1;
    parse_args(c, args);
    if (!c->dial && t->dial_default) c->dial = strdup(t->dial_default);
    c->next = t->calls;
    if (t->calls) t->calls->prev = c;
    t->calls = c;
    t->n_calls++;
    TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "%s: call from %s (%s) to %s", c->id, cid,
             json_string_value(json_object_get(chan, "name")) ? json_string_value(json_object_get(chan, "name")) : "?",
             c->dial ? c->dial : "(nobody)");
    if (!c->dial) {
        call_end(c, "the Stasis arguments name no callee (dial=) and no default dial is set", 0);
        return;
    }
    if (!state || strcmp(state, "Up")) {
        char path[ID_MAX + 32];
        snprintf(path, sizeof path, "channels/%s/answer", cid);
        rest_send(t, c, "POST", path, NULL, NULL, 0);
    }
    if (c->mode == TOLK_MODE_PASSTHROUGH) c->direct = 1;
    tolk_channel_info info = {.size = sizeof info};
    info.id = c->id;
    for (int i = 0; i < 2; i++) {
        info.endpoint[i] = c->endpoint[i];
        info.language[i] = c->language[i];
        info.voice[i] = c->voice[i];
    }
    info.mode = c->mode;
    info.paced = 1;
    info.flags = TOLK_CHAN_AWAIT_ANSWER | t->media->chan_flags;
    info.options = c->options;
    tolk_status why = TOLK_OK;
    tolk_channel *ch = t->host->channel_open(t->inst, &info, c, &why);
    if (c->ending) return; /* the core hung up from inside channel_open() */
    if (!ch) {
        t->n_refused++;
        if (!strcmp(t->over_limit, "dialplan")) {
            TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "%s: refused by the core (%d): back to the dialplan",
                     c->id, (int)why);
            c->chan_gone[PA] = 1; /* not ours to hang up */
            to_dialplan(t, cid);
            call_end(c, "refused by the core", 1);
            return;
        }
        TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "%s: refused by the core (%d): bridged untranslated",
                 c->id, (int)why);
        c->direct = 1;
    }
    c->ch = ch;
    if (c->direct) t->n_direct++;
    make_bridge(c, PA);
    if (!c->direct) make_media(c, PA);
    if (!c->ending) originate(c);
}

/* ------------------------------------------------------------------ */
/* Events                                                              */

static void on_event(rtp_transport *t, json_t *ev) {
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (!type) {
        t->n_bad_events++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "ARI event without a type: ignored");
        return;
    }
    t->n_events++;
    json_t *chan = json_object_get(ev, "channel");
    const char *cid = json_string_value(json_object_get(chan, "id"));
    int what = 0, p = 0;
    call *c = cid ? call_find(t, cid, &what, &p) : NULL;

    if (!strcmp(type, "StasisStart")) {
        json_t *args = json_object_get(ev, "args");
        if (!json_is_object(chan) || !cid) {
            t->n_bad_events++;
            TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "StasisStart without a channel: ignored");
            return;
        }
        if (c) {
            if (what == 0 && p == PB) callee_answered(c);
            if (what == 1) {
                c->em_in[p] = 1;
                try_bridge(c, p);
            }
            return;
        }
        const char *a0 = json_string_value(json_array_get(args, 0));
        if (a0 && !strcmp(a0, "tolk-callee")) {
            /* a callee of a call that already ended: hang it up */
            char path[ID_MAX + 16];
            snprintf(path, sizeof path, "channels/%s", cid);
            rest_send(t, NULL, "DELETE", path, NULL, NULL, 1);
            return;
        }
        if (!strncmp(cid, t->app, strlen(t->app)) && strstr(cid, "-m")) return; /* our media */
        new_call(t, chan, json_is_array(args) ? args : NULL);
        return;
    }
    if (!c) return; /* not one of ours (or already ended) */
    if (!strcmp(type, "ChannelStateChange")) {
        const char *st = json_string_value(json_object_get(chan, "state"));
        if (what == 0 && p == PB && st && !strcmp(st, "Ringing") && c->ch && !c->ringing_told &&
            TOLK_HOST_HAS(t->host, channel_progress)) {
            c->ringing_told = 1;
            t->host->channel_progress(c->ch, TOLK_PROGRESS_RINGING, TOLK_LEG_B);
        }
        return;
    }
    if (!strcmp(type, "ChannelDtmfReceived")) {
        const char *d = json_string_value(json_object_get(ev, "digit"));
        json_int_t dur = json_integer_value(json_object_get(ev, "duration_ms"));
        if (what != 0 || !d || strlen(d) != 1 || !strchr("0123456789*#ABCD", d[0])) {
            if (what == 0) t->n_bad_events++;
            return;
        }
        t->n_dtmf++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_VERB, "%s: DTMF %c from the %s", c->id, d[0], party_name(p));
        if (c->ch && TOLK_HOST_HAS(t->host, channel_dtmf))
            t->host->channel_dtmf(c->ch, (tolk_leg)p, d[0], dur > 0 && dur < 100000 ? (unsigned)dur : 0);
        return;
    }
    if (!strcmp(type, "ChannelHangupRequest") || !strcmp(type, "StasisEnd") ||
        !strcmp(type, "ChannelDestroyed")) {
        if (!strcmp(type, "ChannelDestroyed")) {
            if (what == 0)
                c->chan_gone[p] = 1;
            else
                c->em_gone[p] = 1;
        }
        char msg[256];
        snprintf(msg, sizeof msg, "%s of the %s%s", type, what ? "media channel of the " : "",
                 party_name(p));
        call_end(c, msg, 0);
        return;
    }
}

static void on_ws_message(void *ud, tolk_ws *ws, const void *data, size_t n, int binary) {
    (void)ws;
    rtp_transport *t = ud;
    json_error_t je;
    json_t *ev = binary ? NULL : json_loadb(data, n, 0, &je);
    if (!json_is_object(ev)) {
        t->n_bad_events++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "ARI sent a message that is not a JSON object (%zu bytes): ignored", n);
        json_decref(ev);
        return;
    }
    on_event(t, ev);
    json_decref(ev);
}

/* ---- connection and reconnection ---- */

static void ws_connect(rtp_transport *t);

static void on_reconnect_timer(void *ud) {
    rtp_transport *t = ud;
    t->reconnect = NULL;
    ws_connect(t);
}

static void schedule_reconnect(rtp_transport *t) {
    if (t->reconnect || !t->started) return;
    double d = t->backoff;
    t->backoff = t->backoff * 2 > t->reconnect_max ? t->reconnect_max : t->backoff * 2;
    t->reconnect = t->host->timer_start(t->inst, d, 0, on_reconnect_timer, t);
}

/* After a reconnect: the calls whose channels Asterisk no longer has end. */

static void reconcile(rtp_transport *t, json_t *list) {
    call *next;
    for (call *c = t->calls; c; c = next) {
        next = c->next;
        int alive[2] = {0, 0};
        size_t i;
        json_t *ch;
        json_array_foreach(list, i, ch) {
            const char *id = json_string_value(json_object_get(ch, "id"));
            for (int p = 0; id && p < 2; p++)
                if (!strcmp(id, c->chan[p])) alive[p] = 1;
        }
        if (alive[PA] && (alive[PB] || !c->answered)) {
            t->n_survived++;
            TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "%s: survived the reconnection", c->id);
            continue;
        }
        t->n_lost_calls++;
        for (int p = 0; p < 2; p++) c->chan_gone[p] |= !alive[p];
        call_end(c, "its channels are gone after the reconnection", 0);
    }
}

static void on_list_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    (void)h;
    rest *r = ud;
    rtp_transport *t = r->t;
    rest_unlink(r);
    free(r);
    json_t *body = res->status == TOLK_OK && res->http_status == 200 && res->body
                       ? json_loadb(res->body, res->body_len, 0, NULL)
                       : NULL;
    if (!json_is_array(body)) {
        t->n_rest_errors++;
        TOLK_LOG(t->host, t->inst, TOLK_LOG_WARN, "GET channels after reconnecting failed (%d %s)",
                 res->http_status, res->error ? res->error : "");
    } else {
        reconcile(t, body);
    }
    json_decref(body);
}

static void list_channels(rtp_transport *t) {
    rest *r = calloc(1, sizeof *r);
    if (!r) return;
    r->t = t;
    snprintf(r->what, sizeof r->what, "GET channels");
    char url[URL_MAX];
    snprintf(url, sizeof url, "%s/ari/channels", t->base);
    const char *headers[2] = {t->auth, NULL};
    tolk_http_request req = {.size = sizeof req,
                             .url = url,
                             .headers = headers,
                             .total_timeout = t->rest_timeout,
                             .max_body = 16u << 20,
                             .on_done = on_list_done,
                             .ud = r};
    r->next = t->rests;
    if (t->rests) t->rests->prev = r;
    t->rests = r;
    r->h = t->host->http_request(t->inst, &req);
    if (!r->h) {
        rest_unlink(r);
        free(r);
    }
}

static void on_ws_open(void *ud, tolk_ws *ws) {
    (void)ws;
    rtp_transport *t = ud;
    t->connected = 1;
    t->failing = 0;
    t->backoff = t->reconnect_min;
    TOLK_LOG(t->host, t->inst, TOLK_LOG_INFO, "connected to ARI at %s: Stasis application '%s' ready%s",
             t->base, t->app, t->ever_connected ? " again" : "");
    if (t->ever_connected) list_channels(t);
    t->ever_connected = 1;
}

static void on_ws_close(void *ud, tolk_ws *ws, const tolk_ws_close_info *info) {
    (void)ws;
    rtp_transport *t = ud;
    t->ws = NULL;
    int was = t->connected;
    t->connected = 0;
    t->failing = 1;
    if (was) t->n_reconnects++;
    if (info->http_status == 401 || info->http_status == 403)
        TOLK_LOG(t->host, t->inst, TOLK_LOG_ERR,
                 "ARI refused the credentials (HTTP %d): check user/password and ari.conf",
                 info->http_status);
    else if (was || !t->ever_connected)
        TOLK_LOG(t->host, t->inst, was ? TOLK_LOG_WARN : TOLK_LOG_INFO,
                 "ARI events socket %s (%s%s%d): reconnecting in %.1f s", was ? "lost" : "not connected",
                 info->reason && *info->reason ? info->reason : "", info->reason && *info->reason ? ", " : "",
                 info->http_status ? info->http_status : info->code, t->backoff);
    if (was && t->host->report)
        t->host->report(t->inst, TOLK_E_BACKEND, TOLK_SEV_MEDIUM, "ARI events socket lost");
    schedule_reconnect(t);
}

static void ws_connect(rtp_transport *t) {
    if (t->ws || !t->started) return;
    char url[URL_MAX], app[256];
    urlenc(t->app, app, sizeof app);
    snprintf(url, sizeof url, "%s/ari/events?app=%s", t->ws_base, app);
    const char *headers[2] = {t->auth, NULL};
    tolk_ws_params p = {.size = sizeof p,
                        .url = url,
                        .headers = headers,
                        .connect_timeout = t->rest_timeout,
                        .ping_interval = t->ping_interval,
                        .max_message = 4u << 20,
                        .on_open = on_ws_open,
                        .on_message = on_ws_message,
                        .on_close = on_ws_close,
                        .ud = t};
    t->ws = t->host->ws_connect(t->inst, &p);
    if (!t->ws) schedule_reconnect(t);
}

/* ------------------------------------------------------------------ */
/* The transport's table                                               */

static tolk_status tr_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    if (!TOLK_HOST_HAS(host, ws_connect) || !TOLK_HOST_HAS(host, channel_progress)) {
        host->log(inst, TOLK_LOG_ERR, "this core lacks the ABI 1.2 network services");
        return TOLK_E_FATAL;
    }
    rtp_transport *t = calloc(1, sizeof *t);
    if (!t) return TOLK_E_NOMEM;
    t->host = host;
    t->inst = inst;
    const char *media = host->cfg_string(cfg, "media");
    if (!media) media = "websocket"; /* the default (docs/asterisk.md says why) */
    for (size_t i = 0; media_table[i]; i++)
        if (!strcmp(media_table[i]->name, media)) {
            t->media = media_table[i];
            break;
        }
    if (!t->media) {
        host->log(inst, TOLK_LOG_ERR, "unknown media '%s'", media);
        free(t);
        return TOLK_E_INVAL;
    }
    const char *url = host->cfg_string(cfg, "url");
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/') ul--;
    t->base = strndup(url, ul);
    int tls = !strncmp(url, "https://", 8);
    size_t skip = tls ? 8 : 7;
    size_t wl = ul - skip + 8;
    t->ws_base = malloc(wl);
    snprintf(t->ws_base, wl, "%s%.*s", tls ? "wss://" : "ws://", (int)(ul - skip), url + skip);
    t->app = strdup(host->cfg_string(cfg, "app"));
    const char *user = host->cfg_string(cfg, "user");
    const char *pass = host->cfg_string(cfg, "password");
    if (!user) user = getenv("TOLK_ARI_USER");
    if (!pass) pass = getenv("TOLK_ARI_PASSWORD");
    char up[512], enc[800], hdr[900];
    snprintf(up, sizeof up, "%s:%s", user ? user : "", pass ? pass : "");
    b64(up, enc, sizeof enc);
    snprintf(hdr, sizeof hdr, "Authorization: Basic %s", enc);
    t->auth = strdup(hdr);
    if (!user || !pass)
        host->log(inst, TOLK_LOG_WARN, "no ARI %s (settings user/password or TOLK_ARI_USER/TOLK_ARI_PASSWORD)",
                  !user ? "user" : "password");
    t->dial_default = xstrdup0(host->cfg_string(cfg, "dial"));
    t->over_limit = strdup(host->cfg_string(cfg, "over_limit"));
    int ok;
    t->mode = mode_of(host->cfg_string(cfg, "mode"), &ok);
    t->rest_timeout = host->cfg_double(cfg, "rest_timeout");
    t->originate_timeout = (double)host->cfg_int(cfg, "originate_timeout");
    t->ping_interval = host->cfg_double(cfg, "ping_interval");
    t->reconnect_min = host->cfg_double(cfg, "reconnect_min");
    t->reconnect_max = host->cfg_double(cfg, "reconnect_max");
    t->backoff = t->reconnect_min;
    t->rand_tag = ((unsigned)getpid() * 2654435761u ^ (unsigned)(host->now() * 1e6)) & 0xffffff;
    char err[256] = "";
    /* The encapsulations read the ARI server and credentials as ari_url,
     * ari_user, ari_password (media_options.h; WebSocket media connects to
     * the same server, with the same credentials): call control's url,
     * user and password, the latter two possibly from the environment. */
    json_t *mcfg = json_is_object(cfg) ? json_copy((json_t *)cfg) : json_object();
    if (mcfg) {
        json_object_set_new(mcfg, "ari_url", json_string(url));
        if (user) json_object_set_new(mcfg, "ari_user", json_string(user));
        if (pass) json_object_set_new(mcfg, "ari_password", json_string(pass));
    }
    tolk_status hst =
        mcfg ? t->media->hub_create(host, inst, mcfg, &t->hub, err, sizeof err) : TOLK_E_NOMEM;
    json_decref(mcfg);
    if (hst != TOLK_OK) {
        host->log(inst, TOLK_LOG_ERR, "media %s: %s", t->media->name, err);
        free(t->base);
        free(t->ws_base);
        free(t->app);
        free(t->auth);
        free(t->dial_default);
        free(t->over_limit);
        free(t);
        return TOLK_E_BACKEND;
    }
    *self = t;
    return TOLK_OK;
}

static tolk_status tr_start(void *self) {
    rtp_transport *t = self;
    t->started = 1;
    t->stopping = 0;
    ws_connect(t);
    return TOLK_OK;
}

static void tr_stop(void *self) {
    rtp_transport *t = self;
    t->stopping = 1;
}

static void tr_destroy(void *self) {
    rtp_transport *t = self;
    t->started = 0;
    while (t->calls) call_end(t->calls, "the transport is shutting down", 1);
    if (t->reconnect) t->host->timer_stop(t->reconnect);
    if (t->ws) t->host->ws_cancel(t->ws);
    while (t->retries) {
        retry *y = t->retries;
        retry_unlink(y);
        t->host->timer_stop(y->timer);
        free(y);
    }
    while (t->rests) {
        rest *r = t->rests;
        rest_unlink(r);
        if (r->h) t->host->http_cancel(r->h);
        if (r->c) call_unref(r->c);
        free(r);
    }
    t->media->hub_destroy(t->hub);
    free(t->base);
    free(t->ws_base);
    free(t->app);
    free(t->auth);
    free(t->dial_default);
    free(t->over_limit);
    free(t);
}

static tolk_status tr_play_ex(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                              size_t n, unsigned flags) {
    rtp_transport *t = self;
    call *c = chan_state;
    if (c->ending || !c->m[leg]) return TOLK_OK; /* the party's media is not up yet */
    return t->media->send(c->m[leg], pcm, n, flags);
}

static tolk_status tr_play(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm, size_t n) {
    return tr_play_ex(self, chan_state, leg, pcm, n, 0);
}

static void tr_hangup(void *self, void *chan_state) {
    (void)self;
    call *c = chan_state;
    c->ch = NULL;
    call_end(c, "the core ended the call", 1);
}

static tolk_status tr_direction_mode(void *self, void *chan_state, tolk_leg from, tolk_mode mode) {
    (void)self;
    (void)from;
    call *c = chan_state;
    /* Only a direct bridge carries original voices; in the per-party
     * arrangement the core relays an untranslated direction itself. */
    if (mode == TOLK_MODE_PASSTHROUGH && c->direct) return TOLK_OK;
    return TOLK_DECLINED;
}

static tolk_health tr_health(void *self, json_t **detail) {
    rtp_transport *t = self;
    if (detail) {
        tr_media_stats sum = t->media_done;
        size_t ncalls = 0;
        for (call *c = t->calls; c; c = c->next) {
            ncalls++;
            for (int i = 0; i < 2; i++)
                if (c->m[i]) {
                    tr_media_stats s;
                    t->media->stats(c->m[i], &s);
                    stats_add(&sum, &s);
                }
        }
        *detail = json_pack(
            "{s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
            " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}",
            "connected", t->connected, "media", t->media->name, "calls", (json_int_t)ncalls,
            "calls_total", (json_int_t)t->n_calls, "refused", (json_int_t)t->n_refused, "direct",
            (json_int_t)t->n_direct, "events", (json_int_t)t->n_events, "bad_events",
            (json_int_t)t->n_bad_events, "rest_errors", (json_int_t)t->n_rest_errors, "reconnects",
            (json_int_t)t->n_reconnects, "dtmf", (json_int_t)t->n_dtmf, "survived",
            (json_int_t)t->n_survived, "lost_calls", (json_int_t)t->n_lost_calls, "media_stats",
            "rx_frames", (json_int_t)sum.rx_frames, "rx_lost", (json_int_t)sum.rx_lost, "rx_late",
            (json_int_t)sum.rx_late, "rx_duplicate", (json_int_t)sum.rx_duplicate, "rx_foreign",
            (json_int_t)sum.rx_foreign, "rx_malformed", (json_int_t)sum.rx_malformed, "tx_frames",
            (json_int_t)sum.tx_frames, "tx_dropped", (json_int_t)sum.tx_dropped);
    }
    /* unhealthy once a connection failed or dropped, not while the first
     * connection is being made */
    if (!t->started || t->connected || !t->failing) return TOLK_HEALTHY;
    return TOLK_UNHEALTHY;
}

static const tolk_transport transport_rtp = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT),
            .name = PLUGIN_NAME,
            .version = "0.1.0",
            .description = "Asterisk calls: ARI call control, ExternalMedia over RTP",
            .options = options,
            .check_config = tr_check_config,
            .create = tr_create,
            .destroy = tr_destroy,
            .health = tr_health,
        },
    .start = tr_start,
    .stop = tr_stop,
    .play = tr_play,
    .hangup = tr_hangup,
    .play_ex = tr_play_ex,
    .direction_mode = tr_direction_mode,
};

TOLK_PLUGIN_DEFINE(transport_rtp)
