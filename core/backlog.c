/* Flow control of a call's input: how much of the caller's audio a
 * direction may hold unfinished, and what happens when it holds that much.
 *
 * "Unfinished" is everything the direction holds that grows when audio comes
 * faster than the engines finish it:
 *   - the STT replay buffer: audio no final result has covered yet;
 *   - the phrases waiting at or served by MT and TTS, by the length of the
 *     speech they came from;
 *   - the playback buffer of the listening leg (a paced call plays in real
 *     time what the synthesiser makes faster than that).
 * The bound is core.max_backlog_seconds per direction. A pull channel
 * (TOLK_CHAN_PULL: a file, a FIFO) is refused audio at the bound and told
 * by input_ready() when it is back under three quarters of it, so a file of
 * any length goes through with every phrase and flat memory. A live channel
 * is never refused: it sheds its oldest audio (the playback buffer first,
 * then the oldest phrases waiting for MT and TTS, reported lost), counted
 * in audio_shed_seconds_total and logged at most once per call every
 * SHED_LOG_INTERVAL. Its replay buffer keeps recovery.replay_seconds as
 * before, and voiced audio that falls out of it before a final result is
 * counted as lost if the recogniser then fails. */
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "pipeline.h"

#define SHED_LOG_INTERVAL 10.0 /* seconds between "shedding" lines of a call */
/* A refused pull leg resumes at this share of the bound, so it does not
 * flip between refused and accepted on every frame. */
#define RESUME_NUM 3
#define RESUME_DEN 4
/* A refused leg whose recogniser gives no final result for this long while
 * its stream is open is waiting for more audio (one phrase longer than the
 * bound): the oldest replay audio is let go, counted, and the input goes on. */
#define REPLAY_STALL_SECONDS 5.0
#define GUARD_PERIOD 0.5

static tolk_series *shed_series(const char *reason) {
    tolk_metric *m = metrics_family("audio_shed_seconds_total",
                                    "Call audio dropped unfinished: reason backlog (a live call over "
                                    "core.max_backlog_seconds) or replay (not heard by the "
                                    "recogniser that took over after a failure)",
                                    TOLK_METRIC_COUNTER, "reason", NULL, 0);
    return m ? metrics_series_v(m, reason, NULL) : NULL;
}

uint64_t backlog_bound(const tolk_channel *ch) {
    return (uint64_t)(ch->gen->conf->core.max_backlog_seconds * TOLK_SAMPLE_RATE);
}

uint64_t backlog_samples(const direction *d) {
    const outbuf *ob = &d->ch->out[d->dst];
    return (uint64_t)d->replay.frames * TOLK_FRAME_SAMPLES + d->phrase_samples + ob->len;
}

uint64_t backlog_progress(const tolk_channel *ch) {
    uint64_t p = ch->frames_out[0] + ch->frames_out[1];
    for (int i = 0; i < 2; i++) {
        const direction *d = &ch->dir[i];
        p += d->next_seq + d->replay_start / TOLK_FRAME_SAMPLES + d->samples_in / TOLK_FRAME_SAMPLES;
    }
    return p;
}

/* ---- reporting what is lost ---- */

void backlog_audio_lost(direction *d, uint64_t samples, const char *reason) {
    if (samples == 0) return;
    tolk_channel *ch = d->ch;
    double secs = (double)samples / TOLK_SAMPLE_RATE;
    metrics_add(shed_series(reason), secs);
    log_msg(TOLK_LOG_WARN, "channel", "%s: %s->%s: %.2f s of speech lost (%s): not heard by the recogniser",
            ch->id, d->from, d->to, secs, reason);
    /* one lost "phrase" for the report, placed where the audio was */
    phrase *ph = xcalloc(1, sizeof *ph);
    ph->dir = d;
    ph->seq = ++d->next_seq;
    ph->end_sample = d->replay_start;
    ph->start_sample = d->replay_start > samples ? d->replay_start - samples : 0;
    phrase_report_emit(ph, 0);
    phrase_free(ph);
}

static void report_fifo(phrase_fifo_head *f) {
    for (phrase *ph = f->head; ph; ph = ph->next) phrase_report_emit(ph, 0);
}

void backlog_report_pending_lost(direction *d) {
    if (!d->translate) return;
    if (d->replay_voiced && d->replay.frames) {
        /* speech the recogniser has not finished: lost with the call */
        log_msg(TOLK_LOG_WARN, "channel", "%s: %s->%s: %.2f s of speech not yet recognised, dropped",
                d->ch->id, d->from, d->to, (double)d->replay.frames * TOLK_FRAME_SECONDS);
        metrics_add(shed_series("ended"), (double)d->replay.frames * TOLK_FRAME_SECONDS);
    }
    /* oldest first, as they were spoken */
    for (phrase *m = d->marks_head; m; m = m->mark_next) phrase_report_emit(m, 0);
    phrase *tb = d->tts.busy;
    if (tb && tb->t_first_out == 0 && !phrase_marked(d, tb)) phrase_report_emit(tb, 0);
    report_fifo(&d->tts.q);
    if (d->mt.busy) phrase_report_emit(d->mt.busy, 0);
    report_fifo(&d->mt.q);
}

/* ---- live channels: shedding ---- */

/* Drops the oldest frames of a playback buffer as if they had been
 * played; phrases whose first frame was among them count as started. */
static uint64_t outbuf_shed(core *c, outbuf *ob, uint64_t samples) {
    uint64_t frames = samples / TOLK_FRAME_SAMPLES, have = ob->len / TOLK_FRAME_SAMPLES;
    if (frames > have) frames = have;
    if (frames == 0) return 0;
    size_t n = (size_t)frames * TOLK_FRAME_SAMPLES;
    ob->head = (ob->head + n) % ob->cap;
    ob->len -= n;
    ob->played += n;
    if (ob->len == 0) ob->head = 0;
    metrics_add(c->m.qdepth[Q_PLAYBACK], -(double)frames);
    return n;
}

void backlog_shed(direction *d) {
    tolk_channel *ch = d->ch;
    if (ch->flags & TOLK_CHAN_PULL) return; /* its input waits instead */
    uint64_t bound = backlog_bound(ch);
    core *c = ch->core;
    outbuf *ob = &ch->out[d->dst];
    /* the replay buffer is bounded by recovery.replay_seconds on its own */
    uint64_t held = d->phrase_samples + ob->len;
    if (held <= bound) return;
    uint64_t target = bound / RESUME_DEN * RESUME_NUM, over = held - target, dropped = 0;
    dropped += outbuf_shed(c, ob, over);
    unsigned phrases = 0;
    stage *stages[] = {&d->mt, &d->tts};
    for (size_t i = 0; i < ARRAY_LEN(stages) && dropped < over; i++) {
        phrase *ph;
        while (dropped < over && (ph = fifo_pop(&stages[i]->q))) {
            queue_depth(c, i == 0 ? Q_MT : Q_TTS, -1);
            dropped += ph->backlog;
            phrases++;
            /* reported, not logged one by one: the line below speaks for all */
            phrase_report_emit(ph, 0);
            phrase_free(ph);
        }
    }
    if (dropped == 0) return;
    metrics_add(shed_series("backlog"), (double)dropped / TOLK_SAMPLE_RATE);
    double now = mono_now();
    if (ch->shed_logged == 0 || now - ch->shed_logged >= SHED_LOG_INTERVAL) {
        ch->shed_logged = now;
        log_msg(TOLK_LOG_WARN, "channel",
                "%s: %s->%s: more than %.0f s of audio unfinished (core.max_backlog_seconds): "
                "shedding the oldest (%.2f s now, %u phrase%s)",
                ch->id, d->from, d->to, (double)bound / TOLK_SAMPLE_RATE,
                (double)dropped / TOLK_SAMPLE_RATE, phrases, phrases == 1 ? "" : "s");
    }
}

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
    uint64_t resume_at = backlog_bound(ch) / RESUME_DEN * RESUME_NUM;
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
        pipeline_check_stall(d);
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

void backlog_init(tolk_channel *ch, const tolk_channel_info *info) {
    ch->flags = info && TOLK_HAS(info, tolk_channel_info, flags) ? info->flags : 0;
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

tolk_status backlog_admit(tolk_channel *ch, tolk_leg leg) {
    direction *d = &ch->dir[leg];
    uint64_t bound = backlog_bound(ch);
    if (!(ch->flags & TOLK_CHAN_PULL)) {
        backlog_shed(d);
        return TOLK_OK;
    }
    if (d->refused) return TOLK_E_AGAIN;
    if (backlog_samples(d) < bound) return TOLK_OK;
    d->refused = 1;
    core *c = ch->core;
    if (!ev_is_active(&ch->input_resume)) {
        ch->refused_since = mono_now();
        ev_check_start(c->loop, &ch->input_resume);
        ev_timer_again(c->loop, &ch->input_guard);
    }
    return TOLK_E_AGAIN;
}
