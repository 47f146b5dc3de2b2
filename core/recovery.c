/* The recovery hierarchy (spec: "Recovery hierarchy"): per-instance health
 * from the outcomes of its operations, and the ladder an operation climbs
 * when it fails:
 *   1 soft     retry on the same provider, exponential backoff with jitter
 *   2 hard     reset() the provider (with a timeout), then retry it
 *   3 failover move to the chain's next provider; the failed one is "down"
 *              for new calls until its health() says it is well again
 *   4 reset    reset every provider of the chain, at most once per cooldown,
 *              then start again from the primary
 * When every tier is spent the direction falls back to passthrough
 * (pipeline.c): the caller is heard untranslated, never silence.
 * Plugins know nothing of this; the core replays what it kept (audio since
 * the last final result, the text of a request) to the provider it moves to. */
#include <math.h>
#include <string.h>

#include "core.h"
#include "log.h"
#include "metrics.h"

const char *const tier_names[] = {"none", "soft", "hard", "failover", "reset"};
static const char *const health_names[] = {"HEALTHY", "DEGRADED", "UNHEALTHY", "FAILED"};

const conf_recovery *recovery_conf(core *c) { return &c->gen->conf->recovery; }

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rand01(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

double recovery_delay(const conf_recovery *rc, const ladder *lad) {
    double d = rc->soft_delay * pow(rc->backoff, lad->soft > 0 ? lad->soft - 1 : 0);
    return d * (1.0 + rc->jitter * (2.0 * rand01() - 1.0));
}

static void publish_health(core *c, tolk_instance *inst, double rate) {
    if (!inst->health_s) {
        inst->health_s = metrics_series_v(c->m.health, inst->name, NULL);
        inst->success_s = metrics_series_v(c->m.success, inst->name, NULL);
    }
    metrics_set(inst->health_s, (double)inst->health);
    if (rate >= 0) metrics_set(inst->success_s, rate);
}

/* Success rate over the window: the last window_operations outcomes that
 * are no older than window_seconds. -1 when the window is empty. */
static double window_rate(core *c, tolk_instance *inst, size_t *n_out) {
    const conf_recovery *rc = recovery_conf(c);
    health_track *h = &inst->track;
    double now = mono_now();
    size_t n = 0, ok = 0, max = (size_t)rc->window_operations;
    for (size_t i = 0; i < h->n && n < max; i++) {
        size_t k = (h->head + HEALTH_RING - 1 - i) % HEALTH_RING;
        if (now - h->t[k] > rc->window_seconds) break;
        n++;
        ok += h->ok[k];
    }
    *n_out = n;
    return n ? (double)ok / (double)n : -1;
}

static void update_health(core *c, tolk_instance *inst, tolk_health plugin_view) {
    const conf_recovery *rc = recovery_conf(c);
    size_t n;
    double rate = window_rate(c, inst, &n);
    tolk_health h = TOLK_HEALTHY;
    if (inst->track.ops >= (uint64_t)rc->min_operations && rate >= 0) {
        h = rate >= 0.95 ? TOLK_HEALTHY : rate >= 0.8 ? TOLK_DEGRADED : rate >= 0.5 ? TOLK_UNHEALTHY
                                                                                   : TOLK_FAILED;
    }
    if (plugin_view > h) h = plugin_view;
    if (inst->down) h = TOLK_FAILED;
    if (h != inst->health)
        log_msg(h > inst->health ? TOLK_LOG_WARN : TOLK_LOG_INFO, inst->who, "health %s -> %s%s",
                health_names[inst->health], health_names[h], inst->down ? " (failed over from)" : "");
    inst->health = h;
    publish_health(c, inst, rate);
}

void health_record(core *c, tolk_instance *inst, int ok) {
    health_track *h = &inst->track;
    h->t[h->head] = mono_now();
    h->ok[h->head] = ok ? 1 : 0;
    h->head = (h->head + 1) % HEALTH_RING;
    if (h->n < HEALTH_RING) h->n++;
    h->ops++;
    if (!ok) h->failures++;
    update_health(c, inst, TOLK_HEALTHY);
}

size_t chain_pick(chain *ch) {
    for (size_t i = 0; i < ch->nprov; i++)
        if (!ch->prov[i]->down) return i;
    return 0;
}

static int chain_resettable(const chain *ch) {
    for (size_t i = 0; i < ch->nprov; i++)
        if (ch->prov[i]->desc->reset) return 1;
    return 0;
}

tier recovery_next(core *c, const conf_recovery *rc, ladder *lad, chain *ch, size_t *idx,
                   tolk_status st, tolk_severity sev) {
    tolk_instance *inst = ch->prov[*idx];
    double now = mono_now();
    if (lad->t_fail == 0) {
        lad->t_fail = now;
        lad->failed = inst;
    }
    if (st == TOLK_E_INVAL) return TIER_NONE; /* the request itself is wrong */
    /* a bad key or a spent quota: retrying or resetting cannot help */
    int permanent = sev == TOLK_SEV_PERMANENT || inst->permanent;
    int transient = st == TOLK_E_AGAIN || st == TOLK_E_TIMEOUT || st == TOLK_E_BACKEND ||
                    st == TOLK_E_LIMIT || st == TOLK_E_NOMEM;
    if (!permanent && transient && sev < TOLK_SEV_CRITICAL && lad->soft < rc->soft_retries) {
        lad->soft++;
        return TIER_SOFT;
    }
    if (!permanent && st != TOLK_DECLINED && rc->hard_reset && !lad->hard && inst->desc->reset) {
        lad->hard = 1;
        return TIER_HARD;
    }
    for (size_t j = *idx + 1; j < ch->nprov; j++) {
        if (ch->prov[j]->down) continue;
        inst->down = 1;
        update_health(c, inst, TOLK_HEALTHY);
        log_msg(TOLK_LOG_WARN, inst->who, "failing over to %s (chain %s); new calls avoid %s until it is healthy",
                ch->prov[j]->name, ch->name, inst->name);
        *idx = j;
        lad->failovers++;
        return TIER_FAILOVER;
    }
    if (permanent) {
        inst->permanent = 1;
        if (!inst->down) {
            inst->down = 1;
            update_health(c, inst, TOLK_HEALTHY);
        }
        return TIER_NONE;
    }
    if (!lad->reset && chain_resettable(ch) &&
        (ch->resetting || ch->last_reset == 0 || now - ch->last_reset >= rc->reset_cooldown)) {
        lad->reset = 1;
        *idx = 0;
        return TIER_RESET;
    }
    return TIER_NONE;
}

void recovery_count(core *c, tolk_instance *inst, tier t, int success) {
    if (t == TIER_NONE) return;
    metrics_add(metrics_series_v(c->m.recoveries, inst ? inst->name : "?", tier_names[t],
                                 success ? "true" : "false", NULL),
                1);
}

/* ---- resets (tiers 2 and 4) ---- */

static chain *find_resetting_chain(core *c, tolk_instance *inst);

static void reset_finish(tolk_instance *inst, tolk_status st) {
    core *c = inst->core;
    ev_timer_stop(c->loop, &inst->reset_timer);
    inst->resetting = 0;
    inst->reset_ok = st == TOLK_OK;
    if (inst->reset_ok) {
        /* a fresh start: its error history and health are cleared */
        memset(&inst->track, 0, sizeof inst->track);
        inst->down = 0;
        inst->permanent = 0;
        inst->health = TOLK_HEALTHY;
        publish_health(c, inst, 1.0);
        log_msg(TOLK_LOG_INFO, inst->who, "reset done");
    } else {
        log_msg(TOLK_LOG_ERR, inst->who, "reset failed (%s)", st == TOLK_E_TIMEOUT ? "timeout" : "error");
    }
    chain *ch = find_resetting_chain(c, inst);
    if (ch) {
        if (!inst->reset_ok) ch->reset_failed = 1;
        if (--ch->resetting == 0) {
            log_msg(TOLK_LOG_WARN, "recovery", "provider set '%s' reset %s", ch->name,
                    ch->reset_failed ? "with failures" : "done");
            if (c->on_reset_done) c->on_reset_done(c, NULL, ch);
        }
    }
    if (c->on_reset_done) c->on_reset_done(c, inst, NULL);
}

static void on_reset_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_instance *inst = CONTAINER_OF(w, tolk_instance, reset_timer);
    /* either the deferred end of a reset that finished at once, or the
     * hard timeout of one that did not */
    reset_finish(inst, inst->reset_ok ? TOLK_OK : TOLK_E_TIMEOUT);
}

void instance_reset_done(tolk_instance *inst, tolk_status st) {
    if (!inst || !inst->resetting) return;
    inst->reset_ok = st == TOLK_OK;
    /* finish from the loop, never inside the plugin's own call */
    ev_timer_stop(inst->core->loop, &inst->reset_timer);
    ev_timer_set(&inst->reset_timer, 0., 0.);
    ev_timer_start(inst->core->loop, &inst->reset_timer);
}

void instance_reset(core *c, const conf_recovery *rc, tolk_instance *inst) {
    if (inst->resetting) return;
    inst->resetting = 1;
    ev_init(&inst->reset_timer, on_reset_timer);
    if (!inst->desc->reset) {
        inst->reset_ok = 0;
        ev_timer_set(&inst->reset_timer, 0., 0.);
        ev_timer_start(c->loop, &inst->reset_timer);
        return;
    }
    log_msg(TOLK_LOG_WARN, inst->who, "resetting");
    inst->reset_ok = 0;
    tolk_status st = inst->desc->reset(inst->self);
    if (!inst->resetting || ev_is_active(&inst->reset_timer)) return; /* reset_done came inside */
    if (st == TOLK_PENDING) {
        ev_timer_set(&inst->reset_timer, rc->hard_timeout, 0.);
    } else {
        inst->reset_ok = st == TOLK_OK;
        ev_timer_set(&inst->reset_timer, 0., 0.);
    }
    ev_timer_start(c->loop, &inst->reset_timer);
}

/* Chains under a full reset, so an instance's reset can be counted
 * against its chain. Few and short-lived: a small list. */
static ptr_vec g_resetting_chains;

static chain *find_resetting_chain(core *c, tolk_instance *inst) {
    for (size_t i = 0; i < g_resetting_chains.n; i++) {
        chain *ch = g_resetting_chains.v[i];
        for (size_t p = 0; p < ch->nprov; p++)
            if (ch->prov[p] == inst && ch->resetting > 0) {
                if (ch->resetting == 1) ptr_vec_remove(&g_resetting_chains, ch);
                return ch;
            }
    }
    return NULL;
}

void recovery_forget_chain(chain *ch) { ptr_vec_remove(&g_resetting_chains, ch); }

void chain_reset(core *c, const conf_recovery *rc, chain *ch) {
    if (ch->resetting) return;
    ch->last_reset = mono_now();
    ch->reset_failed = 0;
    log_msg(TOLK_LOG_WARN, "recovery",
            "EVENT provider set '%s' is being reset (tier 4); the next full reset is allowed in %.0f s",
            ch->name, rc->reset_cooldown);
    ch->resetting = (int)ch->nprov;
    ptr_vec_push(&g_resetting_chains, ch);
    for (size_t i = 0; i < ch->nprov; i++) {
        tolk_instance *inst = ch->prov[i];
        inst->down = 0;
        if (inst->resetting) continue; /* its end will count for this chain */
        instance_reset(c, rc, inst);
    }
}

/* ---- trouble reported outside any request (host->report) ---- */

void instance_report(core *c, tolk_instance *inst, tolk_status st, tolk_severity sev,
                     const char *why) {
    if ((int)sev < 0 || sev > TOLK_SEV_PERMANENT) sev = TOLK_SEV_MEDIUM;
    tolk_kind kind = inst->desc->kind;
    int provider = kind == TOLK_KIND_STT || kind == TOLK_KIND_MT || kind == TOLK_KIND_TTS;
    int serious = sev >= TOLK_SEV_HIGH || st == TOLK_E_FATAL;
    log_msg(serious ? TOLK_LOG_ERR : TOLK_LOG_WARN, inst->who, "reported trouble (%s): %s",
            sev == TOLK_SEV_PERMANENT ? "permanent" : "transient", why ? why : "");
    count_error(c, inst->name, "reported", sev);
    if (!provider) return;
    /* it counts as a failed operation, so the success rate sees it */
    health_record(c, inst, 0);
    if (sev == TOLK_SEV_PERMANENT) inst->permanent = 1;
    if (!serious || inst->down) return;
    inst->down = 1;
    update_health(c, inst, TOLK_HEALTHY);
    log_msg(TOLK_LOG_WARN, inst->who,
            "marked down: new calls avoid it, running calls move to a backup at their next "
            "request, until it is healthy again");
    if (c->on_instance_down) c->on_instance_down(c, inst, st, sev, why);
}

/* ---- health probes ---- */

static void on_health(struct ev_loop *loop, ev_timer *w, int revents) {
    core *c = CONTAINER_OF(w, core, health_timer);
    if (!c->gen) return;
    for (size_t i = 0; i < c->gen->instances.n; i++) {
        tolk_instance *inst = c->gen->instances.v[i];
        tolk_health pv = TOLK_HEALTHY;
        if (inst->desc->health) pv = inst->desc->health(inst->self, NULL);
        if (inst->down && inst->desc->health && pv == TOLK_HEALTHY && !inst->resetting) {
            inst->down = 0;
            inst->permanent = 0;
            log_msg(TOLK_LOG_INFO, inst->who, "healthy again: new calls use it again");
        }
        update_health(c, inst, pv);
    }
    w->repeat = recovery_conf(c)->health_interval;
    ev_timer_again(loop, w);
}

void recovery_init(core *c) {
    /* the first probe comes soon; then every health_interval of the
     * configuration in force */
    ev_init(&c->health_timer, on_health);
    c->health_timer.repeat = 0.1;
    ev_timer_again(c->loop, &c->health_timer);
    ev_unref(c->loop);
}

void recovery_stop(core *c) {
    if (ev_is_active(&c->health_timer)) {
        ev_ref(c->loop);
        ev_timer_stop(c->loop, &c->health_timer);
    }
    ptr_vec_free(&g_resetting_chains);
}
