/*
 * Fault injection for the mock plugins (stt_mock, mt_mock, tts_mock): the
 * same settings and the same rules in each, so a test reads alike whichever
 * stage it breaks. Header-only (static inline functions): each mock stays one
 * self-contained .so.
 *
 *   fail_every   every Nth request fails (0 = off)
 *   fail_after   after N good requests every request fails, until reset
 *   fail_status  status of injected failures: backend, again, fatal, timeout
 *   fail_severity  severity they carry where the ABI has one (stt_failed,
 *                report): auto (from the status), low, medium, high,
 *                critical or permanent (a bad key: fail over at once)
 *   hang         accept requests, never answer
 *   garbage      answer with garbage (what that means is the mock's own)
 *
 * The outcome is decided when a request arrives, in this order: hang, then
 * fail_after, then fail_every; so it depends only on the order of requests,
 * not on timing.
 */
#ifndef TOLK_PLUGINS_MOCK_FAULT_H
#define TOLK_PLUGINS_MOCK_FAULT_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <tolk/plugin.h>

typedef struct fault_cfg {
    int64_t fail_every, fail_after;
    tolk_status fail_status;
    int fail_severity; /* -1: from the status */
    int hang, garbage;
} fault_cfg;

typedef struct fault_count {
    uint64_t requests, failures, successes;
} fault_count;

typedef enum fault_fate { FATE_OK, FATE_FAIL, FATE_HANG } fault_fate;

static inline int fail_status_parse(const char *s, tolk_status *st)
{
    static const struct {
        const char *name;
        tolk_status st;
    } names[] = {{"backend", TOLK_E_BACKEND},
                 {"again", TOLK_E_AGAIN},
                 {"fatal", TOLK_E_FATAL},
                 {"timeout", TOLK_E_TIMEOUT}};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(s, names[i].name)) {
            *st = names[i].st;
            return 0;
        }
    }
    return -1;
}

static inline int fail_severity_parse(const char *s, int *sev)
{
    static const char *const names[] = {"low", "medium", "high", "critical", "permanent"};
    if (!s || !strcmp(s, "auto")) {
        *sev = -1;
        return 0;
    }
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++) {
        if (!strcmp(s, names[i])) {
            *sev = i;
            return 0;
        }
    }
    return -1;
}

/* The severity of an injected failure of this status. */
static inline tolk_severity fault_severity(const fault_cfg *f, tolk_status st)
{
    if (f->fail_severity >= 0) return (tolk_severity)f->fail_severity;
    switch (st) {
    case TOLK_E_AGAIN: return TOLK_SEV_LOW;
    case TOLK_E_TIMEOUT: return TOLK_SEV_MEDIUM;
    case TOLK_E_FATAL: return TOLK_SEV_CRITICAL;
    default: return TOLK_SEV_HIGH;
    }
}

/* For check_config(): there is no host there, so the jansson object is
 * read directly. */
static inline tolk_status fault_check_config(const json_t *cfg, tolk_config_error *err)
{
    const json_t *v = json_object_get(cfg, "fail_status");
    tolk_status st;
    if (v && fail_status_parse(json_string_value(v), &st)) {
        err->key = "fail_status";
        snprintf(err->message, sizeof err->message,
                 "must be \"backend\", \"again\", \"fatal\" or \"timeout\"");
        return TOLK_E_INVAL;
    }
    int sev;
    v = json_object_get(cfg, "fail_severity");
    if (v && fail_severity_parse(json_string_value(v), &sev)) {
        err->key = "fail_severity";
        snprintf(err->message, sizeof err->message,
                 "must be \"auto\", \"low\", \"medium\", \"high\", \"critical\" or \"permanent\"");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

/* For create(): -1 (logged) on an unknown fail_status. */
static inline int fault_read(const tolk_host *host, tolk_instance *inst, const json_t *cfg, fault_cfg *f)
{
    f->fail_every = host->cfg_int(cfg, "fail_every");
    f->fail_after = host->cfg_int(cfg, "fail_after");
    f->hang = host->cfg_bool(cfg, "hang");
    f->garbage = host->cfg_bool(cfg, "garbage");
    if (fail_status_parse(host->cfg_string(cfg, "fail_status"), &f->fail_status)) {
        host->log(inst, TOLK_LOG_ERR, "fail_status: unknown value");
        return -1;
    }
    if (fail_severity_parse(host->cfg_string(cfg, "fail_severity"), &f->fail_severity)) {
        host->log(inst, TOLK_LOG_ERR, "fail_severity: unknown value");
        return -1;
    }
    return 0;
}

static inline int fault_failing(const fault_cfg *f, const fault_count *c)
{
    return f->fail_after > 0 && c->successes >= (uint64_t)f->fail_after;
}

static inline fault_fate fault_decide(const fault_cfg *f, fault_count *c)
{
    c->requests++;
    if (f->hang) return FATE_HANG;
    if (fault_failing(f, c) || (f->fail_every > 0 && c->requests % (uint64_t)f->fail_every == 0)) {
        c->failures++;
        return FATE_FAIL;
    }
    c->successes++;
    return FATE_OK;
}

#endif
