/* plugins/transport_rtp/media_audiosocket.c: ExternalMedia over AudioSocket
 * (TCP), see media.h.
 *
 * Asterisk is the TCP client and connects while the externalMedia request is
 * still being answered, so the hub listens from hub_create() on and each
 * link reserves a fresh UUID at open(). A connection is matched to its link
 * by the first message, kind 0x01 with the UUID in binary; until then it is
 * "pending" and owned by the hub.
 *
 * Wire format (res_audiosocket.c, protocols.md 4.0/4.6/8): kind u8 | length
 * u16 big-endian | payload. Audio is little-endian signed linear: kind 0x12
 * is slin16 since 20.17/21.12/22.7; older builds label every format 0x10, so
 * 0x10 from a channel created with format=slin16 carries 16 kHz, and the
 * link then answers with 0x10 too (an older build refuses 0x12). DTMF is
 * kind 0x03 with one ASCII byte; 0xff an error; Asterisk hangs up by closing
 * the socket.
 *
 * Asterisk sends audio only while the bridge has some (a party alone with its
 * ExternalMedia channel is silent on the wire while it is quiet): a 20 ms
 * timer fills the timeline with silence once the peer has been quiet for
 * more than two frames (media_idle.h).
 *
 * Nothing blocks: the sockets are non-blocking, reads are reassembled here,
 * and what the socket cannot take waits in a bounded buffer (overflow is
 * counted in tx_dropped). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "media.h"
#include "media_idle.h"

#define AS_KIND_HANGUP 0x00
#define AS_KIND_UUID 0x01
#define AS_KIND_DTMF 0x03
#define AS_KIND_SLIN 0x10
#define AS_KIND_SLIN16 0x12
#define AS_KIND_SLIN192 0x18
#define AS_KIND_ERROR 0xff
/* The largest audio payload taken: half a second of slin16. Asterisk sends
 * one 20 ms frame (640 bytes) per message; a length far beyond that is a
 * peer that is not AudioSocket (or lost framing), and the link is closed. */
#define AS_MAX_AUDIO 16000
#define AS_MSG_BYTES (3 + TOLK_FRAME_BYTES)
#define AS_SWEEP_S 0.25

typedef struct as_conn {
    struct as_conn *next;
    tr_media_hub *hub;
    int fd;
    tolk_io *io;
    double since;
    uint8_t buf[3 + 16];
    size_t n;
    char peer[64];
} as_conn;

struct tr_media {
    tr_media *next, *prev;
    tr_media_hub *hub;
    tr_media_events ev;
    uint8_t uuid[16];
    char uuid_str[37];
    int fd; /* -1 until Asterisk's connection brought our UUID */
    tolk_io *io;
    int attached, connected, gone;
    double opened_at;
    /* reassembly of the incoming stream */
    uint8_t hdr[3];
    size_t hdr_n;
    uint8_t *payload;
    size_t pay_need, pay_n;
    /* outgoing bytes the socket has not taken yet: a FIFO of whole messages */
    uint8_t *tx;
    size_t tx_off, tx_len, tx_cap;
    uint8_t out_kind;
    int legacy_logged, rate_logged;
    uint64_t rx_samples;
    tr_idle idle; /* the timeline of what was delivered: silence in pauses */
    tr_media_stats st;
    int busy;  /* > 0 while an event callback runs */
    int freed; /* close() came from inside such a callback */
};

struct tr_media_hub {
    const tolk_host *host;
    tolk_instance *inst;
    int lfd;
    tolk_io *lio;
    char host_port[300];
    double connect_timeout;
    size_t tx_cap;
    as_conn *pending;
    tr_media *links;
    tolk_timer *sweep;
    tolk_timer *idle_tick; /* silence for links whose peer went quiet */
    uint64_t accepted, unknown_uuid, refused;
    double accept_pause_until;
    tolk_metric *refused_metric;
};

#define LOG(hub, lvl, ...) TOLK_LOG((hub)->host, (hub)->inst, lvl, __VA_ARGS__)

static const int16_t as_zeros[TOLK_FRAME_SAMPLES];

static void link_io_cb(void *ud, int fd, unsigned revents);

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL, 0);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void uuid_format(const uint8_t u[16], char out[37]) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[u[i] >> 4];
        out[o++] = hex[u[i] & 15];
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------ */
/* Hub: the listener and the connections that have not named a link yet */

static void conn_free(as_conn *c) {
    if (c->io) c->hub->host->io_stop(c->io);
    if (c->fd >= 0) close(c->fd);
    free(c);
}

static void conn_unlink(tr_media_hub *hub, as_conn *c) {
    for (as_conn **p = &hub->pending; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

/* reason: a label value of media_connections_refused_total. */
static void conn_refuse(tr_media_hub *hub, as_conn *c, const char *reason, const char *why) {
    hub->refused++;
    if (hub->refused_metric) {
        const char *labels[2] = {"audiosocket", reason};
        tolk_series *s = hub->host->metric_series(hub->refused_metric, labels);
        if (s) hub->host->series_add(s, 1);
    }
    LOG(hub, TOLK_LOG_WARN, "AudioSocket connection from %s closed: %s", c->peer, why);
    conn_unlink(hub, c);
    conn_free(c);
}

static tr_media *link_by_uuid(tr_media_hub *hub, const uint8_t uuid[16]) {
    for (tr_media *m = hub->links; m; m = m->next)
        if (memcmp(m->uuid, uuid, 16) == 0) return m;
    return NULL;
}

static void conn_read_cb(void *ud, int fd, unsigned revents) {
    as_conn *c = ud;
    tr_media_hub *hub = c->hub;
    (void)revents;
    /* Only the UUID message is read here: the bytes after it belong to the
     * link and stay in the socket until the link's watcher reads them. */
    ssize_t r = read(fd, c->buf + c->n, sizeof c->buf - c->n);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (r <= 0) {
        conn_refuse(hub, c, "closed", r == 0 ? "closed before sending its UUID" : strerror(errno));
        return;
    }
    c->n += (size_t)r;
    if (c->n >= 1 && c->buf[0] != AS_KIND_UUID) {
        char why[96];
        snprintf(why, sizeof why, "first message is kind 0x%02x, not the UUID (0x01)%s", c->buf[0],
                 c->buf[0] >= AS_KIND_SLIN && c->buf[0] <= AS_KIND_SLIN192 ? ": audio before UUID"
                                                                           : "");
        conn_refuse(hub, c, "protocol", why);
        return;
    }
    if (c->n >= 3 && (c->buf[1] != 0 || c->buf[2] != 16)) {
        char why[64];
        snprintf(why, sizeof why, "UUID message of length %u, not 16",
                 (unsigned)c->buf[1] << 8 | c->buf[2]);
        conn_refuse(hub, c, "protocol", why);
        return;
    }
    if (c->n < sizeof c->buf) return;
    char us[37];
    uuid_format(c->buf + 3, us);
    tr_media *m = link_by_uuid(hub, c->buf + 3);
    if (!m || m->fd >= 0 || m->gone) {
        hub->unknown_uuid++;
        char why[96];
        snprintf(why, sizeof why, "%s UUID %s", m ? "a second connection for" : "unknown", us);
        conn_refuse(hub, c, "unknown_uuid", why);
        return;
    }
    hub->host->io_stop(c->io);
    c->io = NULL;
    m->fd = c->fd;
    c->fd = -1;
    m->connected = 1;
    m->io = hub->host->io_start(hub->inst, m->fd, TOLK_IO_READ, link_io_cb, m);
    LOG(hub, TOLK_LOG_INFO, "AudioSocket %s connected from %s", us, c->peer);
    conn_unlink(hub, c);
    conn_free(c);
}

static void accept_cb(void *ud, int fd, unsigned revents) {
    tr_media_hub *hub = ud;
    (void)revents;
    if (hub->accept_pause_until > hub->host->now()) return;
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept(fd, (struct sockaddr *)&ss, &sl);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: rest instead of spinning on a listener
                 * that stays readable. */
                LOG(hub, TOLK_LOG_ERR, "AudioSocket accept: %s; pausing 0.5 s", strerror(errno));
                hub->accept_pause_until = hub->host->now() + 0.5;
                hub->host->io_set(hub->lio, 0);
            }
            return;
        }
        if (set_nonblock(cfd) != 0) {
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        as_conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(cfd);
            continue;
        }
        c->hub = hub;
        c->fd = cfd;
        c->since = hub->host->now();
        char h[48], p[8];
        if (getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0)
            snprintf(c->peer, sizeof c->peer, "%s:%s", h, p);
        else
            snprintf(c->peer, sizeof c->peer, "?");
        c->io = hub->host->io_start(hub->inst, cfd, TOLK_IO_READ, conn_read_cb, c);
        if (!c->io) {
            conn_free(c);
            continue;
        }
        c->next = hub->pending;
        hub->pending = c;
        hub->accepted++;
    }
}

static void link_fail(tr_media *m, const char *why);

/* Pending connections that never name a link, and links whose connection
 * never arrives, are ended here. */
static void sweep_cb(void *ud) {
    tr_media_hub *hub = ud;
    double now = hub->host->now();
    if (hub->accept_pause_until && now >= hub->accept_pause_until) {
        hub->accept_pause_until = 0;
        hub->host->io_set(hub->lio, TOLK_IO_READ);
    }
    as_conn *c = hub->pending;
    while (c) {
        as_conn *next = c->next;
        if (now - c->since > hub->connect_timeout)
            conn_refuse(hub, c, "timeout", "no UUID within the connect timeout");
        c = next;
    }
    /* link_fail() may lead call control to close (free) any link, so the
     * scan starts over after each event. */
    for (int again = 1; again;) {
        again = 0;
        for (tr_media *m = hub->links; m; m = m->next) {
            if (m->gone || m->connected || !m->attached) continue;
            if (now - m->opened_at > hub->connect_timeout) {
                char why[128];
                snprintf(why, sizeof why,
                         "Asterisk did not connect to the AudioSocket within %.1f s",
                         hub->connect_timeout);
                link_fail(m, why);
                again = 1;
                break;
            }
        }
    }
}

static void idle_tick_cb(void *ud);

static tolk_status as_hub_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                 tr_media_hub **out, char *err, size_t errlen) {
    const char *bind_addr = host->cfg_string(cfg, "audiosocket_bind");
    const char *adv = host->cfg_string(cfg, "audiosocket_host");
    int64_t port = host->cfg_int(cfg, "audiosocket_port");
    int64_t tmo = host->cfg_int(cfg, "media_connect_timeout_ms");
    int64_t buf_ms = host->cfg_int(cfg, "media_tx_buffer_ms");
    if (!bind_addr || !*bind_addr) bind_addr = "127.0.0.1";
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "audiosocket_port %lld is not a TCP port", (long long)port);
        return TOLK_E_INVAL;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%lld", (long long)port);
    int gai = getaddrinfo(bind_addr, ps, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "audiosocket_bind \"%s\" is not a numeric address: %s", bind_addr,
                 gai_strerror(gai));
        return TOLK_E_INVAL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "AudioSocket listener on %s port %lld: %s", bind_addr,
                 (long long)port, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return TOLK_E_BACKEND;
    }
    int family = ai->ai_family;
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char bound_port[NI_MAXSERV] = "0";
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        getnameinfo((struct sockaddr *)&ss, sl, NULL, 0, bound_port, sizeof bound_port,
                    NI_NUMERICSERV);

    tr_media_hub *hub = calloc(1, sizeof *hub);
    if (!hub) {
        close(fd);
        return TOLK_E_NOMEM;
    }
    hub->host = host;
    hub->inst = inst;
    hub->lfd = fd;
    hub->connect_timeout = (double)(tmo > 0 ? tmo : 5000) / 1000.0;
    hub->tx_cap = (size_t)((buf_ms > 0 ? buf_ms : 1000) / 20) * AS_MSG_BYTES;
    if (hub->tx_cap < 2 * AS_MSG_BYTES) hub->tx_cap = 2 * AS_MSG_BYTES;
    /* What Asterisk dials: the bind address, unless it is a wildcard. */
    const char *h = adv && *adv ? adv : bind_addr;
    if (!(adv && *adv) && (strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0))
        h = family == AF_INET6 ? "::1" : "127.0.0.1";
    if (strchr(h, ':'))
        snprintf(hub->host_port, sizeof hub->host_port, "[%s]:%s", h, bound_port);
    else
        snprintf(hub->host_port, sizeof hub->host_port, "%s:%s", h, bound_port);
    hub->refused_metric = host->metric_family(
        "media_connections_refused_total",
        "Media connections from Asterisk closed before they reached a call, by reason",
        TOLK_METRIC_COUNTER, "encapsulation,reason", NULL, 0);
    hub->lio = host->io_start(inst, fd, TOLK_IO_READ, accept_cb, hub);
    hub->sweep = host->timer_start(inst, AS_SWEEP_S, AS_SWEEP_S, sweep_cb, hub);
    hub->idle_tick =
        host->timer_start(inst, TOLK_FRAME_SECONDS, TOLK_FRAME_SECONDS, idle_tick_cb, hub);
    if (!hub->lio || !hub->sweep || !hub->idle_tick) {
        if (hub->lio) host->io_stop(hub->lio);
        if (hub->sweep) host->timer_stop(hub->sweep);
        if (hub->idle_tick) host->timer_stop(hub->idle_tick);
        close(fd);
        free(hub);
        snprintf(err, errlen, "no watcher for the AudioSocket listener");
        return TOLK_E_NOMEM;
    }
    LOG(hub, TOLK_LOG_INFO, "AudioSocket listening on %s port %s (Asterisk dials %s)", bind_addr,
        bound_port, hub->host_port);
    *out = hub;
    return TOLK_OK;
}

static void link_free(tr_media *m);

static void as_hub_destroy(tr_media_hub *hub) {
    if (!hub) return;
    while (hub->pending) {
        as_conn *c = hub->pending;
        hub->pending = c->next;
        conn_free(c);
    }
    while (hub->links) {
        LOG(hub, TOLK_LOG_WARN, "AudioSocket %s still open when its hub is destroyed",
            hub->links->uuid_str);
        link_free(hub->links);
    }
    hub->host->io_stop(hub->lio);
    hub->host->timer_stop(hub->sweep);
    hub->host->timer_stop(hub->idle_tick);
    close(hub->lfd);
    free(hub);
}

/* ------------------------------------------------------------------ */
/* Links                                                               */

static void link_free(tr_media *m) {
    tr_media_hub *hub = m->hub;
    if (m->prev)
        m->prev->next = m->next;
    else
        hub->links = m->next;
    if (m->next) m->next->prev = m->prev;
    if (m->io) hub->host->io_stop(m->io);
    if (m->fd >= 0) close(m->fd);
    free(m->payload);
    free(m->tx);
    free(m);
}

static void drop_socket(tr_media *m) {
    if (m->io) m->hub->host->io_stop(m->io);
    m->io = NULL;
    if (m->fd >= 0) close(m->fd);
    m->fd = -1;
}

/* Tells call control once that the link is gone. Returns 1 if m was freed
 * meanwhile (close() from inside the callback): the caller must not touch it. */
static int link_fail_ret(tr_media *m, const char *why) {
    if (m->gone) return 0;
    m->gone = 1;
    drop_socket(m);
    m->tx_len = m->tx_off = 0;
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

static void link_fail(tr_media *m, const char *why) { (void)link_fail_ret(m, why); }

static tr_media *as_open(tr_media_hub *hub, const tr_media_events *ev, char *err, size_t errlen) {
    tr_media *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->payload = malloc(AS_MAX_AUDIO);
    m->tx = malloc(hub->tx_cap);
    if (!m->payload || !m->tx) {
        free(m->payload);
        free(m->tx);
        free(m);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->tx_cap = hub->tx_cap;
    do {
        if (getrandom(m->uuid, sizeof m->uuid, 0) != (ssize_t)sizeof m->uuid) {
            snprintf(err, errlen, "no random bytes for a UUID: %s", strerror(errno));
            free(m->payload);
            free(m->tx);
            free(m);
            return NULL;
        }
        m->uuid[6] = (uint8_t)((m->uuid[6] & 0x0f) | 0x40); /* version 4 */
        m->uuid[8] = (uint8_t)((m->uuid[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    } while (link_by_uuid(hub, m->uuid));
    uuid_format(m->uuid, m->uuid_str);
    m->hub = hub;
    if (ev) m->ev = *ev;
    m->fd = -1;
    m->out_kind = AS_KIND_SLIN16;
    m->opened_at = hub->host->now();
    m->next = hub->links;
    if (hub->links) hub->links->prev = m;
    hub->links = m;
    return m;
}

static int as_ari_params(tr_media *m, char *buf, size_t n) {
    int len = snprintf(buf, n,
                       "external_host=%s&format=slin16&encapsulation=audiosocket&transport=tcp&"
                       "data=%s",
                       m->hub->host_port, m->uuid_str);
    return len < 0 || (size_t)len >= n ? -1 : len;
}

static tolk_status as_attach(tr_media *m, const json_t *channel) {
    m->attached = 1;
    /* The connect timeout runs from the reply: Asterisk has connected by
     * then when all is well. */
    m->opened_at = m->hub->host->now();
    const json_t *vars = channel ? json_object_get(channel, "channelvars") : NULL;
    const char *u = json_string_value(json_object_get(vars, "AUDIOSOCKET_UUID"));
    if (u && strcasecmp(u, m->uuid_str) != 0) {
        LOG(m->hub, TOLK_LOG_ERR, "externalMedia reply names AudioSocket %s, not ours (%s)", u,
            m->uuid_str);
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

/* Writes what the buffer holds; 0 while the connection is usable. */
static int flush_tx(tr_media *m) {
    while (m->tx_len > 0) {
        ssize_t w = send(m->fd, m->tx + m->tx_off, m->tx_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        m->tx_off += (size_t)w;
        m->tx_len -= (size_t)w;
    }
    if (m->tx_len == 0) m->tx_off = 0;
    m->hub->host->io_set(m->io, TOLK_IO_READ | (m->tx_len ? TOLK_IO_WRITE : 0));
    return 0;
}

/* One whole message from Asterisk. Returns -1 if the link is now gone (m
 * may be freed). */
static int on_message(tr_media *m, uint8_t kind, const uint8_t *p, size_t len) {
    tr_media_hub *hub = m->hub;
    if (kind == AS_KIND_SLIN16 || kind == AS_KIND_SLIN) {
        if (kind == AS_KIND_SLIN && m->out_kind != AS_KIND_SLIN) {
            /* A build before 22.7 labels slin16 as 0x10 and accepts only
             * 0x10 back. */
            m->out_kind = AS_KIND_SLIN;
            if (!m->legacy_logged++)
                LOG(hub, TOLK_LOG_INFO,
                    "AudioSocket %s: audio arrives as kind 0x10 (an Asterisk older than "
                    "22.7): taken as 16 kHz, and answered as 0x10",
                    m->uuid_str);
        }
        if (len == 0 || len % 2) {
            m->st.rx_malformed++;
            return 0;
        }
        int16_t pcm[AS_MAX_AUDIO / 2];
        size_t n = len / 2;
        for (size_t i = 0; i < n; i++) pcm[i] = (int16_t)(uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        uint64_t before = m->rx_samples / TOLK_FRAME_SAMPLES;
        m->rx_samples += n;
        m->st.rx_frames += m->rx_samples / TOLK_FRAME_SAMPLES - before;
        if (m->ev.audio) {
            double now = hub->host->now();
            /* the part of a pause the idle timer has not filled yet */
            long k = tr_idle_resume(&m->idle, now);
            m->busy++;
            for (long i = 1; i <= k && !m->freed && !m->gone; i++)
                m->ev.audio(m->ev.ud, as_zeros, TOLK_FRAME_SAMPLES, tr_idle_slot(&m->idle, i));
            tr_idle_filled(&m->idle, k);
            if (!m->freed && !m->gone) m->ev.audio(m->ev.ud, pcm, n, now);
            m->busy--;
            tr_idle_audio(&m->idle, now, n);
        }
    } else if (kind > AS_KIND_SLIN && kind <= AS_KIND_SLIN192) {
        m->st.rx_malformed++;
        if (!m->rate_logged++)
            LOG(hub, TOLK_LOG_ERR,
                "AudioSocket %s: audio of kind 0x%02x (not 16 kHz): dropped; was the channel "
                "created with format=slin16?",
                m->uuid_str, kind);
    } else if (kind == AS_KIND_DTMF) {
        char d = len >= 1 ? (char)p[0] : 0;
        if (!strchr("0123456789*#ABCD", d) || d == 0) {
            m->st.rx_malformed++;
            LOG(hub, TOLK_LOG_WARN, "AudioSocket %s: DTMF message with %s", m->uuid_str,
                len ? "a byte that is not a digit" : "no digit");
            return 0;
        }
        if (m->ev.dtmf) {
            m->busy++;
            m->ev.dtmf(m->ev.ud, d, 0);
            m->busy--;
        }
    } else if (kind == AS_KIND_ERROR) {
        unsigned code = len >= 1 ? p[0] : 0;
        LOG(hub, TOLK_LOG_WARN, "AudioSocket %s: Asterisk reports an error (code 0x%02x%s%s%s)",
            m->uuid_str, code, code & 1 ? ", calling party hung up" : "",
            code & 2 ? ", frame forwarding error" : "",
            code & 4 ? ", memory allocation error" : "");
    } else if (kind == AS_KIND_HANGUP) {
        return link_fail_ret(m, "Asterisk sent an AudioSocket hangup"), -1;
    } else if (kind == AS_KIND_UUID) {
        if (len != 16 || memcmp(p, m->uuid, 16) != 0) {
            LOG(hub, TOLK_LOG_WARN, "AudioSocket %s: a second, different UUID: closing",
                m->uuid_str);
            return link_fail_ret(m, "AudioSocket protocol error: a second UUID"), -1;
        }
    } else {
        char why[96];
        snprintf(why, sizeof why, "AudioSocket protocol error: unknown message kind 0x%02x", kind);
        LOG(hub, TOLK_LOG_WARN, "AudioSocket %s: %s (length %zu): closing", m->uuid_str, why, len);
        return link_fail_ret(m, why), -1;
    }
    if (m->freed && m->busy == 0) {
        link_free(m);
        return -1;
    }
    return 0;
}

/* Silence for the links whose peer has been quiet for more than two frames,
 * one frame per 20 ms slot after the last one delivered (media_idle.h). */
static void idle_tick_cb(void *ud) {
    tr_media_hub *hub = ud;
    double now = hub->host->now();
    /* a callback may close the link it was given (freed here afterwards):
     * the scan then starts over; the links already served have nothing due */
    for (int again = 1; again;) {
        again = 0;
        for (tr_media *m = hub->links; m; m = m->next) {
            if (m->gone || m->fd < 0 || !m->ev.audio) continue;
            double at;
            m->busy++;
            for (int k = 0;
                 k < TR_IDLE_BURST && !m->freed && !m->gone && tr_idle_due(&m->idle, now, &at); k++)
                m->ev.audio(m->ev.ud, as_zeros, TOLK_FRAME_SAMPLES, at);
            m->busy--;
            if (m->freed && m->busy == 0) {
                link_free(m);
                again = 1;
                break;
            }
        }
    }
}

static void link_io_cb(void *ud, int fd, unsigned revents) {
    tr_media *m = ud;
    if (revents & TOLK_IO_WRITE) {
        if (flush_tx(m) != 0) {
            char why[128];
            snprintf(why, sizeof why, "AudioSocket write failed: %s", strerror(errno));
            link_fail(m, why);
            return;
        }
    }
    if (!(revents & TOLK_IO_READ)) return;
    uint8_t buf[8192];
    /* A bounded number of reads per wake-up keeps one busy peer from
     * holding the loop. */
    for (int round = 0; round < 4; round++) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            char why[128];
            snprintf(why, sizeof why, "AudioSocket read failed: %s", strerror(errno));
            link_fail(m, why);
            return;
        }
        if (r == 0) {
            link_fail(m, m->hdr_n || m->pay_need ? "Asterisk closed the AudioSocket mid-message"
                                                 : "Asterisk closed the AudioSocket (hang-up)");
            return;
        }
        size_t i = 0, n = (size_t)r;
        while (i < n) {
            if (m->hdr_n < 3) {
                m->hdr[m->hdr_n++] = buf[i++];
                if (m->hdr_n < 3) continue;
                size_t len = (size_t)m->hdr[1] << 8 | m->hdr[2];
                uint8_t kind = m->hdr[0];
                int audio = kind >= AS_KIND_SLIN && kind <= AS_KIND_SLIN192;
                if ((audio && len > AS_MAX_AUDIO) || (!audio && len > 64)) {
                    char why[128];
                    snprintf(why, sizeof why,
                             "AudioSocket protocol error: message kind 0x%02x of %zu bytes", kind,
                             len);
                    LOG(m->hub, TOLK_LOG_WARN, "AudioSocket %s: %s: closing", m->uuid_str, why);
                    link_fail(m, why);
                    return;
                }
                m->pay_need = len;
                m->pay_n = 0;
                if (len > 0) continue;
            } else {
                size_t take = m->pay_need - m->pay_n;
                if (take > n - i) take = n - i;
                memcpy(m->payload + m->pay_n, buf + i, take);
                m->pay_n += take;
                i += take;
                if (m->pay_n < m->pay_need) continue;
            }
            m->hdr_n = 0;
            if (on_message(m, m->hdr[0], m->payload, m->pay_need) != 0) return;
            m->pay_need = 0;
            if (m->gone) return;
        }
    }
}

static tolk_status as_send(tr_media *m, const int16_t *pcm, size_t n, unsigned flags) {
    (void)flags;
    if (n != TOLK_FRAME_SAMPLES || !pcm) return TOLK_E_INVAL;
    if (m->gone) return TOLK_E_INVAL;
    if (m->fd < 0 || m->tx_len + AS_MSG_BYTES > m->tx_cap) {
        m->st.tx_dropped++;
        return TOLK_E_AGAIN;
    }
    uint8_t msg[AS_MSG_BYTES];
    msg[0] = m->out_kind;
    msg[1] = (uint8_t)(TOLK_FRAME_BYTES >> 8);
    msg[2] = (uint8_t)(TOLK_FRAME_BYTES & 0xff);
    for (size_t i = 0; i < n; i++) {
        uint16_t s = (uint16_t)pcm[i];
        msg[3 + 2 * i] = (uint8_t)(s & 0xff);
        msg[4 + 2 * i] = (uint8_t)(s >> 8);
    }
    if (m->tx_off + m->tx_len + AS_MSG_BYTES > m->tx_cap) {
        memmove(m->tx, m->tx + m->tx_off, m->tx_len);
        m->tx_off = 0;
    }
    memcpy(m->tx + m->tx_off + m->tx_len, msg, AS_MSG_BYTES);
    m->tx_len += AS_MSG_BYTES;
    m->st.tx_frames++;
    /* A failed write is not reported from here (no event from inside an
     * op): the read watcher sees the broken connection and ends the link. */
    if (flush_tx(m) != 0) m->tx_len = m->tx_off = 0;
    return TOLK_OK;
}

static void as_stats(const tr_media *m, tr_media_stats *out) { *out = m->st; }

static void as_close(tr_media *m) {
    if (!m) return;
    if (m->fd >= 0 && !m->gone) {
        /* Whatever is still buffered is lost; the hangup message tells
         * Asterisk at once rather than by the closed socket. */
        static const uint8_t bye[3] = {AS_KIND_HANGUP, 0, 0};
        if (m->tx_len == 0) (void)send(m->fd, bye, sizeof bye, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (m->busy) {
        m->freed = 1;
        m->gone = 1;
        drop_socket(m);
        return;
    }
    link_free(m);
}

const tr_media_ops tr_media_audiosocket = {
    .name = "audiosocket",
    .chan_flags = 0,
    .hub_create = as_hub_create,
    .hub_destroy = as_hub_destroy,
    .open = as_open,
    .ari_params = as_ari_params,
    .attach = as_attach,
    .send = as_send,
    .stats = as_stats,
    .close = as_close,
};
