/*
 * skeleton_mt.c -- the smallest useful tolk MT plugin, meant to be copied.
 *
 * It "translates" by upper-casing the ASCII letters of the text and appending
 * the configured `suffix`. The result is handed back asynchronously, from a
 * one-shot timer on the core's loop, so the plugin walks the same
 * TOLK_PENDING -> host->mt_done() path a real network engine walks when its
 * HTTP response arrives.
 *
 * Build:
 *     cc -shared -fPIC $(pkg-config --cflags tolk-plugin) skeleton_mt.c \
 *        -o skeleton_mt.so -Wl,--no-undefined
 *
 * Rules this file follows (see README.md and tolk/plugin.h):
 *   - exactly one exported symbol, tolk_plugin_entry(); everything else static;
 *   - no globals with mutable state: create() may be called several times for
 *     the same loaded file, so all state lives in `struct skel`;
 *   - no link-time dependencies besides libc: settings are read, timers are
 *     started and results are delivered only through the tolk_host table;
 *   - every function runs on the core's loop thread and never blocks.
 */
#define _POSIX_C_SOURCE 200809L /* strdup() also under -std=c11 */
#include <stdlib.h>
#include <string.h>

#include <tolk/plugin.h>

/* How long the pretend engine "thinks" before answering, in seconds. A real
 * plugin has no such constant: it completes when its engine answers. */
#define SKELETON_DELAY 0.005

/* ------------------------------------------------------------------ */
/* Settings                                                            */

/* The options table. The core validates each instance's `settings` group
 * against it (unknown key, wrong type, out of range, missing required value),
 * fills in the defaults and hands the result to create(). `tolkd --describe
 * skeleton_mt` prints it. A NULL key ends the table. */
static const tolk_option skeleton_options[] = {
    {
        .key = "suffix",
        .type = TOLK_OPT_STRING,
        .flags = 0,          /* TOLK_OPT_REQUIRED, TOLK_OPT_SECRET may be or-ed in */
        .default_value = "", /* defaults are written as text */
        .help = "text appended to every translation",
    },
    {.key = NULL},
};

/* ------------------------------------------------------------------ */
/* Instance state                                                      */

struct skel;

/* One translate() in flight. */
struct job {
    struct skel *owner;
    tolk_request *req;  /* the core's handle; valid until mt_done or cancel */
    tolk_timer *timer;  /* our one-shot completion timer */
    char *result;       /* the finished translation */
    struct job *next;
};

/* One configured instance ("mt-main" in conf.d). */
struct skel {
    const tolk_host *host; /* lent by the core until destroy() */
    tolk_instance *inst;   /* the core's handle, for logging and timers */
    char *suffix;          /* our own copy: the settings object is borrowed */
    struct job *jobs;      /* pending requests, for cancel() and destroy() */
};

static void job_unlink(struct skel *s, struct job *j)
{
    for (struct job **pp = &s->jobs; *pp; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            return;
        }
    }
}

static void job_free(struct job *j)
{
    free(j->result);
    free(j);
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */

static tolk_status skel_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                               void **self)
{
    struct skel *s = calloc(1, sizeof *s);
    if (!s) return TOLK_E_NOMEM;
    s->host = host;
    s->inst = inst;

    /* cfg is already validated and has defaults filled in, so "suffix" is
     * present. The string belongs to cfg, which is only borrowed: copy it. */
    const char *suffix = host->cfg_string(cfg, "suffix");
    s->suffix = strdup(suffix ? suffix : "");
    if (!s->suffix) {
        free(s);
        return TOLK_E_NOMEM;
    }

    TOLK_LOG(host, inst, TOLK_LOG_VERB, "created (suffix \"%s\")", s->suffix);
    *self = s;
    return TOLK_OK;
}

static void skel_destroy(void *self)
{
    struct skel *s = self;

    /* The core destroys an instance only when nothing uses it, so no request
     * should be pending. Clean up anyway rather than leak or fire late. */
    while (s->jobs) {
        struct job *j = s->jobs;
        s->jobs = j->next;
        s->host->timer_stop(j->timer); /* stopping frees the timer */
        job_free(j);
    }
    free(s->suffix);
    free(s);
}

/* ------------------------------------------------------------------ */
/* Translation                                                         */

/* The timer fired: deliver the result. A one-shot timer frees itself after
 * this callback returns, so it must not be stopped here. */
static void skel_complete(void *ud)
{
    struct job *j = ud;
    struct skel *s = j->owner;

    /* Unlink first: once mt_done() is called the request is finished and the
     * core will not cancel() it, so the job must no longer be findable. */
    job_unlink(s, j);
    s->host->mt_done(j->req, TOLK_OK, j->result);
    job_free(j);
}

static tolk_status skel_translate(void *self, tolk_request *r, const char *text,
                                  const char *from, const char *to)
{
    struct skel *s = self;

    /* A plugin that cannot do a language pair returns TOLK_DECLINED and the
     * core asks the next provider of the chain. This one does every pair. */
    (void)from;
    (void)to;

    size_t n = strlen(text), m = strlen(s->suffix);
    struct job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    j->result = malloc(n + m + 1);
    if (!j->result) {
        free(j);
        return TOLK_E_NOMEM;
    }

    /* The "engine". Only ASCII letters change, so UTF-8 stays intact. */
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        j->result[i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    memcpy(j->result + n, s->suffix, m + 1);

    /* `text` is borrowed for this call only; we copied what we need. Now
     * complete later, from the loop. */
    j->owner = s;
    j->req = r;
    j->timer = s->host->timer_start(s->inst, SKELETON_DELAY, 0.0, skel_complete, j);
    if (!j->timer) {
        job_free(j);
        return TOLK_E_NOMEM; /* negative: failed at once, no mt_done follows */
    }
    j->next = s->jobs;
    s->jobs = j;

    TOLK_LOG(s->host, s->inst, TOLK_LOG_DBG, "%s->%s: pending", from, to);
    return TOLK_PENDING; /* host->mt_done(r, ...) will follow exactly once */
}

/* The core no longer wants r (the call hung up, a backup answered first, a
 * timeout). After this returns we must never mention r again. */
static void skel_cancel(void *self, tolk_request *r)
{
    struct skel *s = self;
    for (struct job *j = s->jobs; j; j = j->next) {
        if (j->req == r) {
            job_unlink(s, j);
            s->host->timer_stop(j->timer);
            job_free(j);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Descriptor                                                          */

static const tolk_mt skeleton_mt = {
    .base =
        {
            /* size, ABI numbers, kind and build fingerprint */
            TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT),
            .name = "skeleton_mt", /* must equal the file name without .so */
            .version = "1.0.0",
            .description = "example MT plugin: upper-cases text, appends a suffix",
            .options = skeleton_options,
            .check_config = NULL, /* optional; see README.md */
            .create = skel_create,
            .destroy = skel_destroy,
            .reset = NULL,  /* optional: nothing to reconnect */
            .health = NULL, /* optional: always healthy */
        },
    .translate = skel_translate,
    .cancel = skel_cancel,
};

/* Emits the one exported function, tolk_plugin_entry(). */
TOLK_PLUGIN_DEFINE(skeleton_mt)
