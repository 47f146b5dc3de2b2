/* plugins/transport_rtp/media.h: the media link between tolk and one
 * Asterisk ExternalMedia channel, whatever its encapsulation on the wire.
 *
 * Call control (ARI: events, originate, bridges; plugins/transport_rtp/ari.c)
 * creates one link per party that is translated, asks the link for the
 * externalMedia query parameters, POSTs them, hands the reply back to
 * attach(), and from then on moves 16 kHz host-order audio through it. The
 * encapsulations (media_rtp.c, media_audiosocket.c, media_websocket.c) know
 * nothing about ARI beyond those parameters and the reply, so each is tested
 * on its own against a fake peer and against a real Asterisk.
 *
 * Everything runs on the core's loop (host->io_start, host->ws_connect,
 * host->lws_context); nothing here blocks. */
#ifndef TOLK_TRANSPORT_RTP_MEDIA_H
#define TOLK_TRANSPORT_RTP_MEDIA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <tolk/plugin.h>

typedef struct tr_media tr_media;         /* one link (one ExternalMedia channel) */
typedef struct tr_media_hub tr_media_hub; /* an encapsulation's per-instance state:
                                             sockets, listeners, port ranges */

/* What a link tells call control. Each callback may be NULL. None is called
 * from inside a tr_media_ops function (only from the loop). */
typedef struct tr_media_events {
    void *ud;
    /* Audio from Asterisk: n samples at 16 kHz, host order, in timeline
     * order (gaps already filled for RTP). captured_at: host->now() when the
     * packet carrying the first sample arrived. */
    void (*audio)(void *ud, const int16_t *pcm, size_t n, double captured_at);
    /* A DTMF digit ('0'-'9', '*', '#', 'A'-'D'); duration 0 if unknown. */
    void (*dtmf)(void *ud, char digit, unsigned duration_ms);
    /* Played-out feedback: the first `frames` frames handed to send() have
     * now been played by Asterisk (chan_websocket MEDIA_MARK_PROCESSED). */
    void (*played)(void *ud, uint64_t frames);
    /* The link is gone: Asterisk closed it (hang-up), or a fatal error.
     * No event follows; call control still calls close(). */
    void (*closed)(void *ud, const char *why);
} tr_media_events;

/* Counters of one link, for health(), metrics and the tests. */
typedef struct tr_media_stats {
    uint64_t rx_frames;    /* 20 ms frames delivered to events.audio */
    uint64_t rx_lost;      /* frames never received (gap filled with silence) */
    uint64_t rx_late;      /* arrived after their slot was played out: dropped */
    uint64_t rx_duplicate; /* dropped */
    uint64_t rx_foreign;   /* packets from another source than the peer: dropped */
    uint64_t rx_malformed; /* bad header, wrong payload type or size: dropped */
    uint64_t tx_frames;    /* frames written to Asterisk */
    uint64_t tx_dropped;   /* frames not written (XOFF overflow, socket full) */
} tr_media_stats;

typedef struct tr_media_ops {
    const char *name; /* the transport's `media` setting: "rtp", "audiosocket", "websocket" */
    /* TOLK_CHAN_* flags the call needs from the core because of this link
     * (RTP: TOLK_CHAN_CONTINUOUS, one frame every 20 ms, marker at talkspurts). */
    unsigned chan_flags;

    /* Per instance. cfg is the transport instance's settings object (the
     * encapsulation reads its own keys: bind address, port range, ARI base
     * URL for WebSocket media, ...). On failure write a message into err. */
    tolk_status (*hub_create)(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                              tr_media_hub **out, char *err, size_t errlen);
    void (*hub_destroy)(tr_media_hub *hub);

    /* Per link. open() prepares it (binds, reserves a UUID, ...) before the
     * REST call, because Asterisk may connect to us during that call. */
    tr_media *(*open)(tr_media_hub *hub, const tr_media_events *ev, char *err, size_t errlen);
    /* The query parameters for POST /ari/channels/externalMedia that belong
     * to the link (external_host, format, encapsulation, transport,
     * connection_type, data), URL-encoded and joined with '&', without app
     * or channelId. Returns the length written, or -1 if n is too small. */
    int (*ari_params)(tr_media *m, char *buf, size_t n);
    /* The externalMedia reply (the Channel JSON, with channelvars): learn the
     * peer (UNICASTRTP_LOCAL_ADDRESS/PORT, MEDIA_WEBSOCKET_CONNECTION_ID). */
    tolk_status (*attach)(tr_media *m, const json_t *channel);
    /* One 20 ms frame (TOLK_FRAME_SAMPLES samples, 16 kHz, host order) to
     * play into the call; flags TOLK_PLAY_* (TALKSPURT sets the RTP marker). */
    tolk_status (*send)(tr_media *m, const int16_t *pcm, size_t n, unsigned flags);
    void (*stats)(const tr_media *m, tr_media_stats *out);
    /* Ends the link (sends what ending needs, closes sockets). No event
     * after it returns; m is freed. */
    void (*close)(tr_media *m);
} tr_media_ops;

extern const tr_media_ops tr_media_rtp;
extern const tr_media_ops tr_media_audiosocket;
extern const tr_media_ops tr_media_websocket;

#endif
