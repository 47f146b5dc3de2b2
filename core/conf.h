/* Reads a conf.d directory (libconfig files, name order) into a conf_set,
 * checking every value against a declared table so each error carries the
 * FILE:LINE it came from. Plugin settings are checked against the options
 * table of the plugin named (which loads it), then its check_config(). */
#ifndef TOLK_CORE_CONF_H
#define TOLK_CORE_CONF_H

#include <jansson.h>
#include <tolk/plugin.h>

#include "loader.h"
#include "util.h"

typedef struct conf_errors {
    ptr_vec msgs; /* char *, "FILE:LINE: message" */
    /* an instance could not be created (its plugin refused, or its create()
     * failed): the system's trouble, not the file's; tolkd exits 3, not 1 */
    int runtime;
} conf_errors;
void conf_error(conf_errors *e, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void conf_errors_free(conf_errors *e);

typedef struct conf_core {
    int max_channels;
    double drain_timeout;
    int log_level;
    int workers;
    char *plugin_path; /* NULL: default */
    int translation_cache; /* entries per MT instance; 0: off */
    int mt_context;        /* earlier phrases sent to MT plugins that use context */
    double max_phrase_seconds; /* a phrase this long is finalised; 0: never */
    int speculative_translation; /* translate on a recogniser's tentative end */
    double max_backlog_seconds; /* unfinished audio per direction of a call */
    /* playback.c: translated speech that would start more than this after
     * the end of its phrase is played faster, up to max_speedup */
    double max_lag_seconds;
    double max_speedup; /* 1: never faster */
} conf_core;

typedef struct conf_defaults {
    tolk_mode mode;
    char *caller_language, *callee_language;
} conf_defaults;

/* The recovery hierarchy's numbers (spec: "Recovery hierarchy"). */
typedef struct conf_recovery {
    int soft_retries;       /* tier 1: retries on the same provider */
    double soft_delay;      /* first retry delay, seconds */
    double backoff;         /* delay multiplier per retry */
    double jitter;          /* +- fraction of the delay */
    int hard_reset;         /* tier 2 on/off */
    double hard_timeout;    /* a reset that takes longer has failed */
    double failover_timeout;/* request timeout on a backup just failed over to */
    double reset_cooldown;  /* tier 4: at most one full reset of a chain per this */
    int min_operations;     /* no health downgrade before this many operations */
    int window_operations;  /* success rate over the last N operations... */
    double window_seconds;  /* ...within this many seconds */
    double health_interval; /* health probe period */
    double request_timeout; /* MT request, TTS silence between chunks */
    double stt_timeout;     /* speech with no result from the recogniser */
    double replay_seconds;  /* audio kept per direction for an STT failover */
    int failback_running;   /* running calls return to a recovered primary */
} conf_recovery;

typedef struct conf_instance {
    char *name;
    char *plugin;
    const loaded_plugin *lp;
    json_t *settings;   /* validated, defaults filled */
    json_t *lines;      /* settings key -> line */
    char *file;
    int line;
} conf_instance;

typedef struct conf_chain {
    char *name;
    tolk_kind kind;
    ptr_vec providers; /* char * instance names, primary first */
    ptr_vec languages; /* char *; empty = any */
    ptr_vec pairs;     /* char * "en-es"; empty = any */
    char *file;
    int line;
} conf_chain;

typedef struct conf_endpoint {
    char *name, *language, *voice;
    char *glossary, *formality; /* for MT requests of this endpoint's speech */
    int clone_voice;            /* lend the TTS this party's speech to clone */
    double clone_seconds;
} conf_endpoint;

typedef struct conf_set {
    char *dir;
    conf_core core;
    conf_defaults defaults;
    conf_recovery recovery;
    ptr_vec instances; /* conf_instance * */
    ptr_vec chains;    /* conf_chain * */
    ptr_vec endpoints; /* conf_endpoint * */
} conf_set;

/* plugin_path: overrides core.plugin_path (command line, environment).
 * Returns NULL when errors were found (all of them are in *errs). */
conf_set *conf_load_dir(const char *dir, const char *plugin_path, conf_errors *errs);
/* A conf_set with defaults only: for tolk-translate's own instances and tests. */
conf_set *conf_new_empty(void);
/* Check one instance's settings (JSON in) against its plugin. */
conf_instance *conf_instance_from_json(const char *name, const char *plugin,
                                       const json_t *settings, const char *plugin_path,
                                       conf_errors *errs);
void conf_instance_free(conf_instance *ci);
void conf_free(conf_set *cs);
const conf_instance *conf_find_instance(const conf_set *cs, const char *name);
/* The plugin search path in force: override, TOLK_PLUGIN_PATH, core.plugin_path, built in. */
const char *conf_plugin_path(const conf_set *cs, const char *override);
const char *conf_mode_name(tolk_mode mode);
int conf_mode_parse(const char *s); /* -1 if unknown */

#endif
