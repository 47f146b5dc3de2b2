/* Bounding what a call holds (shed.c), the lower half of its flow control
 * (backlog.c is the upper half: admission of the input). How much of the caller's audio a
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

#include "core.h"
#include "log.h"
#include "metrics.h"
#include "phrase.h"

#define SHED_LOG_INTERVAL 10.0 /* seconds between "shedding" lines of a call */
/* A refused pull leg resumes, and a shedding live call stops, at this share
 * of the bound, so neither flips state on every frame. */
#define RESUME_NUM 3
#define RESUME_DEN 4

static tolk_series *shed_series(const char *reason) {
    tolk_metric *m = metrics_family("audio_shed_seconds_total",
                                    "Call audio dropped unfinished: reason backlog (a live call over "
                                    "core.max_backlog_seconds) or replay (not heard by the "
                                    "recogniser that took over after a failure)",
                                    TOLK_METRIC_COUNTER, "reason", NULL, 0);
    return m ? metrics_series_v(m, reason, NULL) : NULL;
}

uint64_t backlog_low_water(const tolk_channel *ch) {
    return backlog_bound(ch) / RESUME_DEN * RESUME_NUM;
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
    uint64_t target = backlog_low_water(ch), over = held - target, dropped = 0;
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

