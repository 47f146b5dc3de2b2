/* Admission of a call's input, the upper half of its flow control (shed.c
 * holds the bound and the shedding): a pull channel (TOLK_CHAN_PULL: a
 * file, a FIFO) is refused audio at core.max_backlog_seconds and told by
 * input_ready() when it is back under three quarters of it; a live channel
 * is admitted and shed. */
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "pipeline.h"

/* A refused leg whose recogniser gives no final result for this long while
 * its stream is open is waiting for more audio (one phrase longer than the
 * bound): the oldest replay audio is let go, counted, and the input goes on. */
#define REPLAY_STALL_SECONDS 5.0
#define GUARD_PERIOD 0.5

/* ---- pull channels: refusing and resuming ---- */

static void stop_watchers(tolk_channel *ch) {
    core *c = ch->core;
    ev_check_stop(c->loop, &ch->input_resume);
    ev_timer_stop(c->loop, &ch->input_guard);
}

static void on_resume_check(struct ev_loop *loop, ev_check *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, input_resume);
    if (ch->closed || ch->ending) {
        stop_watchers(ch);
        return;
    }
    uint64_t resume_at = backlog_low_water(ch);
    int still = 0;
    for (int leg = 0; leg < 2; leg++) {
        direction *d = &ch->dir[leg];
        if (!d->refused) continue;
        if (backlog_samples(d) > resume_at) {
            still = 1;
            continue;
        }
        d->refused = 0;
        /* called from the loop, never from inside channel_audio(): the
         * transport may feed again right here */
        void (*ready)(void *, void *, tolk_leg) =
            DESC_FN(ch->transport->desc, tolk_transport, input_ready);
        if (ready) ready(ch->transport->self, ch->tstate, (tolk_leg)leg);
        if (ch->closed || ch->ending) break;
    }
    if (!still && !ch->dir[0].refused && !ch->dir[1].refused) stop_watchers(ch);
}

/* While a leg is refused no frame reaches pipeline_frame(), which is where
 * a hung recogniser is noticed; this timer looks instead. */
static void on_input_guard(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, input_guard);
    if (ch->closed || ch->ending) {
        stop_watchers(ch);
        return;
    }
    double now = mono_now();
    for (int leg = 0; leg < 2; leg++) {
        direction *d = &ch->dir[leg];
        if (!d->refused || !d->translate) continue;
        pipeline_check_stall(d, now);
        if (!d->stream.open || now - d->last_final < REPLAY_STALL_SECONDS ||
            now - ch->refused_since < REPLAY_STALL_SECONDS)
            continue;
        /* one phrase longer than the bound: the recogniser waits for its
         * end, which is behind the refusal; keep the newest half */
        size_t keep = (size_t)(backlog_bound(ch) / 2 / TOLK_FRAME_SAMPLES);
        if (d->replay.frames > keep) {
            size_t drop = d->replay.frames - keep;
            log_msg(TOLK_LOG_INFO, "channel",
                    "%s: %s->%s: no final result for %.0f s of waiting input: the oldest %.1f s "
                    "of the phrase is no longer kept for recovery",
                    ch->id, d->from, d->to, REPLAY_STALL_SECONDS, (double)drop * TOLK_FRAME_SECONDS);
            pipeline_replay_drop(d, drop);
            ch->refused_since = now;
        }
    }
}

/* After channel_open() has read ch->flags from the transport's info. */
void backlog_init(tolk_channel *ch, const tolk_channel_info *info) {
    ch->backlog_bound = (uint64_t)(ch->gen->conf->core.max_backlog_seconds * TOLK_SAMPLE_RATE);
    if ((ch->flags & TOLK_CHAN_PULL) && !DESC_FN(ch->transport->desc, tolk_transport, input_ready)) {
        /* refused audio would never be asked for again: treat it as live */
        log_msg(TOLK_LOG_WARN, ch->transport->who,
                "%s: TOLK_CHAN_PULL without input_ready(): the call is treated as a live source",
                info->id ? info->id : "call");
        ch->flags &= ~TOLK_CHAN_PULL;
    }
    ev_check_init(&ch->input_resume, on_resume_check);
    ev_timer_init(&ch->input_guard, on_input_guard, GUARD_PERIOD, GUARD_PERIOD);
}

void backlog_stop(tolk_channel *ch) { stop_watchers(ch); }

tolk_status backlog_admit_pull(tolk_channel *ch, tolk_leg leg) {
    direction *d = &ch->dir[leg];
    if (d->refused) return TOLK_E_AGAIN;
    if (backlog_samples(d) < backlog_bound(ch)) return TOLK_OK;
    d->refused = 1;
    core *c = ch->core;
    if (!ev_is_active(&ch->input_resume)) {
        ch->refused_since = mono_now();
        ev_check_start(c->loop, &ch->input_resume);
        ev_timer_again(c->loop, &ch->input_guard);
    }
    return TOLK_E_AGAIN;
}
