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

#include "handle.h"
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
/* The recovery settings of the call's own generation: a reload during the
 * call does not change how its operations recover. */
static const conf_recovery *call_recovery(direction *d) { return &d->ch->gen->conf->recovery; }

/* A request is over (answered, failed, timed out or cancelled): its handle
 * is retired first, so anything the plugin sends for it later is caught. */
static void request_end(tolk_request *r) {
    if (!r->active) return;
    r->active = 0;
    handle_retire(r->handle);
}

static void request_cancel(stage *st, tolk_request *r) {
    tolk_instance *inst = r->inst;
    void *h = r->handle;
    request_end(r);
    if (st->kind == STAGE_MT)
        mt_of(inst)->cancel(inst->self, h);
    else
        tts_of(inst)->cancel(inst->self, h);
}

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
static void stream_fail_open(direction *d, tolk_status why);
static void on_stream_open_timeout(direction *d);
static void stream_recover(direction *d, tolk_status status, tolk_severity sev, const char *why);

static tolk_severity severity_of(tolk_status st) {
    switch (st) {
    case TOLK_E_AGAIN: return TOLK_SEV_LOW;
    case TOLK_E_TIMEOUT: return TOLK_SEV_MEDIUM;
    case TOLK_E_FATAL: return TOLK_SEV_CRITICAL;
    case TOLK_DECLINED: return TOLK_SEV_LOW;
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
        if (call_recovery(d)->failback_running) st->idx = chain_pick(st->chain);
        if (stage_inst(st)->down) {
            /* reported down since this call chose it: move to a backup */
            size_t j = chain_pick(st->chain);
            if (!st->chain->prov[j]->down) st->idx = j;
        }
        ph->pidx = st->idx;
        st->busy = ph;
        stage_issue(st);
    }
    st->pumping = 0;
    schedule_finish(d->ch);
}

static void stage_failed(stage *st, tolk_status status, tolk_severity sev, const char *why);

/* ---- the translation cache of each MT provider ---- */

static size_t cache_size(direction *d) { return (size_t)d->ch->gen->conf->core.translation_cache; }

static int mt_uses_context(tolk_instance *inst) {
    return (DESC_HAS(inst->desc, tolk_mt, mt_flags) ? mt_of(inst)->mt_flags : 0) &
           TOLK_MT_USES_CONTEXT;
}

/* Everything that changes the translation is in the key: the text, the
 * endpoint's glossary and formality, and the context when the provider
 * reads it. Fields are separated by a control character utf8_clean() never
 * leaves in a text. */
static const char *cache_key(direction *d, phrase *ph, tolk_instance *inst) {
    const char *glossary = d->ep ? d->ep->glossary : NULL, *formality = d->ep ? d->ep->formality : NULL;
    size_t nctx = mt_uses_context(inst) ? ph->ncontext : 0;
    free(ph->cache_key);
    if (!glossary && !formality && nctx == 0) {
        ph->cache_key = xstrdup(ph->text);
        return ph->cache_key;
    }
    size_t len = strlen(ph->text) + 8 + (glossary ? strlen(glossary) : 0) +
                 (formality ? strlen(formality) : 0);
    for (size_t i = 0; i < nctx; i++) len += strlen(ph->context[i]) + 1;
    char *k = xmalloc(len), *p = k;
    p += sprintf(p, "%s\x1f%s\x1f%s", ph->text, glossary ? glossary : "", formality ? formality : "");
    for (size_t i = 0; i < nctx; i++) p += sprintf(p, "\x1f%s", ph->context[i]);
    ph->cache_key = k;
    return k;
}

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

static tolk_status issue_mt(stage *st, phrase *ph, tolk_instance *inst) {
    direction *d = st->dir;
    const tolk_mt *mt = mt_of(inst);
    if (!DESC_FN(&mt->base, tolk_mt, translate_req))
        return mt->translate(inst->self, ph->req.handle, ph->text, d->from, d->to);
    int ctx = mt_uses_context(inst);
    tolk_mt_request req = {
        .size = sizeof req,
        .text = ph->text,
        .from = d->from,
        .to = d->to,
        .context = ctx ? (const char *const *)ph->context : NULL,
        .ncontext = ctx ? ph->ncontext : 0,
        .glossary = d->ep ? d->ep->glossary : NULL,
        .formality = d->ep ? d->ep->formality : NULL,
        .channel_id = d->ch->id,
        .leg = d->src,
    };
    return mt->translate_req(inst->self, ph->req.handle, &req);
}

/* A TTS plugin that honours the rate hint says so with a boolean option
 * named honour_rate (plugin.h, tolk_tts_request.rate), on unless its
 * settings turn it off. */
static int tts_honours_rate(const tolk_instance *inst) {
    const tolk_option *o = inst->desc->options;
    for (; o && o->key; o++)
        if (!strcmp(o->key, "honour_rate") && o->type == TOLK_OPT_BOOL)
            return json_is_true(json_object_get(inst->settings, "honour_rate"));
    return 0;
}

static tolk_status issue_tts(stage *st, phrase *ph, tolk_instance *inst) {
    direction *d = st->dir;
    const tolk_tts *tts = tts_of(inst);
    const char *voice = d->clone_voice ? d->clone_voice : d->voice;
    int honours = DESC_FN(&tts->base, tolk_tts, speak_req) && tts_honours_rate(inst);
    /* Running behind: the speed is asked of a TTS that honours it; for any
     * other the core time-compresses the audio when it comes (playback.c).
     * A retry after audio came keeps the phrase's speed and who makes it. */
    double rate = 1.0;
    if (!ph->has_audio) {
        ph->speed_by_tts = honours;
        ph->speed = honours ? playback_speed_for(d, ph) : 0;
        if (honours) rate = ph->speed;
    } else if (ph->speed_by_tts && honours) {
        rate = ph->speed;
    }
    if (!DESC_FN(&tts->base, tolk_tts, speak_req))
        return tts->speak(inst->self, ph->req.handle, ph->translation, d->to, voice);
    tolk_tts_request req = {
        .size = sizeof req,
        .text = ph->translation,
        .language = d->to,
        .voice = voice,
        .rate = rate,
        .channel_id = d->ch->id,
        .leg = d->src,
    };
    return tts->speak_req(inst->self, ph->req.handle, &req);
}

static void stage_declined(stage *st);

static void stage_issue(stage *st) {
    direction *d = st->dir;
    core *c = core_of(st);
    phrase *ph = st->busy;
    tolk_instance *inst = st->chain->prov[ph->pidx];
    const conf_recovery *rc = call_recovery(d);
    double now = mono_now();
    if (st->kind == STAGE_MT && ph->lad.last == TIER_NONE) {
        const char *hit = cache_lookup(c, inst, d, cache_key(d, ph, inst));
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
    ph->req.handle = handle_new(H_REQUEST, &ph->req, inst->desc);
    ph->retry_after = 0;
    start_timer(c, &st->timeout, ph->lad.last == TIER_FAILOVER ? rc->failover_timeout : rc->request_timeout);
    tolk_status s;
    if (st->kind == STAGE_MT) {
        ph->mt_inst = inst;
        if (!ph->t_mt_start) ph->t_mt_start = now;
        s = issue_mt(st, ph, inst);
    } else {
        ph->tts_inst = inst;
        ph->tts_got = 0;
        if (!ph->t_tts_start) ph->t_tts_start = now;
        s = issue_tts(st, ph, inst);
    }
    /* ph may be gone if the plugin completed inside the call: look only at
     * the stage, which lives as long as the channel */
    if (s == TOLK_PENDING || st->busy != ph || !ph->req.active) return;
    if (s == TOLK_DECLINED) {
        ev_timer_stop(c->loop, &st->timeout);
        request_end(&ph->req);
        stage_declined(st);
        return;
    }
    if (s == TOLK_OK) {
        stage_failed(st, TOLK_E_INVAL, TOLK_SEV_MEDIUM, "returned OK without completing");
        return;
    }
    stage_failed(st, s, severity_of(s), "refused the request");
}

/* "Not for me": the chain's next provider gets this request, and the one
 * that declined keeps its health. Started from a timer, as every retry. */
static void stage_declined(stage *st) {
    direction *d = st->dir;
    phrase *ph = st->busy;
    tolk_instance *inst = st->chain->prov[ph->pidx];
    size_t j = ph->pidx + 1;
    while (j < st->chain->nprov && st->chain->prov[j]->down) j++;
    if (j < st->chain->nprov) {
        log_msg(TOLK_LOG_VERB, inst->who, "%s: declined %s of phrase %u: asking %s", d->ch->id,
                stage_names[st->kind], ph->seq, st->chain->prov[j]->name);
        ph->pidx = j;
        start_timer(core_of(st), &st->retry, 0);
        return;
    }
    st->busy = NULL;
    phrase_lost(ph, stage_names[st->kind], inst, TOLK_DECLINED);
    char msg[160];
    snprintf(msg, sizeof msg, "every provider of chain '%s' declined %s->%s", st->chain->name, d->from,
             d->to);
    direction_fallback(d, msg);
}

/* The busy phrase is done at this stage. */
static void stage_succeeded(stage *st) {
    core *c = core_of(st);
    phrase *ph = st->busy;
    tolk_instance *inst = ph->req.inst;
    ev_timer_stop(c->loop, &st->timeout);
    request_end(&ph->req);
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
static tier climb(stage *st, ladder *lad, tolk_status status, tolk_severity sev, double at_least) {
    core *c = core_of(st);
    const conf_recovery *rc = call_recovery(st->dir);
    tolk_instance *inst = stage_inst(st);
    /* a provider at its configured limit is busy, not broken */
    if (status != TOLK_E_LIMIT) health_record(c, inst, 0);
    count_error(c, inst->name, error_type(status), sev);
    recovery_count(c, inst, lad->last, 0);
    tier t = recovery_next(c, rc, lad, st->chain, &st->idx, status, sev);
    lad->last = t;
    switch (t) {
    case TIER_SOFT: {
        double delay = recovery_delay(rc, lad);
        start_timer(c, &st->retry, delay > at_least ? delay : at_least);
        break;
    }
    case TIER_FAILOVER:
        start_timer(c, &st->retry, 0);
        break;
    case TIER_HARD:
        st->wait_reset = inst;
        instance_reset(c, rc, inst);
        break;
    case TIER_RESET:
        st->wait_chain = st->chain;
        chain_reset(c, rc, st->chain);
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
    /* the stage follows its request: the provider that failed is where the
     * ladder starts */
    st->idx = ph->pidx;
    tolk_instance *inst = stage_inst(st);
    ev_timer_stop(c->loop, &st->timeout);
    request_end(&ph->req);
    tier t = climb(st, &ph->lad, status, sev, ph->retry_after);
    ph->pidx = st->idx;
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
    if (st->kind == STAGE_STT) {
        if (st->dir->stream.open && !st->dir->stream.ready) on_stream_open_timeout(st->dir);
        return;
    }
    phrase *ph = st->busy;
    if (!ph || !ph->req.active) return;
    /* cancel first: after it returns the plugin will not answer */
    request_cancel(st, &ph->req);
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

void request_mt_result(tolk_request *r, const tolk_mt_result *res) {
    if (!request_live(r, "mt_result")) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    stage *st = &d->mt;
    core *c = d->ch->core;
    tolk_status status = res->status;
    if (status == TOLK_DECLINED) {
        ev_timer_stop(c->loop, &st->timeout);
        request_end(r);
        stage_declined(st);
        return;
    }
    char *clean = status == TOLK_OK && res->text ? utf8_clean(res->text, 8192) : NULL;
    if (!clean || !*clean) {
        free(clean);
        if (res->retry_after > 0) ph->retry_after = res->retry_after;
        stage_failed(st, status == TOLK_OK ? TOLK_E_BACKEND : status,
                     status == TOLK_OK ? TOLK_SEV_MEDIUM : severity_of(status),
                     status == TOLK_OK ? "empty translation" : "translation failed");
        stage_pump(st);
        return;
    }
    stage_succeeded(st);
    observe_component(c, r->inst, "translate", mono_now() - ph->t_mt_start);
    if (r->inst->mtcache && cache_size(d) && !(res->flags & TOLK_MT_NO_CACHE) && ph->cache_key)
        mtcache_put(r->inst->mtcache, cache_size(d), d->from, d->to, ph->cache_key, clean);
    mt_accept(st, ph, clean);
}

void request_mt_done(tolk_request *r, tolk_status status, const char *text) {
    tolk_mt_result res = {.size = sizeof res, .status = status, .text = text};
    request_mt_result(r, &res);
}

/* The phrase's first audio: from here on the listener waits for it. */
static void audio_begins(direction *d, phrase *ph) {
    tolk_channel *ch = d->ch;
    ph->out_pos = ch->out[d->dst].written;
    ph->mark_next = NULL;
    if (d->marks_tail)
        d->marks_tail->mark_next = ph;
    else
        d->marks_head = ph;
    d->marks_tail = ph;
}

static void spec_discard(direction *d, const char *why);

/* A speculative phrase's audio waits in the phrase. A minute of it means
 * the tentative end was no end at all. */
#define SPEC_HOLD_MAX (60 * TOLK_SAMPLE_RATE)
static void spec_hold(direction *d, phrase *ph, const int16_t *pcm, size_t n) {
    if (ph->nheld + n > SPEC_HOLD_MAX) {
        spec_discard(d, "its audio grew past a minute");
        return;
    }
    if (ph->nheld + n > ph->capheld) {
        size_t cap = ph->capheld ? ph->capheld : 16 * TOLK_FRAME_SAMPLES;
        while (cap < ph->nheld + n) cap *= 2;
        ph->held = xrealloc(ph->held, cap * sizeof *ph->held);
        ph->capheld = cap;
    }
    memcpy(ph->held + ph->nheld, pcm, n * sizeof *pcm);
    ph->nheld += n;
}

/* After translated speech was queued: a synthesiser far ahead of a live
 * call's playback must not grow it for ever, and what is due goes out. */
static void playback_settle(direction *d) {
    backlog_shed(d);
    deliver_now(d->ch, d->dst);
}

/* The synthesis of the phrase at the tail of playback is over. */
static void phrase_audio_end(direction *d) {
    playback_phrase_end(d);
    outbuf_pad(d->ch->core, &d->ch->out[d->dst]);
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
    int first = !ph->has_audio;
    if (first) {
        /* what the compressor holds of an earlier phrase that broke off
         * goes out before this phrase's start is marked */
        playback_phrase_end(d);
        ph->has_audio = 1;
        ph->t_tts_first = mono_now();
        observe_stage(d, "tts_first", ph->t_tts_first - ph->t_tts_start);
        observe_component(ch->core, r->inst, "synthesize_first", ph->t_tts_first - ph->t_tts_start);
        if (!ph->speculative) audio_begins(d, ph);
    }
    if (ph->speculative) {
        spec_hold(d, ph, pcm, n);
        return;
    }
    playback_phrase_audio(d, ph, pcm, n, first);
    playback_settle(d);
}

void request_tts_done(tolk_request *r, tolk_status status) {
    if (!request_live(r, "tts_done")) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    stage *st = &d->tts;
    tolk_channel *ch = d->ch;
    if (status == TOLK_DECLINED && !ph->has_audio) {
        ev_timer_stop(ch->core->loop, &st->timeout);
        request_end(r);
        stage_declined(st);
        return;
    }
    if (status != TOLK_OK) {
        stage_failed(st, status, severity_of(status), ph->has_audio ? "synthesis broke off" : "synthesis failed");
        stage_pump(st);
        return;
    }
    stage_succeeded(st);
    ph->t_tts_done = mono_now();
    observe_component(ch->core, r->inst, "synthesize", ph->t_tts_done - ph->t_tts_start);
    if (ph->speculative) {
        /* held until the final result says whether it was the phrase */
        stage_pump(st);
        return;
    }
    phrase_audio_end(d);
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
    /* the tentative end was this stream's; a new one will decide again */
    spec_discard(d, "the recogniser stream closed");
    s->open = 0;
    s->ready = 0;
    ev_timer_stop(d->ch->core->loop, &d->stt.timeout);
    handle_retire(s->handle);
    stt_of(s->inst)->close(s->state);
    s->state = NULL;
}

static int frame_voiced(const int16_t *f) {
    return pcm_energy(f, TOLK_FRAME_SAMPLES) > (uint64_t)VOICED_RMS * VOICED_RMS * TOLK_FRAME_SAMPLES;
}

void pipeline_replay_drop(direction *d, size_t frames) {
    if (frames > d->replay.frames) frames = d->replay.frames;
    framebuf_drop(&d->replay, frames);
    d->replay_start += (uint64_t)frames * TOLK_FRAME_SAMPLES;
    /* speech no final result covers: lost if the recogniser fails now */
    if (d->replay_voiced) d->replay_dropped += (uint64_t)frames * TOLK_FRAME_SAMPLES;
}

/* Keeps the audio a new stream would need: from the last final result on,
 * without long leading silence, at most replay_seconds; in whole frames. */

static void replay_append(direction *d, const int16_t *frame, int voiced) {
    const conf_recovery *rc = call_recovery(d);
    size_t max = (size_t)(rc->replay_seconds * TOLK_SAMPLE_RATE) / TOLK_FRAME_SAMPLES;
    /* A pull channel's input waits at the backlog bound (backlog.c), so
     * everything up to it is kept: a file fed faster than the recogniser
     * decodes loses nothing when the recogniser fails. */
    if (d->ch->flags & TOLK_CHAN_PULL) {
        size_t bound = (size_t)(backlog_bound(d->ch) / TOLK_FRAME_SAMPLES) + REPLAY_PREROLL;
        if (bound > max) max = bound;
    }
    if (max == 0) {
        d->replay_start = d->samples_in;
        return;
    }
    if (voiced) d->replay_voiced = 1;
    size_t keep = d->replay_voiced ? max : REPLAY_PREROLL;
    if (keep > max) keep = max;
    if (d->replay.frames + 1 > keep) pipeline_replay_drop(d, d->replay.frames + 1 - keep);
    framebuf_push(&d->replay, frame);
}

/* A final result covers everything up to its end: that audio will not be
 * needed again. Whole frames: the frame the result ends in is kept. */
static void replay_trim(direction *d, uint64_t upto) {
    if (upto <= d->replay_start) return;
    d->replay_voiced = 0;
    d->replay_dropped = 0; /* the result covered what fell out */
    size_t drop = (size_t)((upto - d->replay_start) / TOLK_FRAME_SAMPLES);
    if (drop > d->replay.frames) drop = d->replay.frames;
    framebuf_drop(&d->replay, drop);
    d->replay_start += (uint64_t)drop * TOLK_FRAME_SAMPLES;
}

static void stream_start(direction *d, int reopened);

static void on_stream_open_timeout(direction *d) {
    stream_recover(d, TOLK_E_TIMEOUT, TOLK_SEV_MEDIUM, "the stream did not become ready in time");
    schedule_finish(d->ch);
}

/* Opens a stream on the stage's provider. A provider that declines the
 * language hands the stream to the chain's next one, with no health
 * penalty. 0: open (maybe not ready yet); -1: *why says what failed. */
static int stream_open(direction *d, tolk_status *why) {
    tolk_stream *s = &d->stream;
    stage *st = &d->stt;
    tolk_channel *ch = d->ch;
    for (;;) {
        s->dir = d;
        s->inst = stage_inst(st);
        s->flushing = s->flushed = s->ready = 0;
        s->handle = handle_new(H_STREAM, s, s->inst->desc);
        tolk_stt_params p = {
            .size = sizeof p,
            .language = d->from,
            .sample_rate = TOLK_SAMPLE_RATE,
            .channel_id = ch->id,
            .leg = d->src,
            .target_language = d->to,
            .call_options = ch->options,
        };
        s->open = 1; /* a plugin may call back from inside open() */
        tolk_status r = stt_of(s->inst)->open(s->inst->self, s->handle, &p, &s->state);
        if (r == TOLK_OK || r == TOLK_PENDING) {
            if (!s->open) { /* it failed the stream from inside open() */
                *why = TOLK_E_BACKEND;
                return -1;
            }
            d->last_result = d->last_final = mono_now();
            if (r == TOLK_OK) {
                s->ready = 1;
            } else {
                /* the audio waits in the replay buffer until stt_ready */
                start_timer(ch->core, &st->timeout, call_recovery(d)->request_timeout);
            }
            return 0;
        }
        s->open = 0;
        handle_retire(s->handle);
        if (r != TOLK_DECLINED) {
            *why = r;
            return -1;
        }
        size_t j = st->idx + 1;
        while (j < st->chain->nprov && st->chain->prov[j]->down) j++;
        if (j >= st->chain->nprov) {
            *why = TOLK_DECLINED;
            return -1;
        }
        log_msg(TOLK_LOG_VERB, s->inst->who, "%s: declined recognising %s: asking %s", ch->id,
                d->from, st->chain->prov[j]->name);
        st->idx = j;
    }
}

static void stream_reopen(direction *d) {
    tolk_channel *ch = d->ch;
    if (ch->ending || ch->closed || !d->translate) return;
    tolk_status why = TOLK_OK;
    if (stream_open(d, &why) != 0) {
        stream_fail_open(d, why);
        return;
    }
    if (d->stream.ready) stream_start(d, 1);
}

/* The stream is ready: it hears the audio kept since the last final result
 * (the replay buffer), then the live frames. */
static void stream_start(direction *d, int reopened) {
    tolk_channel *ch = d->ch;
    core *c = ch->core;
    /* the stream starts where the kept audio starts */
    d->stream_base = d->replay_start;
    if (d->replay_dropped) {
        backlog_audio_lost(d, d->replay_dropped, "replay");
        d->replay_dropped = 0;
    }
    if (reopened || d->replay.frames)
        log_msg(TOLK_LOG_INFO, "recovery", "%s: %s->%s: stream %s on %s, replaying %.2f s of audio",
                ch->id, d->from, d->to, reopened ? "reopened" : "ready", d->stream.inst->name,
                (double)d->replay.frames * TOLK_FRAME_SECONDS);
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
        /* the frames that arrived while no stream was ready have now been heard */
        double now = mono_now();
        for (size_t k = d->unfed; k > 0; k--)
            metrics_observe(c->m.qwait[Q_INPUT],
                            (now - arrival_time(d, d->samples_in - (k - 1) * TOLK_FRAME_SAMPLES)) * 1000.0);
        queue_depth(c, Q_INPUT, -(double)d->unfed);
        d->unfed = 0;
    }
    if (d->stream.open && d->input_ended) {
        pipeline_input_end(d);
        /* the call may have been waiting only for this stream to end */
        schedule_finish(ch);
    }
}

void stream_ready(tolk_stream *s) {
    if (!s || !s->open || s->ready) return;
    direction *d = s->dir;
    s->ready = 1;
    ev_timer_stop(d->ch->core->loop, &d->stt.timeout);
    stream_start(d, d->stt.lad.last != TIER_NONE);
}

/* No stream could be opened: declined by every provider, or a failure
 * that climbs the recovery ladder. */
static void stream_fail_open(direction *d, tolk_status why) {
    if (why == TOLK_DECLINED) {
        char msg[160];
        snprintf(msg, sizeof msg, "every provider of chain '%s' declined to recognise %s",
                 d->stt.chain->name, d->from);
        direction_fallback(d, msg);
        return;
    }
    stream_recover(d, why, severity_of(why), "cannot open a stream");
}

static void stream_recover(direction *d, tolk_status status, tolk_severity sev, const char *why) {
    tolk_channel *ch = d->ch;
    stage *st = &d->stt;
    tolk_instance *inst = stage_inst(st);
    stream_close(d);
    if (ch->ending || ch->closed || !d->translate) return;
    tier t = climb(st, &st->lad, status, sev, 0);
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

/* Partial and final results are published (captions and speculative
 * translation read them); finals also go on to translation. */
static void publish_transcript(direction *d, const tolk_transcript *t, const char *text) {
    core *c = d->ch->core;
    int has12 = TOLK_HAS(t, tolk_transcript, flags);
    if (log_enabled(TOLK_LOG_DBG) && !t->is_final)
        log_msg(TOLK_LOG_DBG, "channel", "%s: partial: %s", d->ch->id, text);
    if (!c->obs.transcript) return;
    transcript_event e = {
        .channel_id = d->ch->id,
        .leg = d->src,
        .language = d->from,
        .text = text,
        .is_final = t->is_final != 0,
        .eager_end = has12 && (t->flags & TOLK_TRANSCRIPT_EAGER_END),
        .stability = has12 ? t->stability : -1,
        .start_s = (double)(d->stream_base + t->start_sample) / TOLK_SAMPLE_RATE,
        .end_s = (double)(d->stream_base + t->end_sample) / TOLK_SAMPLE_RATE,
    };
    c->obs.transcript(c->obs.ud, &e);
}

/* The direction's last phrases, for the context of later MT requests:
 * copied into a phrase when it starts, and the phrase's own text added
 * once it is final. */
static void context_copy(direction *d, phrase *ph) {
    ph->ncontext = d->ncontext;
    ph->context = ph->ncontext ? xcalloc(ph->ncontext, sizeof *ph->context) : NULL;
    for (size_t i = 0; i < ph->ncontext; i++) ph->context[i] = xstrdup(d->context[i]);
}

static void context_push(direction *d, phrase *ph) {
    size_t keep = (size_t)d->ch->gen->conf->core.mt_context;
    if (keep > ARRAY_LEN(d->context)) keep = ARRAY_LEN(d->context);
    if (keep == 0) return;
    if (d->ncontext == keep) {
        free(d->context[0]);
        memmove(d->context, d->context + 1, (keep - 1) * sizeof *d->context);
        d->ncontext--;
    }
    d->context[d->ncontext++] = xstrdup(ph->text);
}

/* ---- speculative translation (core.speculative_translation) ----
 * A recogniser's tentative end of a phrase (TOLK_TRANSCRIPT_EAGER_END, e.g.
 * Deepgram Flux's EagerEndOfTurn) starts MT and TTS for its text at once;
 * the audio is held in the phrase. A final result with the same text makes
 * it the phrase and releases the audio at once; a partial without the flag
 * (the turn resumed), a different final text, or a failing stream throws it
 * away. Nothing speculative is ever heard. */

static tolk_series *spec_series(const char *outcome) {
    tolk_metric *m = metrics_family("speculative_translations_total",
                                    "Translations started on a tentative end of phrase: outcome "
                                    "confirmed (played when the final result came) or discarded",
                                    TOLK_METRIC_COUNTER, "outcome", NULL, 0);
    return m ? metrics_series_v(m, outcome, NULL) : NULL;
}

/* pump: let the stage go on with its next phrase (not while the direction
 * is being cancelled) */
static void spec_drop(direction *d, const char *why, int pump) {
    phrase *ph = d->spec;
    if (!ph) return;
    core *c = d->ch->core;
    d->spec = NULL;
    metrics_add(spec_series("discarded"), 1);
    log_msg(TOLK_LOG_VERB, "channel", "%s: %s->%s: speculative translation dropped (%s): \"%s\"",
            d->ch->id, d->from, d->to, why, ph->text);
    stage *stages[] = {&d->mt, &d->tts};
    for (size_t i = 0; i < ARRAY_LEN(stages); i++) {
        stage *st = stages[i];
        if (st->busy == ph) {
            stage_stop_timers(st);
            if (ph->req.active) request_cancel(st, &ph->req);
            st->busy = NULL;
            phrase_free(ph);
            if (pump) stage_pump(st);
            return;
        }
        if (fifo_remove(&st->q, ph)) {
            queue_depth(c, i == 0 ? Q_MT : Q_TTS, -1);
            phrase_free(ph);
            return;
        }
    }
    phrase_free(ph); /* finished: only its held audio was left */
}

static void spec_discard(direction *d, const char *why) { spec_drop(d, why, 1); }

static void spec_start(direction *d, const tolk_transcript *t, char *text) {
    if (d->spec && !strcmp(d->spec->text, text)) {
        free(text); /* the same tentative end again */
        return;
    }
    spec_discard(d, "a new tentative end");
    core *c = d->ch->core;
    phrase *ph = xcalloc(1, sizeof *ph);
    ph->dir = d;
    ph->speculative = ph->speculated = 1;
    ph->text = text;
    ph->start_sample = d->stream_base + t->start_sample;
    ph->stt_inst = d->stream.inst;
    ph->t_speculated = ph->t_enq = mono_now();
    context_copy(d, ph);
    d->spec = ph;
    fifo_push(&d->mt.q, ph);
    queue_depth(c, Q_MT, 1);
    stage_pump(&d->mt);
}

/* The final result confirmed ph's text: it is the phrase, and what it
 * holds plays now. */
static void spec_confirm(direction *d, phrase *ph) {
    ph->speculative = 0;
    metrics_add(spec_series("confirmed"), 1);
    if (!ph->has_audio) {
        if (ph->t_tts_done) phrase_lost(ph, "tts", ph->tts_inst, TOLK_E_BACKEND);
        return; /* still at MT or TTS: it goes on like any phrase */
    }
    int16_t *held = ph->held;
    size_t n = ph->nheld;
    int done = ph->t_tts_done > 0;
    ph->held = NULL;
    ph->nheld = ph->capheld = 0;
    /* as request_tts_audio() does with a first chunk: its speed is decided
     * now, against what waits ahead of it now */
    playback_phrase_end(d);
    audio_begins(d, ph);
    playback_phrase_audio(d, ph, held, n, 1);
    free(held);
    if (done) phrase_audio_end(d);
    /* From here ph is playback's: its first frame reports it, and frees it
     * if its synthesis is over (possibly inside deliver_now()). */
    playback_settle(d);
}

void stream_result(tolk_stream *s, const tolk_transcript *t) {
    if (!s || !s->open || !t) {
        log_msg(TOLK_LOG_DBG, "channel", "result for a closed stream ignored");
        return;
    }
    direction *d = s->dir;
    core *c = d->ch->core;
    stage *st = &d->stt;
    if (t->size < offsetof(tolk_transcript, end_sample) + sizeof t->end_sample) {
        log_msg(TOLK_LOG_ERR, s->inst->who, "%s: result ignored: tolk_transcript.size %u is smaller than ABI 1.0's",
                d->ch->id, t->size);
        count_error(c, s->inst->name, "invalid", TOLK_SEV_HIGH);
        return;
    }
    ladder stt_recovered = {0};
    d->last_result = mono_now();
    char *text = utf8_clean(t->text ? t->text : "", 4096);
    publish_transcript(d, t, text);
    if (!t->is_final) {
        int eager = TOLK_HAS(t, tolk_transcript, flags) && (t->flags & TOLK_TRANSCRIPT_EAGER_END);
        if (eager && *text && d->ch->gen->conf->core.speculative_translation) {
            spec_start(d, t, text);
            return;
        }
        if (d->spec) spec_discard(d, "the phrase goes on");
        free(text);
        return;
    }
    health_record(c, s->inst, 1);
    d->last_final = d->last_result;
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
    d->finalize_asked = 0;
    phrase *ph = NULL;
    if (d->spec) {
        if (!strcmp(d->spec->text, text)) {
            ph = d->spec;
            d->spec = NULL;
            free(text);
        } else {
            spec_discard(d, "the final text differs");
        }
    }
    if (!ph) {
        if (!*text) {
            free(text);
            return;
        }
        ph = xcalloc(1, sizeof *ph);
        ph->dir = d;
        ph->text = text;
        context_copy(d, ph);
    }
    ph->seq = ++d->next_seq;
    ph->start_sample = d->stream_base + t->start_sample;
    ph->end_sample = end;
    /* Latency runs from the end of the speech: a result whose window runs
     * on into the silence the recogniser waited for would hide that wait. */
    uint64_t speech_end = end;
    if (d->voiced_end > ph->start_sample && d->voiced_end < end) speech_end = d->voiced_end;
    ph->t_speech_end = arrival_time(d, speech_end);
    ph->t_stt_final = mono_now();
    ph->stt_inst = s->inst;
    context_push(d, ph);
    if (stt_recovered.last != TIER_NONE) note_recovery(c, ph, STAGE_STT, &stt_recovered, s->inst);
    observe_stage(d, "stt", ph->t_stt_final - ph->t_speech_end);
    observe_component(c, s->inst, "recognize", ph->t_stt_final - ph->t_speech_end);
    metrics_observe(c->m.qwait[Q_STT], (ph->t_stt_final - ph->t_speech_end) * 1000.0);
    metrics_add(c->m.words_s, (double)count_words(ph->text));
    ph->backlog = ph->end_sample > ph->start_sample ? ph->end_sample - ph->start_sample : 0;
    d->phrase_samples += ph->backlog;
    if (ph->speculative) {
        spec_confirm(d, ph);
    } else {
        ph->t_enq = ph->t_stt_final;
        fifo_push(&d->mt.q, ph);
        queue_depth(c, Q_MT, 1);
        stage_pump(&d->mt);
    }
    /* A phrase boundary is where a running call can go back to a recovered
     * primary: the stream is replaced from a timer, outside the plugin's
     * callback, and the new one hears the audio kept since this result. */
    if (call_recovery(d)->failback_running && s->open && !d->input_ended &&
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

/* ---- voice cloning: the speaker's first seconds, lent to the TTS ---- */

static void clone_collect(direction *d, const int16_t *frame, int voiced) {
    if (!d->ep || !d->ep->clone_voice || d->clone_state != 0 || !voiced || !d->tts.chain) return;
    tolk_instance *tts = d->tts.chain->prov[d->tts.idx];
    const tolk_tts *desc = tts_of(tts);
    if (!DESC_FN(&desc->base, tolk_tts, voice_sample)) {
        d->clone_state = -1;
        return;
    }
    size_t want = (size_t)(d->ep->clone_seconds * TOLK_SAMPLE_RATE);
    if (!d->clone_pcm) {
        d->clone_cap = want;
        d->clone_pcm = xmalloc(want * sizeof(int16_t));
    }
    size_t take = want - d->clone_n < TOLK_FRAME_SAMPLES ? want - d->clone_n : TOLK_FRAME_SAMPLES;
    memcpy(d->clone_pcm + d->clone_n, frame, take * sizeof(int16_t));
    d->clone_n += take;
    if (d->clone_n < want) return;
    char name[160];
    snprintf(name, sizeof name, "clone:%s:%c", d->ch->id, d->src == TOLK_LEG_A ? 'a' : 'b');
    tolk_voice_sample vs = {.size = sizeof vs, .voice = name, .pcm = d->clone_pcm, .n = d->clone_n,
                            .language = d->from};
    tolk_status r = desc->voice_sample(tts->self, &vs);
    free(d->clone_pcm);
    d->clone_pcm = NULL;
    d->clone_cap = 0;
    if (r == TOLK_OK) {
        d->clone_state = 1;
        d->clone_voice = xstrdup(name);
        log_msg(TOLK_LOG_INFO, tts->who, "%s: cloning %s's voice from %.1f s of speech as %s", d->ch->id,
                d->src == TOLK_LEG_A ? "A" : "B", (double)d->clone_n / TOLK_SAMPLE_RATE, name);
    } else {
        d->clone_state = -1;
        log_msg(TOLK_LOG_VERB, tts->who, "%s: voice sample declined", d->ch->id);
    }
}

/* A phrase that goes on past max_phrase_seconds is cut: the recogniser is
 * asked for a final result now, so the listener does not wait for the
 * speaker to pause. */
static void maybe_finalize(direction *d) {
    double max = d->ch->gen->conf->core.max_phrase_seconds;
    if (max <= 0 || d->finalize_asked || !d->speech_since || !d->stream.open || !d->stream.ready) return;
    if (d->samples_in - d->speech_start < (uint64_t)(max * TOLK_SAMPLE_RATE)) return;
    const tolk_stt *stt = stt_of(d->stream.inst);
    if (!DESC_FN(&stt->base, tolk_stt, finalize)) return;
    log_msg(TOLK_LOG_INFO, "channel", "%s: %s->%s: phrase longer than %.0f s: finalising", d->ch->id,
            d->from, d->to, max);
    /* the next cut is max_phrase_seconds later, whenever this final comes */
    d->speech_start = d->samples_in;
    tolk_status st = stt->finalize(d->stream.state);
    if (st == TOLK_DECLINED) d->finalize_asked = 1; /* it cannot: wait for the pause */
    if (st < 0 && d->stream.open) stream_recover(d, st, severity_of(st), "finalize failed");
}

/* now: mono_now() when the frame was handed in (read once per delivery). */
void pipeline_frame(direction *d, const int16_t *frame, double now) {
    core *c = d->ch->core;
    int voiced = frame_voiced(frame);
    if (voiced) {
        d->voiced_end = d->samples_in;
        playback_talking(d);
    }
    replay_append(d, frame, voiced);
    clone_collect(d, frame, voiced);
    if (voiced && !d->speech_since) {
        d->speech_since = now;
        d->speech_start = d->samples_in - TOLK_FRAME_SAMPLES;
        queue_depth(c, Q_STT, 1);
    }
    if (!d->stream.open || !d->stream.ready) {
        /* recovering, or the stream is being set up: the frame waits in the
         * replay buffer, which keeps at most replay_seconds; what falls out
         * of it is not heard */
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
    maybe_finalize(d);
    if (d->speech_since) pipeline_check_stall(d, now); /* nothing to check in silence */
}

void pipeline_check_stall(direction *d, double now) {
    /* a recogniser that hears speech and says nothing for this long hangs */
    double since = d->speech_since > d->last_result ? d->speech_since : d->last_result;
    if (d->speech_since && d->stream.open &&
        now - since > call_recovery(d)->stt_timeout) {
        d->speech_since = now;
        stream_recover(d, TOLK_E_TIMEOUT, TOLK_SEV_MEDIUM, "no result for speech");
    }
}

void pipeline_input_end(direction *d) {
    if (!d->stream.open || !d->stream.ready) return;
    const tolk_stt *stt = stt_of(d->stream.inst);
    tolk_status st = DESC_FN(&stt->base, tolk_stt, flush) ? stt->flush(d->stream.state) : TOLK_OK;
    if (st == TOLK_PENDING)
        d->stream.flushing = 1;
    else
        d->stream.flushed = 1;
}

/* host->report() marked inst down: the streams it serves move to a backup
 * now (deferred to the loop: the plugin is inside its report() call). */
static void on_instance_down(struct ev_loop *loop, ev_timer *w, int revents);

typedef struct down_note {
    ev_timer timer;
    core *c;
    tolk_instance *inst;
    tolk_status st;
    tolk_severity sev;
} down_note;

void pipeline_instance_down(core *c, tolk_instance *inst, tolk_status st, tolk_severity sev,
                            const char *why) {
    if (inst->desc->kind != TOLK_KIND_STT) return; /* MT/TTS move at their next request */
    down_note *n = xcalloc(1, sizeof *n);
    n->c = c;
    n->inst = inst;
    n->st = st == TOLK_OK ? TOLK_E_BACKEND : st;
    n->sev = sev;
    inst->refs++; /* kept alive until the note runs */
    ev_timer_init(&n->timer, on_instance_down, 0., 0.);
    ev_timer_start(c->loop, &n->timer);
}

static void on_instance_down(struct ev_loop *loop, ev_timer *w, int revents) {
    down_note *n = CONTAINER_OF(w, down_note, timer);
    for (tolk_channel *chan = n->c->channels; chan; chan = chan->next) {
        if (chan->ending || chan->closed) continue;
        for (int i = 0; i < 2; i++) {
            direction *d = &chan->dir[i];
            if (d->translate && d->stream.open && d->stream.inst == n->inst) {
                stream_recover(d, n->st, n->sev, "the provider reported trouble");
                schedule_finish(chan);
            }
        }
    }
    instance_unref(n->inst);
    free(n);
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
    if (stream_open(d, &why) != 0)
        stream_fail_open(d, why);
    else if (d->stream.ready)
        stream_start(d, 0);
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
    spec_drop(d, "the direction is cancelled", 0);
    stream_close(d);
    stage *stages[] = {&d->stt, &d->mt, &d->tts};
    for (size_t i = 0; i < ARRAY_LEN(stages); i++) {
        stage *st = stages[i];
        stage_stop_timers(st);
        st->wait_reset = NULL;
        st->wait_chain = NULL;
        if (st->busy && st->busy->req.active) request_cancel(st, &st->busy->req);
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
        /* a stream being recovered still owes the end of the input (a retry
         * due now is pending, no longer active, until its callback runs) */
        if (d->input_ended && !d->stream.open &&
            (ev_is_active(&d->stt.retry) || ev_is_pending(&d->stt.retry) || d->stt.wait_reset ||
             d->stt.wait_chain))
            return 0;
    }
    if (d->mt.q.head || d->mt.busy || d->tts.q.head || d->tts.busy || d->marks_head) return 0;
    return 1;
}

void pipeline_free(direction *d) {
    for (size_t i = 0; i < d->ncontext; i++) free(d->context[i]);
    d->ncontext = 0;
    free(d->clone_pcm);
    d->clone_pcm = NULL;
    free(d->clone_voice);
    d->clone_voice = NULL;
}
