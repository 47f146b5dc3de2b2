/* Playback: per-leg audio buffers, the clock that paces them, and the
 * frame-out path (what the transport is handed: play/play_ex, continuous
 * silence, talkspurt flags, played-out feedback, mode changes).
 *
 * The clock is a timerfd ticking every millisecond, not an ev_timer:
 * epoll's millisecond timeouts would put up to 1 ms of jitter on every frame,
 * while a timerfd wakes the loop on the kernel's high-resolution timer. It
 * drives a wheel of 20 slots. A leg that has audio to play joins the slot of
 * the next tick and plays one frame each time the wheel comes round: every
 * 20 ms on a grid of its own, started within a millisecond of its first
 * audio instead of up to 20 ms later on a shared grid. One clock serves every
 * call and runs only while some leg is talking, or some call has continuous
 * playout (TOLK_CHAN_CONTINUOUS): such a leg joins at the answer and stays,
 * handed a frame of silence on its turns when it has nothing to say. */
#include <errno.h>
#include <sonic.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core.h"
#include "log.h"
#include "metrics.h"
#include "phrase.h"

#define SLOTS 20
/* If the loop was held up, catch up at most one full turn; beyond that the
 * frames would only come out in a burst. Continuous playout is the
 * exception: its transport counts on a frame per 20 ms of the call (an RTP
 * clock), so after a stall of up to a second every frame missed is sent. */
#define MAX_CATCHUP SLOTS
#define MAX_CATCHUP_CONTINUOUS (50 * SLOTS)

/* A buffer keeps up to this much capacity when it empties: enough for the
 * usual phrase, so a call does not go back to malloc for every one, while a
 * long burst's memory is returned once it has played. */
#define OUTBUF_KEEP (50 * TOLK_FRAME_SAMPLES) /* 1 s */

static void depth(core *c, double delta) { metrics_add(c->m.qdepth[Q_PLAYBACK], delta); }

static void outbuf_grow(outbuf *ob, size_t need) {
    size_t cap = ob->cap ? ob->cap : 8 * TOLK_FRAME_SAMPLES;
    while (cap < need) cap *= 2;
    int16_t *nb = xmalloc(cap * sizeof(int16_t));
    if (ob->len) {
        size_t first = ob->len < ob->cap - ob->head ? ob->len : ob->cap - ob->head;
        memcpy(nb, ob->buf + ob->head, first * sizeof(int16_t));
        memcpy(nb + first, ob->buf, (ob->len - first) * sizeof(int16_t));
    }
    free(ob->buf);
    ob->buf = nb;
    ob->cap = cap;
    ob->head = 0;
}

void outbuf_push(core *c, outbuf *ob, const int16_t *pcm, size_t n) {
    if (n == 0) return;
    if (ob->len + n > ob->cap) outbuf_grow(ob, ob->len + n);
    size_t before = ob->len / TOLK_FRAME_SAMPLES;
    size_t tail = (ob->head + ob->len) % ob->cap;
    size_t first = n < ob->cap - tail ? n : ob->cap - tail;
    memcpy(ob->buf + tail, pcm, first * sizeof(int16_t));
    memcpy(ob->buf, pcm + first, (n - first) * sizeof(int16_t));
    ob->len += n;
    ob->written += n;
    size_t after = ob->len / TOLK_FRAME_SAMPLES;
    if (after != before) depth(c, (double)(after - before));
}

void outbuf_pad(core *c, outbuf *ob) {
    static const int16_t zeros[TOLK_FRAME_SAMPLES];
    size_t rem = ob->len % TOLK_FRAME_SAMPLES;
    if (rem) outbuf_push(c, ob, zeros, TOLK_FRAME_SAMPLES - rem);
}

void outbuf_pop(outbuf *ob, int16_t *frame) {
    size_t first = TOLK_FRAME_SAMPLES < ob->cap - ob->head ? TOLK_FRAME_SAMPLES : ob->cap - ob->head;
    memcpy(frame, ob->buf + ob->head, first * sizeof(int16_t));
    memcpy(frame + first, ob->buf, (TOLK_FRAME_SAMPLES - first) * sizeof(int16_t));
    ob->head = (ob->head + TOLK_FRAME_SAMPLES) % ob->cap;
    ob->len -= TOLK_FRAME_SAMPLES;
    ob->played += TOLK_FRAME_SAMPLES;
    if (ob->len == 0) {
        ob->head = 0;
        if (ob->cap > OUTBUF_KEEP) {
            free(ob->buf);
            ob->buf = NULL;
            ob->cap = 0;
        }
    }
}

static void wheel_remove(core *c, outbuf *ob) {
    if (ob->slot < 0) return;
    if (ob->wprev)
        ob->wprev->wnext = ob->wnext;
    else
        c->wheel[ob->slot] = ob->wnext;
    if (ob->wnext) ob->wnext->wprev = ob->wprev;
    ob->wnext = ob->wprev = NULL;
    ob->slot = -1;
    if (ob->continuous) c->wheel_continuous--;
    if (--c->wheel_legs == 0 && ev_is_active(&c->clock_w)) {
        struct itimerspec off = {{0, 0}, {0, 0}};
        timerfd_settime(c->clock_fd, 0, &off, NULL);
        ev_io_stop(c->loop, &c->clock_w);
    }
}

void outbuf_free(core *c, outbuf *ob) {
    if (ob->sonic) sonicDestroyStream(ob->sonic);
    ob->sonic = NULL;
    wheel_remove(c, ob);
    depth(c, -(double)(ob->len / TOLK_FRAME_SAMPLES));
    free(ob->buf);
    ob->buf = NULL;
    ob->len = ob->cap = ob->head = 0;
}

void playback_schedule(core *c, outbuf *ob) {
    if (ob->slot >= 0 || c->clock_fd < 0) return;
    if (ob->len < TOLK_FRAME_SAMPLES && !ob->continuous) return;
    if (c->wheel_legs == 0) {
        /* the clock restarts: tick 1 is one millisecond from now */
        struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
        timerfd_settime(c->clock_fd, 0, &its, NULL);
        c->tick = 0;
        ev_io_start(c->loop, &c->clock_w);
    }
    int slot = (int)((c->tick + 1) % SLOTS);
    ob->slot = slot;
    ob->wprev = NULL;
    ob->wnext = c->wheel[slot];
    if (ob->wnext) ob->wnext->wprev = ob;
    c->wheel[slot] = ob;
    c->wheel_legs++;
    if (ob->continuous) c->wheel_continuous++;
}

static void run_slot(core *c, int slot) {
    outbuf *ob = c->wheel[slot], *next;
    for (; ob; ob = next) {
        next = ob->wnext;
        tolk_channel *ch = ob->ch;
        int over = ch->ending || ch->closed;
        if (!over && ob->len >= TOLK_FRAME_SAMPLES) {
            channel_play_frame(ch, ob->leg);
            /* a continuous leg stays; its audio ran out, so the call may be over */
            if (ob->continuous && ob->len < TOLK_FRAME_SAMPLES) schedule_finish(ch);
        } else if (!over && ob->continuous) {
            channel_play_silence(ch, ob->leg);
        }
        over = ch->ending || ch->closed;
        /* nothing more to say for now: the talkspurt ends; new audio starts
         * a new one on the next tick. A continuous leg stays for the call. */
        if (over || (!ob->continuous && ob->len < TOLK_FRAME_SAMPLES)) {
            wheel_remove(c, ob);
            ob->in_spurt = 0;
            schedule_finish(ch);
        }
    }
}

static void on_clock(struct ev_loop *loop, ev_io *w, int revents) {
    core *c = CONTAINER_OF(w, core, clock_w);
    uint64_t expirations = 0;
    if (read(c->clock_fd, &expirations, sizeof expirations) != (ssize_t)sizeof expirations) return;
    uint64_t most = c->wheel_continuous ? MAX_CATCHUP_CONTINUOUS : MAX_CATCHUP;
    if (expirations > most) {
        c->tick += expirations - most;
        expirations = most;
    }
    for (uint64_t i = 0; i < expirations && c->wheel_legs; i++) {
        c->tick++;
        run_slot(c, (int)(c->tick % SLOTS));
    }
}

void playback_init(core *c) {
    c->clock_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (c->clock_fd < 0) {
        log_msg(TOLK_LOG_FATAL, "core", "timerfd_create: %s: paced playback is off", strerror(errno));
        return;
    }
    ev_io_init(&c->clock_w, on_clock, c->clock_fd, EV_READ);
    /* frames go out before any other work that became ready at the same time */
    ev_set_priority(&c->clock_w, EV_MAXPRI);
}

void playback_free(core *c) {
    if (ev_is_active(&c->clock_w)) ev_io_stop(c->loop, &c->clock_w);
    if (c->clock_fd >= 0) close(c->clock_fd);
    c->clock_fd = -1;
}

/* ---- the frame-out path: what the transport is handed ---- */

static const tolk_transport *transport_of(tolk_instance *i) { return (const tolk_transport *)i->desc; }

static direction *dir_to(tolk_channel *ch, tolk_leg leg) { return &ch->dir[leg == TOLK_LEG_A]; }

/* Hands one frame to the transport: play_ex() when it has one. A failure
 * is counted every time but logged once per call, as a transport that
 * cannot play usually fails on every frame. */
static void transport_play(tolk_channel *ch, tolk_leg leg, const int16_t *frame, unsigned flags) {
    tolk_instance *t = ch->transport;
    const tolk_transport *tr = transport_of(t);
    tolk_status (*play_ex)(void *, void *, tolk_leg, const int16_t *, size_t, unsigned) =
        DESC_FN(&tr->base, tolk_transport, play_ex);
    tolk_status st = play_ex ? play_ex(t->self, ch->tstate, leg, frame, TOLK_FRAME_SAMPLES, flags)
                             : tr->play(t->self, ch->tstate, leg, frame, TOLK_FRAME_SAMPLES);
    ch->out[leg].handed++;
    if (st == TOLK_OK) return;
    count_error(ch->core, t->name, "play", TOLK_SEV_LOW);
    if (!ch->play_failed_logged) {
        ch->play_failed_logged = 1;
        log_msg(TOLK_LOG_WARN, t->who, "%s: play() to leg %s failed (status %d); later failures of "
                "this call are only counted (errors_total{error_type=\"play\"})",
                ch->id, leg_name(leg), (int)st);
    }
}

/* The phrase's first frame was handed to play: remembered until the
 * transport says it was played out (channel_played). */
static void ear_mark_add(outbuf *ob, const phrase *ph) {
    if (ob->ear_n == EAR_RING) { /* no feedback for a while: forget the oldest */
        ob->ear_head = (ob->ear_head + 1) % EAR_RING;
        ob->ear_n--;
    }
    ear_mark *m = &ob->ear[(ob->ear_head + ob->ear_n) % EAR_RING];
    m->frame = ob->handed - 1;
    m->t_speech_end = ph->t_speech_end;
    m->t_first_out = ph->t_first_out;
    m->seq = ph->seq;
    ob->ear_n++;
}

/* ---- running behind: the lag, and speech played faster ----
 *
 * The lag of a phrase is the time from the end of the phrase (the capture
 * time of its last sample, as the transport stamped it) to the moment its
 * translated speech starts playing (its first frame handed to the
 * transport), on a paced call. Processing alone makes it the latency of
 * the phrase; on continuous speech whose translation takes longer to say
 * than the original, each phrase also waits for the earlier ones to finish
 * playing, and without help the lag grows for as long as the speaker goes
 * on.
 *
 * The help: a phrase whose speech would have to wait behind earlier speech
 * is played faster, up to core.max_speedup. Its speed rises with the share
 * of the lag bound (core.max_lag_seconds) that the wait would use up, after
 * the time the phrase already spent in the recogniser, MT and TTS: 1.0
 * with nothing waiting ahead, max_speedup once the wait reaches half of
 * what is left of the bound (the phrases after it still have to fit in the
 * rest). When the speaker already talks again after the phrase, the
 * next phrase will wait behind this one's own speech too, so the part of
 * it longer than OWN_FREE_LAGS lag bounds counts as waiting: a long phrase
 * on continuous speech starts faster instead of holding up the short ones
 * after it (which no speed-up then brings back under the bound); speech
 * already queued is compressed the same way once the speaker goes on
 * (playback_talking()). A TTS plugin that honours the rate hint (it
 * declares the option `honour_rate`, and it is on) is asked for the
 * speed; for any other TTS
 * the core time-compresses the phrase's audio with libsonic, which keeps
 * the pitch. Speech is never dropped: when even max_speedup cannot keep up,
 * the lag goes over the bound and that is counted
 * (playback_lag_exceeded_total, playback_lag_over_seconds_total). */

#define SPEEDUP_GAIN 2.0 /* max_speedup at this share of the wait budget: half */
/* Of a phrase's own length, what the next one may wait for unhurried.
 * Chosen by replaying the prompts of `make latency` (bench/README.md)
 * through a model of this queue: 0 or 1 bound kept the lag no lower but
 * played more of the speech faster, 3.3 let more phrases over the bound. */
#define OWN_FREE_LAGS 2.0
/* Voiced input this long after a phrase's end: the speaker goes on (more
 * than the energy trailing a last word) */
#define TALKS_AGAIN_S 0.1
/* Queued audio is compressed again only for a real gain (each pass through
 * the compressor costs a little quality). */
#define REQUEUE_MIN_GAIN 1.05

static int speed_is_normal(double s) { return s < 1.001; }

double playback_speed_for(direction *d, const phrase *ph) {
    tolk_channel *ch = d->ch;
    const conf_core *cc = &ch->gen->conf->core;
    const outbuf *ob = &ch->out[d->dst];
    if (!ch->paced || cc->max_speedup <= 1.0) return 1.0;
    /* what still waits to be played ahead of the phrase: the output
     * buffer, and what the compressor holds of the phrase before it */
    uint64_t waiting = ob->len + (ob->sonic ? (uint64_t)sonicSamplesAvailable(ob->sonic) : 0);
    double wait = (double)waiting / TOLK_SAMPLE_RATE;
    if (ph->end_sample > ph->start_sample &&
        d->voiced_end > ph->end_sample + (uint64_t)(TALKS_AGAIN_S * TOLK_SAMPLE_RATE)) {
        /* the source's length stands for the translation's, still unknown
         * when the TTS is asked for the speed */
        double own = (double)(ph->end_sample - ph->start_sample) / TOLK_SAMPLE_RATE -
                     OWN_FREE_LAGS * cc->max_lag_seconds;
        if (own > 0) wait += own;
    }
    if (wait <= 0) return 1.0;
    double spent = ph->t_speech_end > 0 ? mono_now() - ph->t_speech_end : 0;
    if (spent < 0) spent = 0;
    double budget = cc->max_lag_seconds - spent;
    double share = budget > 0 ? SPEEDUP_GAIN * wait / budget : 1.0;
    if (share > 1.0) share = 1.0;
    double s = 1.0 + (cc->max_speedup - 1.0) * share;
    return s > cc->max_speedup ? cc->max_speedup : s;
}

static tolk_series *pair_series(direction *d, tolk_metric *m) {
    return metrics_series_v(m, d->from, d->to, NULL);
}

static void observe_lag(direction *d, double lag) {
    core *c = d->ch->core;
    if (lag < 0) lag = 0;
    metrics_observe(pair_series(d, c->m.lag), lag);
    double over = lag - d->ch->gen->conf->core.max_lag_seconds;
    if (over <= 0) return;
    metrics_add(pair_series(d, c->m.lag_over), 1);
    metrics_add(pair_series(d, c->m.lag_over_seconds), over);
}

/* Moves what the compressor has ready to the output buffer. */
static void sonic_drain(core *c, outbuf *ob) {
    short buf[4096];
    int got;
    while ((got = sonicReadShortFromStream(ob->sonic, buf, (int)ARRAY_LEN(buf))) > 0)
        outbuf_push(c, ob, buf, (size_t)got);
}

/* Compresses n samples at speed into ob (through a stream of its own),
 * then pads the output to whole frames as the phrase's audio was. */
static void compress_into(core *c, outbuf *ob, const int16_t *pcm, size_t n, double speed) {
    sonicStream st = speed >= REQUEUE_MIN_GAIN ? sonicCreateStream(TOLK_SAMPLE_RATE, 1) : NULL;
    if (!st) {
        outbuf_push(c, ob, pcm, n);
        return;
    }
    sonicSetSpeed(st, (float)speed);
    short buf[4096];
    int got;
    for (size_t off = 0; off < n;) {
        int k = n - off > 4096 ? 4096 : (int)(n - off);
        sonicWriteShortToStream(st, (short *)(uintptr_t)(pcm + off), k);
        off += (size_t)k;
        while ((got = sonicReadShortFromStream(st, buf, (int)ARRAY_LEN(buf))) > 0)
            outbuf_push(c, ob, buf, (size_t)got);
    }
    sonicFlushStream(st);
    while ((got = sonicReadShortFromStream(st, buf, (int)ARRAY_LEN(buf))) > 0)
        outbuf_push(c, ob, buf, (size_t)got);
    sonicDestroyStream(st);
    outbuf_pad(c, ob);
}

/* A new phrase is about to wait behind the audio queued for the listener:
 * what is queued and plays slower than `target` is compressed to it (the
 * rest of the phrase playing now, and phrases that have not started), so a
 * long translation that started at normal speed with nothing ahead of it
 * does not hold up the ones that follow. Phrase boundaries (their marks)
 * stay exact; no audio is ever faster than target <= max_speedup. Only
 * complete phrases are queued when the next one's audio comes (one TTS
 * request at a time per direction), each padded to whole frames. */
static void requeue_faster(direction *d, double target) {
    tolk_channel *ch = d->ch;
    core *c = ch->core;
    outbuf *ob = &ch->out[d->dst];
    if (ob->sonic || ob->len < 2 * TOLK_FRAME_SAMPLES || ob->len % TOLK_FRAME_SAMPLES) return;
    double head_speed = ob->playing_speed > 0 ? ob->playing_speed : 1.0;
    int worth = target / head_speed >= REQUEUE_MIN_GAIN;
    for (phrase *m = d->marks_head; m && !worth; m = m->mark_next)
        worth = m->out_pos < ob->written && target / (m->speed > 0 ? m->speed : 1.0) >= REQUEUE_MIN_GAIN;
    if (!worth) return;
    /* the first frame stays where it is: it may be the next one due */
    size_t keep = TOLK_FRAME_SAMPLES, n = ob->len - keep;
    int16_t *q = xmalloc(n * sizeof *q);
    uint64_t from = ob->played + keep; /* `written` position of q[0] */
    for (size_t i = 0; i < n; i++) q[i] = ob->buf[(ob->head + keep + i) % ob->cap];
    metrics_add(c->m.qdepth[Q_PLAYBACK], -(double)(n / TOLK_FRAME_SAMPLES));
    ob->len = keep;
    ob->written = from;
    uint64_t before = ob->written, newly = 0;
    double speed = head_speed;
    size_t at = 0;
    phrase *m = d->marks_head;
    /* a phrase whose first frame is the one kept: the audio after it is its own */
    for (; m && m->out_pos < from; m = m->mark_next) {
        speed = m->speed > 0 ? m->speed : 1.0;
        if (target / speed >= REQUEUE_MIN_GAIN) m->speed = target;
    }
    for (;;) {
        size_t end = m && m->out_pos < from + n ? (size_t)(m->out_pos - from) : n;
        uint64_t w0 = ob->written;
        if (end > at) compress_into(c, ob, q + at, end - at, target / speed);
        /* speech that was at normal speed is now played faster */
        if (speed_is_normal(speed) && target / speed >= REQUEUE_MIN_GAIN) newly += ob->written - w0;
        at = end;
        if (!m || at >= n) break;
        m->out_pos = ob->written;
        speed = m->speed > 0 ? m->speed : 1.0;
        if (target / speed >= REQUEUE_MIN_GAIN) m->speed = target;
        m = m->mark_next;
    }
    if (target / head_speed >= REQUEUE_MIN_GAIN) ob->playing_speed = target;
    for (; m; m = m->mark_next) m->out_pos = ob->written; /* the phrase being queued now */
    free(q);
    metrics_add(pair_series(d, c->m.speedup_seconds), (double)newly / TOLK_SAMPLE_RATE);
    log_msg(TOLK_LOG_DBG, "core", "%s: %s->%s: queued %.2f s played at up to x%.2f: now %.2f s", ch->id,
            d->from, d->to, (double)n / TOLK_SAMPLE_RATE, target,
            (double)(ob->written - before) / TOLK_SAMPLE_RATE);
}

/* The speaker talks (a voiced frame): speech queued for the listener
 * beyond OWN_FREE_LAGS lag bounds will hold up the phrase being said, so
 * it is compressed now, as a phrase waiting behind it would ask. The rule
 * in playback_speed_for() sees a long phrase's speaker going on only when
 * the pause was longer than the recogniser took to end the phrase, which
 * on continuous speech it mostly is not (pauses of 0.1-0.3 s). */
void playback_talking(direction *d) {
    tolk_channel *ch = d->ch;
    const conf_core *cc = &ch->gen->conf->core;
    const outbuf *ob = &ch->out[d->dst];
    if (!ch->paced || cc->max_speedup <= 1.0) return;
    double wait = (double)ob->len / TOLK_SAMPLE_RATE - OWN_FREE_LAGS * cc->max_lag_seconds;
    if (wait <= 0) return;
    double share = SPEEDUP_GAIN * wait / cc->max_lag_seconds;
    if (share > 1.0) share = 1.0;
    requeue_faster(d, 1.0 + (cc->max_speedup - 1.0) * share);
}

void playback_phrase_end(direction *d) {
    tolk_channel *ch = d->ch;
    outbuf *ob = &ch->out[d->dst];
    if (!ob->sonic) return;
    uint64_t before = ob->written;
    sonicFlushStream(ob->sonic);
    sonic_drain(ch->core, ob);
    metrics_add(pair_series(d, ch->core->m.speedup_seconds),
                (double)(ob->written - before) / TOLK_SAMPLE_RATE);
    sonicDestroyStream(ob->sonic);
    ob->sonic = NULL;
}

void playback_phrase_audio(direction *d, phrase *ph, const int16_t *pcm, size_t n, int first) {
    tolk_channel *ch = d->ch;
    core *c = ch->core;
    outbuf *ob = &ch->out[d->dst];
    if (first) {
        /* what waits ahead plays at least as fast as this phrase would */
        double target = playback_speed_for(d, ph);
        if (!speed_is_normal(target)) requeue_faster(d, target);
        /* the phrase's speed, unless the TTS made it */
        if (ph->speed_by_tts) {
            if (ph->speed <= 0) ph->speed = 1.0;
        } else if (speed_is_normal(ph->speed = target)) {
            ph->speed = 1.0;
        } else {
            ob->sonic = sonicCreateStream(TOLK_SAMPLE_RATE, 1);
            if (ob->sonic) {
                sonicSetSpeed(ob->sonic, (float)ph->speed);
            } else {
                log_msg(TOLK_LOG_WARN, "core", "%s: libsonic: out of memory: phrase %u plays at normal speed",
                        ch->id, ph->seq);
                ph->speed = 1.0;
            }
        }
    }
    if (speed_is_normal(ph->speed)) {
        outbuf_push(c, ob, pcm, n);
        return;
    }
    uint64_t before = ob->written;
    if (ph->speed_by_tts || !ob->sonic) {
        outbuf_push(c, ob, pcm, n);
    } else {
        /* sonic copies its input; its prototype just lacks the const */
        while (n > 0) {
            int k = n > 4096 ? 4096 : (int)n;
            sonicWriteShortToStream(ob->sonic, (short *)(uintptr_t)pcm, k);
            pcm += k;
            n -= (size_t)k;
            sonic_drain(c, ob);
        }
    }
    metrics_add(pair_series(d, c->m.speedup_seconds), (double)(ob->written - before) / TOLK_SAMPLE_RATE);
}

void channel_play_frame(tolk_channel *ch, tolk_leg leg) {
    core *c = ch->core;
    outbuf *ob = &ch->out[leg];
    int16_t frame[TOLK_FRAME_SAMPLES];
    outbuf_pop(ob, frame);
    metrics_add(c->m.qdepth[Q_PLAYBACK], -1);
    ch->frames_out[leg]++;
    int handed = !ch->closed;
    if (handed) {
        transport_play(ch, leg, frame, ob->in_spurt ? 0 : TOLK_PLAY_TALKSPURT);
        ob->in_spurt = 1;
    }
    direction *d = dir_to(ch, leg);
    double now = mono_now();
    while (d->marks_head && d->marks_head->out_pos < ob->played) {
        phrase *ph = d->marks_head;
        d->marks_head = ph->mark_next;
        if (!d->marks_head) d->marks_tail = NULL;
        ph->mark_next = NULL;
        ph->t_first_out = now;
        ob->playing_speed = ph->speed > 0 ? ph->speed : 1.0;
        if (handed) ear_mark_add(ob, ph);
        metrics_observe(c->m.qwait[Q_PLAYBACK], (now - ph->t_tts_first) * 1000.0);
        observe_stage(d, "total", now - ph->t_speech_end);
        if (ch->paced) observe_lag(d, now - ph->t_speech_end);
        metrics_add(c->m.translations_s, 1);
        phrase_report_emit(ph, 1);
        /* the TTS request may still be streaming the rest of the phrase */
        if (d->tts.busy != ph) phrase_free(ph);
    }
}

void channel_play_silence(tolk_channel *ch, tolk_leg leg) {
    static const int16_t zeros[TOLK_FRAME_SAMPLES];
    if (ch->closed) return;
    ch->silence_out[leg]++;
    ch->out[leg].in_spurt = 0;
    transport_play(ch, leg, zeros, TOLK_PLAY_SILENCE);
}

void deliver_now(tolk_channel *ch, tolk_leg leg) {
    if (ch->paced) {
        playback_schedule(ch->core, &ch->out[leg]);
        return;
    }
    while (ch->out[leg].len >= TOLK_FRAME_SAMPLES) channel_play_frame(ch, leg);
}

void channel_played(tolk_channel *ch, tolk_leg leg, uint64_t frames) {
    if (!ch || ch->closed || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    outbuf *ob = &ch->out[leg];
    if (frames > ob->handed) frames = ob->handed; /* cannot have played what it never got */
    if (frames <= ob->heard) return;
    ob->heard = frames;
    core *c = ch->core;
    direction *d = dir_to(ch, leg);
    double now = mono_now();
    while (ob->ear_n && ob->ear[ob->ear_head].frame < frames) {
        ear_mark m = ob->ear[ob->ear_head];
        ob->ear_head = (ob->ear_head + 1) % EAR_RING;
        ob->ear_n--;
        observe_stage(d, "ear", now - m.t_speech_end);
        if (!c->obs.phrase_ear) continue;
        phrase_report r = {
            .channel_id = ch->id,
            .seq = m.seq,
            .from_leg = d->src,
            .from = d->from,
            .to = d->to,
            .start_s = -1,
            .end_s = -1,
            .stt_ms = -1,
            .mt_ms = -1,
            .tts_first_ms = -1,
            .latency_ms = (m.t_first_out - m.t_speech_end) * 1000.0,
            .mt_wait_ms = -1,
            .tts_wait_ms = -1,
            .playback_wait_ms = -1,
            .ear_latency_ms = (now - m.t_speech_end) * 1000.0,
            .ok = 1,
        };
        c->obs.phrase_ear(c->obs.ud, &r);
    }
}

/* ---- mode of a direction ---- */

void channel_direction_mode(direction *d, tolk_mode mode) {
    tolk_channel *ch = d->ch;
    const tolk_transport *tr = transport_of(ch->transport);
    tolk_status (*fn)(void *, void *, tolk_leg, tolk_mode) =
        DESC_FN(&tr->base, tolk_transport, direction_mode);
    if (!fn || ch->closed || d->told == mode) return;
    d->told = mode;
    d->bridged = 0;
    tolk_status st = fn(ch->transport->self, ch->tstate, d->src, mode);
    d->bridged = mode == TOLK_MODE_PASSTHROUGH && st == TOLK_OK;
    log_msg(TOLK_LOG_VERB, "channel", "%s: %s->%s now %s%s", ch->id, d->from, d->to,
            conf_mode_name(mode), d->bridged ? ", bridged by the transport" : "");
}
