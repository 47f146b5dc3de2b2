/* dlopen()s plugins and checks them before anything runs: the entry
 * symbol, ABI major/minor, build fingerprint, kind and mandatory members.
 * Modules stay loaded for the life of the process: recovery swaps
 * instances, never code. */
#ifndef TOLK_CORE_LOADER_H
#define TOLK_CORE_LOADER_H

#include <stddef.h>
#include <tolk/plugin.h>

typedef struct loaded_plugin {
    struct loaded_plugin *next;
    char *name;
    char *path;
    void *dl;
    const tolk_plugin *desc;
    int process_state; /* process hooks: 0 not run, 1 loaded, -1 refused */
} loaded_plugin;

/* Load one file and check it. NULL and a message in err on refusal. */
const loaded_plugin *loader_open(const char *path, char *err, size_t errlen);
/* Find NAME in the colon-separated search path (NAME.so, NAME/.libs/NAME.so,
 * .libs/NAME.so in each directory) and load it, once. */
const loaded_plugin *loader_find(const char *name, const char *search_path, char *err,
                                 size_t errlen);
const char *loader_kind_name(tolk_kind kind);
int loader_kind_parse(const char *name); /* -1 if unknown */
/* Reads a member of a kind table only if the plugin's table is long enough. */
#define DESC_HAS(desc, type, member) \
    ((desc)->size >= offsetof(type, member) + sizeof(((type *)0)->member))
#define DESC_FN(desc, type, member) \
    (DESC_HAS(desc, type, member) ? ((const type *)(desc))->member : NULL)
/* Runs the plugin's process-wide load hook once, before its first
 * instance; TOLK_OK, or the plugin refused to start in this process. */
tolk_status loader_process_load(const loaded_plugin *lp, const tolk_host *host);
/* Runs unload hooks and dlclose()s everything (at exit). */
void loader_unload_all(void);

#endif
