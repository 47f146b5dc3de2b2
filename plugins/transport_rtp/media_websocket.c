/* plugins/transport_rtp/media_websocket.c: ExternalMedia over chan_websocket
 * (Asterisk 22.6+), see media.h.
 *
 * The channel is created with connection_type=server: Asterisk waits for us.
 * attach() reads MEDIA_WEBSOCKET_CONNECTION_ID from the reply and connects,
 * through the core's WebSocket client, to ws://ARI-HOST:PORT/media/<id> with
 * the subprotocol "media". Asterisk first sends the TEXT event MEDIA_START
 * (plain text "MEDIA_START connection_id:.. channel:.. channel_id:..
 * format:slin16 optimal_frame_size:640 ptime:20", or the same as JSON when
 * the control format is json), then BINARY little-endian audio; TEXT events
 * follow (MEDIA_XOFF/MEDIA_XON, MEDIA_MARK_PROCESSED, DTMF_END, ERROR, ...).
 * There is no hang-up event: Asterisk closes the socket.
 *
 * What Asterisk does with our audio (chan_websocket.c): each BINARY message
 * is cut into optimal_frame_size frames, a trailing partial frame is
 * discarded, and the frames are queued and played one per 20 ms. The queue
 * holds 1000 frames and silently drops what arrives when it is full; it says
 * MEDIA_XOFF at 900 and MEDIA_XON below 800. So we send whole 640-byte
 * frames only, stop at XOFF and keep a bounded backlog of our own (dropping
 * its oldest frames, counted in tx_dropped), and resume at XON.
 *
 * Played-out feedback: MARK_MEDIA <n> is queued by Asterisk behind the
 * frames sent before it, and answered with MEDIA_MARK_PROCESSED <n> once
 * they have been played; n is the number of frames handed to send() before
 * the mark, which becomes events.played(n). A mark goes out every
 * websocket_mark_ms of audio and when a talkspurt ends.
 *
 * Asterisk sends audio only while the bridge has some (a party alone with its
 * ExternalMedia channel is silent on the wire while it is quiet): the link's
 * 20 ms tick fills the timeline with silence once the peer has been quiet
 * for more than two frames (media_idle.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "media.h"
#include "media_idle.h"

#define WS_TICK_S 0.020
/* No frame for this long after the last one: the talkspurt has ended. */
#define WS_SPURT_END_S 0.060
#define WS_MARKS_MAX 64
#define WS_ID_MAX 128

typedef struct ws_ctx ws_ctx;

struct tr_media {
    tr_media_hub *hub;
    tr_media *next, *prev;
    tr_media_events ev;
    ws_ctx *ctx;
    tolk_ws *ws;
    tolk_timer *tick;
    char conn_id[WS_ID_MAX];
    int attached, started, xoff, gone;
    double attached_at;
    /* frames waiting for Asterisk: a ring of cap frames; frame k of the
     * ring has send() index q_index + k */
    int16_t *q;
    size_t q_cap, q_head, q_len;
    uint64_t q_index;
    uint64_t handed;              /* frames accepted by send() */
    uint64_t marked;              /* the last mark queued */
    uint64_t played;              /* the last mark Asterisk confirmed */
    uint64_t marks[WS_MARKS_MAX]; /* marks not yet sent, ascending */
    size_t nmarks;
    double last_send_at;
    uint64_t rx_samples;
    tr_idle idle; /* the timeline of what was delivered: silence in pauses */
    int odd_byte_logged, format_logged;
    tr_media_stats st;
    int busy, freed;
};

/* The WebSocket's user data. It outlives the link when close() starts a
 * close handshake, so the late on_close finds m == NULL instead of freed
 * memory. */
struct ws_ctx {
    ws_ctx *next;
    tr_media_hub *hub;
    tr_media *m;
    tolk_ws *ws;
};

struct tr_media_hub {
    const tolk_host *host;
    tolk_instance *inst;
    char ws_base[512];          /* ws://host:port */
    char auth[600];             /* "Authorization: Basic ..." or "" */
    const char *control_format; /* "json", "plain-text" or NULL */
    char control_buf[16];
    double connect_timeout;
    size_t q_frames;
    size_t mark_frames;
    tr_media *links;
    ws_ctx *closing; /* contexts of links closed while their socket closes */
};

#define LOG(hub, lvl, ...) TOLK_LOG((hub)->host, (hub)->inst, lvl, __VA_ARGS__)

static const int16_t ws_zeros[TOLK_FRAME_SAMPLES];

static void base64(const char *in, char *out, size_t cap) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i += 3) {
        uint32_t v = (uint32_t)(uint8_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)(uint8_t)in[i + 1] << 8;
        if (i + 2 < n) v |= (uint8_t)in[i + 2];
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = '\0';
}

static tolk_status ws_hub_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                 tr_media_hub **out, char *err, size_t errlen) {
    if (!TOLK_HOST_HAS(host, ws_connect)) {
        snprintf(err, errlen, "WebSocket media needs a host with the WebSocket client (ABI 1.2)");
        return TOLK_E_INVAL;
    }
    const char *url = host->cfg_string(cfg, "ari_url");
    const char *user = host->cfg_string(cfg, "ari_user");
    const char *pass = host->cfg_string(cfg, "ari_password");
    const char *fmt = host->cfg_string(cfg, "websocket_control_format");
    if (!url || !*url) url = "http://127.0.0.1:8088";
    const char *rest;
    const char *scheme;
    if (strncmp(url, "http://", 7) == 0)
        scheme = "ws://", rest = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        scheme = "wss://", rest = url + 8;
    else {
        snprintf(err, errlen, "ari_url \"%s\" is not an http:// or https:// URL", url);
        return TOLK_E_INVAL;
    }
    if (fmt && *fmt && strcmp(fmt, "json") != 0 && strcmp(fmt, "plain-text") != 0) {
        snprintf(err, errlen, "websocket_control_format \"%s\": use \"json\" or \"plain-text\"",
                 fmt);
        return TOLK_E_INVAL;
    }
    tr_media_hub *hub = calloc(1, sizeof *hub);
    if (!hub) return TOLK_E_NOMEM;
    hub->host = host;
    hub->inst = inst;
    /* Only scheme://host:port: chan_websocket serves /media on the root of
     * Asterisk's HTTP server, whatever path ARI's URL carries. */
    size_t hl = strcspn(rest, "/?#");
    if (hl == 0 || (size_t)snprintf(hub->ws_base, sizeof hub->ws_base, "%s%.*s", scheme, (int)hl,
                                    rest) >= sizeof hub->ws_base) {
        free(hub);
        snprintf(err, errlen, "ari_url \"%s\" has no usable host", url);
        return TOLK_E_INVAL;
    }
    if (user && *user) {
        char cred[300], b64[420];
        snprintf(cred, sizeof cred, "%s:%s", user, pass ? pass : "");
        base64(cred, b64, sizeof b64);
        snprintf(hub->auth, sizeof hub->auth, "Authorization: Basic %s", b64);
    }
    if (fmt && *fmt) {
        snprintf(hub->control_buf, sizeof hub->control_buf, "%s", fmt);
        hub->control_format = hub->control_buf;
    }
    int64_t tmo = host->cfg_int(cfg, "media_connect_timeout_ms");
    int64_t buf_ms = host->cfg_int(cfg, "media_tx_buffer_ms");
    int64_t mark_ms = host->cfg_int(cfg, "websocket_mark_ms");
    hub->connect_timeout = (double)(tmo > 0 ? tmo : 5000) / 1000.0;
    hub->q_frames = (size_t)(buf_ms > 0 ? buf_ms : 1000) / 20;
    if (hub->q_frames < 2) hub->q_frames = 2;
    hub->mark_frames = (size_t)(mark_ms > 0 ? mark_ms : 500) / 20;
    if (hub->mark_frames < 1) hub->mark_frames = 1;
    *out = hub;
    return TOLK_OK;
}

static void link_free(tr_media *m);

static void ws_hub_destroy(tr_media_hub *hub) {
    if (!hub) return;
    while (hub->links) {
        LOG(hub, TOLK_LOG_WARN, "WebSocket media %s still open when its hub is destroyed",
            hub->links->conn_id[0] ? hub->links->conn_id : "(not attached)");
        link_free(hub->links);
    }
    while (hub->closing) {
        ws_ctx *c = hub->closing;
        hub->closing = c->next;
        hub->host->ws_cancel(c->ws);
        free(c);
    }
    free(hub);
}

static void tick_cb(void *ud);

static tr_media *ws_open(tr_media_hub *hub, const tr_media_events *ev, char *err, size_t errlen) {
    tr_media *m = calloc(1, sizeof *m);
    ws_ctx *ctx = calloc(1, sizeof *ctx);
    int16_t *q = calloc(hub->q_frames, TOLK_FRAME_BYTES);
    if (!m || !ctx || !q) {
        free(m);
        free(ctx);
        free(q);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->hub = hub;
    if (ev) m->ev = *ev;
    m->ctx = ctx;
    ctx->hub = hub;
    ctx->m = m;
    m->q = q;
    m->q_cap = hub->q_frames;
    m->next = hub->links;
    if (hub->links) hub->links->prev = m;
    hub->links = m;
    return m;
}

static int ws_ari_params(tr_media *m, char *buf, size_t n) {
    /* external_host=INCOMING is what Asterisk itself puts there for a
     * server connection when it is left out; any other value is taken as
     * the name of a websocket_client.conf entry and fails. */
    const char *f = m->hub->control_format;
    int len = snprintf(buf, n,
                       "external_host=INCOMING&format=slin16&encapsulation=none&transport="
                       "websocket&connection_type=server%s%s%s",
                       f ? "&transport_data=f(" : "", f ? f : "", f ? ")" : "");
    return len < 0 || (size_t)len >= n ? -1 : len;
}

/* Tells call control once that the link is gone; returns 1 if m was freed
 * from inside the callback. */
static int link_fail_ret(tr_media *m, const char *why) {
    if (m->gone) return 0;
    m->gone = 1;
    if (m->tick) m->hub->host->timer_stop(m->tick);
    m->tick = NULL;
    if (!m->ev.closed) return 0;
    m->busy++;
    m->ev.closed(m->ev.ud, why);
    m->busy--;
    if (m->freed && m->busy == 0) {
        link_free(m);
        return 1;
    }
    return 0;
}

/* ---- outgoing ---- */

static int text_send(tr_media *m, const char *cmd, const char *id) {
    char msg[WS_ID_MAX + 64];
    if (m->hub->control_format && strcmp(m->hub->control_format, "json") == 0)
        snprintf(msg, sizeof msg, "{\"command\":\"%s\",\"correlation_id\":\"%s\"}", cmd, id);
    else
        snprintf(msg, sizeof msg, "%s %s", cmd, id);
    return m->hub->host->ws_send(m->ws, msg, strlen(msg), 0) == TOLK_OK ? 0 : -1;
}

static int send_mark(tr_media *m, uint64_t n) {
    char id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)n);
    return text_send(m, "MARK_MEDIA", id);
}

static int can_send(tr_media *m) {
    if (!m->ws || !m->started || m->xoff || m->gone) return 0;
    /* Asterisk reads one message per 20 ms timer tick at most when busy;
     * when the socket backs up, our own queue (with its bound) takes over. */
    return m->hub->host->ws_buffered(m->ws) < m->q_cap * (size_t)(TOLK_FRAME_BYTES + 14) / 2;
}

static void flush(tr_media *m) {
    while (m->q_len && can_send(m)) {
        uint64_t idx = m->q_index;
        while (m->nmarks && m->marks[0] <= idx) {
            send_mark(m, m->marks[0]);
            memmove(m->marks, m->marks + 1, --m->nmarks * sizeof m->marks[0]);
        }
        const int16_t *f = m->q + m->q_head * TOLK_FRAME_SAMPLES;
        uint8_t le[TOLK_FRAME_BYTES];
        for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++) {
            uint16_t s = (uint16_t)f[i];
            le[2 * i] = (uint8_t)(s & 0xff);
            le[2 * i + 1] = (uint8_t)(s >> 8);
        }
        if (m->hub->host->ws_send(m->ws, le, sizeof le, 1) != TOLK_OK) {
            m->st.tx_dropped += m->q_len;
            m->q_len = 0;
            break;
        }
        m->st.tx_frames++;
        m->q_head = (m->q_head + 1) % m->q_cap;
        m->q_len--;
        m->q_index++;
    }
    if (m->q_len == 0 && can_send(m))
        while (m->nmarks) {
            send_mark(m, m->marks[0]);
            memmove(m->marks, m->marks + 1, --m->nmarks * sizeof m->marks[0]);
        }
}

static void queue_mark(tr_media *m) {
    if (m->handed == m->marked) return;
    m->marked = m->handed;
    if (m->nmarks == WS_MARKS_MAX) {
        /* Marks pile up only while Asterisk takes nothing: the newest says
         * more than the oldest, so the oldest goes. */
        memmove(m->marks, m->marks + 1, --m->nmarks * sizeof m->marks[0]);
    }
    m->marks[m->nmarks++] = m->handed;
}

static tolk_status ws_send(tr_media *m, const int16_t *pcm, size_t n, unsigned flags) {
    if (n != TOLK_FRAME_SAMPLES || !pcm) return TOLK_E_INVAL;
    if (m->gone) return TOLK_E_INVAL;
    tolk_status st = TOLK_OK;
    /* The frames before a new talkspurt have been a talkspurt of their own. */
    if ((flags & TOLK_PLAY_TALKSPURT) && m->handed > m->marked) queue_mark(m);
    if (m->q_len == m->q_cap) {
        /* Full: the oldest frame goes, so what plays when Asterisk takes
         * audio again is the most recent. */
        m->q_head = (m->q_head + 1) % m->q_cap;
        m->q_len--;
        m->q_index++;
        m->st.tx_dropped++;
        st = TOLK_E_AGAIN;
    }
    memcpy(m->q + ((m->q_head + m->q_len) % m->q_cap) * TOLK_FRAME_SAMPLES, pcm, TOLK_FRAME_BYTES);
    m->q_len++;
    m->handed++;
    m->last_send_at = m->hub->host->now();
    if (m->handed - m->marked >= m->hub->mark_frames) queue_mark(m);
    flush(m);
    return st;
}

/* ---- incoming ---- */

/* Finds "key:value" in a plain-text event; value up to the next space. */
static int plain_get(const char *msg, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    for (const char *p = strchr(msg, ' '); p; p = strchr(p + 1, ' ')) {
        const char *k = p + 1;
        if (strncmp(k, key, kl) == 0 && k[kl] == ':') {
            const char *v = k + kl + 1;
            size_t vl = strcspn(v, " ");
            if (vl >= cap) vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return 0;
        }
    }
    return -1;
}

static void on_media_start(tr_media *m, const char *format, long frame_size, long ptime) {
    if (m->started) return;
    m->started = 1;
    LOG(m->hub, TOLK_LOG_INFO, "WebSocket media %s started: format %s, frames of %ld bytes, %ld ms",
        m->conn_id, format, frame_size, ptime);
    if (strcmp(format, "slin16") != 0 || frame_size != TOLK_FRAME_BYTES)
        LOG(m->hub, TOLK_LOG_ERR,
            "WebSocket media %s: Asterisk uses %s in frames of %ld bytes, not slin16 in 640: "
            "the audio will be wrong; create the channel with format=slin16",
            m->conn_id, format, frame_size);
    flush(m);
}

static void on_mark_processed(tr_media *m, const char *id) {
    char *end = NULL;
    unsigned long long n = strtoull(id, &end, 10);
    if (!*id || !end || *end || n > m->handed) {
        LOG(m->hub, TOLK_LOG_WARN,
            "WebSocket media %s: MEDIA_MARK_PROCESSED for a mark not ours: %.40s", m->conn_id, id);
        return;
    }
    if (n <= m->played) return;
    m->played = n;
    if (m->ev.played) {
        m->busy++;
        m->ev.played(m->ev.ud, n);
        m->busy--;
    }
}

static void on_dtmf(tr_media *m, const char *digit) {
    char d = digit[0];
    if (!d || digit[1] || !strchr("0123456789*#ABCD", d)) {
        m->st.rx_malformed++;
        LOG(m->hub, TOLK_LOG_WARN, "WebSocket media %s: DTMF_END with digit \"%.8s\"", m->conn_id,
            digit);
        return;
    }
    if (m->ev.dtmf) {
        m->busy++;
        m->ev.dtmf(m->ev.ud, d, 0);
        m->busy--;
    }
}

static void on_event(tr_media *m, const char *ev, const char *text) {
    if (strcmp(ev, "MEDIA_XOFF") == 0) {
        if (!m->xoff)
            LOG(m->hub, TOLK_LOG_INFO, "WebSocket media %s: MEDIA_XOFF, holding audio", m->conn_id);
        m->xoff = 1;
    } else if (strcmp(ev, "MEDIA_XON") == 0) {
        if (m->xoff) LOG(m->hub, TOLK_LOG_INFO, "WebSocket media %s: MEDIA_XON", m->conn_id);
        m->xoff = 0;
        flush(m);
    } else if (strcmp(ev, "ERROR") == 0) {
        LOG(m->hub, TOLK_LOG_WARN, "WebSocket media %s: Asterisk reports: %.200s", m->conn_id,
            text);
    } else if (strcmp(ev, "STATUS") == 0 || strcmp(ev, "QUEUE_DRAINED") == 0 ||
               strcmp(ev, "MEDIA_BUFFERING_COMPLETED") == 0) {
        LOG(m->hub, TOLK_LOG_DBG, "WebSocket media %s: %.200s", m->conn_id, text);
    } else {
        LOG(m->hub, TOLK_LOG_VERB, "WebSocket media %s: unknown event ignored: %.100s", m->conn_id,
            text);
    }
}

static void on_text(tr_media *m, const char *msg, size_t n) {
    char buf[1024];
    LOG(m->hub, TOLK_LOG_DBG, "WebSocket media %s: <- %.*s", m->conn_id, (int)(n > 300 ? 300 : n),
        msg);
    if (n >= sizeof buf) {
        /* MEDIA_START with many channel variables (JSON) can be long; what
         * we need is near its start, but a cut JSON does not parse. */
        json_error_t e;
        json_t *j = json_loadb(msg, n, 0, &e);
        if (!j) {
            m->st.rx_malformed++;
            LOG(m->hub, TOLK_LOG_WARN,
                "WebSocket media %s: a %zu-byte text message that is not JSON", m->conn_id, n);
            return;
        }
        const char *ev = json_string_value(json_object_get(j, "event"));
        const char *f = json_string_value(json_object_get(j, "format"));
        if (ev && strcmp(ev, "MEDIA_START") == 0)
            on_media_start(m, f ? f : "?",
                           (long)json_integer_value(json_object_get(j, "optimal_frame_size")),
                           (long)json_integer_value(json_object_get(j, "ptime")));
        else
            on_event(m, ev ? ev : "?", "(long message)");
        json_decref(j);
        return;
    }
    memcpy(buf, msg, n);
    buf[n] = '\0';
    while (n && isspace((unsigned char)buf[n - 1])) buf[--n] = '\0';
    if (buf[0] == '{') {
        json_t *j = json_loads(buf, 0, NULL);
        const char *ev = json_string_value(json_object_get(j, "event"));
        if (!j || !ev) {
            m->st.rx_malformed++;
            LOG(m->hub, TOLK_LOG_WARN, "WebSocket media %s: malformed JSON event: %.100s",
                m->conn_id, buf);
            json_decref(j);
            return;
        }
        if (strcmp(ev, "MEDIA_START") == 0) {
            const char *f = json_string_value(json_object_get(j, "format"));
            on_media_start(m, f ? f : "?",
                           (long)json_integer_value(json_object_get(j, "optimal_frame_size")),
                           (long)json_integer_value(json_object_get(j, "ptime")));
        } else if (strcmp(ev, "MEDIA_MARK_PROCESSED") == 0) {
            const char *id = json_string_value(json_object_get(j, "correlation_id"));
            on_mark_processed(m, id ? id : "");
        } else if (strcmp(ev, "DTMF_END") == 0) {
            const char *d = json_string_value(json_object_get(j, "digit"));
            on_dtmf(m, d ? d : "");
        } else if (strcmp(ev, "ERROR") == 0) {
            const char *t = json_string_value(json_object_get(j, "error_text"));
            on_event(m, ev, t ? t : buf);
        } else {
            on_event(m, ev, buf);
        }
        json_decref(j);
        return;
    }
    char ev[40];
    size_t el = strcspn(buf, " ");
    if (el == 0 || el >= sizeof ev) {
        m->st.rx_malformed++;
        LOG(m->hub, TOLK_LOG_WARN, "WebSocket media %s: unreadable text message: %.100s",
            m->conn_id, buf);
        return;
    }
    memcpy(ev, buf, el);
    ev[el] = '\0';
    if (strcmp(ev, "MEDIA_START") == 0) {
        char f[32] = "?", fs[16] = "0", pt[16] = "0";
        plain_get(buf, "format", f, sizeof f);
        plain_get(buf, "optimal_frame_size", fs, sizeof fs);
        plain_get(buf, "ptime", pt, sizeof pt);
        on_media_start(m, f, strtol(fs, NULL, 10), strtol(pt, NULL, 10));
    } else if (strcmp(ev, "MEDIA_MARK_PROCESSED") == 0) {
        on_mark_processed(m, buf[el] ? buf + el + 1 : "");
    } else if (strcmp(ev, "DTMF_END") == 0) {
        char d[8] = "";
        plain_get(buf, "digit", d, sizeof d);
        on_dtmf(m, d);
    } else {
        on_event(m, ev, buf);
    }
}

static void on_binary(tr_media *m, const uint8_t *p, size_t n) {
    if (n % 2) {
        /* Asterisk writes whole frames; an odd length is not slin16. */
        m->st.rx_malformed++;
        if (!m->odd_byte_logged++)
            LOG(m->hub, TOLK_LOG_WARN,
                "WebSocket media %s: binary message of odd length %zu: dropped", m->conn_id, n);
        return;
    }
    if (n == 0) return;
    size_t ns = n / 2;
    int16_t *pcm = malloc(ns * sizeof *pcm);
    if (!pcm) {
        m->st.rx_lost += ns / TOLK_FRAME_SAMPLES;
        return;
    }
    for (size_t i = 0; i < ns; i++) pcm[i] = (int16_t)(uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
    uint64_t before = m->rx_samples / TOLK_FRAME_SAMPLES;
    m->rx_samples += ns;
    m->st.rx_frames += m->rx_samples / TOLK_FRAME_SAMPLES - before;
    if (m->ev.audio) {
        double now = m->hub->host->now();
        /* the part of a pause the tick has not filled yet */
        long k = tr_idle_resume(&m->idle, now);
        m->busy++;
        for (long i = 1; i <= k && !m->freed && !m->gone; i++)
            m->ev.audio(m->ev.ud, ws_zeros, TOLK_FRAME_SAMPLES, tr_idle_slot(&m->idle, i));
        tr_idle_filled(&m->idle, k);
        if (!m->freed && !m->gone) m->ev.audio(m->ev.ud, pcm, ns, now);
        m->busy--;
        tr_idle_audio(&m->idle, now, ns);
    }
    free(pcm);
}

static void ws_on_open(void *ud, tolk_ws *ws) {
    ws_ctx *c = ud;
    (void)ws;
    if (c->m) LOG(c->hub, TOLK_LOG_INFO, "WebSocket media %s connected", c->m->conn_id);
}

static void ws_on_message(void *ud, tolk_ws *ws, const void *data, size_t n, int binary) {
    ws_ctx *c = ud;
    (void)ws;
    tr_media *m = c->m;
    if (!m || m->gone) return;
    if (binary)
        on_binary(m, data, n);
    else
        on_text(m, data, n);
    if (m->freed && m->busy == 0) link_free(m);
}

static void ws_on_close(void *ud, tolk_ws *ws, const tolk_ws_close_info *info) {
    ws_ctx *c = ud;
    (void)ws;
    tr_media *m = c->m;
    if (!m) {
        /* The link was closed by call control: only the context is left. */
        for (ws_ctx **p = &c->hub->closing; *p; p = &(*p)->next)
            if (*p == c) {
                *p = c->next;
                break;
            }
        free(c);
        return;
    }
    m->ws = NULL;
    c->ws = NULL;
    char why[256];
    if (info->http_status)
        snprintf(why, sizeof why, "Asterisk refused the media WebSocket %s: HTTP %d%s", m->conn_id,
                 info->http_status,
                 info->http_status == 404   ? " (no such connection id)"
                 : info->http_status == 409 ? " (another connection already has it)"
                                            : "");
    else if (info->status == TOLK_OK)
        snprintf(why, sizeof why, "Asterisk closed the media WebSocket (hang-up, code %d%s%s)",
                 info->code, info->reason && *info->reason ? ": " : "",
                 info->reason ? info->reason : "");
    else
        snprintf(why, sizeof why, "media WebSocket lost: %s (code %d)",
                 info->reason && *info->reason ? info->reason : "connection failed", info->code);
    LOG(c->hub, info->status == TOLK_OK ? TOLK_LOG_INFO : TOLK_LOG_WARN, "%s", why);
    link_fail_ret(m, why);
}

static void tick_cb(void *ud) {
    tr_media *m = ud;
    double now = m->hub->host->now();
    if (m->gone) return;
    if (!m->started && now - m->attached_at > m->hub->connect_timeout) {
        char why[128];
        snprintf(why, sizeof why, "no MEDIA_START from Asterisk within %.1f s",
                 m->hub->connect_timeout);
        LOG(m->hub, TOLK_LOG_WARN, "WebSocket media %s: %s", m->conn_id, why);
        link_fail_ret(m, why);
        return;
    }
    /* silence while Asterisk sends nothing */
    if (m->started && m->ev.audio) {
        double at;
        m->busy++;
        for (int k = 0;
             k < TR_IDLE_BURST && !m->freed && !m->gone && tr_idle_due(&m->idle, now, &at); k++)
            m->ev.audio(m->ev.ud, ws_zeros, TOLK_FRAME_SAMPLES, at);
        m->busy--;
        if (m->freed) {
            link_free(m);
            return;
        }
        if (m->gone) return;
    }
    if (m->handed > m->marked && now - m->last_send_at >= WS_SPURT_END_S) queue_mark(m);
    flush(m);
}

static tolk_status ws_attach(tr_media *m, const json_t *channel) {
    tr_media_hub *hub = m->hub;
    const json_t *vars = channel ? json_object_get(channel, "channelvars") : NULL;
    const char *id = json_string_value(json_object_get(vars, "MEDIA_WEBSOCKET_CONNECTION_ID"));
    if (!id || !*id || strlen(id) >= sizeof m->conn_id) {
        LOG(hub, TOLK_LOG_ERR,
            "externalMedia reply has no channelvars.MEDIA_WEBSOCKET_CONNECTION_ID: is this "
            "Asterisk 22.6 or later, with chan_websocket loaded?");
        return TOLK_E_INVAL;
    }
    for (const char *p = id; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.", *p)) {
            LOG(hub, TOLK_LOG_ERR, "MEDIA_WEBSOCKET_CONNECTION_ID \"%.60s\" is not a plain id", id);
            return TOLK_E_INVAL;
        }
    if (m->ws || m->attached) return TOLK_E_INVAL;
    snprintf(m->conn_id, sizeof m->conn_id, "%s", id);
    char url[700];
    snprintf(url, sizeof url, "%s/media/%s", hub->ws_base, id);
    const char *headers[2] = {hub->auth[0] ? hub->auth : NULL, NULL};
    tolk_ws_params p = {.size = sizeof p,
                        .url = url,
                        .headers = headers,
                        .subprotocol = "media",
                        .connect_timeout = hub->connect_timeout,
                        .on_open = ws_on_open,
                        .on_message = ws_on_message,
                        .on_close = ws_on_close,
                        .ud = m->ctx};
    m->ws = hub->host->ws_connect(hub->inst, &p);
    if (!m->ws) {
        LOG(hub, TOLK_LOG_ERR, "WebSocket media: cannot connect to %s", url);
        return TOLK_E_BACKEND;
    }
    m->ctx->ws = m->ws;
    m->attached = 1;
    m->attached_at = hub->host->now();
    m->tick = hub->host->timer_start(hub->inst, WS_TICK_S, WS_TICK_S, tick_cb, m);
    LOG(hub, TOLK_LOG_VERB, "WebSocket media: connecting to %s", url);
    return TOLK_OK;
}

static void ws_stats(const tr_media *m, tr_media_stats *out) { *out = m->st; }

static void link_free(tr_media *m) {
    tr_media_hub *hub = m->hub;
    if (m->prev)
        m->prev->next = m->next;
    else
        hub->links = m->next;
    if (m->next) m->next->prev = m->prev;
    if (m->tick) hub->host->timer_stop(m->tick);
    m->tick = NULL;
    ws_ctx *c = m->ctx;
    c->m = NULL;
    if (m->ws) {
        /* The close handshake finishes after m is gone; the context waits
         * for its on_close. */
        hub->host->ws_close(m->ws, 1000, "tolk: call ended");
        c->next = hub->closing;
        hub->closing = c;
    } else {
        free(c);
    }
    free(m->q);
    free(m);
}

static void ws_close(tr_media *m) {
    if (!m) return;
    if (m->busy) {
        m->freed = 1;
        m->gone = 1;
        return;
    }
    link_free(m);
}

const tr_media_ops tr_media_websocket = {
    .name = "websocket",
    .chan_flags = 0,
    .hub_create = ws_hub_create,
    .hub_destroy = ws_hub_destroy,
    .open = ws_open,
    .ari_params = ws_ari_params,
    .attach = ws_attach,
    .send = ws_send,
    .stats = ws_stats,
    .close = ws_close,
};
