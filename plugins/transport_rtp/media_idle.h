/* plugins/transport_rtp/media_idle.h: silence while Asterisk sends nothing,
 * for the encapsulations without timestamps (AudioSocket, WebSocket).
 *
 * In a bridge of two members (a party and its ExternalMedia channel)
 * Asterisk sends audio only while the party makes some, so the recogniser
 * would never hear the pause that ends a phrase. Each link keeps a
 * tr_idle: the captured_at of the last frame it delivered. A timer calls
 * tr_idle_due() every 20 ms; once the peer has been quiet for
 * TR_IDLE_HOLD_S (two frames beyond the one expected), it hands out the
 * slots that follow the last delivered frame, one per 20 ms, as silence.
 * When audio resumes, tr_idle_resume() says how many slots of the pause the
 * timer has not filled yet (the silence then comes first, stamped with its
 * own slots), and tr_idle_audio() moves the timeline past the audio. Every
 * slot is delivered once: silence only ever goes after the last delivered
 * frame, and audio arriving is stamped with the arrival time, which is
 * later than any slot the timer filled. Ordinary jitter (less than
 * TR_IDLE_HOLD_S between frames) inserts nothing. The timeline starts with
 * the first audio. */
#ifndef TOLK_TRANSPORT_RTP_MEDIA_IDLE_H
#define TOLK_TRANSPORT_RTP_MEDIA_IDLE_H

#include <math.h>
#include <stddef.h>
#include <tolk/plugin.h>

#define TR_IDLE_HOLD_S (3 * TOLK_FRAME_SECONDS)
/* At most this many silence frames per timer tick, so a stalled loop does
 * not burst; and at most TR_IDLE_RESUME_MAX filled when audio resumes. */
#define TR_IDLE_BURST 5
#define TR_IDLE_RESUME_MAX 5

typedef struct tr_idle {
    int started;                       /* audio has arrived: the timeline runs */
    double last_at;                    /* captured_at of the last 20 ms slot delivered */
    double carry;                      /* samples of the last audio beyond whole frames */
    unsigned filled;                   /* silence frames since the last audio */
    unsigned long long silence_frames; /* all silence frames delivered */
} tr_idle;

/* Silence slots due at now: returns 1 and the slot's captured_at in *at
 * (then deliver TOLK_FRAME_SAMPLES of silence), 0 when none is due. Call
 * it up to TR_IDLE_BURST times per tick. */
static inline int tr_idle_due(tr_idle *t, double now, double *at) {
    if (!t->started || now - t->last_at < TR_IDLE_HOLD_S) return 0;
    t->last_at += TOLK_FRAME_SECONDS;
    t->carry = 0;
    t->filled++;
    t->silence_frames++;
    *at = t->last_at;
    return 1;
}

/* Audio arrived at now: the slots of the pause the timer has not filled
 * (0 unless the timer had started filling). Deliver that many silence
 * frames, the k-th (from 1) stamped tr_idle_slot(t, k), before the audio. */
static inline long tr_idle_resume(const tr_idle *t, double now) {
    if (!t->started || !t->filled) return 0;
    long k = lround((now - t->last_at) / TOLK_FRAME_SECONDS) - 1;
    if (k < 0) k = 0;
    if (k > TR_IDLE_RESUME_MAX) k = TR_IDLE_RESUME_MAX;
    return k;
}

static inline double tr_idle_slot(const tr_idle *t, long k) {
    return t->last_at + (double)k * TOLK_FRAME_SECONDS;
}

/* After tr_idle_resume's silence: records it (k frames) in the timeline. */
static inline void tr_idle_filled(tr_idle *t, long k) {
    t->last_at += (double)k * TOLK_FRAME_SECONDS;
    t->silence_frames += (unsigned long long)k;
}

/* n samples of audio, arrived at now, were delivered. */
static inline void tr_idle_audio(tr_idle *t, double now, size_t n) {
    double frames = t->carry + (double)n / TOLK_FRAME_SAMPLES;
    double whole = floor(frames);
    t->carry = frames - whole;
    /* the first slot of the audio is stamped now; a message of several
     * frames reaches that many slots further */
    double end = now + (whole > 1 ? whole - 1 : 0) * TOLK_FRAME_SECONDS;
    if (!t->started || end > t->last_at) t->last_at = end;
    t->started = 1;
    t->filled = 0;
}

#endif
