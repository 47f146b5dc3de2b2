#include "loader.h"

#include <ctype.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static loaded_plugin *g_loaded;

static const char *const kind_names[] = {NULL, "transport", "stt", "mt", "tts", "metrics"};

const char *loader_kind_name(tolk_kind kind) {
    return kind >= TOLK_KIND_TRANSPORT && kind <= TOLK_KIND_METRICS ? kind_names[kind] : "?";
}

int loader_kind_parse(const char *name) {
    for (int k = TOLK_KIND_TRANSPORT; k <= TOLK_KIND_METRICS; k++)
        if (name && !strcmp(name, kind_names[k])) return k;
    return -1;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Which members each kind cannot do without, checked at load rather than at
 * first use so a broken plugin fails at start-up, not in the middle of a call. */
static const char *missing_member(const tolk_plugin *d) {
    if (!d->create) return "create";
    if (!d->destroy) return "destroy";
    switch (d->kind) {
    case TOLK_KIND_TRANSPORT:
        if (!DESC_FN(d, tolk_transport, start)) return "start";
        if (!DESC_FN(d, tolk_transport, stop)) return "stop";
        if (!DESC_FN(d, tolk_transport, play)) return "play";
        if (!DESC_FN(d, tolk_transport, hangup)) return "hangup";
        break;
    case TOLK_KIND_STT:
        if (!DESC_FN(d, tolk_stt, open)) return "open";
        if (!DESC_FN(d, tolk_stt, feed)) return "feed";
        if (!DESC_FN(d, tolk_stt, close)) return "close";
        break;
    case TOLK_KIND_MT:
        if (!DESC_FN(d, tolk_mt, translate)) return "translate";
        if (!DESC_FN(d, tolk_mt, cancel)) return "cancel";
        break;
    case TOLK_KIND_TTS:
        if (!DESC_FN(d, tolk_tts, speak)) return "speak";
        if (!DESC_FN(d, tolk_tts, cancel)) return "cancel";
        break;
    case TOLK_KIND_METRICS:
        break;
    }
    return NULL;
}

static int check_options(const tolk_plugin *d, char *err, size_t errlen, const char *path) {
    for (const tolk_option *o = d->options; o && o->key; o++) {
        if (o->type < TOLK_OPT_BOOL || o->type > TOLK_OPT_MAP) {
            snprintf(err, errlen, "%s: option '%s' has an unknown type %d", path, o->key,
                     (int)o->type);
            return -1;
        }
    }
    return 0;
}

/* The data model of a fingerprint: "p8l8" from any version of the string
 * ("p8l8o64-ev4-jansson2" from ABI 1.0/1.1 included). */
static int data_model(const char *fp, unsigned *ptr, unsigned *lng) {
    return fp && sscanf(fp, "p%ul%u", ptr, lng) == 2;
}

/* Libraries whose types cross the ABI: a plugin linked against another
 * major of one of them would hand the core objects of another layout. */
static const char *const abi_libs[] = {"libjansson.so.", "libev.so.", "libwebsockets.so."};

/* Calls fn for each DT_NEEDED entry of a loaded object. glibc has already
 * relocated the string table's address in the dynamic section. */
static void each_needed(struct link_map *lm, void (*fn)(void *ud, const char *soname), void *ud) {
    if (!lm || !lm->l_ld) return;
    const char *strtab = NULL;
    for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_STRTAB) strtab = (const char *)d->d_un.d_ptr;
    if (!strtab) return;
    for (const ElfW(Dyn) *d = lm->l_ld; d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_NEEDED) fn(ud, strtab + d->d_un.d_val);
}

typedef struct sonames {
    char v[ARRAY_LEN(abi_libs)][64];
} sonames;

static void note_soname(void *ud, const char *soname) {
    sonames *sn = ud;
    for (size_t i = 0; i < ARRAY_LEN(abi_libs); i++)
        if (!strncmp(soname, abi_libs[i], strlen(abi_libs[i])))
            snprintf(sn->v[i], sizeof sn->v[i], "%s", soname);
}

/* What this process runs with: the sonames the loaded objects (tolkd, its
 * libraries) were linked against. */
static void process_sonames(sonames *sn) {
    memset(sn, 0, sizeof *sn);
    void *self = dlopen(NULL, RTLD_NOW);
    struct link_map *lm = NULL;
    if (self && dlinfo(self, RTLD_DI_LINKMAP, &lm) == 0) {
        while (lm && lm->l_prev) lm = lm->l_prev;
        for (; lm; lm = lm->l_next) each_needed(lm, note_soname, sn);
    }
    if (self) dlclose(self);
}

typedef struct needed_check {
    sonames mine;
    char *buf;
    size_t len;
    int bad;
} needed_check;

static void check_soname(void *ud, const char *soname) {
    needed_check *nc = ud;
    for (size_t i = 0; i < ARRAY_LEN(abi_libs) && !nc->bad; i++) {
        if (strncmp(soname, abi_libs[i], strlen(abi_libs[i])) || !nc->mine.v[i][0] ||
            !strcmp(soname, nc->mine.v[i]))
            continue;
        snprintf(nc->buf, nc->len,
                 "linked against %s, but tolkd runs with %s (their types cross the plugin ABI): "
                 "rebuild the plugin",
                 soname, nc->mine.v[i]);
        nc->bad = 1;
    }
}

/* NULL, or why the plugin's libraries do not match the process's. */
static const char *library_mismatch(void *dl, char *buf, size_t len) {
    struct link_map *lm = NULL;
    if (dlinfo(dl, RTLD_DI_LINKMAP, &lm) != 0 || !lm) return NULL;
    needed_check nc = {.buf = buf, .len = len};
    process_sonames(&nc.mine);
    each_needed(lm, check_soname, &nc);
    return nc.bad ? buf : NULL;
}

/* The e_ident class and e_machine of an ELF file; -1 if it is not one. */
static int elf_header(const char *path, int *elf_class, unsigned *machine) {
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    if (n != (ssize_t)sizeof h || memcmp(h, ELFMAG, SELFMAG)) return -1;
    *elf_class = h[EI_CLASS];
    /* e_machine is at offset 18 in both classes, in the file's byte order */
    *machine = h[EI_DATA] == ELFDATA2MSB ? (unsigned)h[18] << 8 | h[19] : (unsigned)h[19] << 8 | h[18];
    return 0;
}

/* glibc reports a shared object built for another machine as "No such
 * file or directory"; the ELF header says what is wrong. 1 with a message
 * in buf if the file is an ELF object of another class or machine than
 * this program. */
static int elf_mismatch(const char *path, char *buf, size_t len) {
    int cls, own_cls;
    unsigned machine, own_machine;
    if (elf_header(path, &cls, &machine) || elf_header("/proc/self/exe", &own_cls, &own_machine))
        return 0;
    if (cls != own_cls)
        snprintf(buf, len, "built for %s-bit ELF, this tolkd is %s-bit", cls == ELFCLASS32 ? "32" : "64",
                 own_cls == ELFCLASS32 ? "32" : "64");
    else if (machine != own_machine)
        snprintf(buf, len, "built for another machine (e_machine %u; this tolkd runs on e_machine %u)",
                 machine, own_machine);
    else
        return 0;
    return 1;
}

const loaded_plugin *loader_open(const char *path, char *err, size_t errlen) {
    for (loaded_plugin *lp = g_loaded; lp; lp = lp->next)
        if (!strcmp(lp->path, path)) return lp;

    /* dlopen() of a FIFO would wait for a writer for ever */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: refused: it is %s, not a shared object", path,
                 file_type_name(st.st_mode));
        return NULL;
    }
    dlerror();
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *why = dlerror();
        char elf[160];
        snprintf(err, errlen, "%s: cannot load: %s", path,
                 elf_mismatch(path, elf, sizeof elf) ? elf : why ? why : "dlopen failed");
        return NULL;
    }
    tolk_plugin_entry_fn entry;
    *(void **)&entry = dlsym(dl, TOLK_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(err, errlen, "%s: not a tolk plugin: no symbol %s", path,
                 TOLK_PLUGIN_ENTRY_SYMBOL);
        dlclose(dl);
        return NULL;
    }
    const tolk_plugin *d = entry(TOLK_ABI_MAJOR, TOLK_ABI_MINOR);
    const char *why = NULL;
    char buf[320];
    unsigned ptr_size = 0, long_size = 0;
    if (!d) {
        why = "its entry returned no descriptor";
    } else if (d->abi_major != TOLK_ABI_MAJOR) {
        snprintf(buf, sizeof buf,
                 "built for plugin ABI %u.%u, this tolkd speaks %u.%u: rebuild the plugin "
                 "against this version's tolk/plugin.h",
                 d->abi_major, d->abi_minor, TOLK_ABI_MAJOR, TOLK_ABI_MINOR);
        why = buf;
    } else if (d->abi_minor > TOLK_ABI_MINOR) {
        /* a plugin that can run here says so by answering with our minor */
        snprintf(buf, sizeof buf,
                 "built for plugin ABI %u.%u, newer than this tolkd's %u.%u, and it does not offer "
                 "to run on %u.%u (TOLK_PLUGIN_DEFINE_COMPAT): upgrade tolkd",
                 d->abi_major, d->abi_minor, TOLK_ABI_MAJOR, TOLK_ABI_MINOR, TOLK_ABI_MAJOR,
                 TOLK_ABI_MINOR);
        why = buf;
    } else if (d->size < sizeof(tolk_plugin)) {
        snprintf(buf, sizeof buf, "descriptor too short (%u bytes)", d->size);
        why = buf;
    } else if (!data_model(d->build_abi, &ptr_size, &long_size) ||
               ptr_size != sizeof(void *) || long_size != sizeof(long)) {
        snprintf(buf, sizeof buf, "build fingerprint '%s' does not match tolkd's '%s' (another data model)",
                 d->build_abi ? d->build_abi : "(none)", TOLK_BUILD_ABI);
        why = buf;
    } else if (d->kind < TOLK_KIND_TRANSPORT || d->kind > TOLK_KIND_METRICS) {
        snprintf(buf, sizeof buf, "unknown plugin kind %d", (int)d->kind);
        why = buf;
    } else if (!d->name || !*d->name) {
        why = "descriptor has no name";
    } else {
        const char *m = missing_member(d);
        if (m) {
            snprintf(buf, sizeof buf, "%s plugin '%s' lacks the mandatory member '%s'",
                     loader_kind_name(d->kind), d->name, m);
            why = buf;
        } else {
            why = library_mismatch(dl, buf, sizeof buf);
        }
    }
    if (why) {
        snprintf(err, errlen, "%s: refused: %s", path, why);
        dlclose(dl);
        return NULL;
    }
    if (check_options(d, err, errlen, path)) {
        dlclose(dl);
        return NULL;
    }
    loaded_plugin *lp = xcalloc(1, sizeof *lp);
    lp->name = xstrdup(d->name);
    lp->path = xstrdup(path);
    lp->dl = dl;
    lp->desc = d;
    lp->next = g_loaded;
    g_loaded = lp;
    log_msg(TOLK_LOG_VERB, "loader", "loaded %s plugin %s %s from %s", loader_kind_name(d->kind),
            d->name, d->version ? d->version : "", path);
    return lp;
}

static int valid_plugin_name(const char *name) {
    if (!name || !*name || strlen(name) > 64) return 0;
    for (const char *p = name; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')) return 0;
    return 1;
}

static const loaded_plugin *find_unlocked(const char *name, const char *search_path, char *err,
                                          size_t errlen);

/* tolkd reads conf.d, and so loads plugins, on its reload thread while the
 * loop runs: one search at a time. */
static pthread_mutex_t g_find_lock = PTHREAD_MUTEX_INITIALIZER;

const loaded_plugin *loader_find(const char *name, const char *search_path, char *err,
                                 size_t errlen) {
    pthread_mutex_lock(&g_find_lock);
    const loaded_plugin *lp = find_unlocked(name, search_path, err, errlen);
    pthread_mutex_unlock(&g_find_lock);
    return lp;
}

static const loaded_plugin *find_unlocked(const char *name, const char *search_path, char *err,
                                          size_t errlen) {
    if (!valid_plugin_name(name)) {
        snprintf(err, errlen, "invalid plugin name '%s' (lower-case letters, digits, _)",
                 name ? name : "");
        return NULL;
    }
    for (loaded_plugin *lp = g_loaded; lp; lp = lp->next) {
        const char *b = base_name(lp->path);
        size_t n = strlen(name);
        if (!strncmp(b, name, n) && !strcmp(b + n, ".so")) return lp;
    }
    char *dirs = xstrdup(search_path ? search_path : TOLK_PLUGINDIR);
    char *save = NULL;
    const loaded_plugin *found = NULL;
    int seen = 0;
    for (char *dir = strtok_r(dirs, ":", &save); dir && !found && !seen;
         dir = strtok_r(NULL, ":", &save)) {
        static const char *const layouts[] = {"%s/%s.so", "%s/%s/.libs/%s.so", "%s/.libs/%s.so"};
        for (size_t i = 0; i < ARRAY_LEN(layouts); i++) {
            char *path = i == 1 ? xasprintf(layouts[i], dir, name, name)
                                : xasprintf(layouts[i], dir, name);
            struct stat st;
            if (stat(path, &st) == 0) {
                seen = 1;
                found = loader_open(path, err, errlen);
                free(path);
                break;
            }
            /* there, but unusable: say why rather than "unknown plugin" */
            int why = errno;
            if (why == ENOENT && lstat(path, &st) == 0) {
                seen = 1;
                snprintf(err, errlen, "%s: a symbolic link to a file that does not exist", path);
            } else if (why != ENOENT && why != ENOTDIR) {
                seen = 1;
                snprintf(err, errlen, "%s: %s", path,
                         why == ELOOP ? "a loop of symbolic links (too many levels)" : strerror(why));
            }
            free(path);
            if (seen) break;
        }
    }
    free(dirs);
    if (!found && !seen)
        snprintf(err, errlen, "unknown plugin '%s' (searched %s)", name,
                 search_path ? search_path : TOLK_PLUGINDIR);
    if (found && strcmp(found->desc->name, name)) {
        snprintf(err, errlen, "%s: its descriptor calls it '%s', not '%s'", found->path,
                 found->desc->name, name);
        return NULL;
    }
    return found;
}

/* The kind table's process hooks, if its table has them. */
static const tolk_process_hooks *hooks_of(const tolk_plugin *d) {
    const tolk_process_hooks *h = NULL;
    switch (d->kind) {
    case TOLK_KIND_TRANSPORT: h = DESC_HAS(d, tolk_transport, process) ? ((const tolk_transport *)d)->process : NULL; break;
    case TOLK_KIND_STT: h = DESC_HAS(d, tolk_stt, process) ? ((const tolk_stt *)d)->process : NULL; break;
    case TOLK_KIND_MT: h = DESC_HAS(d, tolk_mt, process) ? ((const tolk_mt *)d)->process : NULL; break;
    case TOLK_KIND_TTS: h = DESC_HAS(d, tolk_tts, process) ? ((const tolk_tts *)d)->process : NULL; break;
    case TOLK_KIND_METRICS: h = DESC_HAS(d, tolk_metrics, process) ? ((const tolk_metrics *)d)->process : NULL; break;
    }
    return h && h->size >= offsetof(tolk_process_hooks, unload) + sizeof h->unload ? h : NULL;
}

tolk_status loader_process_load(const loaded_plugin *clp, const tolk_host *host) {
    loaded_plugin *lp = (loaded_plugin *)clp;
    if (lp->process_state) return lp->process_state > 0 ? TOLK_OK : TOLK_E_FATAL;
    const tolk_process_hooks *h = hooks_of(lp->desc);
    tolk_status st = h && h->load ? h->load(host) : TOLK_OK;
    lp->process_state = st == TOLK_OK ? 1 : -1;
    if (st == TOLK_OK && h && h->load)
        log_msg(TOLK_LOG_VERB, "loader", "%s: process set-up done", lp->name);
    return st == TOLK_OK ? TOLK_OK : TOLK_E_FATAL;
}

void loader_unload_all(void) {
    while (g_loaded) {
        loaded_plugin *lp = g_loaded;
        g_loaded = lp->next;
        const tolk_process_hooks *h = lp->process_state > 0 ? hooks_of(lp->desc) : NULL;
        if (h && h->unload) h->unload();
        dlclose(lp->dl);
        free(lp->name);
        free(lp->path);
        free(lp);
    }
}
