/* plugins/transport_rtp/media_rtp.c: ExternalMedia over RTP/UDP (chan_rtp,
 * "UnicastRTP"), the encapsulation every Asterisk since 16.6 speaks.
 *
 * Asterisk -> tolk: slin16 (PT 118, big-endian, 640 bytes per 20 ms) by
 * default, or ulaw/alaw (PT 0/8, 160 bytes) with rtp_codec. Asterisk -> tolk
 * and tolk -> Asterisk use the same ExternalMedia `format`, but chan_rtp has
 * no SDP and silently drops inbound RTP with a dynamic payload type (118
 * included, measured on 22.10.1), so with slin16 we answer in a static type
 * it decodes by its static meaning: PT 11, L16 mono 8 kHz big-endian, which
 * Asterisk transcodes back to slin16 for the bridge. The 16 -> 8 kHz step is
 * the price of RTP; the WebSocket encapsulation keeps 16 kHz both ways.
 *
 * Receive: every header field is checked; packets from anyone but the peer
 * Asterisk named in UNICASTRTP_LOCAL_ADDRESS/PORT are dropped and counted.
 * A small reordering buffer (rtp_reorder_frames, by sequence number) puts
 * packets back in order; late and duplicate packets are dropped and
 * counted; a packet still missing when rtp_reorder_frames later ones have
 * come is filled with silence and counted lost. When Asterisk sends nothing
 * (a two-party bridge sends only while the other side makes sound) a timer
 * fills the timeline with silence at 20 ms pace, so the recogniser hears the
 * pause that ends a phrase; a timestamp jump when packets resume is filled
 * only by what the timer has not already filled.
 *
 * Send: one packet per send() (the core plays one frame per 20 ms per leg
 * with TOLK_CHAN_CONTINUOUS), continuous sequence numbers and timestamps,
 * the marker bit on the first packet of each talkspurt, from the socket
 * Asterisk sends to (strict RTP accepts it from the first packet).
 *
 * Sockets: one per link, from rtp_port_min..rtp_port_max (0, 0: any free
 * port); or, with rtp_shared_port, one socket for every link, demultiplexed
 * by the peer's address (each ExternalMedia channel has its own port on
 * Asterisk's side). IPv4 only. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "media.h"

#define RING 16         /* reordering slots (power of two) */
#define HIST_BITS 64    /* delivered sequence numbers remembered, for duplicates */
#define MAX_JUMP 100    /* a sequence jump beyond this is a new stream, not loss */
#define MAX_GAP_FILL 250 /* frames of silence filled for one timestamp jump (5 s) */
#define RTP_HDR 12
#define PKT_MAX 1500
#define TX_FIFO 1024

enum codec { C_SLIN16 = 0, C_ULAW, C_ALAW };

typedef struct slot {
    int used;
    uint16_t seq;
    uint32_t ts;
    double at;
    size_t n;
    int16_t pcm[TOLK_FRAME_SAMPLES];
} slot;

struct tr_media_hub {
    const tolk_host *host;
    tolk_instance *inst;
    char bind[64], ext_host[64];
    struct in_addr bind_addr;
    int port_min, port_max, next_port;
    enum codec codec;
    int reorder;
    int shared_fd;
    tolk_io *shared_io;
    int shared_port;
    uint64_t unmatched; /* shared socket: packets from no known peer */
    tolk_timer *tick;
    tr_media *links;
};

struct tr_media {
    tr_media_hub *hub;
    tr_media_events ev;
    tr_media *prev, *next;
    int fd; /* own socket; -1 on a shared hub */
    tolk_io *io;
    int port;
    struct sockaddr_in peer;
    int have_peer;
    /* receive */
    int rx_started;
    uint32_t rx_ssrc;
    uint16_t next_seq;
    uint64_t hist; /* bit i: next_seq-1-i was delivered */
    int have_expect_ts;
    uint32_t expect_ts;
    unsigned filled; /* silence frames the idle timer delivered since the last packet */
    double last_deliver, last_arrival;
    slot ring[RING];
    tolk_resampler *rs_in, *rs_out;
    int16_t up[TOLK_FRAME_SAMPLES * 2 + 128];
    /* send */
    uint16_t tx_seq;
    uint32_t tx_ts, tx_ssrc;
    int16_t fifo[TX_FIFO];
    size_t nfifo;
    /* pacing of what Asterisk receives: deviation of each send from 20 ms
     * after the previous one (logged when the link closes, for the bench) */
    double last_send, dev_sum, dev_max;
    uint64_t dev_n;
    tr_media_stats st;
};

/* ---- G.711 (ITU-T G.711, the classic table-free forms) ---- */

static uint8_t lin2ulaw(int16_t pcm) {
    int s = pcm, sign = 0;
    if (s < 0) {
        s = -s;
        sign = 0x80;
    }
    if (s > 32635) s = 32635;
    s += 0x84;
    int exp = 7;
    for (int mask = 0x4000; !(s & mask) && exp > 0; mask >>= 1) exp--;
    int mant = (s >> (exp + 3)) & 0x0f;
    return (uint8_t)~(sign | (exp << 4) | mant);
}

static int16_t ulaw2lin(uint8_t u) {
    u = (uint8_t)~u;
    int t = ((u & 0x0f) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    return (int16_t)((u & 0x80) ? 0x84 - t : t - 0x84);
}

static uint8_t lin2alaw(int16_t pcm) {
    int s = pcm, mask;
    if (s >= 0) {
        mask = 0xd5;
    } else {
        mask = 0x55;
        s = -s - 1;
    }
    if (s > 32767) s = 32767;
    int exp = 7;
    for (int m = 0x4000; !(s & m) && exp > 0; m >>= 1) exp--;
    int v;
    if (exp == 0)
        v = (s >> 4) & 0x0f;
    else
        v = (exp << 4) | ((s >> (exp + 3)) & 0x0f);
    return (uint8_t)(v ^ mask);
}

static int16_t alaw2lin(uint8_t a) {
    a ^= 0x55;
    int t = (a & 0x0f) << 4;
    int seg = (a & 0x70) >> 4;
    if (seg == 0)
        t += 8;
    else if (seg == 1)
        t += 0x108;
    else
        t = (t + 0x108) << (seg - 1);
    return (int16_t)((a & 0x80) ? t : -t);
}

/* ---- codec facts ---- */

static int rx_pt(enum codec c) { return c == C_ULAW ? 0 : c == C_ALAW ? 8 : 118; }
static int tx_pt(enum codec c) { return c == C_ULAW ? 0 : c == C_ALAW ? 8 : 11; }
/* samples (and timestamp units) in one 20 ms packet from Asterisk */
static size_t rx_spf(enum codec c) { return c == C_SLIN16 ? TOLK_FRAME_SAMPLES : 160; }
static size_t rx_bytes(enum codec c) { return c == C_SLIN16 ? 640 : 160; }
static const char *format_name(enum codec c) {
    return c == C_ULAW ? "ulaw" : c == C_ALAW ? "alaw" : "slin16";
}

/* ---- hub ---- */

static void hub_tick(void *ud);
static void on_readable(void *ud, int fd, unsigned revents);
static void on_readable_shared(void *ud, int fd, unsigned revents);

static int open_socket(tr_media_hub *hub, int port, int *bound_port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr = hub->bind_addr};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *bound_port = ntohs(sa.sin_port);
    return fd;
}

static tolk_status rtp_hub_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                                  tr_media_hub **out, char *err, size_t errlen) {
    tr_media_hub *h = calloc(1, sizeof *h);
    if (!h) return TOLK_E_NOMEM;
    h->host = host;
    h->inst = inst;
    h->shared_fd = -1;
    const char *bind_s = host->cfg_string(cfg, "rtp_bind");
    const char *ext = host->cfg_string(cfg, "rtp_external_host");
    snprintf(h->bind, sizeof h->bind, "%s", bind_s ? bind_s : "127.0.0.1");
    snprintf(h->ext_host, sizeof h->ext_host, "%s", ext && *ext ? ext : h->bind);
    if (inet_pton(AF_INET, h->bind, &h->bind_addr) != 1) {
        snprintf(err, errlen, "rtp_bind '%s' is not an IPv4 address", h->bind);
        free(h);
        return TOLK_E_INVAL;
    }
    h->port_min = (int)host->cfg_int(cfg, "rtp_port_min");
    h->port_max = (int)host->cfg_int(cfg, "rtp_port_max");
    h->next_port = h->port_min;
    h->reorder = (int)host->cfg_int(cfg, "rtp_reorder_frames");
    const char *codec = host->cfg_string(cfg, "rtp_codec");
    h->codec = !codec || !strcmp(codec, "slin16") ? C_SLIN16 : !strcmp(codec, "ulaw") ? C_ULAW : C_ALAW;
    int shared = (int)host->cfg_int(cfg, "rtp_shared_port");
    if (shared > 0) {
        h->shared_fd = open_socket(h, shared, &h->shared_port);
        if (h->shared_fd < 0) {
            snprintf(err, errlen, "cannot bind RTP socket %s:%d: %s", h->bind, shared, strerror(errno));
            free(h);
            return TOLK_E_BACKEND;
        }
        h->shared_io = host->io_start(inst, h->shared_fd, TOLK_IO_READ, on_readable_shared, h);
    }
    h->tick = host->timer_start(inst, TOLK_FRAME_SECONDS, TOLK_FRAME_SECONDS, hub_tick, h);
    *out = h;
    return TOLK_OK;
}

static void rtp_hub_destroy(tr_media_hub *h) {
    if (!h) return;
    if (h->tick) h->host->timer_stop(h->tick);
    if (h->shared_io) h->host->io_stop(h->shared_io);
    if (h->shared_fd >= 0) close(h->shared_fd);
    free(h);
}

/* ---- receive ---- */

static void deliver(tr_media *m, const int16_t *pcm, size_t n, double at) {
    tr_media_hub *h = m->hub;
    m->st.rx_frames++;
    m->last_deliver = at > m->last_deliver ? at : m->last_deliver;
    if (h->codec == C_SLIN16) {
        if (m->ev.audio) m->ev.audio(m->ev.ud, pcm, n, at);
        return;
    }
    size_t k = h->host->resample(m->rs_in, pcm, n, m->up, sizeof m->up / sizeof m->up[0]);
    if (k && m->ev.audio) m->ev.audio(m->ev.ud, m->up, k, at);
}

static void deliver_silence(tr_media *m, double at) {
    static const int16_t zeros[TOLK_FRAME_SAMPLES];
    deliver(m, zeros, rx_spf(m->hub->codec), at);
    if (m->have_expect_ts) m->expect_ts += (uint32_t)rx_spf(m->hub->codec);
}

/* Sequence number next_seq never came: silence in its place. */
static void skip_lost(tr_media *m, double at) {
    m->st.rx_lost++;
    deliver_silence(m, at);
    m->hist <<= 1;
    m->next_seq++;
}

static void deliver_slot(tr_media *m, slot *s) {
    size_t spf = rx_spf(m->hub->codec);
    if (m->have_expect_ts) {
        int32_t gap = (int32_t)(s->ts - m->expect_ts);
        if (gap > 0) {
            /* The sender paused (or its clock jumped): keep the timeline.
             * expect_ts already counts what the idle timer filled. */
            long frames = gap / (int32_t)spf;
            if (frames > MAX_GAP_FILL) frames = MAX_GAP_FILL;
            for (long i = 0; i < frames; i++) deliver_silence(m, s->at);
        }
    }
    m->filled = 0;
    m->expect_ts = s->ts;
    m->have_expect_ts = 1;
    deliver(m, s->pcm, s->n, s->at);
    m->expect_ts = s->ts + (uint32_t)spf;
    s->used = 0;
    m->hist = (m->hist << 1) | 1;
    m->next_seq++;
}

/* Highest offset from next_seq among buffered packets, -1 if none. */
static int highest_buffered(const tr_media *m) {
    int hi = -1;
    for (int i = 0; i < RING; i++)
        if (m->ring[i].used) {
            int d = (uint16_t)(m->ring[i].seq - m->next_seq);
            if (d > hi) hi = d;
        }
    return hi;
}

static void drain(tr_media *m, double now) {
    for (;;) {
        slot *s = &m->ring[m->next_seq % RING];
        if (s->used && s->seq == m->next_seq) {
            deliver_slot(m, s);
            continue;
        }
        int hi = highest_buffered(m);
        if (hi >= 0 && hi >= m->hub->reorder) {
            skip_lost(m, now);
            continue;
        }
        break;
    }
}

static void flush_ring(tr_media *m, double now) {
    while (highest_buffered(m) >= 0) {
        slot *s = &m->ring[m->next_seq % RING];
        if (s->used && s->seq == m->next_seq)
            deliver_slot(m, s);
        else
            skip_lost(m, now);
    }
}

static void on_packet(tr_media *m, const uint8_t *p, size_t len, double now) {
    tr_media_hub *h = m->hub;
    m->last_arrival = now;
    /* RFC 3550 5.1: version 2; padding, extension and CSRCs are legal and
     * must be skipped correctly; anything that does not add up is dropped. */
    if (len < RTP_HDR || (p[0] >> 6) != 2) goto bad;
    size_t off = RTP_HDR + 4u * (p[0] & 0x0f);
    size_t end = len;
    if (p[0] & 0x20) { /* padding: the last byte counts it, itself included */
        uint8_t pad = p[len - 1];
        if (pad == 0 || pad > len - RTP_HDR) goto bad;
        end = len - pad;
    }
    if (p[0] & 0x10) { /* header extension */
        if (off + 4 > end) goto bad;
        size_t xlen = 4 + 4u * (((size_t)p[off + 2] << 8) | p[off + 3]);
        off += xlen;
    }
    if (off > end) goto bad;
    if ((p[1] & 0x7f) != rx_pt(h->codec)) goto bad;
    size_t plen = end - off;
    if (plen != rx_bytes(h->codec)) goto bad;
    uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
    uint32_t ts = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    uint32_t ssrc = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
    const uint8_t *pl = p + off;

    if (!m->rx_started || ssrc != m->rx_ssrc) {
        /* a new stream (first packet, or Asterisk re-bridged the channel):
         * what is buffered goes out, the timeline continues */
        if (m->rx_started) flush_ring(m, now);
        m->rx_started = 1;
        m->rx_ssrc = ssrc;
        m->next_seq = seq;
        m->hist = 0;
        m->have_expect_ts = 0;
    }
    int d = (int16_t)(uint16_t)(seq - m->next_seq);
    if (d < 0) {
        if (-d <= HIST_BITS && ((m->hist >> (-d - 1)) & 1))
            m->st.rx_duplicate++;
        else
            m->st.rx_late++;
        return;
    }
    if (d >= RING) {
        if (d > MAX_JUMP) { /* not loss: the stream restarted elsewhere */
            flush_ring(m, now);
            m->next_seq = seq;
            m->hist = 0;
            m->have_expect_ts = 0;
        } else {
            while ((int16_t)(uint16_t)(seq - m->next_seq) >= RING) {
                slot *s = &m->ring[m->next_seq % RING];
                if (s->used && s->seq == m->next_seq)
                    deliver_slot(m, s);
                else
                    skip_lost(m, now);
            }
        }
    }
    slot *s = &m->ring[seq % RING];
    if (s->used) {
        if (s->seq == seq) {
            m->st.rx_duplicate++;
            return;
        }
        s->used = 0; /* cannot happen after the jump above; be safe */
    }
    s->used = 1;
    s->seq = seq;
    s->ts = ts;
    s->at = now;
    size_t spf = rx_spf(h->codec);
    s->n = spf;
    for (size_t i = 0; i < spf; i++) {
        if (h->codec == C_SLIN16)
            s->pcm[i] = (int16_t)(uint16_t)((pl[2 * i] << 8) | pl[2 * i + 1]);
        else if (h->codec == C_ULAW)
            s->pcm[i] = ulaw2lin(pl[i]);
        else
            s->pcm[i] = alaw2lin(pl[i]);
    }
    drain(m, now);
    return;
bad:
    m->st.rx_malformed++;
}

static int same_peer(const tr_media *m, const struct sockaddr_in *from) {
    return m->have_peer && m->peer.sin_port == from->sin_port &&
           m->peer.sin_addr.s_addr == from->sin_addr.s_addr;
}

/* hub: the shared socket (own NULL); own: a link's socket. */
static void read_packets(tr_media_hub *hub, tr_media *own, int fd) {
    tr_media_hub *h = hub ? hub : own->hub;
    for (int i = 0; i < 64; i++) { /* a bounded batch per wakeup */
        uint8_t buf[PKT_MAX];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_TRUNC, (struct sockaddr *)&from, &fl);
        if (n < 0) return; /* EAGAIN, or an ICMP error: nothing to read */
        double now = h->host->now();
        tr_media *m = own;
        int ok = fl == sizeof from && from.sin_family == AF_INET;
        if (hub) {
            m = NULL;
            for (tr_media *x = hub->links; ok && x; x = x->next)
                if (same_peer(x, &from)) {
                    m = x;
                    break;
                }
            if (!m) {
                hub->unmatched++;
                continue;
            }
        } else if (!ok || !same_peer(m, &from)) {
            m->st.rx_foreign++;
            continue;
        }
        if ((size_t)n > sizeof buf) { /* MSG_TRUNC: larger than any frame we take */
            m->st.rx_malformed++;
            continue;
        }
        on_packet(m, buf, (size_t)n, now);
    }
}

static void on_readable_shared(void *ud, int fd, unsigned revents) {
    (void)revents;
    read_packets(ud, NULL, fd);
}

static void on_readable(void *ud, int fd, unsigned revents) {
    (void)revents;
    read_packets(NULL, ud, fd);
}

/* Silence for links whose peer went quiet, and packets stuck behind a gap. */
static void hub_tick(void *ud) {
    tr_media_hub *h = ud;
    double now = h->host->now();
    double hold = (h->reorder + 1) * TOLK_FRAME_SECONDS;
    for (tr_media *m = h->links; m; m = m->next) {
        if (!m->rx_started) continue;
        if (highest_buffered(m) >= 0) {
            if (now - m->last_arrival >= hold) flush_ring(m, now);
            continue;
        }
        /* at most a few frames per tick, so a stalled loop does not burst */
        for (int k = 0; k < 5 && now - m->last_deliver >= hold; k++) {
            m->filled++;
            double at = m->last_deliver + TOLK_FRAME_SECONDS;
            deliver_silence(m, at);
            m->last_deliver = at;
        }
    }
}

/* ---- links ---- */

static tr_media *rtp_open(tr_media_hub *h, const tr_media_events *ev, char *err, size_t errlen) {
    tr_media *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->hub = h;
    if (ev) m->ev = *ev;
    m->fd = -1;
    if (h->shared_fd >= 0) {
        m->port = h->shared_port;
    } else if (h->port_min > 0) {
        int span = h->port_max - h->port_min + 1;
        for (int i = 0; i < span && m->fd < 0; i++) {
            int p = h->next_port;
            h->next_port = p >= h->port_max ? h->port_min : p + 1;
            m->fd = open_socket(h, p, &m->port);
        }
        if (m->fd < 0) {
            snprintf(err, errlen, "no free RTP port in %d-%d on %s", h->port_min, h->port_max, h->bind);
            free(m);
            return NULL;
        }
    } else {
        m->fd = open_socket(h, 0, &m->port);
        if (m->fd < 0) {
            snprintf(err, errlen, "cannot bind an RTP socket on %s: %s", h->bind, strerror(errno));
            free(m);
            return NULL;
        }
    }
    if (m->fd >= 0) m->io = h->host->io_start(h->inst, m->fd, TOLK_IO_READ, on_readable, m);
    if (h->codec != C_SLIN16) m->rs_in = h->host->resampler_new(8000, TOLK_SAMPLE_RATE, 5);
    m->rs_out = h->host->resampler_new(TOLK_SAMPLE_RATE, 8000, 5);
    /* the 16->8 kHz resampler holds back a few samples at first: start the
     * send FIFO one packet deep so every send() has a packet to write */
    m->nfifo = 160;
    uint32_t r = (uint32_t)(h->host->now() * 1e6) ^ (uint32_t)(uintptr_t)m ^ (uint32_t)getpid();
    r = r * 2654435761u;
    m->tx_ssrc = r;
    m->tx_seq = (uint16_t)(r >> 7);
    m->tx_ts = r * 2246822519u;
    m->next = h->links;
    if (h->links) h->links->prev = m;
    h->links = m;
    return m;
}

static int rtp_ari_params(tr_media *m, char *buf, size_t n) {
    int k = snprintf(buf, n, "external_host=%s%%3A%d&format=%s&encapsulation=rtp&transport=udp",
                     m->hub->ext_host, m->port, format_name(m->hub->codec));
    return k < 0 || (size_t)k >= n ? -1 : k;
}

static tolk_status rtp_attach(tr_media *m, const json_t *channel) {
    json_t *vars = json_object_get(channel, "channelvars");
    const char *addr = json_string_value(json_object_get(vars, "UNICASTRTP_LOCAL_ADDRESS"));
    const char *port = json_string_value(json_object_get(vars, "UNICASTRTP_LOCAL_PORT"));
    if (!addr || !port) return TOLK_E_INVAL;
    char *e = NULL;
    long p = strtol(port, &e, 10);
    struct in_addr a;
    if (!*port || *e || p <= 0 || p > 65535 || inet_pton(AF_INET, addr, &a) != 1) return TOLK_E_INVAL;
    /* Asterisk may report the address it bound to (0.0.0.0 on a wildcard
     * bind): it then answers from the address we send to, ours. */
    if (a.s_addr == htonl(INADDR_ANY)) a = m->hub->bind_addr;
    m->peer.sin_family = AF_INET;
    m->peer.sin_addr = a;
    m->peer.sin_port = htons((uint16_t)p);
    m->have_peer = 1;
    return TOLK_OK;
}

static tolk_status rtp_send(tr_media *m, const int16_t *pcm, size_t n, unsigned flags) {
    tr_media_hub *h = m->hub;
    if (!m->have_peer) { /* the ExternalMedia reply is not in yet */
        m->st.tx_dropped++;
        return TOLK_OK;
    }
    int16_t out[TOLK_FRAME_SAMPLES + 128];
    size_t k = h->host->resample(m->rs_out, pcm, n, out, sizeof out / sizeof out[0]);
    if (m->nfifo + k > TX_FIFO) m->nfifo = 0; /* cannot happen at one packet per frame */
    memcpy(m->fifo + m->nfifo, out, k * sizeof out[0]);
    m->nfifo += k;
    if (m->nfifo < 160) { /* the resampler's start-up: nothing to send yet */
        m->st.tx_dropped++;
        return TOLK_OK;
    }
    uint8_t pkt[RTP_HDR + 320];
    pkt[0] = 0x80;
    pkt[1] = (uint8_t)(tx_pt(h->codec) | ((flags & TOLK_PLAY_TALKSPURT) ? 0x80 : 0));
    pkt[2] = (uint8_t)(m->tx_seq >> 8);
    pkt[3] = (uint8_t)m->tx_seq;
    for (int i = 0; i < 4; i++) {
        pkt[4 + i] = (uint8_t)(m->tx_ts >> (24 - 8 * i));
        pkt[8 + i] = (uint8_t)(m->tx_ssrc >> (24 - 8 * i));
    }
    size_t plen;
    if (h->codec == C_SLIN16) {
        for (size_t i = 0; i < 160; i++) {
            uint16_t v = (uint16_t)m->fifo[i];
            pkt[RTP_HDR + 2 * i] = (uint8_t)(v >> 8);
            pkt[RTP_HDR + 2 * i + 1] = (uint8_t)v;
        }
        plen = 320;
    } else {
        for (size_t i = 0; i < 160; i++)
            pkt[RTP_HDR + i] = h->codec == C_ULAW ? lin2ulaw(m->fifo[i]) : lin2alaw(m->fifo[i]);
        plen = 160;
    }
    m->nfifo -= 160;
    memmove(m->fifo, m->fifo + 160, m->nfifo * sizeof m->fifo[0]);
    /* a clock drift between the resampler's output and the call's 20 ms
     * never lets the FIFO grow beyond one extra packet */
    if (m->nfifo > 320) m->nfifo = 160;
    m->tx_seq++;
    m->tx_ts += 160;
    int fd = m->fd >= 0 ? m->fd : h->shared_fd;
    ssize_t w = sendto(fd, pkt, RTP_HDR + plen, 0, (struct sockaddr *)&m->peer, sizeof m->peer);
    if (w != (ssize_t)(RTP_HDR + plen)) {
        m->st.tx_dropped++;
        return TOLK_E_AGAIN;
    }
    m->st.tx_frames++;
    double now = h->host->now();
    if (m->last_send > 0) {
        double dev = fabs(now - m->last_send - TOLK_FRAME_SECONDS);
        m->dev_sum += dev;
        m->dev_n++;
        if (dev > m->dev_max) m->dev_max = dev;
    }
    m->last_send = now;
    return TOLK_OK;
}

static void rtp_stats(const tr_media *m, tr_media_stats *out) { *out = m->st; }

static void rtp_close(tr_media *m) {
    if (!m) return;
    tr_media_hub *h = m->hub;
    if (m->prev)
        m->prev->next = m->next;
    else
        h->links = m->next;
    if (m->next) m->next->prev = m->prev;
    if (m->dev_n)
        TOLK_LOG(h->host, h->inst, TOLK_LOG_VERB,
                 "RTP to port %d: %llu packets, pacing deviation from 20 ms: mean %.2f ms, max %.2f ms",
                 ntohs(m->peer.sin_port), (unsigned long long)m->st.tx_frames, m->dev_sum / (double)m->dev_n * 1e3,
                 m->dev_max * 1e3);
    if (m->io) h->host->io_stop(m->io);
    if (m->fd >= 0) close(m->fd);
    if (m->rs_in) h->host->resampler_free(m->rs_in);
    if (m->rs_out) h->host->resampler_free(m->rs_out);
    free(m);
}

const tr_media_ops tr_media_rtp = {
    .name = "rtp",
    .chan_flags = TOLK_CHAN_CONTINUOUS,
    .hub_create = rtp_hub_create,
    .hub_destroy = rtp_hub_destroy,
    .open = rtp_open,
    .ari_params = rtp_ari_params,
    .attach = rtp_attach,
    .send = rtp_send,
    .stats = rtp_stats,
    .close = rtp_close,
};
