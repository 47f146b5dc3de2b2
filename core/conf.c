#include "conf.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

void conf_error(conf_errors *e, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) msg = NULL;
    va_end(ap);
    char *full = line > 0 ? xasprintf("%s:%d: %s", file ? file : "?", line, msg ? msg : "")
                          : xasprintf("%s: %s", file ? file : "?", msg ? msg : "");
    free(msg);
    ptr_vec_push(&e->msgs, full);
}

void conf_errors_free(conf_errors *e) {
    for (size_t i = 0; i < e->msgs.n; i++) free(e->msgs.v[i]);
    ptr_vec_free(&e->msgs);
    e->runtime = 0;
}

static const char *const mode_names[] = {"default", "bidirectional", "unidirectional",
                                         "passthrough"};

const char *conf_mode_name(tolk_mode mode) {
    return (int)mode >= 0 && mode <= TOLK_MODE_PASSTHROUGH ? mode_names[mode] : "?";
}

int conf_mode_parse(const char *s) {
    for (int i = 0; i <= TOLK_MODE_PASSTHROUGH; i++)
        if (s && !strcmp(s, mode_names[i])) return i;
    return -1;
}

/* ---- libconfig -> JSON, remembering lines ---- */


static json_t *from_setting(config_setting_t *s, json_t *lines, const char *file,
                            conf_errors *errs) {
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        return json_integer(config_setting_get_int(s));
    case CONFIG_TYPE_INT64:
        return json_integer(config_setting_get_int64(s));
    case CONFIG_TYPE_FLOAT: {
        /* (jansson has no infinity: json_real() would be NULL and the key
         * silently absent, its default used) */
        double v = config_setting_get_float(s);
        if (!isfinite(v)) {
            conf_error(errs, file, (int)config_setting_source_line(s),
                       "'%s' is out of range (not a finite number)",
                       config_setting_name(s) ? config_setting_name(s) : "(element)");
            return NULL;
        }
        return json_real(v);
    }
    case CONFIG_TYPE_BOOL:
        return json_boolean(config_setting_get_bool(s));
    case CONFIG_TYPE_STRING: {
        json_t *j = json_string(config_setting_get_string(s));
        if (!j) {
            conf_error(errs, file, (int)config_setting_source_line(s),
                       "value of '%s' is not valid UTF-8",
                       config_setting_name(s) ? config_setting_name(s) : "(element)");
            j = json_string("");
        }
        return j;
    }
    case CONFIG_TYPE_ARRAY:
    case CONFIG_TYPE_LIST: {
        json_t *a = json_array();
        for (int i = 0; i < config_setting_length(s); i++)
            json_array_append_new(a, from_setting(config_setting_get_elem(s, (unsigned)i), NULL,
                                                  file, errs));
        return a;
    }
    case CONFIG_TYPE_GROUP: {
        json_t *o = json_object();
        for (int i = 0; i < config_setting_length(s); i++) {
            config_setting_t *c = config_setting_get_elem(s, (unsigned)i);
            json_object_set_new(o, config_setting_name(c), from_setting(c, NULL, file, errs));
            if (lines)
                json_object_set_new(lines, config_setting_name(c),
                                    json_integer(config_setting_source_line(c)));
        }
        return o;
    }
    default:
        return json_null();
    }
}

static int line_of(const json_t *lines, const char *key, int fallback) {
    json_t *l = lines && key ? json_object_get(lines, key) : NULL;
    return l ? (int)json_integer_value(l) : fallback;
}

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_STRING:
        return "a string";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_ARRAY:
        return "a list";
    case JSON_OBJECT:
        return "a group";
    default:
        return "empty";
    }
}

static const char *opt_kind(tolk_opt_type t) {
    switch (t) {
    case TOLK_OPT_BOOL:
        return "a boolean (true or false)";
    case TOLK_OPT_INT:
        return "an integer";
    case TOLK_OPT_DOUBLE:
        return "a number";
    case TOLK_OPT_STRING:
        return "a string";
    case TOLK_OPT_STRING_LIST:
        return "a list of strings";
    case TOLK_OPT_MAP:
        return "a group of name = \"text\" pairs";
    }
    return "?";
}

static json_t *default_value(const tolk_option *o) {
    const char *d = o->default_value;
    if (!d) return NULL;
    switch (o->type) {
    case TOLK_OPT_BOOL:
        return json_boolean(!strcmp(d, "true") || !strcmp(d, "1") || !strcmp(d, "yes"));
    case TOLK_OPT_INT:
        return json_integer(strtoll(d, NULL, 0));
    case TOLK_OPT_DOUBLE:
        return json_real(strtod(d, NULL));
    case TOLK_OPT_STRING:
        return json_string(d);
    case TOLK_OPT_STRING_LIST: {
        json_t *a = json_array();
        char *copy = xstrdup(d), *save = NULL;
        for (char *t = strtok_r(copy, "|", &save); t; t = strtok_r(NULL, "|", &save))
            json_array_append_new(a, json_string(t));
        free(copy);
        return a;
    }
    case TOLK_OPT_MAP:
        return json_object();
    }
    return NULL;
}

static int in_range(const tolk_option *o, double v) {
    if (o->min == 0 && o->max == 0) return 1;
    return v >= o->min && v <= o->max;
}

static const char *g_known_buf(const tolk_option *opts, char *buf, size_t len) {
    size_t off = 0;
    buf[0] = 0;
    for (const tolk_option *o = opts; o && o->key && off + 2 < len; o++) {
        int n = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", o->key);
        if (n < 0) break;
        off += (size_t)n;
    }
    return buf[0] ? buf : "none";
}

/* Checks `in` against the table and returns a new object with defaults
 * filled in; every complaint goes to errs with its line. */
static json_t *check_object(const json_t *in, const json_t *lines, int group_line,
                            const tolk_option *opts, const char *what, const char *file,
                            conf_errors *errs) {
    json_t *out = json_object();
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)in, key, val) {
        const tolk_option *o = opts;
        while (o && o->key && strcmp(o->key, key)) o++;
        int line = line_of(lines, key, group_line);
        if (!o || !o->key) {
            char known[512];
            conf_error(errs, file, line, "unknown key '%s' in %s (known: %s)", key, what,
                       g_known_buf(opts, known, sizeof known));
            continue;
        }
        int ok = 0;
        switch (o->type) {
        case TOLK_OPT_BOOL:
            ok = json_is_boolean(val);
            break;
        case TOLK_OPT_INT:
            ok = json_is_integer(val);
            if (ok && !in_range(o, (double)json_integer_value(val))) {
                conf_error(errs, file, line, "'%s' in %s is %lld, outside %g..%g", key, what,
                           (long long)json_integer_value(val), o->min, o->max);
                continue;
            }
            break;
        case TOLK_OPT_DOUBLE:
            ok = json_is_number(val);
            if (ok && !in_range(o, json_number_value(val))) {
                conf_error(errs, file, line, "'%s' in %s is %g, outside %g..%g", key, what,
                           json_number_value(val), o->min, o->max);
                continue;
            }
            if (ok) {
                json_object_set_new(out, key, json_real(json_number_value(val)));
                continue;
            }
            break;
        case TOLK_OPT_STRING:
            ok = json_is_string(val);
            break;
        case TOLK_OPT_STRING_LIST: {
            ok = json_is_array(val);
            size_t i;
            json_t *e;
            json_array_foreach(val, i, e) if (!json_is_string(e)) ok = 0;
            break;
        }
        case TOLK_OPT_MAP: {
            ok = json_is_object(val);
            const char *k2;
            json_t *e;
            json_object_foreach(val, k2, e) if (!json_is_string(e)) ok = 0;
            break;
        }
        }
        if (!ok) {
            conf_error(errs, file, line, "'%s' in %s must be %s, not %s", key, what,
                       opt_kind(o->type), json_kind(val));
            continue;
        }
        json_object_set(out, key, val);
    }
    for (const tolk_option *o = opts; o && o->key; o++) {
        if (json_object_get(out, o->key) || json_object_get(in, o->key)) continue;
        if (o->flags & TOLK_OPT_REQUIRED) {
            conf_error(errs, file, group_line, "missing required setting '%s' in %s", o->key, what);
            continue;
        }
        json_t *d = default_value(o);
        if (d) json_object_set_new(out, o->key, d);
    }
    return out;
}

/* ---- tables for the core's own groups ---- */

static const tolk_option core_opts[] = {
    {"max_channels", TOLK_OPT_INT, 0, "1000", 1, 100000, "calls handled at once"},
    {"drain_timeout", TOLK_OPT_DOUBLE, 0, "30", 0, 86400, "seconds to let calls finish on SIGTERM"},
    {"log_level", TOLK_OPT_STRING, 0, "info", 0, 0, "fatal, err, warn, info, verb, debug"},
    {"workers", TOLK_OPT_INT, 0, "2", 1, 256, "threads for blocking engines"},
    {"plugin_path", TOLK_OPT_STRING, 0, NULL, 0, 0, "colon-separated plugin directories"},
    {"translation_cache", TOLK_OPT_INT, 0, "1000", 0, 1000000, "translations remembered per MT provider (0: off)"},
    {"mt_context", TOLK_OPT_INT, 0, "2", 0, 10, "earlier phrases sent as context to MT providers that use it"},
    {"max_phrase_seconds", TOLK_OPT_DOUBLE, 0, "20", 0, 600, "a phrase this long is finalised by the recogniser (0: never)"},
    {"max_backlog_seconds", TOLK_OPT_DOUBLE, 0, "30", 1, 3600,
     "unfinished audio a direction of a call may hold before its input waits or sheds"},
    {"speculative_translation", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "translate and synthesise on a recogniser's tentative end of a phrase, played only once confirmed"},
    {"max_lag_seconds", TOLK_OPT_DOUBLE, 0, "1.5", 0.1, 60,
     "end of a phrase -> start of its translated speech that playback speeds up to stay under"},
    {"max_speedup", TOLK_OPT_DOUBLE, 0, "1.5", 1, 2,
     "fastest translated speech is played when it runs behind (1: never faster)"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const tolk_option defaults_opts[] = {
    {"mode", TOLK_OPT_STRING, 0, "bidirectional", 0, 0, "bidirectional, unidirectional, passthrough"},
    {"caller_language", TOLK_OPT_STRING, 0, "en", 0, 0, "language of leg A"},
    {"callee_language", TOLK_OPT_STRING, 0, "es", 0, 0, "language of leg B"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const tolk_option recovery_opts[] = {
    {"soft_retries", TOLK_OPT_INT, 0, "3", 0, 100, "tier 1: retries on the same provider"},
    {"soft_delay", TOLK_OPT_DOUBLE, 0, "1.0", 0, 600, "first retry delay, seconds"},
    {"backoff", TOLK_OPT_DOUBLE, 0, "2.0", 1, 100, "delay multiplier per retry"},
    {"jitter", TOLK_OPT_DOUBLE, 0, "0.2", 0, 1, "random +- fraction of each delay"},
    {"hard_reset", TOLK_OPT_BOOL, 0, "true", 0, 0, "tier 2: reset the provider before failing over"},
    {"hard_timeout", TOLK_OPT_DOUBLE, 0, "5.0", 0.001, 3600, "seconds a reset may take"},
    {"failover_timeout", TOLK_OPT_DOUBLE, 0, "10.0", 0.001, 3600, "request timeout right after a failover"},
    {"reset_cooldown", TOLK_OPT_DOUBLE, 0, "60.0", 0, 86400, "tier 4: seconds between full resets of a chain"},
    {"min_operations", TOLK_OPT_INT, 0, "5", 0, 1000000, "no health downgrade before this many operations"},
    {"window_operations", TOLK_OPT_INT, 0, "100", 1, 128, "success rate over the last N operations"},
    {"window_seconds", TOLK_OPT_DOUBLE, 0, "60.0", 1, 86400, "...no older than this"},
    {"health_interval", TOLK_OPT_DOUBLE, 0, "5.0", 0.01, 3600, "seconds between health probes"},
    {"request_timeout", TOLK_OPT_DOUBLE, 0, "10.0", 0.001, 3600, "MT answer / TTS audio silence limit"},
    {"stt_timeout", TOLK_OPT_DOUBLE, 0, "10.0", 0.05, 3600, "speech with no recogniser result"},
    {"replay_seconds", TOLK_OPT_DOUBLE, 0, "10.0", 0, 120, "audio kept per direction for STT failover"},
    {"failback", TOLK_OPT_STRING, 0, "new_calls", 0, 0, "new_calls or running_calls"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const tolk_option endpoint_opts[] = {
    {"name", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "SIP peer name"},
    {"language", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "language spoken"},
    {"voice", TOLK_OPT_STRING, 0, NULL, 0, 0, "voice profile"},
    {"glossary", TOLK_OPT_STRING, 0, NULL, 0, 0, "glossary name for the translation of this party's speech"},
    {"formality", TOLK_OPT_STRING, 0, NULL, 0, 0, "more, less, prefer_more, prefer_less"},
    {"clone_voice", TOLK_OPT_BOOL, 0, "false", 0, 0, "lend the TTS this party's first words to clone the voice"},
    {"clone_seconds", TOLK_OPT_DOUBLE, 0, "6", 1, 60, "seconds of speech lent for cloning"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const tolk_option instance_opts[] = {
    {"name", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "instance name"},
    {"plugin", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "plugin file name"},
    {"settings", TOLK_OPT_MAP, 0, NULL, 0, 0, "the plugin's settings"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const tolk_option chain_opts[] = {
    {"name", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "chain name"},
    {"kind", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "stt, mt or tts"},
    {"providers", TOLK_OPT_STRING_LIST, TOLK_OPT_REQUIRED, NULL, 0, 0, "primary, then backups"},
    {"languages", TOLK_OPT_STRING_LIST, 0, NULL, 0, 0, "languages served (stt, tts)"},
    {"pairs", TOLK_OPT_STRING_LIST, 0, NULL, 0, 0, "pairs served, \"en-es\" (mt)"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static int valid_name(const char *s) {
    if (!s || !*s || strlen(s) > 64) return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' || *s == '-' || *s == '.')) return 0;
    return 1;
}

static void strlist(ptr_vec *out, const json_t *arr) {
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) ptr_vec_push(out, xstrdup(json_string_value(e)));
}

static void strlist_free(ptr_vec *pv) {
    for (size_t i = 0; i < pv->n; i++) free(pv->v[i]);
    ptr_vec_free(pv);
}

/* Where a name was first defined, for "duplicate" errors. */
typedef struct seen_name {
    const char *what;
    char *name, *file;
    int line;
} seen_name;

/* Names already defined, by kind and name: open addressing, so that a
 * conf.d with 100k endpoints checks in linear time. */
typedef struct name_table {
    seen_name **slot;
    size_t cap, n; /* cap: a power of two */
} name_table;

static size_t name_hash(const char *what, const char *name) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = what; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* no name can hold 0xff: keeps kind and name apart */
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)h;
}

static seen_name **name_slot(const name_table *t, const char *what, const char *name) {
    size_t i = name_hash(what, name) & (t->cap - 1);
    while (t->slot[i] && (strcmp(t->slot[i]->what, what) || strcmp(t->slot[i]->name, name)))
        i = (i + 1) & (t->cap - 1);
    return &t->slot[i];
}

static void name_table_grow(name_table *t) {
    name_table bigger = {xcalloc(t->cap ? t->cap * 2 : 64, sizeof(seen_name *)),
                         t->cap ? t->cap * 2 : 64, t->n};
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i]) *name_slot(&bigger, t->slot[i]->what, t->slot[i]->name) = t->slot[i];
    free(t->slot);
    *t = bigger;
}

static void name_table_free(name_table *t) {
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slot[i]) continue;
        free(t->slot[i]->name);
        free(t->slot[i]->file);
        free(t->slot[i]);
    }
    free(t->slot);
}

typedef struct load_ctx {
    conf_set *cs;
    conf_errors *errs;
    name_table seen;
    int have_core, have_defaults, have_recovery;
    char *core_file;
    int core_line;
    /* instance settings held until plugins can be loaded (core.plugin_path) */
    ptr_vec pending; /* pending_instance * */
    ptr_vec failed;  /* char *: instances already reported as bad */
    const char *dir;
    ptr_vec included; /* char *: paths of @include'd files, for messages */
} load_ctx;

typedef struct pending_instance {
    conf_instance *ci;
    json_t *raw, *lines;
    int settings_line;
} pending_instance;

static int claim_name(load_ctx *lc, const char *what, const char *name, const char *file,
                      int line) {
    if (!valid_name(name)) {
        conf_error(lc->errs, file, line,
                   "%s name '%s' is not valid (letters, digits, '_', '-', '.'; at most 64)", what,
                   name);
        return 0;
    }
    if (2 * (lc->seen.n + 1) > lc->seen.cap) name_table_grow(&lc->seen);
    seen_name **slot = name_slot(&lc->seen, what, name);
    if (*slot) {
        conf_error(lc->errs, file, line, "duplicate %s '%s' (first defined at %s:%d)", what,
                   name, (*slot)->file, (*slot)->line);
        return 0;
    }
    seen_name *s = xcalloc(1, sizeof *s);
    s->what = what;
    s->name = xstrdup(name);
    s->file = xstrdup(file);
    s->line = line;
    *slot = s;
    lc->seen.n++;
    return 1;
}

static json_t *group_json(config_setting_t *s, json_t **lines, const char *file,
                          conf_errors *errs) {
    *lines = json_object();
    return from_setting(s, *lines, file, errs);
}

static void load_core(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (lc->have_core) {
        conf_error(lc->errs, file, line, "duplicate 'core' group (first at %s:%d)", lc->core_file,
                   lc->core_line);
        return;
    }
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line, "'core' must be a group: core: { ... };");
        return;
    }
    lc->have_core = 1;
    lc->core_file = xstrdup(file);
    lc->core_line = line;
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    json_t *v = check_object(raw, lines, line, core_opts, "core", file, lc->errs);
    conf_core *c = &lc->cs->core;
    c->max_channels = (int)json_integer_value(json_object_get(v, "max_channels"));
    c->drain_timeout = json_number_value(json_object_get(v, "drain_timeout"));
    c->workers = (int)json_integer_value(json_object_get(v, "workers"));
    c->translation_cache = (int)json_integer_value(json_object_get(v, "translation_cache"));
    c->mt_context = (int)json_integer_value(json_object_get(v, "mt_context"));
    c->max_phrase_seconds = json_number_value(json_object_get(v, "max_phrase_seconds"));
    c->max_backlog_seconds = json_number_value(json_object_get(v, "max_backlog_seconds"));
    c->speculative_translation = json_is_true(json_object_get(v, "speculative_translation"));
    c->max_lag_seconds = json_number_value(json_object_get(v, "max_lag_seconds"));
    c->max_speedup = json_number_value(json_object_get(v, "max_speedup"));
    const char *lvl = json_string_value(json_object_get(v, "log_level"));
    int l = log_level_parse(lvl);
    if (l < 0)
        conf_error(lc->errs, file, line_of(lines, "log_level", line),
                   "log_level '%s' is not one of fatal, err, warn, info, verb, debug", lvl);
    else
        c->log_level = l;
    const char *pp = json_string_value(json_object_get(v, "plugin_path"));
    if (pp) c->plugin_path = xstrdup(pp);
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
}

static void load_defaults(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (lc->have_defaults++) {
        conf_error(lc->errs, file, line, "duplicate 'defaults' group");
        return;
    }
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line, "'defaults' must be a group: defaults: { ... };");
        return;
    }
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    json_t *v = check_object(raw, lines, line, defaults_opts, "defaults", file, lc->errs);
    conf_defaults *d = &lc->cs->defaults;
    const char *mode = json_string_value(json_object_get(v, "mode"));
    int m = conf_mode_parse(mode);
    if (m <= 0)
        conf_error(lc->errs, file, line_of(lines, "mode", line),
                   "mode '%s' is not one of bidirectional, unidirectional, passthrough", mode);
    else
        d->mode = (tolk_mode)m;
    free(d->caller_language);
    free(d->callee_language);
    d->caller_language = xstrdup(json_string_value(json_object_get(v, "caller_language")));
    d->callee_language = xstrdup(json_string_value(json_object_get(v, "callee_language")));
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
}

static void fill_recovery(conf_recovery *r, const json_t *v) {
#define RI(k) ((int)json_integer_value(json_object_get(v, k)))
#define RD(k) json_number_value(json_object_get(v, k))
    r->soft_retries = RI("soft_retries");
    r->soft_delay = RD("soft_delay");
    r->backoff = RD("backoff");
    r->jitter = RD("jitter");
    r->hard_reset = json_is_true(json_object_get(v, "hard_reset"));
    r->hard_timeout = RD("hard_timeout");
    r->failover_timeout = RD("failover_timeout");
    r->reset_cooldown = RD("reset_cooldown");
    r->min_operations = RI("min_operations");
    r->window_operations = RI("window_operations");
    r->window_seconds = RD("window_seconds");
    r->health_interval = RD("health_interval");
    r->request_timeout = RD("request_timeout");
    r->stt_timeout = RD("stt_timeout");
    r->replay_seconds = RD("replay_seconds");
    r->failback_running = !strcmp(json_string_value(json_object_get(v, "failback")), "running_calls");
#undef RI
#undef RD
}

static void load_recovery(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (lc->have_recovery++) {
        conf_error(lc->errs, file, line, "duplicate 'recovery' group");
        return;
    }
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line, "'recovery' must be a group: recovery: { ... };");
        return;
    }
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    json_t *v = check_object(raw, lines, line, recovery_opts, "recovery", file, lc->errs);
    const char *fb = json_string_value(json_object_get(v, "failback"));
    if (strcmp(fb, "new_calls") && strcmp(fb, "running_calls"))
        conf_error(lc->errs, file, line_of(lines, "failback", line),
                   "failback '%s' is not one of new_calls, running_calls", fb);
    else
        fill_recovery(&lc->cs->recovery, v);
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
}

static void load_endpoint(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line, "an endpoint must be a group { name = ...; language = ...; }");
        return;
    }
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    size_t before = lc->errs->msgs.n;
    json_t *v = check_object(raw, lines, line, endpoint_opts, "endpoint", file, lc->errs);
    const char *name = json_string_value(json_object_get(v, "name"));
    if (lc->errs->msgs.n == before && claim_name(lc, "endpoint", name, file, line)) {
        conf_endpoint *ep = xcalloc(1, sizeof *ep);
        ep->name = xstrdup(name);
        ep->language = xstrdup(json_string_value(json_object_get(v, "language")));
        ep->voice = xstrdup(json_string_value(json_object_get(v, "voice")));
        ep->glossary = xstrdup(json_string_value(json_object_get(v, "glossary")));
        const char *f = json_string_value(json_object_get(v, "formality"));
        if (f && strcmp(f, "more") && strcmp(f, "less") && strcmp(f, "prefer_more") &&
            strcmp(f, "prefer_less"))
            conf_error(lc->errs, file, line_of(lines, "formality", line),
                       "formality '%s' is not one of more, less, prefer_more, prefer_less", f);
        ep->formality = xstrdup(f);
        ep->clone_voice = json_is_true(json_object_get(v, "clone_voice"));
        ep->clone_seconds = json_number_value(json_object_get(v, "clone_seconds"));
        ptr_vec_push(&lc->cs->endpoints, ep);
    }
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
}

static void load_instance(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line,
                   "an instance must be a group { name = ...; plugin = ...; settings: {...}; }");
        return;
    }
    config_setting_t *settings = config_setting_get_member(s, "settings");
    json_t *slines = json_object(), *sraw = json_object();
    int sline = line;
    if (settings) {
        sline = (int)config_setting_source_line(settings);
        if (!config_setting_is_group(settings)) {
            conf_error(lc->errs, file, sline, "'settings' must be a group: settings: { ... };");
        } else {
            json_decref(sraw);
            sraw = from_setting(settings, slines, file, lc->errs);
        }
    }
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    json_object_del(raw, "settings");
    size_t before = lc->errs->msgs.n;
    json_t *v = check_object(raw, lines, line, instance_opts, "instance", file, lc->errs);
    const char *name = json_string_value(json_object_get(v, "name"));
    if (lc->errs->msgs.n == before && claim_name(lc, "instance", name, file, line)) {
        conf_instance *ci = xcalloc(1, sizeof *ci);
        ci->name = xstrdup(name);
        ci->plugin = xstrdup(json_string_value(json_object_get(v, "plugin")));
        ci->file = xstrdup(file);
        ci->line = line;
        pending_instance *pi = xcalloc(1, sizeof *pi);
        pi->ci = ci;
        pi->raw = json_incref(sraw);
        pi->lines = json_incref(slines);
        pi->settings_line = sline;
        ptr_vec_push(&lc->pending, pi);
    }
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
    json_decref(sraw);
    json_decref(slines);
}

static void load_chain(load_ctx *lc, config_setting_t *s, const char *file) {
    int line = (int)config_setting_source_line(s);
    if (!config_setting_is_group(s)) {
        conf_error(lc->errs, file, line, "a chain must be a group { name = ...; kind = ...; providers = [...]; }");
        return;
    }
    json_t *lines, *raw = group_json(s, &lines, file, lc->errs);
    size_t before = lc->errs->msgs.n;
    json_t *v = check_object(raw, lines, line, chain_opts, "chain", file, lc->errs);
    const char *name = json_string_value(json_object_get(v, "name"));
    const char *kind = json_string_value(json_object_get(v, "kind"));
    int k = loader_kind_parse(kind);
    if (kind && (k != TOLK_KIND_STT && k != TOLK_KIND_MT && k != TOLK_KIND_TTS))
        conf_error(lc->errs, file, line_of(lines, "kind", line),
                   "chain kind '%s' is not one of stt, mt, tts", kind);
    json_t *prov = json_object_get(v, "providers");
    if (prov && json_array_size(prov) == 0)
        conf_error(lc->errs, file, line_of(lines, "providers", line),
                   "chain '%s' has no providers", name ? name : "?");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(v, "pairs"), i, e) {
        const char *p = json_string_value(e), *dash = strchr(p, '-');
        if (!dash || dash == p || !dash[1])
            conf_error(lc->errs, file, line_of(lines, "pairs", line),
                       "pair '%s' is not of the form \"from-to\" (\"en-es\")", p);
    }
    if (lc->errs->msgs.n == before && claim_name(lc, "chain", name, file, line)) {
        conf_chain *ch = xcalloc(1, sizeof *ch);
        ch->name = xstrdup(name);
        ch->kind = (tolk_kind)k;
        strlist(&ch->providers, prov);
        strlist(&ch->languages, json_object_get(v, "languages"));
        strlist(&ch->pairs, json_object_get(v, "pairs"));
        ch->file = xstrdup(file);
        ch->line = line;
        ptr_vec_push(&lc->cs->chains, ch);
    }
    json_decref(v);
    json_decref(raw);
    json_decref(lines);
}

static char *include_path(const char *dir, const char *name);

/* The file a setting came from: an @include'd file's own path, so that its
 * errors point into it. */
static const char *setting_file(load_ctx *lc, config_setting_t *s, const char *fallback) {
    const char *f = config_setting_source_file(s);
    if (!f) return fallback;
    for (size_t i = 0; i < lc->included.n; i++) {
        const char *p = lc->included.v[i];
        if (!strncmp(p, lc->dir, strlen(lc->dir)) && !strcmp(p + strlen(lc->dir) + 1, f)) return p;
    }
    char *p = include_path(lc->dir, f);
    ptr_vec_push(&lc->included, p);
    return p;
}

static void load_each(load_ctx *lc, config_setting_t *s, const char *file, const char *what,
                      void (*fn)(load_ctx *, config_setting_t *, const char *)) {
    if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
        conf_error(lc->errs, file, (int)config_setting_source_line(s),
                   "'%s' must be a list: %s = ( { ... }, { ... } );", what, what);
        return;
    }
    for (int i = 0; i < config_setting_length(s); i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        fn(lc, e, setting_file(lc, e, file));
    }
}

/* Only regular files are read: a FIFO would block the reader for ever, a
 * device could have side effects, and a directory is not a configuration.
 * NULL for a regular file, else what it is. */
static const char *not_regular(const char *path, int *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        *err = errno;
        return strerror(errno);
    }
    *err = 0;
    return S_ISREG(st.st_mode) ? NULL : file_type_name(st.st_mode);
}

/* Where libconfig will look for `@include "name"`: the configuration
 * directory (1.5 prefixes it to absolute names too). */
static char *include_path(const char *dir, const char *name) {
#if LIBCONFIG_VER_MAJOR > 1 || LIBCONFIG_VER_MINOR >= 7
    if (name[0] == '/') return xstrdup(name);
#endif
    return xasprintf("%s/%s", dir, name);
}

static int ident_char(char ch) {
    return isalnum((unsigned char)ch) || ch == '_' || ch == '*' || ch == '-' || ch == '.';
}

/* One number literal of the text: libconfig 1.5 keeps an integer written
 * without the L suffix in an int and truncates it without a word
 * (99999999999999999999 becomes -1, 4294967298 becomes 2), and takes
 * 1e999 as infinity. Returns the length of the literal. */
static size_t check_number(load_ctx *lc, const char *path, int line, const char *t, size_t avail) {
    size_t n = 0;
    if (t[0] == '-' || t[0] == '+') n++;
    int hex = n + 1 < avail && t[n] == '0' && (t[n + 1] == 'x' || t[n + 1] == 'X');
    int real = 0;
    while (n < avail) {
        char ch = t[n];
        if (isalnum((unsigned char)ch) || ch == '.') {
            if (ch == '.' || (!hex && (ch == 'e' || ch == 'E'))) real = 1;
            n++;
        } else if ((ch == '-' || ch == '+') && !hex && (t[n - 1] == 'e' || t[n - 1] == 'E')) {
            n++;
        } else {
            break;
        }
    }
    char lit[128];
    if (n >= sizeof lit) {
        conf_error(lc->errs, path, line, "number %.40s... is out of range", t);
        return n;
    }
    memcpy(lit, t, n);
    lit[n] = 0;
    errno = 0;
    char *end;
    if (real) {
        double v = strtod(lit, &end);
        if (!isfinite(v) || (errno == ERANGE && v != 0))
            conf_error(lc->errs, path, line, "number %s is out of range (not a finite number)", lit);
        return n;
    }
    int wide = n > 0 && (lit[n - 1] == 'L' || lit[n - 1] == 'l');
    long long v = strtoll(lit, &end, 0);
    if (end == lit) return n; /* not a number after all: libconfig will say */
    int overflow = errno == ERANGE;
    if (hex && !overflow && !wide) overflow = (unsigned long long)strtoull(lit, NULL, 0) > 0xffffffffull;
#if LIBCONFIG_VER_MAJOR == 1 && LIBCONFIG_VER_MINOR < 7
    if (!hex && !wide) overflow |= v < -2147483647LL - 1 || v > 2147483647LL;
#endif
    if (overflow)
        conf_error(lc->errs, path, line, "integer %s is out of range", lit);
    return n;
}

/* Checks the text libconfig would take on trust: number literals (above)
 * and @include directives, which must name regular files. Strings and
 * comments are skipped. Returns the number of errors. */
static size_t scan_text(load_ctx *lc, const char *path, const char *dir, const char *t,
                        size_t len) {
    size_t before = lc->errs->msgs.n;
    int line = 1, line_start = 1;
    for (size_t i = 0; i < len;) {
        char ch = t[i], next = i + 1 < len ? t[i + 1] : 0;
        if (ch == '\n') {
            line++;
            line_start = 1;
            i++;
            continue;
        }
        if (ch == '#' || (ch == '/' && next == '/')) {
            while (i < len && t[i] != '\n') i++;
            continue;
        }
        if (ch == '/' && next == '*') {
            for (i += 2; i < len && !(t[i] == '*' && i + 1 < len && t[i + 1] == '/'); i++)
                if (t[i] == '\n') line++;
            i += 2;
            continue;
        }
        if (ch == '"') {
            for (i++; i < len && t[i] != '"'; i++) {
                if (t[i] == '\\' && i + 1 < len) i++;
                if (t[i] == '\n') line++;
            }
            i++;
            line_start = 0;
            continue;
        }
        if (ch == '@' && line_start && len - i > 8 && !strncmp(t + i, "@include", 8)) {
            i += 8;
            while (i < len && (t[i] == ' ' || t[i] == '\t')) i++;
            if (i < len && t[i] == '"') {
                size_t from = ++i;
                while (i < len && t[i] != '"' && t[i] != '\n') i++;
                char *name = xasprintf("%.*s", (int)(i - from), t + from);
                char *inc = include_path(dir, name);
                int err;
                const char *why = not_regular(inc, &err);
                if (why && !err)
                    conf_error(lc->errs, path, line, "@include \"%s\": %s is %s, not a regular file: not read",
                               name, inc, why);
                free(inc);
                free(name);
            }
            continue;
        }
        if (!isspace((unsigned char)ch)) line_start = 0;
        if ((isdigit((unsigned char)ch) || ((ch == '-' || ch == '+') && isdigit((unsigned char)next))) &&
            (i == 0 || !ident_char(t[i - 1]))) {
            i += check_number(lc, path, line, t + i, len - i);
            continue;
        }
        i++;
    }
    return lc->errs->msgs.n - before;
}

/* The whole file, NUL-terminated; NULL (and an error) unless it is a
 * readable regular file. It is opened without blocking and checked again
 * after opening, in case it was replaced in between. */
static char *read_conf_file(load_ctx *lc, const char *path, size_t *len) {
    int err;
    const char *why = not_regular(path, &err);
    if (why) {
        if (err)
            conf_error(lc->errs, path, 0, "cannot read: %s", why);
        else
            conf_error(lc->errs, path, 0, "is %s, not a configuration file: not read", why);
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        conf_error(lc->errs, path, 0, "cannot read: %s",
                   fd < 0 || errno ? strerror(errno) : "not a regular file");
        if (fd >= 0) close(fd);
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = xrealloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            conf_error(lc->errs, path, 0, "cannot read: %s", strerror(errno));
            close(fd);
            free(buf);
            return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void load_file(load_ctx *lc, const char *path, const char *dir) {
    size_t len = 0;
    char *text = read_conf_file(lc, path, &len);
    if (!text) return;
    if (strlen(text) != len) {
        conf_error(lc->errs, path, 0, "holds a NUL byte: not a text file");
        free(text);
        return;
    }
    if (scan_text(lc, path, dir, text, len)) {
        free(text);
        return;
    }
    config_t cfg;
    config_init(&cfg);
    config_set_include_dir(&cfg, dir);
    int ok = config_read_string(&cfg, text);
    free(text);
    if (!ok) {
        char *inc = config_error_file(&cfg) ? include_path(dir, config_error_file(&cfg)) : NULL;
        conf_error(lc->errs, inc ? inc : path, config_error_line(&cfg), "syntax error: %s",
                   config_error_text(&cfg));
        free(inc);
        config_destroy(&cfg);
        return;
    }
    config_setting_t *root = config_root_setting(&cfg);
    for (int i = 0; i < config_setting_length(root); i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s), *file = setting_file(lc, s, path);
        if (!strcmp(name, "core"))
            load_core(lc, s, file);
        else if (!strcmp(name, "defaults"))
            load_defaults(lc, s, file);
        else if (!strcmp(name, "recovery"))
            load_recovery(lc, s, file);
        else if (!strcmp(name, "endpoints"))
            load_each(lc, s, file, "endpoints", load_endpoint);
        else if (!strcmp(name, "instance"))
            load_instance(lc, s, file);
        else if (!strcmp(name, "instances"))
            load_each(lc, s, file, "instances", load_instance);
        else if (!strcmp(name, "chains"))
            load_each(lc, s, file, "chains", load_chain);
        else
            conf_error(lc->errs, file, (int)config_setting_source_line(s),
                       "unknown top-level key '%s' (expected core, defaults, recovery, "
                       "endpoints, instance, instances, chains)",
                       name);
    }
    config_destroy(&cfg);
}

static int conf_file_name(const struct dirent *d) {
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 5 && !strcmp(d->d_name + n - 5, ".conf");
}

/* The instance's settings checked against its plugin: table, then the
 * plugin's own check. */
static int finish_instance(conf_instance *ci, const json_t *raw, const json_t *lines,
                           int settings_line, const char *plugin_path, conf_errors *errs) {
    char err[512];
    const char *file = ci->file ? ci->file : "(settings)";
    ci->lp = loader_find(ci->plugin, plugin_path, err, sizeof err);
    if (!ci->lp) {
        conf_error(errs, file, ci->line, "instance '%s': %s", ci->name, err);
        return -1;
    }
    const tolk_plugin *d = ci->lp->desc;
    size_t before = errs->msgs.n;
    char what[160];
    snprintf(what, sizeof what, "settings of instance '%s' (plugin %s)", ci->name, d->name);
    ci->settings = check_object(raw, lines, settings_line, d->options, what, file, errs);
    ci->lines = json_incref((json_t *)lines);
    if (errs->msgs.n != before) return -1;
    if (d->check_config) {
        tolk_config_error ce = {0};
        tolk_status st = d->check_config(ci->settings, &ce);
        if (st != TOLK_OK) {
            ce.message[sizeof ce.message - 1] = 0;
            conf_error(errs, file, line_of(lines, ce.key, settings_line), "instance '%s': %s%s%s",
                       ci->name, ce.key ? ce.key : "", ce.key ? ": " : "",
                       ce.message[0] ? ce.message : "rejected by the plugin");
            return -1;
        }
    }
    return 0;
}

conf_instance *conf_instance_from_json(const char *name, const char *plugin,
                                       const json_t *settings, const char *plugin_path,
                                       conf_errors *errs) {
    conf_instance *ci = xcalloc(1, sizeof *ci);
    ci->name = xstrdup(name);
    ci->plugin = xstrdup(plugin);
    ci->file = xasprintf("instance %s", name);
    json_t *lines = json_object();
    json_t *empty = json_object();
    int rc = finish_instance(ci, settings ? settings : empty, lines, 0, plugin_path, errs);
    json_decref(lines);
    json_decref(empty);
    if (rc) {
        conf_instance_free(ci);
        return NULL;
    }
    return ci;
}

const char *conf_plugin_path(const conf_set *cs, const char *override) {
    if (override && *override) return override;
    const char *env = getenv("TOLK_PLUGIN_PATH");
    if (env && *env) return env;
    if (cs && cs->core.plugin_path) return cs->core.plugin_path;
    return TOLK_PLUGINDIR;
}

conf_set *conf_new_empty(void) {
    conf_set *cs = xcalloc(1, sizeof *cs);
    cs->core.max_channels = 1000;
    cs->core.drain_timeout = 30;
    cs->core.log_level = TOLK_LOG_INFO;
    cs->core.workers = 2;
    cs->core.translation_cache = 1000;
    cs->core.mt_context = 2;
    cs->core.max_phrase_seconds = 20;
    cs->core.max_backlog_seconds = 30;
    cs->core.max_lag_seconds = 1.5;
    cs->core.max_speedup = 1.5;
    cs->defaults.mode = TOLK_MODE_BIDIRECTIONAL;
    cs->defaults.caller_language = xstrdup("en");
    cs->defaults.callee_language = xstrdup("es");
    json_t *empty = json_object(), *lines = json_object();
    conf_errors none = {0};
    json_t *v = check_object(empty, lines, 0, recovery_opts, "recovery", "", &none);
    fill_recovery(&cs->recovery, v);
    json_decref(v);
    json_decref(empty);
    json_decref(lines);
    conf_errors_free(&none);
    return cs;
}

static void check_chains(load_ctx *lc) {
    conf_set *cs = lc->cs;
    for (size_t i = 0; i < cs->chains.n; i++) {
        conf_chain *ch = cs->chains.v[i];
        for (size_t p = 0; p < ch->providers.n; p++) {
            const char *iname = ch->providers.v[p];
            const conf_instance *ci = conf_find_instance(cs, iname);
            if (!ci) {
                int failed = 0;
                for (size_t j = 0; j < lc->failed.n; j++)
                    if (!strcmp(lc->failed.v[j], iname)) failed = 1;
                if (!failed)
                    conf_error(lc->errs, ch->file, ch->line, "chain '%s' names unknown instance '%s'",
                               ch->name, iname);
                continue;
            }
            if (ci->lp && ci->lp->desc->kind != ch->kind)
                conf_error(lc->errs, ch->file, ch->line,
                           "chain '%s' is of kind %s but instance '%s' is a %s plugin (%s)",
                           ch->name, loader_kind_name(ch->kind), iname,
                           loader_kind_name(ci->lp->desc->kind), ci->plugin);
            for (size_t q = 0; q < p; q++)
                if (!strcmp(ch->providers.v[q], iname))
                    conf_error(lc->errs, ch->file, ch->line, "chain '%s' names instance '%s' twice",
                               ch->name, iname);
        }
    }
}

conf_set *conf_load_dir(const char *dir, const char *plugin_path, conf_errors *errs) {
    load_ctx lc = {0};
    lc.cs = conf_new_empty();
    lc.cs->dir = xstrdup(dir);
    lc.errs = errs;
    lc.dir = dir;
    size_t before = errs->msgs.n;

    struct dirent **names = NULL;
    int n = scandir(dir, &names, conf_file_name, alphasort);
    if (n < 0) {
        conf_error(errs, dir, 0, "cannot read configuration directory: %s", strerror(errno));
    } else if (n == 0) {
        conf_error(errs, dir, 0, "no *.conf files in the configuration directory");
    }
    ptr_vec files = {0};
    for (int i = 0; i < n; i++) {
        char *path = xasprintf("%s/%s", dir, names[i]->d_name);
        ptr_vec_push(&files, path);
        load_file(&lc, path, dir);
        free(names[i]);
    }
    free(names);

    const char *pp = conf_plugin_path(lc.cs, plugin_path);
    for (size_t i = 0; i < lc.pending.n; i++) {
        pending_instance *pi = lc.pending.v[i];
        if (finish_instance(pi->ci, pi->raw, pi->lines, pi->settings_line, pp, errs) == 0)
            ptr_vec_push(&lc.cs->instances, pi->ci);
        else {
            ptr_vec_push(&lc.failed, xstrdup(pi->ci->name));
            conf_instance_free(pi->ci);
        }
        json_decref(pi->raw);
        json_decref(pi->lines);
        free(pi);
    }
    ptr_vec_free(&lc.pending);
    check_chains(&lc);
    for (size_t i = 0; i < lc.failed.n; i++) free(lc.failed.v[i]);
    ptr_vec_free(&lc.failed);

    name_table_free(&lc.seen);
    for (size_t i = 0; i < lc.included.n; i++) free(lc.included.v[i]);
    ptr_vec_free(&lc.included);
    for (size_t i = 0; i < files.n; i++) free(files.v[i]);
    ptr_vec_free(&files);
    free(lc.core_file);
    if (errs->msgs.n != before) {
        conf_free(lc.cs);
        return NULL;
    }
    return lc.cs;
}

const conf_instance *conf_find_instance(const conf_set *cs, const char *name) {
    for (size_t i = 0; cs && i < cs->instances.n; i++) {
        conf_instance *ci = cs->instances.v[i];
        if (!strcmp(ci->name, name)) return ci;
    }
    return NULL;
}

void conf_instance_free(conf_instance *ci) {
    if (!ci) return;
    free(ci->name);
    free(ci->plugin);
    free(ci->file);
    json_decref(ci->settings);
    json_decref(ci->lines);
    free(ci);
}

void conf_free(conf_set *cs) {
    if (!cs) return;
    for (size_t i = 0; i < cs->instances.n; i++) conf_instance_free(cs->instances.v[i]);
    ptr_vec_free(&cs->instances);
    for (size_t i = 0; i < cs->chains.n; i++) {
        conf_chain *ch = cs->chains.v[i];
        strlist_free(&ch->providers);
        strlist_free(&ch->languages);
        strlist_free(&ch->pairs);
        free(ch->name);
        free(ch->file);
        free(ch);
    }
    ptr_vec_free(&cs->chains);
    for (size_t i = 0; i < cs->endpoints.n; i++) {
        conf_endpoint *ep = cs->endpoints.v[i];
        free(ep->name);
        free(ep->language);
        free(ep->voice);
        free(ep->glossary);
        free(ep->formality);
        free(ep);
    }
    ptr_vec_free(&cs->endpoints);
    free(cs->core.plugin_path);
    free(cs->defaults.caller_language);
    free(cs->defaults.callee_language);
    free(cs->dir);
    free(cs);
}
