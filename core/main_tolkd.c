/* tolkd: the translation daemon. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "core.h"
#include "log.h"
#include "metrics.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

enum { EXIT_CONFIG = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

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

static int write_pidfile(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "%ld\n", (long)getpid());
    return fclose(f);
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
        case 'V': printf("tolkd %s (plugin ABI %d.%d)\n", PACKAGE_VERSION, TOLK_ABI_MAJOR, TOLK_ABI_MINOR); return 0;
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

    /* Check before forking, so a bad configuration is reported on the
     * terminal of whoever started us, not only in syslog. */
    conf_errors errs = {0};
    conf_set *cs = conf_load_dir(confdir, plugin_path, &errs);
    if (!cs) {
        for (size_t i = 0; i < errs.msgs.n; i++) fprintf(stderr, "%s\n", (char *)errs.msgs.v[i]);
        fprintf(stderr, "tolkd: %zu error%s in %s\n", errs.msgs.n, errs.msgs.n == 1 ? "" : "s", confdir);
        conf_errors_free(&errs);
        return EXIT_CONFIG;
    }
    if (check) {
        printf("%s: configuration OK (%zu instances, %zu chains, %zu endpoints)\n", confdir,
               cs->instances.n, cs->chains.n, cs->endpoints.n);
        conf_free(cs);
        conf_errors_free(&errs);
        loader_unload_all();
        return 0;
    }
    if (!foreground && daemonize() != 0) {
        fprintf(stderr, "tolkd: cannot daemonize: %s\n", strerror(errno));
        return EXIT_RUNTIME;
    }
    log_open(!foreground, "tolkd");
    log_set_level(lvl >= 0 ? (tolk_log_level)lvl : (tolk_log_level)cs->core.log_level);
    if (pidfile && write_pidfile(pidfile) != 0)
        log_msg(TOLK_LOG_ERR, "core", "cannot write pid file %s: %s", pidfile, strerror(errno));

    core *c = core_new(confdir, plugin_path);
    c->log_level_override = lvl;
    int rc = core_apply(c, cs, &errs);
    for (size_t i = 0; i < errs.msgs.n; i++) log_msg(TOLK_LOG_ERR, "config", "%s", (char *)errs.msgs.v[i]);
    conf_errors_free(&errs);
    if (rc != 0) {
        core_free(c);
        if (pidfile) unlink(pidfile);
        return EXIT_CONFIG;
    }
    core_watch_signals(c);
    log_msg(TOLK_LOG_INFO, "core", "tolkd %s started (pid %ld, config %s, generation %u)",
            PACKAGE_VERSION, (long)getpid(), confdir, c->gen->id);
    if (core_start_transports(c) != 0) log_msg(TOLK_LOG_ERR, "core", "some transports failed to start");
    ev_ref(c->loop); /* a daemon runs until told to stop */
    ev_run(c->loop, 0);
    log_msg(TOLK_LOG_INFO, "core", "stopped: %llu calls served, %llu refused",
            (unsigned long long)c->total_channels, (unsigned long long)c->refused_channels);
    core_free(c);
    metrics_shutdown();
    loader_unload_all();
    if (pidfile) unlink(pidfile);
    log_close();
    return 0;
}
