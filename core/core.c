/* The core object, the top of core/ (core.h lists the layers): the loop
 * and its signals, loading and reloading conf.d into generations, starting
 * transports, and shutdown with drain. */
#include "core.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "metrics.h"
#include "ws.h"

static void on_uptime(struct ev_loop *loop, ev_timer *w, int revents) {
    core *c = CONTAINER_OF(w, core, uptime_timer);
    metrics_set(c->m.uptime_s, mono_now() - c->started);
}

core *core_new(const char *confdir, const char *plugin_path) {
    core *c = xcalloc(1, sizeof *c);
    c->loop = EV_DEFAULT;
    if (ev_version_major() != EV_VERSION_MAJOR || ev_version_minor() < EV_VERSION_MINOR)
        log_msg(TOLK_LOG_WARN, "core", "libev %d.%d at run time, built with %d.%d",
                ev_version_major(), ev_version_minor(), EV_VERSION_MAJOR, EV_VERSION_MINOR);
    c->confdir = xstrdup(confdir);
    c->plugin_path = xstrdup(plugin_path);
    c->started = mono_now();
    c->log_level_override = -1;
    playback_init(c);
    c->on_reset_done = channel_resume_after_reset;
    c->on_instance_down = pipeline_instance_down;
    host_init(c, &c->host);
    core_metrics_init(c);
    recovery_init(c);
    ev_timer_init(&c->uptime_timer, on_uptime, 0., 1.);
    ev_timer_start(c->loop, &c->uptime_timer);
    ev_unref(c->loop);
    return c;
}

/* The command line's -l wins over core.log_level, also across reloads. */
static void apply_log_level(core *c, const conf_set *cs) {
    log_set_level((tolk_log_level)(c->log_level_override >= 0 ? c->log_level_override
                                                              : cs->core.log_level));
}

static void log_errors(const conf_errors *errs) {
    for (size_t i = 0; i < errs->msgs.n; i++) log_msg(TOLK_LOG_ERR, "config", "%s", (char *)errs->msgs.v[i]);
}

int core_apply(core *c, conf_set *cs, conf_errors *errs) {
    if (!c->workers) c->workers = workers_start(c->loop, (unsigned)cs->core.workers);
    generation *g = generation_build(c, cs, c->gen, errs);
    if (!g) return -1;
    generation *old = c->gen;
    c->gen = g;
    if (old) generation_unref(old);
    return 0;
}

int core_load(core *c) {
    conf_errors errs = {0};
    conf_set *cs = conf_load_dir(c->confdir, c->plugin_path, &errs);
    int rc = -1;
    if (cs) {
        apply_log_level(c, cs);
        rc = core_apply(c, cs, &errs);
    }
    if (rc) log_errors(&errs);
    conf_errors_free(&errs);
    if (rc == 0)
        log_msg(TOLK_LOG_INFO, "config", "loaded %s: %zu instances, %zu chains (generation %u)",
                c->confdir, c->gen->instances.n, c->gen->nchains, c->gen->id);
    return rc;
}

tolk_status instance_start_transport(tolk_instance *inst) {
    if (inst->desc->kind != TOLK_KIND_TRANSPORT || inst->started) return TOLK_OK;
    tolk_status st = ((const tolk_transport *)inst->desc)->start(inst->self);
    if (st == TOLK_OK) {
        inst->started = 1;
        log_msg(TOLK_LOG_INFO, inst->who, "accepting calls");
    } else {
        log_msg(TOLK_LOG_ERR, inst->who, "failed to start (%d)", (int)st);
    }
    return st;
}

int core_start_transports(core *c) {
    int rc = 0;
    c->daemon_transports = 1;
    for (size_t i = 0; c->gen && i < c->gen->instances.n; i++)
        if (instance_start_transport(c->gen->instances.v[i]) != TOLK_OK) rc = -1;
    return rc;
}

static int gen_holds(const generation *g, const tolk_instance *inst) {
    for (size_t i = 0; g && i < g->instances.n; i++)
        if (g->instances.v[i] == inst) return 1;
    return 0;
}

/* The loop's half of a reload: build the generation from what was read
 * (plugins' create() runs here, on the loop thread) and swap it in. */
static int reload_apply(core *c, conf_set *cs, conf_errors *errs, double read_s) {
    generation *g = cs ? generation_build(c, cs, c->gen, errs) : NULL;
    if (!g) {
        log_errors(errs);
        log_msg(TOLK_LOG_ERR, "config",
                "reload rejected (%zu error%s): still running on generation %u", errs->msgs.n,
                errs->msgs.n == 1 ? "" : "s", c->gen ? c->gen->id : 0);
        metrics_add(metrics_series_v(c->m.reloads, "rejected", NULL), 1);
        return -1;
    }
    generation *old = c->gen;
    size_t kept = 0, created = 0;
    for (size_t i = 0; i < g->instances.n; i++) {
        if (gen_holds(old, g->instances.v[i]))
            kept++;
        else
            created++;
    }
    /* Transports the new configuration dropped stop taking calls now; their
     * running calls keep the old generation, and with it the transport. */
    for (size_t i = 0; old && i < old->instances.n; i++) {
        tolk_instance *inst = old->instances.v[i];
        if (inst->desc->kind == TOLK_KIND_TRANSPORT && inst->started && !gen_holds(g, inst)) {
            ((const tolk_transport *)inst->desc)->stop(inst->self);
            inst->started = 0;
            log_msg(TOLK_LOG_INFO, inst->who, "removed from the configuration: no new calls");
        }
    }
    c->gen = g;
    apply_log_level(c, g->conf);
    if (c->daemon_transports) core_start_transports(c);
    log_msg(TOLK_LOG_INFO, "config",
            "reload applied: generation %u (%zu instances kept, %zu new); running calls stay on "
            "their generation (conf.d read in %.3f s)",
            g->id, kept, created, read_s);
    metrics_add(metrics_series_v(c->m.reloads, "applied", NULL), 1);
    if (old) generation_unref(old);
    return 0;
}

int core_reload(core *c) {
    if (!c->confdir) return -1;
    log_msg(TOLK_LOG_INFO, "config", "reloading %s", c->confdir);
    conf_errors errs = {0};
    double t0 = mono_now();
    conf_set *cs = conf_load_dir(c->confdir, c->plugin_path, &errs);
    int rc = reload_apply(c, cs, &errs, mono_now() - t0);
    conf_errors_free(&errs);
    return rc;
}

typedef struct reload_job {
    core *c;
    char *confdir, *plugin_path;
    conf_set *cs;
    conf_errors errs;
    double read_s;
} reload_job;

/* On the reload thread: only reading and checking, nothing of the core. */
static void reload_read(void *ud) {
    reload_job *j = ud;
    double t0 = mono_now();
    j->cs = conf_load_dir(j->confdir, j->plugin_path, &j->errs);
    j->read_s = mono_now() - t0;
}

static void reload_read_done(void *ud) {
    reload_job *j = ud;
    core *c = j->c;
    c->reload_running = 0;
    if (c->freeing || (c->stopping && j->cs)) {
        /* nothing new starts while draining */
        if (j->cs) conf_free(j->cs);
        log_msg(TOLK_LOG_INFO, "config", "shutting down: reload not applied");
    } else {
        /* (a rejected one is still reported, also while draining) */
        reload_apply(c, j->cs, &j->errs, j->read_s);
    }
    conf_errors_free(&j->errs);
    free(j->confdir);
    free(j->plugin_path);
    free(j);
    if (c->reload_again && !c->freeing) {
        c->reload_again = 0;
        core_request_reload(c);
    }
}

void core_request_reload(core *c) {
    if (!c->confdir || c->stopping || c->freeing) return;
    if (c->reload_running) {
        c->reload_again = 1;
        log_msg(TOLK_LOG_INFO, "config", "reload requested while one is under way: one more follows it");
        return;
    }
    if (!c->reload_worker) c->reload_worker = workers_start(c->loop, 1);
    log_msg(TOLK_LOG_INFO, "config", "reloading %s", c->confdir);
    reload_job *j = xcalloc(1, sizeof *j);
    j->c = c;
    j->confdir = xstrdup(c->confdir);
    j->plugin_path = c->plugin_path ? xstrdup(c->plugin_path) : NULL;
    c->reload_running = 1;
    c->reload_again = 0;
    workq_submit(c->reload_worker, NULL, reload_read, reload_read_done, j);
}

static void on_hup(struct ev_loop *loop, ev_signal *w, int revents) {
    core_request_reload(CONTAINER_OF(w, core, sig_hup));
}

/* SIGUSR1: after logrotate moved the file standard error was appended to. */
static void on_usr1(struct ev_loop *loop, ev_signal *w, int revents) {
    char path[512];
    int rc = log_reopen(path, sizeof path);
    if (rc > 0)
        log_msg(TOLK_LOG_INFO, "core", "SIGUSR1 received: log file %s reopened", path);
    else if (rc == 0)
        log_msg(TOLK_LOG_INFO, "core", "SIGUSR1 received: not logging to a file, nothing to reopen");
    else
        log_msg(TOLK_LOG_ERR, "core", "SIGUSR1 received: cannot reopen log file %s: %s", path,
                strerror(errno));
}

/* The signal watchers were ev_unref()ed; each gets its reference back
 * before it stops, or the loop's count of active watchers goes wrong. */
static void unwatch_signals(core *c) {
    if (!c->signals_watched) return;
    c->signals_watched = 0;
    ev_signal *sigs[] = {&c->sig_hup, &c->sig_term, &c->sig_int, &c->sig_usr1};
    for (size_t i = 0; i < ARRAY_LEN(sigs); i++) {
        ev_ref(c->loop);
        ev_signal_stop(c->loop, sigs[i]);
    }
}

static void finish_shutdown(core *c) {
    ev_timer_stop(c->loop, &c->drain_timer);
    unwatch_signals(c);
    recovery_stop(c);
    ev_break(c->loop, EVBREAK_ALL);
}

/* Drain: poll for the last call every 50 ms until the deadline, then end
 * what is left and leave the loop. */
static void on_drain_tick(struct ev_loop *loop, ev_timer *w, int revents);

void core_shutdown(core *c) {
    if (c->stopping) return;
    c->stopping = 1;
    double timeout = c->gen ? c->gen->conf->core.drain_timeout : 0;
    log_msg(TOLK_LOG_INFO, "core", "shutting down: no new calls; draining %zu call%s for up to %.0f s",
            c->active, c->active == 1 ? "" : "s", timeout);
    for (size_t i = 0; c->gen && i < c->gen->instances.n; i++) {
        tolk_instance *inst = c->gen->instances.v[i];
        if (inst->desc->kind == TOLK_KIND_TRANSPORT && inst->started) {
            ((const tolk_transport *)inst->desc)->stop(inst->self);
            inst->started = 0;
        }
    }
    c->drain_deadline_at = mono_now() + timeout;
    ev_timer_init(&c->drain_timer, on_drain_tick, 0., 0.05);
    ev_timer_start(c->loop, &c->drain_timer);
}

static void on_drain_tick(struct ev_loop *loop, ev_timer *w, int revents) {
    core *c = CONTAINER_OF(w, core, drain_timer);
    if (c->active == 0) {
        log_msg(TOLK_LOG_INFO, "core", "all calls ended");
        finish_shutdown(c);
        return;
    }
    if (mono_now() >= c->drain_deadline_at && !c->drain_forced) {
        c->drain_forced = 1;
        log_msg(TOLK_LOG_WARN, "core", "drain timeout: ending %zu call%s", c->active,
                c->active == 1 ? "" : "s");
        for (tolk_channel *ch = c->channels; ch; ch = ch->next) channel_end(ch, "shutdown");
    }
}

static void on_term(struct ev_loop *loop, ev_signal *w, int revents) {
    core *c = w->signum == SIGTERM ? CONTAINER_OF(w, core, sig_term) : CONTAINER_OF(w, core, sig_int);
    log_msg(TOLK_LOG_INFO, "core", "%s received", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    if (!c->stop_signal) c->stop_signal = w->signum;
    core_shutdown(c);
}

void core_watch_signals(core *c) {
    ev_signal_init(&c->sig_hup, on_hup, SIGHUP);
    ev_signal_init(&c->sig_term, on_term, SIGTERM);
    ev_signal_init(&c->sig_int, on_term, SIGINT);
    ev_signal_start(c->loop, &c->sig_hup);
    ev_signal_start(c->loop, &c->sig_term);
    ev_signal_init(&c->sig_usr1, on_usr1, SIGUSR1);
    ev_signal_start(c->loop, &c->sig_int);
    ev_signal_start(c->loop, &c->sig_usr1);
    /* signal watchers alone do not keep the loop running */
    ev_unref(c->loop);
    ev_unref(c->loop);
    ev_unref(c->loop);
    ev_unref(c->loop);
    c->signals_watched = 1;
    signal(SIGPIPE, SIG_IGN);
}

tolk_instance *core_find_instance(core *c, const char *name) {
    for (size_t i = 0; c->gen && i < c->gen->instances.n; i++) {
        tolk_instance *inst = c->gen->instances.v[i];
        if (!strcmp(inst->name, name)) return inst;
    }
    return NULL;
}

tolk_instance *core_add_instance(core *c, const char *name, const char *plugin,
                                 const json_t *settings, conf_errors *errs) {
    if (!c->gen) return NULL;
    conf_instance *ci = conf_instance_from_json(name, plugin, settings,
                                                conf_plugin_path(c->gen->conf, c->plugin_path), errs);
    if (!ci) return NULL;
    tolk_instance *inst = instance_new(c, ci, errs);
    if (inst) {
        ptr_vec_push(&c->gen->instances, inst);
        ptr_vec_push(&c->gen->conf->instances, ci);
    } else {
        conf_instance_free(ci);
    }
    return inst;
}

void core_free(core *c) {
    if (!c) return;
    /* a parse under way ends first; its result is dropped */
    c->freeing = 1;
    workers_stop(c->reload_worker);
    c->reload_worker = NULL;
    for (tolk_channel *ch = c->channels, *next; ch; ch = next) {
        next = ch->next;
        channel_end(ch, "core freed");
    }
    /* let deferred channel ends run */
    while (c->channels) ev_run(c->loop, EVRUN_NOWAIT);
    ev_ref(c->loop);
    ev_timer_stop(c->loop, &c->uptime_timer);
    ev_timer_stop(c->loop, &c->drain_timer);
    unwatch_signals(c);
    recovery_stop(c);
    generation *g = c->gen;
    c->gen = NULL;
    for (size_t i = 0; g && i < g->instances.n; i++) {
        tolk_instance *inst = g->instances.v[i];
        if (inst->desc->kind == TOLK_KIND_TRANSPORT && inst->started) {
            ((const tolk_transport *)inst->desc)->stop(inst->self);
            inst->started = 0;
        }
    }
    /* queued jobs run their done callbacks while the instances still live */
    workers_stop(c->workers);
    c->workers = NULL;
    if (g) generation_unref(g);
    http_shutdown();
    /* after the instances: exporters destroy their vhosts on the context */
    ws_shutdown();
    playback_free(c);
    host_free();
    free(c->confdir);
    free(c->plugin_path);
    free(c);
}
