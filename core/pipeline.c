/* The provider stages of one direction of a call:
 *   STT stream -> MT queue -> TTS queue -> (channel.c) playback
 * and how each recovers when its provider fails (recovery.c decides the
 * tier; this file carries it out):
 *   - STT: the audio since the last final result is kept; a new stream (on
 *     the same provider after a retry or reset, or on a backup) gets it
 *     replayed, so the phrase being spoken is still recognised, once.
 *   - MT/TTS: the phrase's request is issued again; TTS audio already queued
 *     for the phrase is not queued twice.
 *   - all tiers spent: the direction falls back to passthrough, so the
 *     caller is heard untranslated rather than not at all.
 * Each MT/TTS stage serves one phrase at a time so phrases come out in the
 * order they were spoken. Plugins may complete inside the call that asked
 * (a synchronous mt_done), so pumps loop instead of recursing, and every
 * retry is started from a timer, never from inside a plugin's call. */
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "mtcache.h"
#include "pipeline.h"

#define REPLAY_PREROLL 15 /* frames: 300 ms of silence kept before speech */
#define VOICED_RMS 200

static const tolk_stt *stt_of(tolk_instance *i) { return (const tolk_stt *)i->desc; }
static const tolk_mt *mt_of(tolk_instance *i) { return (const tolk_mt *)i->desc; }
static const tolk_tts *tts_of(tolk_instance *i) { return (const tolk_tts *)i->desc; }

static const char *const stage_names[] = {"stt", "mt", "tts"};
static const char *stage_names_of(stage_kind k) { return stage_names[k]; }

static tolk_instance *stage_inst(stage *st) { return st->chain->prov[st->idx]; }

/* Remembers, for the phrase's report, the highest tier it needed. */
static void note_recovery(core *c, phrase *ph, stage_kind kind, const ladder *lad, tolk_instance *to) {
    double gap_ms = (mono_now() - lad->t_fail) * 1000.0;
    if (c->obs.recovered) c->obs.recovered(c->obs.ud, stage_names_of(kind), tier_names[lad->last], gap_ms);
    if (!ph || lad->last < ph->recovery_tier) return;
    ph->recovery_tier = lad->last;
    ph->recovery_stage = kind;
    snprintf(ph->recovery_from, sizeof ph->recovery_from, "%s", lad->failed ? lad->failed->name : "?");
    snprintf(ph->recovery_to, sizeof ph->recovery_to, "%s", to->name);
}
static core *core_of(stage *st) { return st->dir->ch->core; }

static void stage_issue(stage *st);
static void stream_close(direction *d);
static void stream_reopen(direction *d);
static void stream_recover(direction *d, tolk_status status, tolk_severity sev, const char *why);

static tolk_severity severity_of(tolk_status st) {
    switch (st) {
    case TOLK_E_AGAIN: return TOLK_SEV_LOW;
    case TOLK_E_TIMEOUT: return TOLK_SEV_MEDIUM;
    case TOLK_E_FATAL: return TOLK_SEV_CRITICAL;
    default: return TOLK_SEV_HIGH;
    }
}

static const char *error_type(tolk_status st) {
    switch (st) {
    case TOLK_E_TIMEOUT: return "timeout";
    case TOLK_DECLINED: return "declined";
    case TOLK_E_INVAL: return "invalid";
    case TOLK_E_AGAIN: return "transient";
    case TOLK_E_FATAL: return "fatal";
    default: return "backend";
    }
}

static void start_timer(core *c, ev_timer *w, double after) {
    ev_timer_stop(c->loop, w);
    ev_timer_set(w, after < 0 ? 0 : after, 0.);
    ev_timer_start(c->loop, w);
}

static void stage_stop_timers(stage *st) {
    core *c = core_of(st);
    ev_timer_stop(c->loop, &st->timeout);
    ev_timer_stop(c->loop, &st->retry);
}

/* Every tier spent: the direction is heard untranslated from now on. */
static void direction_fallback(direction *d, const char *why) {
    tolk_channel *ch = d->ch;
    if (!d->translate) return;
    log_msg(TOLK_LOG_ERR, "recovery", "%s: %s->%s: %s; the caller is heard untranslated from now on",
            ch->id, d->from, d->to, why);
    count_error(ch->core, "channel", "fallback_passthrough", TOLK_SEV_CRITICAL);
    pipeline_cancel(d);
    d->translate = 0;
    channel_direction_mode(d, TOLK_MODE_PASSTHROUGH);
    schedule_finish(ch);
}

/* ---- MT and TTS stages ---- */

static void stage_pump(stage *st) {
    direction *d = st->dir;
    core *c = core_of(st);
    if (st->pumping) return;
    st->pumping = 1;
    while (!st->busy && st->q.head && !d->ch->ending && d->translate) {
        phrase *ph = fifo_pop(&st->q);
        int q = st->kind == STAGE_MT ? Q_MT : Q_TTS;
        queue_depth(c, q, -1);
        metrics_observe(c->m.qwait[q], (mono_now() - ph->t_enq) * 1000.0);
        memset(&ph->lad, 0, sizeof ph->lad);
        if (d->ch->gen->conf->recovery.failback_running) st->idx = chain_pick(st->chain);
        st->busy = ph;
        stage_issue(st);
    }
    st->pumping = 0;
    schedule_finish(d->ch);
}

static void stage_failed(stage *st, tolk_status status, tolk_severity sev, const char *why);

/* ---- the translation cache of each MT provider ---- */

static size_t cache_size(direction *d) { return (size_t)d->ch->gen->conf->core.translation_cache; }

static const char *cache_lookup(core *c, tolk_instance *inst, direction *d, const char *text) {
    if (cache_size(d) == 0) return NULL;
    if (!inst->mtcache) {
        inst->mtcache = mtcache_new();
        inst->cache_rate_s = metrics_series_v(c->m.cache_rate, inst->name, NULL);
        inst->cache_hit_s = metrics_series_v(c->m.cache_lookups, inst->name, "hit", NULL);
        inst->cache_miss_s = metrics_series_v(c->m.cache_lookups, inst->name, "miss", NULL);
    }
    const char *hit = mtcache_get(inst->mtcache, d->from, d->to, text);
    metrics_add(hit ? inst->cache_hit_s : inst->cache_miss_s, 1);
    metrics_set(inst->cache_rate_s, mtcache_hit_rate(inst->mtcache));
    return hit;
}

/* The phrase has its translation: on to TTS. */
static void mt_accept(stage *st, phrase *ph, char *translation) {
    direction *d = st->dir;
    core *c = core_of(st);
    ph->t_mt_done = mono_now();
    observe_stage(d, "mt", ph->t_mt_done - ph->t_mt_start);
    free(ph->translation);
    ph->translation = translation;
    ph->t_enq = ph->t_mt_done;
    fifo_push(&d->tts.q, ph);
    queue_depth(c, Q_TTS, 1);
    stage_pump(&d->tts);
    stage_pump(st);
}

static void stage_issue(stage *st) {
    direction *d = st->dir;
    core *c = core_of(st);
    phrase *ph = st->busy;
    tolk_instance *inst = stage_inst(st);
    const conf_recovery *rc = &d->ch->gen->conf->recovery;
    double now = mono_now();
    if (st->kind == STAGE_MT && ph->lad.last == TIER_NONE) {
        const char *hit = cache_lookup(c, inst, d, ph->text);
        if (hit) {
            ph->mt_inst = inst;
            ph->mt_cached = 1;
            ph->t_mt_start = now;
            st->busy = NULL;
            mt_accept(st, ph, xstrdup(hit));
            return;
        }
    }
    ph->req = (tolk_request){.ph = ph, .inst = inst, .active = 1};
    start_timer(c, &st->timeout, ph->lad.last == TIER_FAILOVER ? rc->failover_timeout : rc->request_timeout);
    tolk_status s;
    if (st->kind == STAGE_MT) {
        ph->mt_inst = inst;
        if (!ph->t_mt_start) ph->t_mt_start = now;
        s = mt_of(inst)->translate(inst->self, &ph->req, ph->text, d->from, d->to);
    } else {
        ph->tts_inst = inst;
        ph->tts_got = 0;
        if (!ph->t_tts_start) ph->t_tts_start = now;
        s = tts_of(inst)->speak(inst->self, &ph->req, ph->translation, d->to, d->voice);
    }
    /* ph may be gone if the plugin completed inside the call: look only at
     * the stage, which lives as long as the channel */
    if (s == TOLK_PENDING || st->busy != ph || !ph->req.active) return;
    if (s == TOLK_OK) {
        stage_failed(st, TOLK_E_INVAL, TOLK_SEV_MEDIUM, "returned OK without completing");
        return;
    }
    stage_failed(st, s, severity_of(s), "refused the request");
}

/* The busy phrase is done at this stage. */
static void stage_succeeded(stage *st) {
    core *c = core_of(st);
    phrase *ph = st->busy;
    tolk_instance *inst = ph->req.inst;
    ev_timer_stop(c->loop, &st->timeout);
    ph->req.active = 0;
    health_record(c, inst, 1);
    if (ph->lad.last != TIER_NONE) {
        recovery_count(c, inst, ph->lad.last, 1);
        log_msg(TOLK_LOG_INFO, "recovery", "%s: %s of phrase %u recovered by %s (tier %s) after %.0f ms",
                st->dir->ch->id, stage_names[st->kind], ph->seq, inst->name, tier_names[ph->lad.last],
                (mono_now() - ph->lad.t_fail) * 1000.0);
        note_recovery(c, ph, st->kind, &ph->lad, inst);
    }
    st->busy = NULL;
}

/* A failure of an operation served by stage st: counted, then the next
 * tier of its ladder is chosen and started. Returns the tier; TIER_NONE
 * means every tier is spent and the caller gives up. */
static tier climb(stage *st, ladder *lad, tolk_status status, tolk_severity sev) {
    core *c = core_of(st);
    tolk_instance *inst = stage_inst(st);
    /* a provider at its configured limit is busy, not broken */
    if (status != TOLK_E_LIMIT) health_record(c, inst, 0);
    count_error(c, inst->name, error_type(status), sev);
    recovery_count(c, inst, lad->last, 0);
    tier t = recovery_next(c, lad, st->chain, &st->idx, status, sev);
    lad->last = t;
    switch (t) {
    case TIER_SOFT:
        start_timer(c, &st->retry, recovery_delay(c, lad));
        break;
    case TIER_FAILOVER:
        start_timer(c, &st->retry, 0);
        break;
    case TIER_HARD:
        st->wait_reset = inst;
        instance_reset(c, inst);
        break;
    case TIER_RESET:
        st->wait_chain = st->chain;
        chain_reset(c, st->chain);
        break;
    case TIER_NONE:
        break;
    }
    return t;
}

static void stage_failed(stage *st, tolk_status status, tolk_severity sev, const char *why) {
    direction *d = st->dir;
    core *c = core_of(st);
    phrase *ph = st->busy;
    tolk_instance *inst = stage_inst(st);
    ev_timer_stop(c->loop, &st->timeout);
    ph->req.active = 0;
    tier t = climb(st, &ph->lad, status, sev);
    log_msg(TOLK_LOG_WARN, inst->who, "%s: %s of phrase %u failed (%s: %s)%s%s", d->ch->id,
            stage_names[st->kind], ph->seq, error_type(status), why ? why : "",
            t == TIER_NONE ? "" : "; recovery tier ", t == TIER_NONE ? "" : tier_names[t]);
    if (t == TIER_NONE) {
        st->busy = NULL;
        if (ph->has_audio && st->kind == STAGE_TTS) {
            /* what was received plays; the rest of this phrase is lost */
            ph->t_tts_done = mono_now();
            if (ph->t_first_out > 0 && !phrase_marked(d, ph)) phrase_free(ph);
        } else {
            phrase_lost(ph, stage_names[st->kind], inst, status);
        }
        if (status != TOLK_E_INVAL) {
            char msg[160];
            snprintf(msg, sizeof msg, "every provider of chain '%s' failed", st->chain->name);
            direction_fallback(d, msg);
        } else {
            stage_pump(st);
        }
    }
}

static void on_stage_retry(struct ev_loop *loop, ev_timer *w, int revents) {
    stage *st = CONTAINER_OF(w, stage, retry);
    if (st->kind == STAGE_STT) {
        direction *d = st->dir;
        int failback = st->failback;
        st->failback = 0;
        if (d->stream.open) {
            /* only a failback finds the stream open; a stream that failed
             * meanwhile is reopened where the recovery ladder says */
            size_t want = chain_pick(st->chain);
            if (!failback || d->ch->ending || d->input_ended || want == st->idx) return;
            tolk_instance *from = stage_inst(st);
            stream_close(d);
            st->idx = want;
            log_msg(TOLK_LOG_INFO, "recovery", "%s: %s->%s: recognition back from %s to %s (failback)",
                    d->ch->id, d->from, d->to, from->name, stage_inst(st)->name);
        }
        stream_reopen(d);
        return;
    }
    if (st->busy && !st->dir->ch->ending) stage_issue(st);
}

static void on_stage_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    stage *st = CONTAINER_OF(w, stage, timeout);
    if (st->kind == STAGE_STT) return;
    phrase *ph = st->busy;
    if (!ph || !ph->req.active) return;
    /* cancel first: after it returns the plugin will not answer */
    tolk_instance *inst = ph->req.inst;
    ph->req.active = 0;
    if (st->kind == STAGE_MT)
        mt_of(inst)->cancel(inst->self, &ph->req);
    else
        tts_of(inst)->cancel(inst->self, &ph->req);
    stage_failed(st, TOLK_E_TIMEOUT, TOLK_SEV_MEDIUM, "no answer in time");
}

void channel_resume_after_reset(core *c, tolk_instance *inst, chain *ch) {
    for (tolk_channel *chan = c->channels; chan; chan = chan->next) {
        if (chan->ending || chan->closed) continue;
        for (int i = 0; i < 2; i++) {
            stage *stages[] = {&chan->dir[i].stt, &chan->dir[i].mt, &chan->dir[i].tts};
            for (size_t k = 0; k < ARRAY_LEN(stages); k++) {
                stage *st = stages[k];
                if ((inst && st->wait_reset == inst) || (ch && st->wait_chain == ch)) {
                    st->wait_reset = NULL;
                    st->wait_chain = NULL;
                    /* a failed reset is one more failure on the ladder */
                    start_timer(c, &st->retry, 0);
                }
            }
        }
    }
}

/* ---- completions from plugins ---- */

/* A completion for a request that was finished or cancelled is a plugin
 * bug: logged and ignored. */
static int request_live(const tolk_request *r, const char *what) {
    if (r && r->active) return 1;
    log_msg(TOLK_LOG_WARN, "channel", "%s for a finished or cancelled request ignored", what);
    return 0;
}

void request_mt_done(tolk_request *r, tolk_status status, const char *text) {
    if (!request_live(r, "mt_done")) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    stage *st = &d->mt;
    core *c = d->ch->core;
    char *clean = status == TOLK_OK && text ? utf8_clean(text, 8192) : NULL;
    if (!clean || !*clean) {
        free(clean);
        stage_failed(st, status == TOLK_OK ? TOLK_E_BACKEND : status,
                     status == TOLK_OK ? TOLK_SEV_MEDIUM : severity_of(status),
                     status == TOLK_OK ? "empty translation" : "translation failed");
        stage_pump(st);
        return;
    }
    stage_succeeded(st);
    observe_component(c, r->inst, "translate", mono_now() - ph->t_mt_start);
    if (r->inst->mtcache && cache_size(d))
        mtcache_put(r->inst->mtcache, cache_size(d), d->from, d->to, ph->text, clean);
    mt_accept(st, ph, clean);
}

void request_tts_audio(tolk_request *r, const int16_t *pcm, size_t n) {
    if (!r || !r->active || !pcm || n == 0) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    tolk_channel *ch = d->ch;
    const conf_recovery *rc = &ch->gen->conf->recovery;
    start_timer(ch->core, &d->tts.timeout, rc->request_timeout);
    /* after a retry, the new attempt's audio up to what was already queued
     * for this phrase is not queued again */
    uint64_t skip = ph->tts_keep > ph->tts_got ? ph->tts_keep - ph->tts_got : 0;
    ph->tts_got += n;
    if (skip >= n) return;
    pcm += skip;
    n -= (size_t)skip;
    ph->tts_keep += n;
    if (!ph->has_audio) {
        ph->has_audio = 1;
        ph->t_tts_first = mono_now();
        observe_stage(d, "tts_first", ph->t_tts_first - ph->t_tts_start);
        observe_component(ch->core, r->inst, "synthesize_first", ph->t_tts_first - ph->t_tts_start);
        ph->out_pos = ch->out[d->dst].written;
        ph->mark_next = NULL;
        if (d->marks_tail)
            d->marks_tail->mark_next = ph;
        else
            d->marks_head = ph;
        d->marks_tail = ph;
    }
    outbuf_push(ch->core, &ch->out[d->dst], pcm, n);
    deliver_now(ch, d->dst);
}

void request_tts_done(tolk_request *r, tolk_status status) {
    if (!request_live(r, "tts_done")) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    stage *st = &d->tts;
    tolk_channel *ch = d->ch;
    if (status != TOLK_OK) {
        stage_failed(st, status, severity_of(status), ph->has_audio ? "synthesis broke off" : "synthesis failed");
        stage_pump(st);
        return;
    }
    stage_succeeded(st);
    ph->t_tts_done = mono_now();
    observe_component(ch->core, r->inst, "synthesize", ph->t_tts_done - ph->t_tts_start);
    outbuf_pad(ch->core, &ch->out[d->dst]);
    if (!ph->has_audio) {
        phrase_lost(ph, "tts", r->inst, TOLK_E_BACKEND);
    } else {
        deliver_now(ch, d->dst);
        /* already played its first frame (unpaced): nothing waits for it */
        if (ph->t_first_out > 0 && !phrase_marked(d, ph)) phrase_free(ph);
    }
    stage_pump(st);
}

/* ---- STT ---- */

static void stream_close(direction *d) {
    tolk_stream *s = &d->stream;
    if (!s->open) return;
    s->open = 0;
    stt_of(s->inst)->close(s->state);
    s->state = NULL;
}

static int frame_voiced(const int16_t *f) {
    int64_t e = 0;
    for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++) e += (int64_t)f[i] * f[i];
    return e > (int64_t)VOICED_RMS * VOICED_RMS * TOLK_FRAME_SAMPLES;
}

/* Keeps the audio a new stream would need: from the last final result on,
 * without long leading silence, at most replay_seconds; in whole frames. */
static void replay_append(direction *d, const int16_t *frame, int voiced) {
    const conf_recovery *rc = &d->ch->gen->conf->recovery;
    size_t max = (size_t)(rc->replay_seconds * TOLK_SAMPLE_RATE) / TOLK_FRAME_SAMPLES;
    if (max == 0) {
        d->replay_start = d->samples_in;
        return;
    }
    if (voiced) d->replay_voiced = 1;
    size_t keep = d->replay_voiced ? max : REPLAY_PREROLL;
    if (keep > max) keep = max;
    if (d->replay.frames + 1 > keep) {
        size_t drop = d->replay.frames + 1 - keep;
        framebuf_drop(&d->replay, drop);
        d->replay_start += (uint64_t)drop * TOLK_FRAME_SAMPLES;
    }
    framebuf_push(&d->replay, frame);
}

/* A final result covers everything up to its end: that audio will not be
 * needed again. Whole frames: the frame the result ends in is kept. */
static void replay_trim(direction *d, uint64_t upto) {
    if (upto <= d->replay_start) return;
    d->replay_voiced = 0;
    size_t drop = (size_t)((upto - d->replay_start) / TOLK_FRAME_SAMPLES);
    if (drop > d->replay.frames) drop = d->replay.frames;
    framebuf_drop(&d->replay, drop);
    d->replay_start += (uint64_t)drop * TOLK_FRAME_SAMPLES;
}

static int stream_open(direction *d, tolk_status *why) {
    tolk_stream *s = &d->stream;
    s->dir = d;
    s->inst = stage_inst(&d->stt);
    s->flushing = s->flushed = 0;
    tolk_stt_params p = {.size = sizeof p, .language = d->from, .sample_rate = TOLK_SAMPLE_RATE};
    tolk_status st = stt_of(s->inst)->open(s->inst->self, s, &p, &s->state);
    if (st != TOLK_OK) {
        *why = st;
        return -1;
    }
    s->open = 1;
    d->last_result = mono_now();
    return 0;
}

static void stream_reopen(direction *d) {
    tolk_channel *ch = d->ch;
    if (ch->ending || ch->closed || !d->translate) return;
    tolk_status why = TOLK_OK;
    if (stream_open(d, &why) != 0) {
        stream_recover(d, why, severity_of(why), "cannot open a stream");
        return;
    }
    core *c = ch->core;
    /* the new stream starts where the kept audio starts */
    d->stream_base = d->replay_start;
    log_msg(TOLK_LOG_INFO, "recovery", "%s: %s->%s: stream reopened on %s, replaying %.2f s of audio",
            ch->id, d->from, d->to, d->stream.inst->name, (double)d->replay.frames * TOLK_FRAME_SECONDS);
    /* by position, not by pointer: a result delivered from inside feed()
     * may trim the buffer under this loop */
    uint64_t end = d->replay_start + (uint64_t)d->replay.frames * TOLK_FRAME_SAMPLES;
    for (uint64_t pos = d->replay_start; pos < end && d->stream.open; pos += TOLK_FRAME_SAMPLES) {
        if (pos < d->replay_start) continue;
        const int16_t *frame = framebuf_at(&d->replay, (size_t)((pos - d->replay_start) / TOLK_FRAME_SAMPLES));
        if (!frame) break;
        tolk_status st = stt_of(d->stream.inst)->feed(d->stream.state, frame, TOLK_FRAME_SAMPLES);
        if (st < 0) {
            stream_recover(d, st, TOLK_SEV_HIGH, "feed failed during replay");
            return;
        }
    }
    if (d->stream.open && d->unfed) {
        /* the frames that arrived while no stream was open have now been heard */
        double now = mono_now();
        for (size_t k = d->unfed; k > 0; k--)
            metrics_observe(c->m.qwait[Q_INPUT],
                            (now - arrival_time(d, d->samples_in - (k - 1) * TOLK_FRAME_SAMPLES)) * 1000.0);
        queue_depth(c, Q_INPUT, -(double)d->unfed);
        d->unfed = 0;
    }
    if (d->stream.open && d->input_ended) {
        const tolk_stt *stt = stt_of(d->stream.inst);
        tolk_status st = DESC_FN(&stt->base, tolk_stt, flush) ? stt->flush(d->stream.state) : TOLK_OK;
        if (st == TOLK_PENDING)
            d->stream.flushing = 1;
        else
            d->stream.flushed = 1;
        /* the call may have been waiting only for this stream to end */
        schedule_finish(ch);
    }
}

static void stream_recover(direction *d, tolk_status status, tolk_severity sev, const char *why) {
    tolk_channel *ch = d->ch;
    stage *st = &d->stt;
    tolk_instance *inst = stage_inst(st);
    stream_close(d);
    if (ch->ending || ch->closed || !d->translate) return;
    tier t = climb(st, &st->lad, status, sev);
    log_msg(TOLK_LOG_WARN, inst->who, "%s: %s->%s stream failed (%s: %s)%s%s", ch->id, d->from, d->to,
            error_type(status), why ? why : "", t == TIER_NONE ? "" : "; recovery tier ",
            t == TIER_NONE ? "" : tier_names[t]);
    if (t == TIER_NONE) {
        char msg[160];
        snprintf(msg, sizeof msg, "every provider of chain '%s' failed", st->chain->name);
        direction_fallback(d, msg);
    }
}

void stream_failed(tolk_stream *s, tolk_status st, tolk_severity sev, const char *why) {
    if (!s || !s->open) return;
    stream_recover(s->dir, st, sev, why);
    schedule_finish(s->dir->ch);
}

void stream_result(tolk_stream *s, const tolk_transcript *t) {
    if (!s || !s->open || !t) {
        log_msg(TOLK_LOG_DBG, "channel", "result for a closed stream ignored");
        return;
    }
    direction *d = s->dir;
    core *c = d->ch->core;
    stage *st = &d->stt;
    ladder stt_recovered = {0};
    d->last_result = mono_now();
    if (!t->is_final) {
        if (log_enabled(TOLK_LOG_DBG)) {
            char *txt = utf8_clean(t->text, 512);
            log_msg(TOLK_LOG_DBG, "channel", "%s: partial: %s", d->ch->id, txt);
            free(txt);
        }
        return;
    }
    health_record(c, s->inst, 1);
    if (st->lad.last != TIER_NONE) {
        recovery_count(c, s->inst, st->lad.last, 1);
        log_msg(TOLK_LOG_INFO, "recovery", "%s: %s->%s recognition recovered by %s (tier %s) after %.0f ms",
                d->ch->id, d->from, d->to, s->inst->name, tier_names[st->lad.last],
                (mono_now() - st->lad.t_fail) * 1000.0);
        stt_recovered = st->lad;
        memset(&st->lad, 0, sizeof st->lad);
    }
    uint64_t end = d->stream_base + (t->end_sample > t->start_sample ? t->end_sample : 0);
    if (end == d->stream_base || end > d->samples_in) end = d->samples_in;
    replay_trim(d, end);
    if (d->speech_since) queue_depth(c, Q_STT, -1);
    d->speech_since = 0;
    char *text = utf8_clean(t->text, 4096);
    if (!*text) {
        free(text);
        return;
    }
    phrase *ph = xcalloc(1, sizeof *ph);
    ph->dir = d;
    ph->seq = ++d->next_seq;
    ph->text = text;
    ph->start_sample = d->stream_base + t->start_sample;
    ph->end_sample = end;
    ph->t_speech_end = arrival_time(d, ph->end_sample);
    ph->t_stt_final = mono_now();
    ph->stt_inst = s->inst;
    if (stt_recovered.last != TIER_NONE) note_recovery(c, ph, STAGE_STT, &stt_recovered, s->inst);
    observe_stage(d, "stt", ph->t_stt_final - ph->t_speech_end);
    observe_component(c, s->inst, "recognize", ph->t_stt_final - ph->t_speech_end);
    metrics_observe(c->m.qwait[Q_STT], (ph->t_stt_final - ph->t_speech_end) * 1000.0);
    metrics_add(c->m.words_s, (double)count_words(text));
    ph->t_enq = ph->t_stt_final;
    fifo_push(&d->mt.q, ph);
    queue_depth(c, Q_MT, 1);
    stage_pump(&d->mt);
    /* A phrase boundary is where a running call can go back to a recovered
     * primary: the stream is replaced from a timer, outside the plugin's
     * callback, and the new one hears the audio kept since this result. */
    if (d->ch->gen->conf->recovery.failback_running && s->open && !d->input_ended &&
        chain_pick(st->chain) != st->idx && !ev_is_active(&st->retry)) {
        st->failback = 1;
        start_timer(c, &st->retry, 0);
    }
}

void stream_flushed(tolk_stream *s) {
    if (!s || !s->open) return;
    s->flushing = 0;
    s->flushed = 1;
    schedule_finish(s->dir->ch);
}

void pipeline_frame(direction *d, const int16_t *frame) {
    core *c = d->ch->core;
    int voiced = frame_voiced(frame);
    replay_append(d, frame, voiced);
    double now = mono_now();
    if (voiced && !d->speech_since) {
        d->speech_since = now;
        queue_depth(c, Q_STT, 1);
    }
    if (!d->stream.open) {
        /* recovering: the frame waits in the replay buffer, which keeps
         * at most replay_seconds; what falls out of it is not heard */
        size_t kept = d->replay.frames, was = d->unfed;
        d->unfed = d->unfed + 1 < kept ? d->unfed + 1 : kept;
        queue_depth(c, Q_INPUT, (double)d->unfed - (double)was);
        return;
    }
    metrics_observe(c->m.qwait[Q_INPUT], (now - arrival_time(d, d->samples_in)) * 1000.0);
    tolk_status st = stt_of(d->stream.inst)->feed(d->stream.state, frame, TOLK_FRAME_SAMPLES);
    if (st < 0) {
        stream_recover(d, st, TOLK_SEV_HIGH, "feed failed");
        return;
    }
    /* a recogniser that hears speech and says nothing for this long hangs */
    double since = d->speech_since > d->last_result ? d->speech_since : d->last_result;
    if (d->speech_since && d->stream.open &&
        now - since > d->ch->gen->conf->recovery.stt_timeout) {
        d->speech_since = now;
        stream_recover(d, TOLK_E_TIMEOUT, TOLK_SEV_MEDIUM, "no result for speech");
    }
}

void pipeline_input_end(direction *d) {
    if (!d->stream.open) return;
    const tolk_stt *stt = stt_of(d->stream.inst);
    tolk_status st = DESC_FN(&stt->base, tolk_stt, flush) ? stt->flush(d->stream.state) : TOLK_OK;
    if (st == TOLK_PENDING)
        d->stream.flushing = 1;
    else
        d->stream.flushed = 1;
}

static void stage_init(stage *st, stage_kind kind, direction *d, chain *ch) {
    memset(st, 0, sizeof *st);
    st->kind = kind;
    st->dir = d;
    st->chain = ch;
    st->idx = ch ? chain_pick(ch) : 0;
    ev_init(&st->timeout, on_stage_timeout);
    ev_init(&st->retry, on_stage_retry);
}

void pipeline_setup(direction *d) {
    tolk_channel *ch = d->ch;
    generation *g = ch->gen;
    chain *stt = generation_route(g, TOLK_KIND_STT, d->from, d->to);
    chain *mt = generation_route(g, TOLK_KIND_MT, d->from, d->to);
    chain *tts = generation_route(g, TOLK_KIND_TTS, d->from, d->to);
    stage_init(&d->stt, STAGE_STT, d, stt);
    stage_init(&d->mt, STAGE_MT, d, mt);
    stage_init(&d->tts, STAGE_TTS, d, tts);
    if (!d->translate) return;
    if (!stt || !mt || !tts) {
        log_msg(TOLK_LOG_WARN, "channel",
                "%s: no %s chain serves %s->%s: that direction is heard untranslated", ch->id,
                !stt ? "stt" : !mt ? "mt" : "tts", d->from, d->to);
        d->translate = 0;
        return;
    }
    tolk_status why = TOLK_OK;
    if (stream_open(d, &why) != 0) stream_recover(d, why, severity_of(why), "cannot open a stream");
}

static void free_fifo(core *c, phrase_fifo_head *f, int q) {
    phrase *ph;
    while ((ph = fifo_pop(f))) {
        queue_depth(c, q, -1);
        phrase_free(ph);
    }
}

void pipeline_cancel(direction *d) {
    core *c = d->ch->core;
    stream_close(d);
    stage *stages[] = {&d->stt, &d->mt, &d->tts};
    for (size_t i = 0; i < ARRAY_LEN(stages); i++) {
        stage *st = stages[i];
        stage_stop_timers(st);
        st->wait_reset = NULL;
        st->wait_chain = NULL;
        if (st->busy && st->busy->req.active) {
            st->busy->req.active = 0;
            tolk_instance *inst = st->busy->req.inst;
            if (st->kind == STAGE_MT)
                mt_of(inst)->cancel(inst->self, &st->busy->req);
            else
                tts_of(inst)->cancel(inst->self, &st->busy->req);
        }
    }
    free_fifo(c, &d->mt.q, Q_MT);
    free_fifo(c, &d->tts.q, Q_TTS);
    if (d->mt.busy) phrase_free(d->mt.busy);
    d->mt.busy = NULL;
    phrase *tb = d->tts.busy, *ph;
    d->tts.busy = NULL;
    int tb_marked = 0;
    while ((ph = d->marks_head)) {
        d->marks_head = ph->mark_next;
        if (ph == tb) tb_marked = 1;
        phrase_free(ph);
    }
    d->marks_tail = NULL;
    if (tb && !tb_marked) phrase_free(tb);
    framebuf_clear(&d->replay);
    queue_depth(c, Q_INPUT, -(double)d->unfed);
    d->unfed = 0;
    if (d->speech_since) queue_depth(c, Q_STT, -1);
    d->speech_since = 0;
}

int pipeline_drained(direction *d) {
    if (d->spoke && !d->input_ended) return 0;
    if (d->translate) {
        if (d->input_ended && d->stream.open && !d->stream.flushed) return 0;
        /* a stream being recovered still owes the end of the input */
        if (d->input_ended && !d->stream.open &&
            (ev_is_active(&d->stt.retry) || d->stt.wait_reset || d->stt.wait_chain))
            return 0;
    }
    if (d->mt.q.head || d->mt.busy || d->tts.q.head || d->tts.busy || d->marks_head) return 0;
    return 1;
}
