/* tolkd: the translation daemon. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "version-git.h"

#include "conf.h"
#include "core.h"
#include "log.h"
#include "metrics.h"

/* configure's version, and the git description of the tree when it was
 * built from a git checkout */
#define TOLK_VERSION PACKAGE_VERSION TOLK_GIT_SUFFIX

enum { EXIT_CONFIG = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

/* One INFO line per translated phrase: what an operator reads to see that
 * calls are being translated (tolk-translate prints the same report). */
static void log_phrase(void *ud, const phrase_report *r) {
    (void)ud;
    if (!r->ok) return; /* a lost phrase is logged by the core as a warning */
    log_msg(TOLK_LOG_INFO, "phrase", "%s #%u %s->%s: \"%s\" -> \"%s\" (latency %.0f ms)", r->channel_id,
            r->seq, r->from, r->to, r->text ? r->text : "", r->translation ? r->translation : "",
            r->latency_ms);
}

/* One VERB line when a phrase's translation has been played out to the
 * listener (transports with played-out feedback: channel_played). */
static void log_phrase_ear(void *ud, const phrase_report *r) {
    (void)ud;
    log_msg(TOLK_LOG_VERB, "ear",
            "%s #%u %s->%s: played out to the listener %.0f ms after the speech ended",
            r->channel_id, r->seq, r->from, r->to, r->ear_latency_ms);
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: tolkd [OPTIONS]\n"
            "Translate live phone calls: speech in, translated speech out.\n\n"
            "  -c, --config DIR       configuration directory (default %s)\n"
            "  -f, --foreground       stay in the foreground and log to stderr\n"
            "  -p, --pidfile FILE     write the process id to FILE\n"
            "  -l, --log-level LEVEL  fatal, err, warn, info, verb or debug (default: core.log_level)\n"
            "  -P, --plugin-path DIRS colon-separated plugin directories (default %s;\n"
            "                         also TOLK_PLUGIN_PATH)\n"
            "  -t, --check-config     check the configuration, print FILE:LINE errors, exit 0 or 1\n"
            "      --describe PLUGIN  list a plugin's settings\n"
            "  -V, --version          print the version and exit\n"
            "  -h, --help             print this help and exit\n\n"
            "Signals: SIGHUP reloads the configuration; SIGTERM and SIGINT stop taking calls,\n"
            "let running calls finish (core.drain_timeout) and exit.\n"
            "See tolkd(8) and tolk.conf(5).\n",
            TOLK_CONFDIR, TOLK_PLUGINDIR);
}

static const char *opt_type_name(tolk_opt_type t) {
    static const char *const n[] = {"?", "bool", "int", "double", "string", "string list", "map"};
    return t >= TOLK_OPT_BOOL && t <= TOLK_OPT_MAP ? n[t] : "?";
}

static int describe(const char *name, const char *plugin_path) {
    char err[512];
    const loaded_plugin *lp = loader_find(name, conf_plugin_path(NULL, plugin_path), err, sizeof err);
    if (!lp) {
        fprintf(stderr, "tolkd: %s\n", err);
        return EXIT_CONFIG;
    }
    const tolk_plugin *d = lp->desc;
    printf("%s %s (%s plugin, ABI %u.%u)\n%s\nfile: %s\n\nsettings:\n", d->name,
           d->version ? d->version : "", loader_kind_name(d->kind), d->abi_major, d->abi_minor,
           d->description ? d->description : "", lp->path);
    for (const tolk_option *o = d->options; o && o->key; o++) {
        printf("  %-20s %-11s %s%s", o->key, opt_type_name(o->type),
               o->flags & TOLK_OPT_REQUIRED ? "required" : "default ",
               o->flags & TOLK_OPT_REQUIRED ? "" : "");
        if (!(o->flags & TOLK_OPT_REQUIRED))
            printf(" %s", o->default_value ? (o->flags & TOLK_OPT_SECRET ? "(secret)" : o->default_value) : "(none)");
        if (o->min != 0 || o->max != 0) printf("  [%g..%g]", o->min, o->max);
        printf("\n      %s\n", o->help ? o->help : "");
    }
    return 0;
}

static int daemonize(void) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid > 0) _exit(0);
    if (setsid() < 0) return -1;
    pid = fork();
    if (pid < 0) return -1;
    if (pid > 0) _exit(0);
    if (chdir("/") != 0) return -1;
    umask(022);
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2) close(fd);
    }
    return 0;
}

/* The pid file is locked (flock: the lock survives the fork into the
 * background) for as long as tolkd runs, so a second tolkd given the same
 * file refuses to start instead of overwriting it; and only the tolkd
 * that holds it removes it, if the name still leads to the file it locked. */
typedef struct pid_file {
    const char *path;
    int fd;
    dev_t dev;
    ino_t ino;
} pid_file;

static int pidfile_lock(pid_file *pf, const char *path) {
    pf->path = path;
    pf->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    struct stat st;
    if (pf->fd < 0 || fstat(pf->fd, &st) != 0) {
        fprintf(stderr, "tolkd: cannot write pid file %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "tolkd: pid file %s is %s, not a regular file\n", path, file_type_name(st.st_mode));
        close(pf->fd);
        pf->fd = -1;
        return -1;
    }
    if (flock(pf->fd, LOCK_EX | LOCK_NB) != 0) {
        int why = errno;
        char other[32] = "";
        ssize_t n = pread(pf->fd, other, sizeof other - 1, 0);
        other[n > 0 ? n : 0] = 0;
        other[strcspn(other, "\n")] = 0;
        if (why == EWOULDBLOCK)
            fprintf(stderr, "tolkd: pid file %s is locked by another tolkd (pid %s): not starting\n",
                    path, other[0] ? other : "unknown");
        else
            fprintf(stderr, "tolkd: cannot lock pid file %s: %s\n", path, strerror(why));
        close(pf->fd);
        pf->fd = -1;
        return -1;
    }
    pf->dev = st.st_dev;
    pf->ino = st.st_ino;
    return 0;
}

static int pidfile_write(pid_file *pf) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(pf->fd, 0) != 0 || pwrite(pf->fd, buf, (size_t)n, 0) != n) return -1;
    return 0;
}

static void pidfile_remove(pid_file *pf) {
    if (pf->fd < 0) return;
    struct stat st;
    if (stat(pf->path, &st) == 0 && st.st_dev == pf->dev && st.st_ino == pf->ino) unlink(pf->path);
    close(pf->fd);
    pf->fd = -1;
}

/* The daemon changes to / before it runs: every path of the command line
 * is made absolute first, or a SIGHUP would re-read conf.d from /. */
static char *absolute(const char *path) {
    if (!path || path[0] == '/' || !path[0]) return path ? xstrdup(path) : NULL;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return xstrdup(path);
    return xasprintf("%s/%s", cwd, path);
}

static char *absolute_list(const char *dirs) {
    if (!dirs) return NULL;
    char *copy = xstrdup(dirs), *out = xstrdup(""), *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *a = absolute(d), *joined = xasprintf("%s%s%s", out, *out ? ":" : "", a);
        free(a);
        free(out);
        out = joined;
    }
    free(copy);
    return out;
}

/* Signals nobody should send us must not end the daemon without a drain
 * (and leave its pid file behind): before the loop watches them, and after. */
static void ignore_stray_signals(void) {
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGALRM, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"foreground", no_argument, NULL, 'f'},
                                         {"pidfile", required_argument, NULL, 'p'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"plugin-path", required_argument, NULL, 'P'},
                                         {"check-config", no_argument, NULL, 't'},
                                         {"describe", required_argument, NULL, 'D'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *confdir = TOLK_CONFDIR, *pidfile = NULL, *plugin_path = NULL, *level = NULL,
               *describe_name = NULL;
    int foreground = 0, check = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:fp:l:P:tVh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': confdir = optarg; break;
        case 'f': foreground = 1; break;
        case 'p': pidfile = optarg; break;
        case 'l': level = optarg; break;
        case 'P': plugin_path = optarg; break;
        case 't': check = 1; break;
        case 'D': describe_name = optarg; break;
        case 'V': printf("tolkd %s (plugin ABI %d.%d)\n", TOLK_VERSION, TOLK_ABI_MAJOR, TOLK_ABI_MINOR); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tolkd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    int lvl = -1;
    if (level && (lvl = log_level_parse(level)) < 0) {
        fprintf(stderr, "tolkd: unknown log level '%s'\n", level);
        return EXIT_USAGE;
    }
    if (describe_name) return describe(describe_name, plugin_path);
    ignore_stray_signals();
    char *confdir_abs = absolute(confdir), *pidfile_abs = absolute(pidfile),
         *plugin_path_abs = absolute_list(plugin_path ? plugin_path : getenv("TOLK_PLUGIN_PATH"));
    if (!check) {
        confdir = confdir_abs;
        pidfile = pidfile_abs;
        if (plugin_path_abs && *plugin_path_abs) plugin_path = plugin_path_abs;
    }
    int rc = 0;
    pid_file pf = {.fd = -1};

    /* Check before forking, so a bad configuration is reported on the
     * terminal of whoever started us, not only in syslog. */
    conf_errors errs = {0};
    conf_set *cs = conf_load_dir(confdir, plugin_path, &errs);
    if (!cs) {
        for (size_t i = 0; i < errs.msgs.n; i++) fprintf(stderr, "%s\n", (char *)errs.msgs.v[i]);
        fprintf(stderr, "tolkd: %zu error%s in %s\n", errs.msgs.n, errs.msgs.n == 1 ? "" : "s", confdir);
        rc = EXIT_CONFIG;
        goto out;
    }
    if (check) {
        printf("%s: configuration OK (%zu instances, %zu chains, %zu endpoints)\n", confdir,
               cs->instances.n, cs->chains.n, cs->endpoints.n);
        conf_free(cs);
        goto out;
    }
    /* before forking: the terminal of whoever started us hears why not */
    if (pidfile && pidfile_lock(&pf, pidfile) != 0) {
        conf_free(cs);
        rc = EXIT_RUNTIME;
        goto out;
    }
    if (!foreground && daemonize() != 0) {
        fprintf(stderr, "tolkd: cannot daemonize: %s\n", strerror(errno));
        conf_free(cs);
        rc = EXIT_RUNTIME;
        goto out;
    }
    log_open(!foreground, "tolkd");
    log_set_level(lvl >= 0 ? (tolk_log_level)lvl : (tolk_log_level)cs->core.log_level);
    if (pidfile && pidfile_write(&pf) != 0) {
        log_msg(TOLK_LOG_ERR, "core", "cannot write pid file %s: %s", pidfile, strerror(errno));
        conf_free(cs);
        rc = EXIT_RUNTIME;
        goto out;
    }

    core *c = core_new(confdir, plugin_path);
    c->log_level_override = lvl;
    c->obs.phrase = log_phrase;
    c->obs.phrase_ear = log_phrase_ear;
    int applied = core_apply(c, cs, &errs);
    for (size_t i = 0; i < errs.msgs.n; i++) log_msg(TOLK_LOG_ERR, "config", "%s", (char *)errs.msgs.v[i]);
    if (applied != 0) {
        core_free(c);
        /* tolkd(8): an instance that cannot be created is a runtime failure */
        rc = errs.runtime ? EXIT_RUNTIME : EXIT_CONFIG;
        goto out;
    }
    core_watch_signals(c);
    log_msg(TOLK_LOG_INFO, "core", "tolkd %s started (pid %ld, config %s, generation %u)",
            TOLK_VERSION, (long)getpid(), confdir, c->gen->id);
    if (core_start_transports(c) != 0) log_msg(TOLK_LOG_ERR, "core", "some transports failed to start");
    ev_ref(c->loop); /* a daemon runs until told to stop */
    ev_run(c->loop, 0);
    ignore_stray_signals();
    signal(SIGHUP, SIG_IGN);
    log_msg(TOLK_LOG_INFO, "core", "stopped: %llu calls served, %llu refused",
            (unsigned long long)c->total_channels, (unsigned long long)c->refused_channels);
    core_free(c);
    metrics_shutdown();
out:
    conf_errors_free(&errs);
    loader_unload_all();
    pidfile_remove(&pf);
    log_close();
    free(confdir_abs);
    free(pidfile_abs);
    free(plugin_path_abs);
    return rc;
}
