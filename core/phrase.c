/* Phrases as the pipeline carries them, and the measuring every stage
 * shares: the stage queues (FIFOs), the per-phrase report, the latency and
 * queue metrics, and the arrival time of a direction's audio. It calls
 * nothing above it; pipeline.c, shed.c, playback.c and channel.c use it. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "log.h"
#include "metrics.h"
#include "phrase.h"

/* ---- metrics ---- */

void queue_depth(core *c, int q, double delta) { metrics_add(c->m.qdepth[q], delta); }

void observe_stage(direction *d, const char *stage_name, double seconds) {
    core *c = d->ch->core;
    if (seconds < 0) return;
    metrics_observe(metrics_series_v(c->m.latency, d->from, d->to, stage_name, NULL), seconds);
}

void observe_component(core *c, tolk_instance *inst, const char *op, double seconds) {
    if (!inst || seconds < 0) return;
    metrics_observe(metrics_series_v(c->m.component, inst->name, op, NULL), seconds * 1000.0);
}

/* ---- phrases ---- */

void fifo_push(phrase_fifo_head *f, phrase *p) {
    p->next = NULL;
    if (f->tail)
        f->tail->next = p;
    else
        f->head = p;
    f->tail = p;
    f->n++;
}

int fifo_remove(phrase_fifo_head *f, phrase *p) {
    for (phrase **pp = &f->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (*pp != p) continue;
        *pp = p->next;
        if (f->tail == p) f->tail = prev;
        f->n--;
        p->next = NULL;
        return 1;
    }
    return 0;
}

phrase *fifo_pop(phrase_fifo_head *f) {
    phrase *p = f->head;
    if (p) {
        f->head = p->next;
        if (!f->head) f->tail = NULL;
        f->n--;
        p->next = NULL;
    }
    return p;
}

void phrase_free(phrase *ph) {
    if (ph->dir->spec == ph) ph->dir->spec = NULL;
    ph->dir->phrase_samples -= ph->backlog;
    free(ph->held);
    for (size_t i = 0; i < ph->ncontext; i++) free(ph->context[i]);
    free(ph->context);
    free(ph->cache_key);
    free(ph->text);
    free(ph->translation);
    free(ph);
}

static double ms_between(double a, double b) { return a > 0 && b > 0 ? (b - a) * 1000.0 : -1; }

void phrase_report_emit(phrase *ph, int ok) {
    direction *d = ph->dir;
    core *c = d->ch->core;
    /* not a phrase yet: its final result has not come (pipeline.c) */
    if (ph->speculative) return;
    if (!ok) c->lost_phrases++;
    if (!c->obs.phrase) return;
    phrase_report r = {
        .channel_id = d->ch->id,
        .seq = ph->seq,
        .from_leg = d->src,
        .from = d->from,
        .to = d->to,
        .text = ph->text,
        .translation = ph->translation,
        .stt = ph->stt_inst ? ph->stt_inst->name : NULL,
        .mt = ph->mt_inst ? ph->mt_inst->name : NULL,
        .tts = ph->tts_inst ? ph->tts_inst->name : NULL,
        .start_s = (double)ph->start_sample / TOLK_SAMPLE_RATE,
        .end_s = (double)ph->end_sample / TOLK_SAMPLE_RATE,
        .stt_ms = ms_between(ph->t_speech_end, ph->t_stt_final),
        .mt_ms = ms_between(ph->t_mt_start, ph->t_mt_done),
        .tts_first_ms = ms_between(ph->t_tts_start, ph->t_tts_first),
        .latency_ms = ms_between(ph->t_speech_end, ph->t_first_out),
        .mt_wait_ms = ms_between(ph->t_stt_final, ph->t_mt_start),
        .tts_wait_ms = ms_between(ph->t_mt_done, ph->t_tts_start),
        .playback_wait_ms = ms_between(ph->t_tts_first, ph->t_first_out),
        .ear_latency_ms = -1,
        .lag_ms = d->ch->paced && ok ? ms_between(ph->t_speech_end, ph->t_first_out) : -1,
        .speedup = ph->speed > 0 ? ph->speed : 1.0,
        .mt_cached = ph->mt_cached,
        .ok = ok,
        .speculated = ph->speculated,
        .speculative_lead_ms = ph->speculated ? ms_between(ph->t_speculated, ph->t_stt_final) : -1,
    };
    static const char *const stages[] = {"stt", "mt", "tts"};
    if (ph->recovery_tier != TIER_NONE) {
        r.recovery_tier = tier_names[ph->recovery_tier];
        r.recovery_stage = stages[ph->recovery_stage];
        r.recovery_from = ph->recovery_from;
        r.recovery_to = ph->recovery_to;
    }
    c->obs.phrase(c->obs.ud, &r);
}

/* A phrase that cannot be finished: counted, reported, and the pipeline
 * goes on with the next one. */
void phrase_lost(phrase *ph, const char *stage_name, tolk_instance *inst, tolk_status st) {
    if (ph->speculative) {
        /* the final result will start it again, if it comes */
        log_msg(TOLK_LOG_VERB, "channel", "%s: speculative translation failed at %s (status %d): \"%s\"",
                ph->dir->ch->id, stage_name, (int)st, ph->text ? ph->text : "");
        phrase_free(ph);
        return;
    }
    log_msg(TOLK_LOG_WARN, "channel", "%s: phrase %u lost at %s (%s, status %d): \"%s\"",
            ph->dir->ch->id, ph->seq, stage_name, inst ? inst->who : "no provider", (int)st,
            ph->text ? ph->text : "");
    phrase_report_emit(ph, 0);
    phrase_free(ph);
}

double arrival_time(direction *d, uint64_t end_sample) {
    uint64_t frames = d->samples_in / TOLK_FRAME_SAMPLES;
    if (frames == 0) return mono_now();
    uint64_t k = end_sample ? (end_sample - 1) / TOLK_FRAME_SAMPLES : 0;
    if (k >= frames) k = frames - 1;
    if (frames - k > ARRIVAL_RING) k = frames - ARRIVAL_RING;
    return d->arrival[k % ARRIVAL_RING];
}

int phrase_marked(direction *d, phrase *ph) {
    for (phrase *m = d->marks_head; m; m = m->mark_next)
        if (m == ph) return 1;
    return 0;
}

