/* tolk-translate: one WAV file through the core's pipeline as one call. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "core.h"
#include "log.h"
#include "metrics.h"
#include "version-git.h"

enum { EXIT_INPUT = 1, EXIT_USAGE = 2, EXIT_PIPELINE = 3 };
/* Interrupted by a signal: 128 + its number, as a shell reports it. */
#define EXIT_SIGNAL_BASE 128
#define DEFAULT_INPUT_TIMEOUT 10.0

typedef struct run {
    int json, realtime;
    size_t phrases, lost, recovered;
    double *lat, *lag;
    size_t nlat, cap, nlag, lag_cap;
    size_t faster; /* phrases played faster than synthesised (running behind) */
    core *c;
    int ended;
    const char *cut_short; /* why the call was ended before it finished, or NULL */
} run;

static void usage(FILE *f) {
    fprintf(f,
            "Usage: tolk-translate [OPTIONS] --from LANG --to LANG IN.wav OUT.wav\n"
            "Run one recording through tolk's pipeline as one call and write the translation.\n\n"
            "  -c, --config DIR       configuration directory (default %s)\n"
            "      --from LANG        language spoken in IN.wav (default: caller_language)\n"
            "      --to LANG          language to translate into (default: callee_language)\n"
            "      --voice VOICE      voice profile for the synthesiser\n"
            "      --realtime         feed the file at a call's pace (20 ms per frame) and report\n"
            "                         the time from the end of each phrase to its first translated frame\n"
            "      --json             one JSON object per phrase, then a summary object\n"
            "      --input-timeout SEC  IN.wav is a FIFO: wait this long for a writer and for\n"
            "                         each further piece of input (default 10)\n"
            "  -P, --plugin-path DIRS plugin directories (also TOLK_PLUGIN_PATH)\n"
            "  -l, --log-level LEVEL  fatal, err, warn (default), info, verb, debug\n"
            "  -V, --version, -h, --help\n\n"
            "IN.wav: 16-bit PCM, mono or stereo, 8000/16000/22050/44100/48000 Hz.\n"
            "OUT.wav: 16 kHz mono 16-bit PCM. See tolk-translate(1).\n",
            TOLK_CONFDIR);
}

static void json_ms(json_t *o, const char *key, double ms) {
    json_object_set_new(o, key, ms >= 0 ? json_real(round(ms * 10) / 10) : json_null());
}

static void on_phrase(void *ud, const phrase_report *r) {
    run *R = ud;
    R->phrases++;
    if (!r->ok) R->lost++;
    if (r->recovery_tier) R->recovered++;
    if (r->ok && R->realtime && r->latency_ms >= 0) {
        if (R->nlat == R->cap) {
            R->cap = R->cap ? R->cap * 2 : 32;
            R->lat = xrealloc(R->lat, R->cap * sizeof(double));
        }
        R->lat[R->nlat++] = r->latency_ms;
    }
    if (r->ok && r->lag_ms >= 0) {
        if (R->nlag == R->lag_cap) {
            R->lag_cap = R->lag_cap ? R->lag_cap * 2 : 32;
            R->lag = xrealloc(R->lag, R->lag_cap * sizeof(double));
        }
        R->lag[R->nlag++] = r->lag_ms;
    }
    if (r->ok && r->speedup > 1.0) R->faster++;
    if (R->json) {
        json_t *o = json_object();
        json_object_set_new(o, "phrase", json_integer(r->seq));
        json_object_set_new(o, "ok", json_boolean(r->ok));
        json_object_set_new(o, "text", json_string(r->text ? r->text : ""));
        json_object_set_new(o, "translation", r->translation ? json_string(r->translation) : json_null());
        json_object_set_new(o, "start_s", json_real(round(r->start_s * 100) / 100));
        json_object_set_new(o, "end_s", json_real(round(r->end_s * 100) / 100));
        json_t *p = json_object();
        json_object_set_new(p, "stt", r->stt ? json_string(r->stt) : json_null());
        json_object_set_new(p, "mt", r->mt ? json_string(r->mt) : json_null());
        json_object_set_new(p, "tts", r->tts ? json_string(r->tts) : json_null());
        json_object_set_new(o, "providers", p);
        json_object_set_new(o, "mt_cached", json_boolean(r->mt_cached));
        json_t *s = json_object();
        /* fed faster than real time, the recogniser's time after the end of
         * a phrase is mostly the backlog it has not heard yet: not shown */
        json_ms(s, "stt", R->realtime ? r->stt_ms : -1);
        json_ms(s, "mt", r->mt_ms);
        json_ms(s, "tts_first", r->tts_first_ms);
        json_ms(s, "first_frame", r->playback_wait_ms);
        json_object_set_new(o, "stages_ms", s);
        if (r->recovery_tier)
            json_object_set_new(o, "recovery",
                                json_pack("{s:s, s:s, s:s, s:s}", "stage", r->recovery_stage, "tier",
                                          r->recovery_tier, "from", r->recovery_from, "to", r->recovery_to));
        else
            json_object_set_new(o, "recovery", json_null());
        if (R->realtime) json_ms(o, "latency_ms", r->latency_ms);
        if (R->realtime) json_ms(o, "lag_ms", r->lag_ms);
        if (r->ok) json_object_set_new(o, "speedup", json_real(round(r->speedup * 1000) / 1000));
        if (r->ear_latency_ms >= 0) json_ms(o, "ear_latency_ms", r->ear_latency_ms);
        if (r->speculated) json_ms(o, "speculative_lead_ms", r->speculative_lead_ms);
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
        printf("%s\n", line);
        free(line);
        json_decref(o);
    } else {
        printf("[%u] %.2f-%.2f s  \"%s\"\n", r->seq, r->start_s, r->end_s, r->text ? r->text : "");
        if (!r->ok) {
            printf("    (lost: no translation came back; see the log)\n");
        } else {
            printf("    -> \"%s\"\n", r->translation ? r->translation : "");
            if (R->realtime) {
                printf("    stt %.0f ms (%s), mt %.0f ms (%s%s), tts first audio %.0f ms (%s)\n",
                       r->stt_ms, r->stt ? r->stt : "-", r->mt_ms, r->mt ? r->mt : "-",
                       r->mt_cached ? ", cached" : "", r->tts_first_ms, r->tts ? r->tts : "-");
                printf("    lag %.0f ms (end of phrase -> first translated frame)", r->lag_ms);
                if (r->speedup > 1.0) printf(", spoken %.2fx faster to catch up", r->speedup);
                printf("\n");
            } else {
                /* Fed as fast as the engines go, nothing here is a latency a
                 * caller would feel: only the processing time of MT and TTS
                 * means something (the recogniser's is mostly its backlog). */
                printf("    processing time: mt %.0f ms (%s%s), tts first audio %.0f ms (%s)\n",
                       r->mt_ms, r->mt ? r->mt : "-", r->mt_cached ? ", cached" : "",
                       r->tts_first_ms, r->tts ? r->tts : "-");
            }
            if (r->recovery_tier)
                printf("    recovered: %s %s, %s -> %s\n", r->recovery_stage, r->recovery_tier,
                       r->recovery_from, r->recovery_to);
        }
    }
    fflush(stdout);
}

/* Phrases whose lag went over core.max_lag_seconds (R->lag sorted). */
static size_t over_bound(const run *R, const core *c) {
    double bound_ms = c->gen->conf->core.max_lag_seconds * 1000.0;
    size_t n = 0;
    for (size_t i = 0; i < R->nlag; i++) n += R->lag[i] > bound_ms;
    return n;
}

static void on_end(void *ud, tolk_channel *ch) {
    run *R = ud;
    R->ended = 1;
    R->cut_short = ch->end_reason;
    ev_break(R->c->loop, EVBREAK_ALL);
}

/* Waits for fd to be readable; 1: readable, 0: timed out, -1: error. */
static int wait_readable(int fd, double timeout) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (;;) {
        int n = poll(&p, 1, (int)(timeout * 1000.0));
        if (n >= 0) return n > 0;
        if (errno != EINTR) return -1;
    }
}

/* The WAV reader seeks, so a FIFO is copied to a temporary file first.
 * It is opened without blocking (open() on a FIFO with no writer would
 * wait forever) and every wait for input is bounded by `timeout`. On
 * success *tmp names the copy (the caller unlinks it). */
static int spool_fifo(const char *path, double timeout, char **tmp) {
    int in = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (in < 0) {
        fprintf(stderr, "tolk-translate: %s: %s\n", path, strerror(errno));
        return -1;
    }
    const char *dir = getenv("TMPDIR");
    size_t len = strlen(dir && *dir ? dir : "/tmp") + 32;
    *tmp = xmalloc(len);
    snprintf(*tmp, len, "%s/tolk-translate-XXXXXX", dir && *dir ? dir : "/tmp");
    int out = mkstemp(*tmp);
    if (out < 0) {
        fprintf(stderr, "tolk-translate: cannot create a copy of %s in %s: %s\n", path,
                dir && *dir ? dir : "/tmp", strerror(errno));
        close(in);
        free(*tmp);
        *tmp = NULL;
        return -1;
    }
    fprintf(stderr, "tolk-translate: %s is a FIFO: waiting up to %g s for input\n", path, timeout);
    char buf[65536];
    int rc = 0;
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n > 0) {
            total += (uint64_t)n;
            if (write(out, buf, (size_t)n) != n) {
                fprintf(stderr, "tolk-translate: copying %s to %s: %s\n", path, *tmp, strerror(errno));
                rc = -1;
                break;
            }
            continue;
        }
        /* 0 before any byte: no writer has come yet (Linux reports no
         * hang-up for a FIFO that never had one, so poll() waits for it) */
        if (n == 0 && total > 0) break;
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            fprintf(stderr, "tolk-translate: %s: %s\n", path, strerror(errno));
            rc = -1;
            break;
        }
        int r = wait_readable(in, timeout);
        if (r == 0) {
            fprintf(stderr, "tolk-translate: %s: %s for %g s (--input-timeout); giving up\n", path,
                    total ? "no more input" : "no writer", timeout);
            rc = -1;
            break;
        }
        if (r < 0) {
            fprintf(stderr, "tolk-translate: %s: poll: %s\n", path, strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0) {
            /* readable with nothing to read: the writer came and went */
            char c;
            if (read(in, &c, 1) == 0) break;
            if (write(out, &c, 1) != 1) rc = -1;
            total++;
            if (rc) break;
        }
    }
    close(in);
    if (close(out) != 0 && rc == 0) {
        fprintf(stderr, "tolk-translate: %s: %s\n", *tmp, strerror(errno));
        rc = -1;
    }
    if (rc != 0) {
        unlink(*tmp);
        free(*tmp);
        *tmp = NULL;
    }
    return rc;
}

int main(int argc, char **argv) {
    enum { O_FROM = 256, O_TO, O_VOICE, O_REALTIME, O_JSON, O_INPUT_TIMEOUT };
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"from", required_argument, NULL, O_FROM},
                                         {"to", required_argument, NULL, O_TO},
                                         {"voice", required_argument, NULL, O_VOICE},
                                         {"realtime", no_argument, NULL, O_REALTIME},
                                         {"json", no_argument, NULL, O_JSON},
                                         {"input-timeout", required_argument, NULL, O_INPUT_TIMEOUT},
                                         {"plugin-path", required_argument, NULL, 'P'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *confdir = TOLK_CONFDIR, *from = NULL, *to = NULL, *voice = NULL,
               *plugin_path = NULL, *level = "warn";
    run R = {0};
    double input_timeout = DEFAULT_INPUT_TIMEOUT;
    char *end;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:P:l:Vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': confdir = optarg; break;
        case O_FROM: from = optarg; break;
        case O_TO: to = optarg; break;
        case O_VOICE: voice = optarg; break;
        case O_REALTIME: R.realtime = 1; break;
        case O_JSON: R.json = 1; break;
        case O_INPUT_TIMEOUT:
            input_timeout = strtod(optarg, &end);
            if (end == optarg || *end || !(input_timeout > 0 && input_timeout <= 86400)) {
                fprintf(stderr, "tolk-translate: --input-timeout wants seconds, more than 0 and at "
                                "most 86400, not '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 'P': plugin_path = optarg; break;
        case 'l': level = optarg; break;
        case 'V':
            printf("tolk-translate %s%s (plugin ABI %d.%d)\n", PACKAGE_VERSION, TOLK_GIT_SUFFIX,
                   TOLK_ABI_MAJOR, TOLK_ABI_MINOR);
            return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "tolk-translate: need IN.wav and OUT.wav\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    int lvl = log_level_parse(level);
    if (lvl < 0) {
        fprintf(stderr, "tolk-translate: unknown log level '%s'\n", level);
        return EXIT_USAGE;
    }
    log_open(0, "tolk-translate");
    log_set_level((tolk_log_level)lvl);

    int code = EXIT_INPUT;
    core *c = NULL;
    char *from_s = NULL, *to_s = NULL, *spooled = NULL;
    const char *in_path = argv[optind];
    struct stat in_st;
    if (stat(in_path, &in_st) == 0 && S_ISFIFO(in_st.st_mode)) {
        if (spool_fifo(in_path, input_timeout, &spooled) != 0) return EXIT_INPUT;
        in_path = spooled;
    }
    conf_errors errs = {0};
    conf_set *cs = conf_load_dir(confdir, plugin_path, &errs);
    if (!cs) {
        for (size_t i = 0; i < errs.msgs.n; i++) fprintf(stderr, "%s\n", (char *)errs.msgs.v[i]);
        goto out;
    }
    log_set_level((tolk_log_level)lvl);
    from_s = xstrdup(from ? from : cs->defaults.caller_language);
    to_s = xstrdup(to ? to : cs->defaults.callee_language);
    /* The daemon's transports are not started: this run's only call comes
     * from the file. */
    c = core_new(confdir, plugin_path);
    /* one file is not a service: the configuration's exporters (which
     * would bind tolkd's metrics port) are left out */
    c->skip_metrics = 1;
    R.c = c;
    c->obs = (core_observer){.phrase = on_phrase, .channel_end = on_end, .ud = &R};
    if (core_apply(c, cs, &errs) != 0) {
        for (size_t i = 0; i < errs.msgs.n; i++) fprintf(stderr, "%s\n", (char *)errs.msgs.v[i]);
        /* tolk-translate(1): an instance that cannot be created is a pipeline failure */
        if (errs.runtime) code = EXIT_PIPELINE;
        goto out;
    }
    /* A direction no chain serves would be copied untranslated: that is
     * not what was asked for. */
    static const tolk_kind kinds[] = {TOLK_KIND_STT, TOLK_KIND_MT, TOLK_KIND_TTS};
    for (size_t i = 0; strcmp(from_s, to_s) != 0 && i < ARRAY_LEN(kinds); i++) {
        if (generation_route(c->gen, kinds[i], from_s, to_s)) continue;
        fprintf(stderr, "tolk-translate: no %s chain of %s serves %s -> %s\n",
                loader_kind_name(kinds[i]), confdir, from_s, to_s);
        goto out;
    }
    json_t *settings = json_pack("{s:s, s:s, s:s, s:s, s:b}", "input", in_path, "output",
                                 argv[optind + 1], "from", from_s, "to", to_s, "realtime", R.realtime);
    if (voice) json_object_set_new(settings, "voice", json_string(voice));
    tolk_instance *file = core_add_instance(c, "file", "transport_file", settings, &errs);
    json_decref(settings);
    if (!file) {
        for (size_t i = 0; i < errs.msgs.n; i++) {
            const char *m = errs.msgs.v[i];
            /* "instance file: instance 'file': input: ..." reads badly for a CLI */
            const char *p = strstr(m, "input: ");
            fprintf(stderr, "tolk-translate: %s\n", p ? p + 7 : m);
        }
        goto out;
    }
    core_watch_signals(c);
    if (!R.json && !R.realtime)
        printf("# %s (%s) -> %s (%s); as fast as the engines allow (use --realtime for latency)\n",
               argv[optind], from_s, argv[optind + 1], to_s);
    else if (!R.json)
        printf("# %s (%s) -> %s (%s); fed in real time, 20 ms per frame\n", argv[optind], from_s,
               argv[optind + 1], to_s);
    double t0 = mono_now();
    if (instance_start_transport(file) != TOLK_OK) {
        fprintf(stderr, "tolk-translate: cannot start the call (see the log above)\n");
        code = EXIT_PIPELINE;
        goto out;
    }
    ev_ref(c->loop);
    if (!R.ended) ev_run(c->loop, 0);
    double wall = mono_now() - t0;
    /* what happens after the report (core_free) is not part of it */
    c->obs.phrase = NULL;
    /* a phrase that was lost is a failure of the run, as tolk-translate(1)
     * says: the report says which, the exit status that there were some */
    code = R.ended && !R.cut_short && R.lost == 0 ? 0 : EXIT_PIPELINE;
    /* the output file's fate: a write error (a full disk) is in its health */
    const char *write_error = NULL;
    json_t *detail = NULL;
    if (file->desc->health) file->desc->health(file->self, &detail);
    write_error = json_string_value(json_object_get(detail, "error"));
    if (write_error) code = EXIT_INPUT;
    int sig = c->stop_signal;
    if (sig) code = EXIT_SIGNAL_BASE + sig;
    const char *signame = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
    sort_doubles(R.lat, R.nlat);
    sort_doubles(R.lag, R.nlag);
    if (R.json) {
        json_t *o = json_pack("{s:b, s:I, s:I, s:I, s:f}", "summary", 1, "phrases", (json_int_t)R.phrases,
                              "lost", (json_int_t)R.lost, "recovered", (json_int_t)R.recovered,
                              "wall_s", round(wall * 100) / 100);
        if (sig) json_object_set_new(o, "interrupted", json_string(signame));
        if (R.cut_short && !sig) json_object_set_new(o, "stopped", json_string(R.cut_short));
        if (write_error) json_object_set_new(o, "output_error", json_string(write_error));
        if (R.realtime) {
            json_ms(o, "latency_p50_ms", R.nlat ? percentile_sorted(R.lat, R.nlat, 50) : -1);
            json_ms(o, "latency_p90_ms", R.nlat ? percentile_sorted(R.lat, R.nlat, 90) : -1);
            json_ms(o, "latency_p99_ms", R.nlat ? percentile_sorted(R.lat, R.nlat, 99) : -1);
            json_ms(o, "lag_p50_ms", R.nlag ? percentile_sorted(R.lag, R.nlag, 50) : -1);
            json_ms(o, "lag_p90_ms", R.nlag ? percentile_sorted(R.lag, R.nlag, 90) : -1);
            json_ms(o, "lag_p99_ms", R.nlag ? percentile_sorted(R.lag, R.nlag, 99) : -1);
            json_ms(o, "lag_max_ms", R.nlag ? R.lag[R.nlag - 1] : -1);
            json_object_set_new(o, "lag_bound_ms", json_real(c->gen->conf->core.max_lag_seconds * 1000));
            json_object_set_new(o, "over_lag_bound", json_integer((json_int_t)over_bound(&R, c)));
            json_object_set_new(o, "spoken_faster", json_integer((json_int_t)R.faster));
        }
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10));
        printf("%s\n", line);
        free(line);
        json_decref(o);
    } else {
        printf("# %zu phrase%s translated, %zu lost, %zu needed recovery, %.2f s\n", R.phrases - R.lost,
               R.phrases - R.lost == 1 ? "" : "s", R.lost, R.recovered, wall);
        if (R.realtime && R.nlat)
            printf("# end of phrase -> first translated frame: p50 %.0f ms, p99 %.0f ms over %zu phrases\n",
                   percentile_sorted(R.lat, R.nlat, 50), percentile_sorted(R.lat, R.nlat, 99), R.nlat);
        if (R.realtime && R.nlag)
            printf("# lag: p50 %.0f ms, p90 %.0f ms, max %.0f ms; %zu phrase%s over the %.1f s bound "
                   "(core.max_lag_seconds), %zu spoken faster to catch up\n",
                   percentile_sorted(R.lag, R.nlag, 50), percentile_sorted(R.lag, R.nlag, 90),
                   R.lag[R.nlag - 1], over_bound(&R, c), over_bound(&R, c) == 1 ? "" : "s",
                   c->gen->conf->core.max_lag_seconds, R.faster);
        else if (!R.realtime)
            printf("# fed faster than real time: the times above are processing times, not latency "
                   "(--realtime measures that)\n");
        if (sig)
            printf("# interrupted by %s: %s holds the translation of the input read until then\n",
                   signame, argv[optind + 1]);
        else if (R.cut_short)
            printf("# stopped before the end (%s): the phrases still pending are counted as lost\n",
                   R.cut_short);
        if (write_error) printf("# %s is incomplete: %s\n", argv[optind + 1], write_error);
    }
    if (write_error) fprintf(stderr, "tolk-translate: %s\n", write_error);
    json_decref(detail);
out:
    if (spooled) {
        unlink(spooled);
        free(spooled);
    }
    conf_errors_free(&errs);
    free(R.lat);
    free(R.lag);
    free(from_s);
    free(to_s);
    if (c)
        core_free(c);
    else
        conf_free(cs);
    metrics_shutdown();
    loader_unload_all();
    return code;
}
