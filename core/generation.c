/* Generations of configuration: build, share unchanged instances, release. */
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "http.h"
#include "log.h"
#include "mtcache.h"
#include "ws.h"

static const char *status_name(tolk_status st) {
    switch (st) {
    case TOLK_OK: return "ok";
    case TOLK_PENDING: return "pending";
    case TOLK_DECLINED: return "declined";
    case TOLK_E_INVAL: return "invalid";
    case TOLK_E_AGAIN: return "try again";
    case TOLK_E_BACKEND: return "backend failure";
    case TOLK_E_TIMEOUT: return "timeout";
    case TOLK_E_FATAL: return "fatal";
    case TOLK_E_LIMIT: return "limit reached";
    case TOLK_E_NOMEM: return "out of memory";
    }
    return "unknown status";
}

tolk_instance *instance_new(core *c, const conf_instance *ci, conf_errors *errs) {
    tolk_instance *inst = xcalloc(1, sizeof *inst);
    inst->core = c;
    inst->name = xstrdup(ci->name);
    inst->desc = ci->lp->desc;
    snprintf(inst->who, sizeof inst->who, "%s/%s", inst->desc->name, ci->name);
    inst->settings = json_incref(ci->settings);
    tolk_status st = loader_process_load(ci->lp, &c->host);
    if (st != TOLK_OK) {
        conf_error(errs, ci->file, ci->line, "instance '%s': plugin %s refused to set itself up in this process",
                   ci->name, inst->desc->name);
        errs->runtime = 1;
        json_decref(inst->settings);
        free(inst->name);
        free(inst);
        return NULL;
    }
    st = inst->desc->create(&c->host, inst, inst->settings, &inst->self);
    if (st != TOLK_OK) {
        conf_error(errs, ci->file, ci->line, "instance '%s' (plugin %s) failed to start: %s",
                   ci->name, inst->desc->name, status_name(st));
        errs->runtime = 1;
        json_decref(inst->settings);
        free(inst->name);
        free(inst);
        return NULL;
    }
    inst->refs = 1;
    log_msg(TOLK_LOG_VERB, inst->who, "created");
    return inst;
}

void instance_unref(tolk_instance *inst) {
    if (!inst || --inst->refs > 0) return;
    if (ev_is_active(&inst->reset_timer)) ev_timer_stop(inst->core->loop, &inst->reset_timer);
    if (inst->desc->kind == TOLK_KIND_TRANSPORT && inst->started)
        ((const tolk_transport *)inst->desc)->stop(inst->self);
    inst->desc->destroy(inst->self);
    http_forget_instance(inst);
    ws_forget_instance(inst);
    size_t nio = loop_io_stop_all(&inst->ios);
    if (nio)
        log_msg(TOLK_LOG_WARN, inst->who, "destroyed with %zu io watcher(s) still running: stopped", nio);
    log_msg(TOLK_LOG_VERB, inst->who, "destroyed");
    json_decref(inst->settings);
    mtcache_free(inst->mtcache);
    free(inst->name);
    free(inst);
}

static tolk_instance *find_reusable(const generation *prev, const conf_instance *ci) {
    for (size_t i = 0; prev && i < prev->instances.n; i++) {
        tolk_instance *inst = prev->instances.v[i];
        if (!strcmp(inst->name, ci->name) && inst->desc == ci->lp->desc &&
            json_equal(inst->settings, ci->settings))
            return inst;
    }
    return NULL;
}

static tolk_instance *gen_instance(const generation *g, const char *name) {
    for (size_t i = 0; i < g->instances.n; i++) {
        tolk_instance *inst = g->instances.v[i];
        if (!strcmp(inst->name, name)) return inst;
    }
    return NULL;
}

static void generation_free(generation *g) {
    for (size_t i = 0; i < g->nchains; i++) {
        recovery_forget_chain(&g->chains[i]);
        free(g->chains[i].prov);
        free(g->chains[i].name);
    }
    free(g->chains);
    for (size_t i = 0; i < g->instances.n; i++) instance_unref(g->instances.v[i]);
    ptr_vec_free(&g->instances);
    conf_free(g->conf);
    free(g);
}

generation *generation_build(core *c, conf_set *cs, const generation *prev, conf_errors *errs) {
    generation *g = xcalloc(1, sizeof *g);
    g->id = ++c->next_gen_id;
    g->refs = 1;
    g->conf = cs;
    size_t before = errs->msgs.n;
    for (size_t i = 0; i < cs->instances.n; i++) {
        const conf_instance *ci = cs->instances.v[i];
        if (c->skip_metrics && ci->lp->desc->kind == TOLK_KIND_METRICS) continue;
        tolk_instance *inst = find_reusable(prev, ci);
        if (inst) {
            inst->refs++;
            log_msg(TOLK_LOG_VERB, inst->who, "settings unchanged: kept");
        } else {
            inst = instance_new(c, ci, errs);
        }
        if (inst) ptr_vec_push(&g->instances, inst);
    }
    g->nchains = cs->chains.n;
    g->chains = xcalloc(g->nchains ? g->nchains : 1, sizeof(chain));
    for (size_t i = 0; i < g->nchains; i++) {
        const conf_chain *cc = cs->chains.v[i];
        chain *ch = &g->chains[i];
        ch->name = xstrdup(cc->name);
        ch->kind = cc->kind;
        ch->conf = cc;
        ch->prov = xcalloc(cc->providers.n ? cc->providers.n : 1, sizeof(tolk_instance *));
        for (size_t p = 0; p < cc->providers.n; p++) {
            tolk_instance *inst = gen_instance(g, cc->providers.v[p]);
            if (inst) ch->prov[ch->nprov++] = inst;
        }
    }
    if (errs->msgs.n != before) {
        generation_free(g);
        return NULL;
    }
    return g;
}

void generation_ref(generation *g) { g->refs++; }

void generation_unref(generation *g) {
    if (g && --g->refs == 0) {
        log_msg(TOLK_LOG_VERB, "core", "configuration generation %u released", g->id);
        generation_free(g);
    }
}

static int list_has(const ptr_vec *pv, const char *s) {
    for (size_t i = 0; i < pv->n; i++)
        if (!strcmp(pv->v[i], s)) return 1;
    return 0;
}

chain *generation_route(generation *g, tolk_kind kind, const char *from, const char *to) {
    char pair[80];
    snprintf(pair, sizeof pair, "%s-%s", from, to);
    for (size_t i = 0; i < g->nchains; i++) {
        chain *ch = &g->chains[i];
        if (ch->kind != kind || ch->nprov == 0) continue;
        const conf_chain *cc = ch->conf;
        if (kind == TOLK_KIND_STT && cc->languages.n && !list_has(&cc->languages, from)) continue;
        if (kind == TOLK_KIND_TTS && cc->languages.n && !list_has(&cc->languages, to)) continue;
        if (kind == TOLK_KIND_MT && cc->pairs.n && !list_has(&cc->pairs, pair)) continue;
        return ch;
    }
    return NULL;
}
