/*
 * mt_apertium -- machine translation with Apertium, one long-lived pipeline
 * per language pair, driven from the core's event loop.
 *
 * The `apertium` wrapper script does not stream, and starting it per phrase
 * costs ~100 ms (~350 ms before the data files are in the page cache). So
 * this plugin reads the pair's mode file (MODES_DIR/eng-spa.mode: a shell
 * pipeline of eleven programs), starts every program of it itself with
 * posix_spawn() and pipes in between, each in null-flush mode (-z), and
 * keeps it running. A request is written as `text\n\0`; the pipeline answers
 * with the translation and a `\0`. Once warm a sentence takes a few ms; a
 * new pipeline translates a sentence at once to get warm (`warmup`).
 *
 * Requests are queued per pair and answered in order. translate() always
 * returns TOLK_PENDING (or declines/fails at once) and never answers from
 * inside the call; the answer comes from an ev_io callback on host->loop.
 * All fds are non-blocking. posix_spawn() waits for each child's execve()
 * (tens of ms for a pipeline on a loaded machine), so pipelines are spawned
 * by a worker (host->submit) and only get their watchers on the loop. The
 * loop is blocked only by destroy(), which waits at most kill_wait_ms (+ a
 * bounded wait after SIGKILL) to reap its children, and by a spawn on the
 * loop if submit() fails.
 *
 * Text to Apertium: there is no deformatter in the pipeline (apertium's
 * "-f none"; apertium-destxt buffers and cannot be used in null-flush mode),
 * so the plugin escapes the characters that mean something in Apertium's
 * stream format itself: \ [ ] $ / < > { } @ get a backslash; * # ~ (which
 * a backslash does not protect through the whole pipeline) are put in
 * superblanks "[*]"; ^ travels as U+E000 in a superblank (lrx-proc hangs on
 * an escaped ^ at the end of a request, see encode_text); control
 * characters become spaces, runs of blanks one space. On the way back the
 * escapes and superblank brackets are removed, and every unescaped * @ #
 * outside a superblank is an unknown-word mark (unknown to the analyser,
 * to the bilingual dictionary, to the generator): it is stripped and
 * counted.
 *
 * Faults. A pipeline that dies (EOF on its output, EPIPE on its input, any
 * stage exiting: ev_child watchers, the core's loop is libev's default loop)
 * or that does not answer the request at its head within timeout_ms
 * (startup_timeout_ms while cold) is killed and started again; the requests
 * that were in flight are written again to the new pipeline (each at most
 * max_retries times: a phrase that kills Apertium must not kill it forever).
 * Every failure is reported with host->report(TOLK_E_BACKEND, HIGH).
 * Consecutive failures back off: the first restart is immediate, then 250 ms,
 * 500 ms, ... up to backoff_max_ms; a pipeline that ran for 10 s clears the
 * count. While a pair is backing off after 3 or more failures in a row,
 * translate() fails at once with TOLK_E_BACKEND so a backup can take over.
 * A request older than timeout_ms gets mt_done(TOLK_E_TIMEOUT); if it was
 * the one the pipeline was stuck on, the pipeline is restarted.
 *
 * cancel() guarantees no mt_done() afterwards: a cancelled request that was
 * already written keeps its slot (its answer is read and thrown away), one
 * that was not is simply dropped.
 */
#define _GNU_SOURCE /* pipe2, F_DUPFD_CLOEXEC, posix_spawn_file_actions_addclosefrom_np */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tolk/plugin.h>

#include "sbuf.h"

#define MAX_STAGES 32
#define MAX_ARGS 64
#define MODE_FILE_MAX 65536
#define LAT_RING 256
#define RBUF_MAX (1u << 20) /* an answer longer than this is a broken pipeline */
#define STDERR_LINES_LOGGED 20 /* per pipeline; the rest is counted */
#define STABLE_SECONDS 10.0     /* a pipeline that lived this long clears the failure count */
#define STORM_FAILS 3           /* failures in a row that make a pair "storming" */
#define BACKOFF_FIRST 0.25      /* seconds, second restart in a row */
#define BACKOFF_FLOOR 0.05
#define REAP_AFTER_KILL 0.5     /* destroy(): seconds to wait for SIGKILLed children */

/* U+E000 (private use), which stands for '^' on the way through Apertium */
#define CARET_PLACEHOLDER "\xee\x80\x80"

#define CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static const tolk_option mt_apertium_options[] = {
    {.key = "pairs", .type = TOLK_OPT_STRING_LIST, .default_value = "en-es|es-en",
     .help = "language pairs served, \"from-to\" in tolk codes, optionally \"from-to=mode\""},
    {.key = "languages", .type = TOLK_OPT_MAP, .default_value = NULL,
     .help = "tolk code = \"apertium code\" (built in: en=eng, es=spa, fr=fra, ...)"},
    {.key = "modes_dir", .type = TOLK_OPT_STRING, .default_value = "/usr/share/apertium/modes",
     .help = "directory holding the Apertium .mode files"},
    {.key = "timeout_ms", .type = TOLK_OPT_INT, .default_value = "5000", .min = 10, .max = 600000,
     .help = "a request not answered within this fails with TOLK_E_TIMEOUT"},
    {.key = "startup_timeout_ms", .type = TOLK_OPT_INT, .default_value = "30000", .min = 100,
     .max = 600000, .help = "time a new (cold) pipeline may take for its first answer"},
    {.key = "warmup", .type = TOLK_OPT_BOOL, .default_value = "true",
     .help = "translate a sentence as soon as a pipeline starts, so the first caller does not "
             "pay the cold start"},
    {.key = "max_queue", .type = TOLK_OPT_INT, .default_value = "64", .min = 1, .max = 100000,
     .help = "pending requests per pair; more fail with TOLK_E_LIMIT"},
    {.key = "max_retries", .type = TOLK_OPT_INT, .default_value = "2", .min = 0, .max = 100,
     .help = "times a request in flight is re-sent after its pipeline died"},
    {.key = "backoff_max_ms", .type = TOLK_OPT_INT, .default_value = "10000", .min = 0,
     .max = 3600000, .help = "longest wait between restarts of a pipeline that keeps failing"},
    {.key = "kill_wait_ms", .type = TOLK_OPT_INT, .default_value = "200", .min = 0, .max = 10000,
     .help = "wait after SIGTERM before SIGKILL when stopping a pipeline"},
    {.key = "null_flush_flags", .type = TOLK_OPT_MAP, .default_value = NULL,
     .help = "program = \"flag\": null-flush flag of a pipeline program (default -z; \"\" = "
             "none)"},
    {.key = NULL},
};

/* ISO 639-1 -> the ISO 639-3 codes Apertium's pair names use. The
 * `languages` setting adds to and overrides this table. */
static const char *const builtin_languages[][2] = {
    {"en", "eng"}, {"es", "spa"}, {"fr", "fra"}, {"de", "deu"}, {"it", "ita"}, {"pt", "por"},
    {"ca", "cat"}, {"gl", "glg"}, {"eu", "eus"}, {"oc", "oci"}, {"nl", "nld"}, {"ro", "ron"},
    {"an", "arg"}, {"ast", "ast"}, {"eo", "epo"}, {"ar", "ara"}, {"ru", "rus"}, {"uk", "ukr"},
};

/* snprintf() for messages built from other messages: truncation is fine
 * (and the compiler's truncation warnings are not wanted) there. */
static void msgf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msgf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* State                                                               */

typedef struct mt_apertium mt_apertium;
typedef struct pair pair;
typedef struct proc proc;

/* One program of a pipeline, from the mode file, with its flush flag. */
typedef struct stage_spec {
    char **argv; /* NULL-terminated */
    size_t argc;
    int flush_added; /* the plugin inserted the null-flush flag */
} stage_spec;

typedef struct job {
    struct job *prev, *next;
    tolk_request *r; /* NULL: warm-up, or cancelled/expired (answer thrown away) */
    int warmup;
    char *payload; /* escaped text, "\n", "\0" */
    size_t len, woff; /* woff == len: fully written */
    double t_enq, deadline; /* deadline: mt_done(TIMEOUT) if not answered by then */
    double head_since;      /* > 0: at the head of the queue and being written since */
    unsigned tries;         /* pipelines that died with it in flight */
    tolk_status fail;       /* != TOLK_OK: to be completed with this status */
} job;

typedef struct stage {
    proc *pr;
    pid_t pid;
    int alive;
    size_t index;
    ev_child cw;
} stage;

/* One running (or dying) instance of a pair's pipeline. */
struct proc {
    proc *next; /* in mt_apertium.dying */
    pair *p;
    mt_apertium *m;
    unsigned serial;
    int in_fd, out_fd, err_fd;
    ev_io w_in, w_out, w_err;
    stage st[MAX_STAGES];
    size_t nst, nalive;
    double t_start;
    int retired;
    ev_timer kill_t;
    char *rbuf;
    size_t rlen, rcap;
    char errpart[256]; /* a stderr line not yet complete */
    size_t errlen;
    unsigned errlines;
};

typedef enum pair_state {
    PS_DOWN = 0, /* between a failure and the decision what to do */
    PS_STARTING, /* a worker is spawning the pipeline */
    PS_RUNNING,
    PS_BACKOFF /* waiting to start again */
} pair_state;

typedef struct spawn_job spawn_job;

struct pair {
    mt_apertium *m;
    char *key;  /* "en-es" as configured */
    char *mode; /* "eng-spa" */
    char *mode_path;
    stage_spec *spec;
    size_t nspec;
    proc *pr; /* the current pipeline, NULL when down */
    pair_state state;
    spawn_job *spawning; /* while PS_STARTING */
    unsigned serial; /* pipelines started */
    job *head, *tail, *wjob; /* wjob: first job not fully written */
    size_t njobs;
    ev_timer deadline_t, restart_t;
    unsigned fails; /* failures in a row */
    double t_last_start;
    int warm;
    double warmup_ms; /* start of the current pipeline -> its first answer */
    uint64_t requests, answered, failed, timeouts, cancelled, retried, restarts, discarded;
    uint64_t incomplete; /* answers cut short by a dying pipeline */
    uint64_t marks[3]; /* '*' unknown, '@' untranslated, '#' ungenerated */
    double lat[LAT_RING];
    size_t nlat, lat_pos;
    double last_ms;
    char last_error[256];  /* why the pipeline last failed */
    char last_stderr[256]; /* the last line a stage wrote to stderr */
};

struct mt_apertium {
    const tolk_host *host;
    tolk_instance *inst;
    struct ev_loop *loop;
    pair *pairs;
    size_t npairs;
    proc *dying; /* retired pipelines whose children are not reaped yet */
    spawn_job *spawning; /* pipelines being spawned by a worker */
    double timeout, startup_timeout, backoff_max, kill_wait;
    int64_t max_queue, max_retries;
    int warmup;
    uint64_t declined;
};

/* ------------------------------------------------------------------ */
/* Watchers that must not keep the loop alive on their own: an idle
 * pipeline's output, its stderr and its children. libev never stops io or
 * child watchers by itself, so the reference is given back before stop. */

static void bg_io_start(struct ev_loop *loop, ev_io *w)
{
    if (ev_is_active(w)) return;
    ev_io_start(loop, w);
    ev_unref(loop);
}

static void bg_io_stop(struct ev_loop *loop, ev_io *w)
{
    if (!ev_is_active(w)) return;
    ev_ref(loop);
    ev_io_stop(loop, w);
}

static void bg_child_start(struct ev_loop *loop, ev_child *w)
{
    if (ev_is_active(w)) return;
    ev_child_start(loop, w);
    ev_unref(loop);
}

static void bg_child_stop(struct ev_loop *loop, ev_child *w)
{
    if (!ev_is_active(w)) return;
    ev_ref(loop);
    ev_child_stop(loop, w);
}

/* ------------------------------------------------------------------ */
/* Text to and from Apertium's stream format                           */

/* The request as written to the pipeline: escaped text, "\n\0". NULL if
 * the text is empty (only blanks) or memory ran out (*nomem set). */
static char *encode_text(const char *text, size_t *len, int *nomem)
{
    sbuf b = {0};
    const unsigned char *p = (const unsigned char *)text;
    while (*p == ' ' || (*p < 0x20 && *p)) p++; /* leading blanks */
    for (; *p; p++) {
        unsigned char c = *p;
        if (c < 0x20 || c == 0x7f) c = ' '; /* \t \n \r ... (and \0 cannot occur) */
        if (c == 0xee && p[1] == 0x80 && p[2] == 0x80) { /* our placeholder, U+E000 */
            p += 2;
            c = ' ';
        }
        if (c == ' ' && b.n > 0 && b.s[b.n - 1] == ' ') continue; /* one blank is enough */
        switch (c) {
        case '^':
            /* lrx-proc (apertium-lex-tools 0.4.2) hangs on a "^" (escaped,
             * or in a superblank) that is the last token before the \0:
             * it travels as a private-use character in a superblank */
            sb_str(&b, "[" CARET_PLACEHOLDER "]");
            break;
        case '\\': case '[': case ']': case '$': case '/':
        case '<': case '>': case '{': case '}': case '@':
            sb_chr(&b, '\\');
            sb_chr(&b, (char)c);
            break;
        case '*': case '#': case '~':
            /* a backslash does not get these through every stage (they come
             * back unescaped, like the marks, or '~' wakes the
             * post-generator): a superblank passes them untouched */
            sb_chr(&b, '[');
            sb_chr(&b, (char)c);
            sb_chr(&b, ']');
            break;
        default:
            sb_chr(&b, (char)c);
        }
    }
    while (b.n > 0 && b.s[b.n - 1] == ' ') b.s[--b.n] = '\0';
    *nomem = b.oom;
    if (b.oom || b.n == 0) {
        sb_free(&b);
        return NULL;
    }
    sb_add(&b, "\n", 1);
    sb_add(&b, "", 1); /* the \0 that makes every stage flush */
    if (b.oom) {
        *nomem = 1;
        sb_free(&b);
        return NULL;
    }
    *len = b.n;
    return b.s;
}

/* Apertium's answer as plain text: escapes and superblank brackets removed,
 * unknown-word marks stripped and counted (per word, by kind), blanks at
 * both ends trimmed. NULL if memory ran out. */
static char *decode_answer(const char *s, size_t n, uint64_t marks[3])
{
    sbuf b = {0};
    size_t i = 0;
    int prev_mark = 0;
    while (i < n) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            sb_chr(&b, s[i + 1]);
            i += 2;
            prev_mark = 0;
            continue;
        }
        if (c == '[') { /* superblank: its content, unescaped */
            for (i++; i < n && s[i] != ']'; i++) {
                if (s[i] == '\\' && i + 1 < n) {
                    i++;
                } else if (n - i >= 3 && !memcmp(s + i, CARET_PLACEHOLDER, 3)) {
                    sb_chr(&b, '^');
                    i += 2;
                    continue;
                }
                sb_chr(&b, s[i]);
            }
            i++; /* the ']' */
            prev_mark = 0;
            continue;
        }
        if (c == '*' || c == '@' || c == '#') {
            if (!prev_mark) marks[c == '*' ? 0 : c == '@' ? 1 : 2]++;
            prev_mark = 1;
            i++;
            continue;
        }
        prev_mark = 0;
        sb_chr(&b, c == '\0' ? ' ' : c);
        i++;
    }
    if (b.oom) {
        sb_free(&b);
        return NULL;
    }
    if (!b.s) sb_add(&b, "", 0);
    if (b.oom) return NULL;
    size_t a = 0, e = b.n;
    while (a < e && (b.s[a] == ' ' || b.s[a] == '\n' || b.s[a] == '\t' || b.s[a] == '\r')) a++;
    while (e > a && (b.s[e - 1] == ' ' || b.s[e - 1] == '\n' || b.s[e - 1] == '\t' ||
                     b.s[e - 1] == '\r'))
        e--;
    memmove(b.s, b.s + a, e - a);
    b.s[e - a] = '\0';
    return b.s;
}

/* ------------------------------------------------------------------ */
/* Mode files                                                          */

static void specs_free(stage_spec *spec, size_t n)
{
    for (size_t i = 0; spec && i < n; i++) {
        for (size_t k = 0; k < spec[i].argc; k++) free(spec[i].argv[k]);
        free(spec[i].argv);
    }
    free(spec);
}

typedef struct mode_parse {
    stage_spec *spec;
    size_t nspec;
    char **args; /* the stage being read */
    size_t nargs;
    sbuf word;
    int word_started;
    int oom;
} mode_parse;

static int mp_end_word(mode_parse *mp, char *msg, size_t msglen)
{
    if (!mp->word_started) return 0;
    mp->word_started = 0;
    if (mp->nargs + 2 >= MAX_ARGS) {
        snprintf(msg, msglen, "more than %d words in a stage", MAX_ARGS - 2);
        return -1;
    }
    if (!mp->args && !(mp->args = calloc(MAX_ARGS, sizeof *mp->args))) goto nomem;
    if (!(mp->args[mp->nargs] = strdup(mp->word.s ? mp->word.s : ""))) goto nomem;
    mp->nargs++;
    sb_free(&mp->word);
    return 0;
nomem:
    mp->oom = 1;
    snprintf(msg, msglen, "out of memory");
    return -1;
}

static int mp_end_stage(mode_parse *mp, char *msg, size_t msglen)
{
    if (mp_end_word(mp, msg, msglen)) return -1;
    if (mp->nargs == 0) {
        snprintf(msg, msglen, "empty stage %zu in the pipeline", mp->nspec + 1);
        return -1;
    }
    if (mp->nspec >= MAX_STAGES) {
        snprintf(msg, msglen, "more than %d stages", MAX_STAGES);
        return -1;
    }
    if (!mp->spec && !(mp->spec = calloc(MAX_STAGES, sizeof *mp->spec))) {
        mp->oom = 1;
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    mp->spec[mp->nspec].argv = mp->args;
    mp->spec[mp->nspec].argc = mp->nargs;
    mp->nspec++;
    mp->args = NULL;
    mp->nargs = 0;
    return 0;
}

/* $1 is the generator's mode: -g (unknown words marked, as `apertium`
 * without -u); $2 the tagger's extra option: none (-m would print
 * ambiguities). Returns the value or NULL for an expansion not known. */
/* The text of a "$..." for a message: up to a blank or quote. */
static int token_len(const char *p)
{
    size_t n = strcspn(p, " \t\r\n\"'|");
    return (int)(n > 16 ? 16 : n);
}

static const char *mode_param(const char **pp)
{
    const char *p = *pp; /* just after '$' */
    int n = -1;
    if (*p == '{' && (p[1] == '1' || p[1] == '2') && p[2] == '}') {
        n = p[1] - '0';
        *pp = p + 3;
    } else if (*p == '1' || *p == '2') {
        n = *p - '0';
        *pp = p + 1;
    }
    return n == 1 ? "-g" : n == 2 ? "" : NULL;
}

/* The subset of sh found in Apertium mode files: words, '...' and "..."
 * quoting, backslash escapes, $1/$2, and '|' between programs. Anything
 * else (redirections, ';', '&&', subshells, other variables) is refused
 * rather than guessed at. */
static int parse_mode_text(const char *text, stage_spec **out, size_t *nout, char *msg,
                           size_t msglen)
{
    mode_parse mp = {0};
    const char *p = text;
    int rc = -1;
    while (*p) {
        char c = *p;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            if (mp_end_word(&mp, msg, msglen)) goto done;
            p++;
        } else if (c == '|') {
            if (p[1] == '|') {
                snprintf(msg, msglen, "'||' is not supported in a mode file");
                goto done;
            }
            if (mp_end_stage(&mp, msg, msglen)) goto done;
            p++;
        } else if (c == '\'') {
            const char *q = strchr(p + 1, '\'');
            if (!q) {
                snprintf(msg, msglen, "unterminated ' quote");
                goto done;
            }
            sb_add(&mp.word, p + 1, (size_t)(q - p - 1));
            mp.word_started = 1;
            p = q + 1;
        } else if (c == '"') {
            mp.word_started = 1;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && (p[1] == '$' || p[1] == '`' || p[1] == '"' || p[1] == '\\')) {
                    sb_chr(&mp.word, *++p);
                } else if (*p == '\\' && p[1] == '\n') {
                    p++;
                } else if (*p == '$') {
                    const char *q = p + 1;
                    const char *v = mode_param(&q);
                    if (!v) {
                        snprintf(msg, msglen, "unsupported expansion \"%.*s\"", token_len(p), p);
                        goto done;
                    }
                    sb_str(&mp.word, v);
                    p = q - 1;
                } else if (*p == '`') {
                    snprintf(msg, msglen, "command substitution is not supported");
                    goto done;
                } else {
                    sb_chr(&mp.word, *p);
                }
            }
            if (*p != '"') {
                snprintf(msg, msglen, "unterminated \" quote");
                goto done;
            }
            p++;
        } else if (c == '\\') {
            if (p[1] == '\n') {
                p += 2;
            } else if (p[1]) {
                sb_chr(&mp.word, p[1]);
                mp.word_started = 1;
                p += 2;
            } else {
                p++;
            }
        } else if (c == '$') {
            const char *q = p + 1;
            const char *v = mode_param(&q);
            if (!v) {
                snprintf(msg, msglen, "unsupported expansion \"%.*s\"", token_len(p), p);
                goto done;
            }
            /* unquoted: an empty value makes no word */
            if (*v) {
                sb_str(&mp.word, v);
                mp.word_started = 1;
            }
            p = q;
        } else if (c == '#' && !mp.word_started) {
            while (*p && *p != '\n') p++;
        } else if (strchr(";&<>()`", c)) {
            snprintf(msg, msglen, "unsupported shell syntax '%c' (only a plain pipeline of "
                     "programs is)", c);
            goto done;
        } else {
            sb_chr(&mp.word, c);
            mp.word_started = 1;
            p++;
        }
        if (mp.word.oom) {
            snprintf(msg, msglen, "out of memory");
            goto done;
        }
    }
    if (mp.word_started || mp.nargs || mp.nspec) {
        if (mp_end_stage(&mp, msg, msglen)) goto done;
    }
    if (mp.nspec == 0) {
        snprintf(msg, msglen, "no program in the mode file");
        goto done;
    }
    *out = mp.spec;
    *nout = mp.nspec;
    mp.spec = NULL;
    rc = 0;
done:
    if (mp.args) {
        for (size_t k = 0; k < mp.nargs; k++) free(mp.args[k]);
        free(mp.args);
    }
    sb_free(&mp.word);
    specs_free(mp.spec, mp.nspec);
    return rc;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Is `prog` a file we may execute, directly or along PATH? */
static int program_found(const char *prog)
{
    if (strchr(prog, '/')) return access(prog, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    char buf[4096];
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        int w = snprintf(buf, sizeof buf, "%.*s/%s", (int)n, n ? path : ".", prog);
        if (w > 0 && (size_t)w < sizeof buf && access(buf, X_OK) == 0) {
            struct stat sb;
            if (stat(buf, &sb) == 0 && S_ISREG(sb.st_mode)) return 1;
        }
        path += n;
        if (*path == ':') path++;
    }
    return 0;
}

/* Puts each stage in null-flush mode: the flag configured for the program
 * in null_flush_flags ("" = none needed), else -z, which every Apertium,
 * lttoolbox, lex-tools and CG program accepts. A stage that already has it
 * keeps its arguments as they are. */
static int add_flush_flags(stage_spec *spec, size_t n, const json_t *flags, char *msg,
                           size_t msglen)
{
    for (size_t i = 0; i < n; i++) {
        stage_spec *s = &spec[i];
        const char *flag = "-z";
        json_t *v = flags ? json_object_get(flags, base_name(s->argv[0])) : NULL;
        if (v && json_is_string(v)) flag = json_string_value(v);
        if (!*flag) continue;
        int have = 0;
        for (size_t k = 1; k < s->argc; k++)
            if (!strcmp(s->argv[k], flag) ||
                (!strcmp(flag, "-z") && !strcmp(s->argv[k], "--null-flush")))
                have = 1;
        if (have) continue;
        if (s->argc + 2 > MAX_ARGS) {
            snprintf(msg, msglen, "stage %zu has too many words", i + 1);
            return -1;
        }
        char *f = strdup(flag);
        if (!f) {
            snprintf(msg, msglen, "out of memory");
            return -1;
        }
        memmove(s->argv + 2, s->argv + 1, s->argc * sizeof *s->argv); /* incl. the NULL */
        s->argv[1] = f;
        s->argc++;
        s->flush_added = 1;
    }
    return 0;
}

/* Reads and parses MODES_DIR/MODE.mode; -1 with msg on any problem. */
static int load_mode(const char *path, const json_t *flags, stage_spec **spec, size_t *n,
                     char *msg, size_t msglen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, msglen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(MODE_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    size_t len = fread(buf, 1, MODE_FILE_MAX + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || len > MODE_FILE_MAX || memchr(buf, '\0', len)) {
        free(buf);
        snprintf(msg, msglen, "%s: %s", path,
                 rerr ? "read error" : len > MODE_FILE_MAX ? "too large" : "not a text file");
        return -1;
    }
    buf[len] = '\0';
    char pmsg[200];
    int rc = parse_mode_text(buf, spec, n, pmsg, sizeof pmsg);
    free(buf);
    if (rc) {
        msgf(msg, msglen, "%s: %s", path, pmsg);
        return -1;
    }
    for (size_t i = 0; i < *n; i++) {
        if (!program_found((*spec)[i].argv[0])) {
            snprintf(msg, msglen, "%s: stage %zu: program '%s' not found (install apertium?)",
                     path, i + 1, (*spec)[i].argv[0]);
            specs_free(*spec, *n);
            *spec = NULL;
            return -1;
        }
    }
    if (add_flush_flags(*spec, *n, flags, pmsg, sizeof pmsg)) {
        msgf(msg, msglen, "%s: %s", path, pmsg);
        specs_free(*spec, *n);
        *spec = NULL;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Configuration: pairs -> mode files (shared by check_config and create) */

static const char *map_language(const json_t *user, const char *code, size_t n, char *out,
                                size_t outlen)
{
    const char *key;
    json_t *val;
    if (user && json_is_object(user)) {
        json_object_foreach((json_t *)user, key, val)
        {
            if (strlen(key) == n && !strncasecmp(key, code, n) && json_is_string(val)) {
                snprintf(out, outlen, "%s", json_string_value(val));
                return out;
            }
        }
    }
    for (size_t i = 0; i < sizeof builtin_languages / sizeof builtin_languages[0]; i++) {
        if (strlen(builtin_languages[i][0]) == n &&
            !strncasecmp(builtin_languages[i][0], code, n)) {
            snprintf(out, outlen, "%s", builtin_languages[i][1]);
            return out;
        }
    }
    snprintf(out, outlen, "%.*s", (int)n, code);
    return out;
}

static int mode_name_ok(const char *s)
{
    if (!*s || *s == '.' || *s == '-') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static void pairs_free(pair *pairs, size_t n)
{
    for (size_t i = 0; pairs && i < n; i++) {
        free(pairs[i].key);
        free(pairs[i].mode);
        free(pairs[i].mode_path);
        specs_free(pairs[i].spec, pairs[i].nspec);
    }
    free(pairs);
}

static tolk_status build_pairs(const json_t *cfg, pair **out, size_t *nout,
                               tolk_config_error *err)
{
    const json_t *list = json_object_get(cfg, "pairs");
    const json_t *langs = json_object_get(cfg, "languages");
    const json_t *flags = json_object_get(cfg, "null_flush_flags");
    const char *dir = json_string_value(json_object_get(cfg, "modes_dir"));
    json_t *deflist = NULL;
    if (!dir) dir = "/usr/share/apertium/modes";
    if (!list) list = deflist = json_pack("[ss]", "en-es", "es-en");
    size_t n = json_array_size(list);
    tolk_status st = TOLK_E_INVAL;
    pair *pairs = NULL;
    size_t np = 0;
    struct stat sb;
    if (!*dir || stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        err->key = "modes_dir";
        snprintf(err->message, sizeof err->message, "%s is not a directory (install apertium "
                 "and the language pair, e.g. apertium-eng-spa)", dir);
        goto out;
    }
    if (n == 0) {
        err->key = "pairs";
        snprintf(err->message, sizeof err->message, "no language pair configured");
        goto out;
    }
    if (!(pairs = calloc(n, sizeof *pairs))) {
        st = TOLK_E_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *entry = json_string_value(json_array_get(list, i));
        if (!entry) continue;
        const char *eq = strchr(entry, '=');
        size_t klen = eq ? (size_t)(eq - entry) : strlen(entry);
        const char *dash = memchr(entry, '-', klen);
        if (!dash || dash == entry || (size_t)(dash - entry) + 1 >= klen) {
            err->key = "pairs";
            snprintf(err->message, sizeof err->message,
                     "\"%s\": expected \"from-to\" or \"from-to=mode\"", entry);
            goto out;
        }
        char mode[128], a[64], b[64];
        if (eq) {
            snprintf(mode, sizeof mode, "%s", eq + 1);
        } else {
            map_language(langs, entry, (size_t)(dash - entry), a, sizeof a);
            map_language(langs, dash + 1, klen - (size_t)(dash - entry) - 1, b, sizeof b);
            snprintf(mode, sizeof mode, "%s-%s", a, b);
        }
        if (!mode_name_ok(mode)) {
            err->key = "pairs";
            snprintf(err->message, sizeof err->message, "\"%s\": bad mode name \"%s\"", entry,
                     mode);
            goto out;
        }
        for (size_t k = 0; k < np; k++) {
            if (strlen(pairs[k].key) == klen && !strncasecmp(pairs[k].key, entry, klen)) {
                err->key = "pairs";
                snprintf(err->message, sizeof err->message, "\"%.*s\" is listed twice",
                         (int)klen, entry);
                goto out;
            }
        }
        pair *p = &pairs[np++];
        p->key = strndup(entry, klen);
        p->mode = strdup(mode);
        if (asprintf(&p->mode_path, "%s/%s.mode", dir, mode) < 0) p->mode_path = NULL;
        if (!p->key || !p->mode || !p->mode_path) {
            st = TOLK_E_NOMEM;
            goto out;
        }
        char msg[200];
        if (load_mode(p->mode_path, flags, &p->spec, &p->nspec, msg, sizeof msg)) {
            err->key = "pairs";
            msgf(err->message, sizeof err->message, "\"%s\": %s", p->key, msg);
            goto out;
        }
    }
    *out = pairs;
    *nout = np;
    pairs = NULL;
    st = TOLK_OK;
out:
    pairs_free(pairs, np);
    json_decref(deflist);
    return st;
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

static void job_link_tail(pair *p, job *j)
{
    j->next = NULL;
    j->prev = p->tail;
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    p->njobs++;
}

static void job_link_head(pair *p, job *j)
{
    j->prev = NULL;
    j->next = p->head;
    if (p->head)
        p->head->prev = j;
    else
        p->tail = j;
    p->head = j;
    p->njobs++;
}

static void job_unlink(pair *p, job *j)
{
    if (p->wjob == j) p->wjob = j->next;
    if (j->prev)
        j->prev->next = j->next;
    else
        p->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        p->tail = j->prev;
    j->prev = j->next = NULL;
    p->njobs--;
}

static void job_free(job *j)
{
    if (!j) return;
    free(j->payload);
    free(j);
}

static size_t pending_requests(const pair *p)
{
    size_t n = 0;
    for (const job *j = p->head; j; j = j->next)
        if (j->r) n++;
    return n;
}

/* ------------------------------------------------------------------ */
/* Pipelines                                                           */

static void pair_fail(pair *p, const char *why);
static void pair_start(pair *p);
static void arm_deadline(pair *p);
static void on_writable(struct ev_loop *loop, ev_io *w, int revents);
static void on_readable(struct ev_loop *loop, ev_io *w, int revents);
static void on_stderr(struct ev_loop *loop, ev_io *w, int revents);
static void on_child(struct ev_loop *loop, ev_child *w, int revents);
static void on_kill_timer(struct ev_loop *loop, ev_timer *w, int revents);

/* A pipe whose ends are close-on-exec and not 0..2 (a daemon may have
 * closed its standard fds; dup2() onto them in the child must not clash). */
static int safe_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC)) return -1;
    for (int k = 0; k < 2; k++) {
        if (fds[k] < 3) {
            int nfd = fcntl(fds[k], F_DUPFD_CLOEXEC, 3);
            close(fds[k]);
            fds[k] = nfd;
        }
    }
    if (fds[0] < 0 || fds[1] < 0) {
        if (fds[0] >= 0) close(fds[0]);
        if (fds[1] >= 0) close(fds[1]);
        fds[0] = fds[1] = -1;
        return -1;
    }
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void proc_free(proc *pr)
{
    mt_apertium *m = pr->m;
    for (size_t i = 0; i < pr->nst; i++) bg_child_stop(m->loop, &pr->st[i].cw);
    ev_timer_stop(m->loop, &pr->kill_t);
    ev_io_stop(m->loop, &pr->w_in);
    bg_io_stop(m->loop, &pr->w_out);
    bg_io_stop(m->loop, &pr->w_err);
    close_fd(&pr->in_fd);
    close_fd(&pr->out_fd);
    close_fd(&pr->err_fd);
    free(pr->rbuf);
    free(pr);
}

static void proc_signal(proc *pr, int sig)
{
    for (size_t i = 0; i < pr->nst; i++) {
        if (!pr->st[i].alive) continue;
        kill(pr->st[i].pid, sig);
        /* a stopped process acts on SIGTERM only once continued */
        if (sig == SIGTERM) kill(pr->st[i].pid, SIGCONT);
    }
}

/* Takes a pipeline out of service: no more reading or writing, its
 * children told to go (SIGTERM now, SIGKILL after kill_wait_ms) and reaped
 * by their ev_child watchers; it is freed once the last one is. */
static void proc_retire(proc *pr)
{
    mt_apertium *m = pr->m;
    pr->retired = 1;
    ev_io_stop(m->loop, &pr->w_in);
    bg_io_stop(m->loop, &pr->w_out);
    bg_io_stop(m->loop, &pr->w_err);
    close_fd(&pr->in_fd); /* EOF: the first stage ends, and the rest after it */
    close_fd(&pr->out_fd);
    close_fd(&pr->err_fd);
    free(pr->rbuf);
    pr->rbuf = NULL;
    pr->rlen = pr->rcap = 0;
    if (pr->nalive == 0) {
        proc_free(pr);
        return;
    }
    proc_signal(pr, SIGTERM);
    pr->next = m->dying;
    m->dying = pr;
    ev_timer_init(&pr->kill_t, on_kill_timer, m->kill_wait > 0 ? m->kill_wait : 0.001, 0.);
    ev_timer_start(m->loop, &pr->kill_t);
}

static void dying_unlink(mt_apertium *m, proc *pr)
{
    for (proc **pp = &m->dying; *pp; pp = &(*pp)->next) {
        if (*pp == pr) {
            *pp = pr->next;
            return;
        }
    }
}

static void on_kill_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    proc *pr = CONTAINER_OF(w, proc, kill_t);
    if (pr->nalive) {
        TOLK_LOG(pr->m->host, pr->m->inst, TOLK_LOG_VERB,
                 "%s: %zu stage(s) still running after SIGTERM: SIGKILL", pr->p->mode,
                 pr->nalive);
        proc_signal(pr, SIGKILL);
    }
}

/* Kills and reaps what was spawned, closes its fds and frees it: for a
 * pipeline that never got watchers (a failed spawn, an orphaned one).
 * Blocks for as long as SIGKILLed processes take to go; any thread. */
static void proc_abort(proc *pr)
{
    for (size_t i = 0; i < pr->nst; i++)
        if (pr->st[i].alive) kill(pr->st[i].pid, SIGKILL);
    for (size_t i = 0; i < pr->nst; i++) {
        if (!pr->st[i].alive) continue;
        pid_t r;
        do r = waitpid(pr->st[i].pid, NULL, 0); /* ECHILD: libev reaped it */
        while (r < 0 && errno == EINTR);
        pr->st[i].alive = 0;
    }
    close_fd(&pr->in_fd);
    close_fd(&pr->out_fd);
    close_fd(&pr->err_fd);
    free(pr);
}

/* Spawns every stage of a pipeline, with pipes in between; NULL with msg
 * on failure. Touches no loop and no pair, so a worker thread can run it:
 * posix_spawn() waits for each child's execve(), which takes milliseconds
 * per program (far more on a loaded machine), too long for the loop. */
static proc *proc_spawn(const stage_spec *spec, size_t nspec, const tolk_host *host, char *msg,
                        size_t msglen)
{
    proc *pr = calloc(1, sizeof *pr);
    if (!pr) {
        snprintf(msg, msglen, "out of memory");
        return NULL;
    }
    pr->in_fd = pr->out_fd = pr->err_fd = -1;
    pr->t_start = host->now();

    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    if (safe_pipe(in) || safe_pipe(out) || safe_pipe(err)) {
        snprintf(msg, msglen, "pipe: %s", strerror(errno));
        close_fd(&in[0]), close_fd(&in[1]), close_fd(&out[0]), close_fd(&out[1]);
        close_fd(&err[0]), close_fd(&err[1]);
        free(pr);
        return NULL;
    }
    pr->in_fd = in[1];
    pr->out_fd = out[0];
    pr->err_fd = err[0];

    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    /* Ignored signals stay ignored across exec: the core ignores SIGPIPE,
     * and a stage must die of it quietly when the next one is gone. */
    static const int reset_sigs[] = {SIGPIPE, SIGINT, SIGQUIT, SIGTERM, SIGHUP,
                                     SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM};
    for (size_t k = 0; k < sizeof reset_sigs / sizeof reset_sigs[0]; k++)
        sigaddset(&dflt, reset_sigs[k]);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dflt);

    int rd = in[0]; /* what the next stage reads; closed once handed on */
    in[0] = -1;
    pid_t pgid = 0;
    int rc = 0;
    for (size_t i = 0; i < nspec; i++) {
        int nxt[2] = {-1, -1};
        int wr;
        if (i + 1 == nspec) {
            wr = out[1];
        } else {
            if (safe_pipe(nxt)) {
                rc = errno;
                snprintf(msg, msglen, "pipe: %s", strerror(rc));
                break;
            }
            wr = nxt[1];
        }
        /* Its own process group: a Ctrl-C meant for a foreground tolkd
         * does not kill the pipelines under it while calls drain. */
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                            POSIX_SPAWN_SETPGROUP);
        posix_spawnattr_setpgroup(&attr, pgid);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, rd, 0);
        posix_spawn_file_actions_adddup2(&fa, wr, 1);
        posix_spawn_file_actions_adddup2(&fa, err[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
        /* fds other plugins left inheritable would keep our pipes' peers
         * (and theirs) open */
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
        pid_t pid = 0;
        rc = posix_spawnp(&pid, spec[i].argv[0], &fa, &attr, spec[i].argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(rd);
        rd = nxt[0];
        if (nxt[1] >= 0) close(nxt[1]);
        if (rc) {
            snprintf(msg, msglen, "cannot start stage %zu (%s): %s", i + 1, spec[i].argv[0],
                     strerror(rc));
            break;
        }
        if (!pgid) pgid = pid;
        stage *s = &pr->st[pr->nst++];
        s->pr = pr;
        s->pid = pid;
        s->alive = 1;
        s->index = i;
        pr->nalive++;
    }
    posix_spawnattr_destroy(&attr);
    if (rd >= 0) close(rd); /* only after a failure: the last stage leaves rd = -1 */
    close(out[1]);
    close(err[1]);
    if (rc) {
        proc_abort(pr);
        return NULL;
    }
    set_nonblock(pr->in_fd);
    set_nonblock(pr->out_fd);
    set_nonblock(pr->err_fd);
    return pr;
}

/* On the loop: the spawned pipeline gets its watchers. libev reaps every
 * child of the process on SIGCHLD and hands the status only to a watcher
 * active at that moment, so a stage that died before its watcher started
 * is looked for here. Returns 1 + the index of such a stage (its status in
 * *status, -1 if libev had reaped it), else 0. */
static size_t proc_activate(proc *pr, pair *p, int *status)
{
    mt_apertium *m = p->m;
    size_t dead = 0;
    pr->p = p;
    pr->m = m;
    pr->serial = p->serial;
    ev_init(&pr->kill_t, on_kill_timer);
    ev_io_init(&pr->w_in, on_writable, pr->in_fd, EV_WRITE);
    ev_io_init(&pr->w_out, on_readable, pr->out_fd, EV_READ);
    ev_io_init(&pr->w_err, on_stderr, pr->err_fd, EV_READ);
    for (size_t i = 0; i < pr->nst; i++) {
        ev_child_init(&pr->st[i].cw, on_child, pr->st[i].pid, 0);
        bg_child_start(m->loop, &pr->st[i].cw);
    }
    for (size_t i = 0; i < pr->nst; i++) {
        stage *s = &pr->st[i];
        int st = -1;
        pid_t r;
        do r = waitpid(s->pid, &st, WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r == 0 || (r < 0 && errno != ECHILD)) continue; /* running */
        s->alive = 0;
        pr->nalive--;
        bg_child_stop(m->loop, &s->cw);
        if (!dead) {
            dead = i + 1;
            *status = r == s->pid ? st : -1;
        }
    }
    bg_io_start(m->loop, &pr->w_out);
    bg_io_start(m->loop, &pr->w_err);
    return dead;
}

static double limit_for(const pair *p)
{
    return p->warm ? p->m->timeout : p->m->startup_timeout;
}

static void arm_deadline(pair *p)
{
    mt_apertium *m = p->m;
    double next = 0;
    for (job *j = p->head; j; j = j->next)
        if (j->r && j->fail == TOLK_OK && (next == 0 || j->deadline < next)) next = j->deadline;
    if (p->state == PS_RUNNING && p->head && p->head->head_since > 0) {
        double stuck = p->head->head_since + limit_for(p);
        if (next == 0 || stuck < next) next = stuck;
    }
    ev_timer_stop(m->loop, &p->deadline_t);
    if (next > 0) {
        double after = next - m->host->now();
        ev_timer_set(&p->deadline_t, after > 0 ? after + 0.0005 : 0., 0.);
        ev_timer_start(m->loop, &p->deadline_t);
    }
}

/* The head of the queue has gone (at least partly) into the pipeline: its
 * watchdog starts. Partly, so that a pipeline that stops reading its
 * input counts as stuck too. */
static void head_check(pair *p)
{
    job *h = p->head;
    if (h && h->head_since == 0 && h->woff > 0 && p->state == PS_RUNNING)
        h->head_since = p->m->host->now();
}

static void kick_writer(pair *p)
{
    if (p->pr && p->wjob && !ev_is_active(&p->pr->w_in)) ev_io_start(p->m->loop, &p->pr->w_in);
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    proc *pr = CONTAINER_OF(w, proc, w_in);
    pair *p = pr->p;
    while (p->wjob) {
        job *j = p->wjob;
        ssize_t n = write(pr->in_fd, j->payload + j->woff, j->len - j->woff);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            char why[128];
            snprintf(why, sizeof why, "writing to the pipeline: %s", strerror(errno));
            pair_fail(p, why);
            return;
        }
        j->woff += (size_t)n;
        if (j == p->head && j->head_since == 0) {
            head_check(p);
            arm_deadline(p);
        }
        if (j->woff < j->len) return;
        p->wjob = j->next;
    }
    ev_io_stop(loop, w);
}

static void record_latency(pair *p, double ms)
{
    p->lat[p->lat_pos] = ms;
    p->lat_pos = (p->lat_pos + 1) % LAT_RING;
    if (p->nlat < LAT_RING) p->nlat++;
    p->last_ms = ms;
}

/* One answer from the pipeline, for the job at the head. */
static void answer(pair *p, const char *text, size_t n)
{
    mt_apertium *m = p->m;
    job *j = p->head;
    double now = m->host->now();
    job_unlink(p, j);
    if (!p->warm) {
        p->warm = 1;
        p->warmup_ms = (now - (p->pr ? p->pr->t_start : now)) * 1000.0;
        TOLK_LOG(m->host, m->inst, TOLK_LOG_VERB, "%s: pipeline warm after %.0f ms", p->mode,
                 p->warmup_ms);
    }
    head_check(p);
    if (!j->r) { /* warm-up, or cancelled: it only held its place */
        if (!j->warmup) p->discarded++;
        job_free(j);
        arm_deadline(p);
        return;
    }
    uint64_t marks[3] = {0, 0, 0};
    char *out = decode_answer(text, n, marks);
    tolk_request *r = j->r;
    record_latency(p, (now - j->t_enq) * 1000.0);
    job_free(j);
    arm_deadline(p);
    for (int k = 0; k < 3; k++) p->marks[k] += marks[k];
    if (!out) {
        p->failed++;
        m->host->mt_done(r, TOLK_E_NOMEM, NULL);
        return;
    }
    /* Apertium may translate a text to nothing ("¡ ¿" into English): that
     * is its answer, given as it is; the core decides what an empty
     * translation means for the call. */
    if (!*out) TOLK_LOG(m->host, m->inst, TOLK_LOG_VERB, "%s: empty translation", p->mode);
    p->answered++;
    /* may re-enter translate() or cancel(): the queue is consistent here */
    m->host->mt_done(r, TOLK_OK, out);
    free(out);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    proc *pr = CONTAINER_OF(w, proc, w_out);
    pair *p = pr->p;
    for (;;) {
        if (pr->rcap - pr->rlen < 4096) {
            size_t cap = pr->rcap ? pr->rcap * 2 : 8192;
            if (cap > RBUF_MAX + 8192) {
                pair_fail(p, "an answer longer than 1 MB: the pipeline is out of step");
                return;
            }
            char *nb = realloc(pr->rbuf, cap);
            if (!nb) {
                pair_fail(p, "out of memory reading the pipeline");
                return;
            }
            pr->rbuf = nb;
            pr->rcap = cap;
        }
        ssize_t n = read(pr->out_fd, pr->rbuf + pr->rlen, pr->rcap - pr->rlen);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            char why[128];
            snprintf(why, sizeof why, "reading the pipeline: %s", strerror(errno));
            pair_fail(p, why);
            return;
        }
        if (n == 0) {
            pair_fail(p, "the pipeline closed its output");
            return;
        }
        pr->rlen += (size_t)n;
        if ((size_t)n < 4096) break;
    }
    size_t pos = 0;
    char *z;
    unsigned serial = p->serial;
    while ((z = memchr(pr->rbuf + pos, '\0', pr->rlen - pos))) {
        size_t len = (size_t)(z - (pr->rbuf + pos));
        job *h = p->head;
        if (!h || h->woff < h->len) {
            pair_fail(p, "an answer to no request: the pipeline is out of step");
            return;
        }
        /* Every request ends in "\n", a blank each stage passes through,
         * so a real answer ends in "\n" too. An empty or cut one is what
         * the stages flush when their input ends: a stage upstream died
         * (its exit may not have been seen yet). The request is retried. */
        if (len == 0 || pr->rbuf[pos + len - 1] != '\n') {
            p->incomplete++;
            pair_fail(p, len ? "a cut answer: a stage ended mid-request"
                             : "an empty answer: a stage ended");
            return;
        }
        answer(p, pr->rbuf + pos, len);
        /* answer() calls mt_done(), and the core may call translate(),
         * cancel() or even reset() from in there: if this pipeline was
         * replaced meanwhile, pr and its buffer are gone or stale */
        if (p->pr != pr || p->serial != serial) return;
        pos += len + 1;
    }
    if (pos) {
        memmove(pr->rbuf, pr->rbuf + pos, pr->rlen - pos);
        pr->rlen -= pos;
    }
}

/* Lines the stages write to stderr go to the log (Apertium says
 * "Error: Malformed input stream." and the like there). */
static void read_stderr(proc *pr)
{
    pair *p = pr->p;
    mt_apertium *m = pr->m;
    char buf[2048];
    for (;;) {
        ssize_t n = read(pr->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) bg_io_stop(m->loop, &pr->w_err);
            return;
        }
        for (ssize_t i = 0; i < n; i++) {
            char c = buf[i];
            if (c != '\n' && pr->errlen + 1 < sizeof pr->errpart) {
                pr->errpart[pr->errlen++] = c;
                continue;
            }
            if (c != '\n') continue; /* overlong line: cut */
            pr->errpart[pr->errlen] = '\0';
            if (pr->errlen) {
                msgf(p->last_stderr, sizeof p->last_stderr, "%s", pr->errpart);
                if (++pr->errlines <= STDERR_LINES_LOGGED)
                    TOLK_LOG(m->host, m->inst, TOLK_LOG_WARN, "%s: %s%s", p->mode, pr->errpart,
                             pr->errlines == STDERR_LINES_LOGGED ? " (further lines not logged)"
                                                                 : "");
            }
            pr->errlen = 0;
        }
        if ((size_t)n < sizeof buf) return;
    }
}

static void on_stderr(struct ev_loop *loop, ev_io *w, int revents)
{
    read_stderr(CONTAINER_OF(w, proc, w_err));
}

static void describe_status(char *buf, size_t len, int status)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "changed state (0x%x)", (unsigned)status);
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    stage *s = CONTAINER_OF(w, stage, cw);
    proc *pr = s->pr;
    mt_apertium *m = pr->m;
    if (WIFSTOPPED(w->rstatus) || WIFCONTINUED(w->rstatus)) return;
    bg_child_stop(loop, w);
    if (!s->alive) return;
    s->alive = 0;
    pr->nalive--;
    if (pr->retired) {
        if (pr->nalive == 0) {
            dying_unlink(m, pr);
            proc_free(pr);
        }
        return;
    }
    pair *p = pr->p;
    char st[96], why[256];
    describe_status(st, sizeof st, w->rstatus);
    read_stderr(pr); /* its last words, if any, before it is gone */
    msgf(why, sizeof why, "stage %zu (%s, pid %d) %s", s->index + 1,
             base_name(p->spec[s->index].argv[0]), (int)s->pid, st);
    pair_fail(p, why); /* may free pr */
}

/* ------------------------------------------------------------------ */
/* Restarts                                                            */

/* 0 for the first failure, then 250 ms doubling up to backoff_max; never
 * below BACKOFF_FLOOR after the first, so that a pipeline that cannot even
 * be spawned does not recurse or spin with backoff_max_ms = 0. */
static double backoff_for(const mt_apertium *m, unsigned fails)
{
    if (fails <= 1) return 0;
    double d = BACKOFF_FIRST;
    for (unsigned i = 2; i < fails && d < m->backoff_max; i++) d *= 2;
    if (d > m->backoff_max) d = m->backoff_max;
    return d < BACKOFF_FLOOR ? BACKOFF_FLOOR : d;
}

/* Completes (with their status) the jobs marked as failed, one at a time,
 * looking again after each mt_done() (which may cancel others). */
static void complete_failed(pair *p)
{
    for (;;) {
        job *j = p->head;
        while (j && j->fail == TOLK_OK) j = j->next;
        if (!j) break;
        job_unlink(p, j);
        tolk_request *r = j->r;
        tolk_status st = j->fail;
        job_free(j);
        if (r) {
            if (st != TOLK_E_TIMEOUT) p->failed++;
            p->m->host->mt_done(r, st, NULL);
        }
    }
    arm_deadline(p);
}

static void on_restart_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    pair *p = CONTAINER_OF(w, pair, restart_t);
    if (p->state == PS_BACKOFF) pair_start(p);
}

/* After a failure: start again, at once or after a backoff. */
static void schedule_restart(pair *p)
{
    mt_apertium *m = p->m;
    double now = m->host->now();
    if (p->t_last_start > 0 && now - p->t_last_start >= STABLE_SECONDS) p->fails = 0;
    p->fails++;
    if (p->state == PS_STARTING || p->state == PS_RUNNING) return; /* a reset got there first */
    double d = backoff_for(m, p->fails);
    p->state = PS_BACKOFF;
    if (d <= 0) {
        pair_start(p);
        return;
    }
    TOLK_LOG(m->host, m->inst, TOLK_LOG_INFO, "%s: restarting in %.2f s (%u failures in a row)",
             p->mode, d, p->fails);
    ev_timer_stop(m->loop, &p->restart_t);
    ev_timer_set(&p->restart_t, d, 0.);
    ev_timer_start(m->loop, &p->restart_t);
}

/* Jobs for a new pipeline: the warm-up and the discarded ones go, those
 * that were in flight are written again (or fail after max_retries). */
static void requeue(pair *p, int count_tries)
{
    mt_apertium *m = p->m;
    double now = m->host->now();
    for (job *j = p->head, *next; j; j = next) {
        next = j->next;
        if (j->fail != TOLK_OK) continue;
        if (!j->r) {
            job_unlink(p, j);
            job_free(j);
            continue;
        }
        if (j->woff > 0) {
            j->woff = 0;
            if (count_tries && ++j->tries > (unsigned)m->max_retries) {
                j->fail = TOLK_E_BACKEND;
                continue;
            }
            p->retried++;
            if (j->deadline < now + m->timeout) j->deadline = now + m->timeout;
        }
        j->head_since = 0;
    }
    p->wjob = p->head;
}

/* A pipeline was spawned (pr) or could not be (msg): put it to work. */
static void pair_started(pair *p, proc *pr, const char *msg)
{
    mt_apertium *m = p->m;
    if (!pr) {
        msgf(p->last_error, sizeof p->last_error, "%s", msg);
        TOLK_LOG(m->host, m->inst, TOLK_LOG_ERR, "%s: %s", p->mode, msg);
        char why[320];
        msgf(why, sizeof why, "apertium %s: %s", p->mode, msg);
        p->state = PS_DOWN;
        m->host->report(m->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, why);
        schedule_restart(p);
        return;
    }
    int status = -1;
    size_t dead = proc_activate(pr, p, &status);
    p->pr = pr;
    p->state = PS_RUNNING;
    p->warm = 0;
    if (m->warmup) {
        job *w = calloc(1, sizeof *w);
        int nomem = 0;
        if (w && (w->payload = encode_text("Hello.", &w->len, &nomem))) {
            w->warmup = 1;
            w->t_enq = pr->t_start;
            job_link_head(p, w);
        } else {
            free(w);
        }
    }
    p->wjob = p->head;
    TOLK_LOG(m->host, m->inst, TOLK_LOG_VERB,
             "%s: pipeline of %zu programs started in %.1f ms (pid %d..%d)", p->mode, pr->nst,
             (m->host->now() - pr->t_start) * 1000.0, (int)pr->st[0].pid,
             (int)pr->st[pr->nst - 1].pid);
    kick_writer(p);
    arm_deadline(p);
    if (dead) {
        char st[96], why[256];
        if (status == -1)
            snprintf(st, sizeof st, "exited");
        else
            describe_status(st, sizeof st, status);
        read_stderr(pr);
        msgf(why, sizeof why, "stage %zu (%s, pid %d) %s as it started", dead,
             base_name(p->spec[dead - 1].argv[0]), (int)pr->st[dead - 1].pid, st);
        pair_fail(p, why);
    }
}

struct spawn_job {
    spawn_job *next;   /* in mt_apertium.spawning */
    mt_apertium *m;    /* NULL: the instance was destroyed meanwhile */
    pair *p;
    const stage_spec *spec; /* the pair's, or owned once orphaned */
    size_t nspec;
    int own_spec;
    const tolk_host *host;
    proc *pr;
    char msg[256];
};

static void spawn_work(void *ud)
{
    spawn_job *sj = ud;
    sj->pr = proc_spawn(sj->spec, sj->nspec, sj->host, sj->msg, sizeof sj->msg);
}

static void spawn_done(void *ud)
{
    spawn_job *sj = ud;
    mt_apertium *m = sj->m;
    if (!m) { /* destroy() came first: nothing may know these processes */
        if (sj->pr) proc_abort(sj->pr);
        if (sj->own_spec) specs_free((stage_spec *)sj->spec, sj->nspec);
        free(sj);
        return;
    }
    for (spawn_job **pp = &m->spawning; *pp; pp = &(*pp)->next) {
        if (*pp == sj) {
            *pp = sj->next;
            break;
        }
    }
    pair *p = sj->p;
    p->spawning = NULL;
    proc *pr = sj->pr;
    char msg[256];
    memcpy(msg, sj->msg, sizeof msg);
    free(sj);
    pair_started(p, pr, msg);
}

static void pair_start(pair *p)
{
    mt_apertium *m = p->m;
    if (p->spawning) return;
    ev_timer_stop(m->loop, &p->restart_t);
    if (p->serial++ > 0) p->restarts++;
    p->t_last_start = m->host->now();
    p->warm = 0;
    p->state = PS_STARTING;
    spawn_job *sj = calloc(1, sizeof *sj);
    if (sj) {
        sj->m = m;
        sj->p = p;
        sj->spec = p->spec;
        sj->nspec = p->nspec;
        sj->host = m->host;
        sj->next = m->spawning;
        m->spawning = sj;
        p->spawning = sj;
        if (m->host->submit(NULL, spawn_work, spawn_done, sj) == TOLK_OK) return;
        m->spawning = sj->next;
        p->spawning = NULL;
        free(sj);
    }
    /* no worker: spawn here, on the loop */
    char msg[256] = "out of memory";
    proc *pr = proc_spawn(p->spec, p->nspec, m->host, msg, sizeof msg);
    pair_started(p, pr, msg);
}

/* The current pipeline failed: report, retire it, start a new one (now or
 * after a backoff), give the requests in flight to it, and complete those
 * that cannot be retried. */
static void pair_fail(pair *p, const char *why)
{
    mt_apertium *m = p->m;
    if (p->state != PS_RUNNING || !p->pr) return;
    proc *pr = p->pr;
    p->pr = NULL;
    p->state = PS_DOWN;
    msgf(p->last_error, sizeof p->last_error, "%s", why);
    size_t inflight = 0;
    for (job *j = p->head; j; j = j->next)
        if (j->woff > 0 && j->r && j->fail == TOLK_OK) inflight++;
    char msg[400];
    msgf(msg, sizeof msg, "apertium %s pipeline failed: %s; restarting it, %zu request(s) "
             "in flight re-sent", p->mode, why, inflight);
    TOLK_LOG(m->host, m->inst, TOLK_LOG_WARN, "%s", msg);
    m->host->report(m->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, msg);
    proc_retire(pr); /* may free pr */
    requeue(p, 1);
    schedule_restart(p); /* asynchronous: nothing waits for the spawn */
    complete_failed(p); /* mt_done()s last: they may re-enter (reset, translate) */
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    pair *p = CONTAINER_OF(w, pair, deadline_t);
    mt_apertium *m = p->m;
    double now = m->host->now() + 0.001;
    job *h = p->head;
    if (p->state == PS_RUNNING && h && h->head_since > 0 && now >= h->head_since + limit_for(p)) {
        /* the pipeline is stuck on its head request */
        for (job *j = p->head; j; j = j->next) {
            if (j->r && j->fail == TOLK_OK && j->deadline <= now) {
                j->fail = TOLK_E_TIMEOUT;
                p->timeouts++;
            }
        }
        char why[128];
        snprintf(why, sizeof why, "no answer within %.0f ms%s", limit_for(p) * 1000.0,
                 p->warm ? "" : " of starting");
        pair_fail(p, why);
        return;
    }
    /* requests waiting too long behind a pipeline that is still working
     * (cold, or busy): they time out, the pipeline goes on */
    for (;;) {
        job *j = p->head;
        while (j && !(j->r && j->fail == TOLK_OK && j->deadline <= now)) j = j->next;
        if (!j) break;
        tolk_request *r = j->r;
        p->timeouts++;
        if (j->woff > 0) {
            j->r = NULL; /* keeps its slot; the answer is thrown away */
        } else {
            job_unlink(p, j);
            job_free(j);
        }
        m->host->mt_done(r, TOLK_E_TIMEOUT, NULL);
    }
    arm_deadline(p);
}

/* ------------------------------------------------------------------ */
/* MT interface                                                        */

static int code_eq(const char *a, size_t an, const char *b)
{
    return strlen(b) == an && !strncasecmp(a, b, an);
}

static size_t base_len(const char *code)
{
    size_t n = strcspn(code, "-_");
    return n;
}

static pair *find_pair(mt_apertium *m, const char *from, const char *to)
{
    char k[160];
    snprintf(k, sizeof k, "%s-%s", from, to);
    for (size_t i = 0; i < m->npairs; i++)
        if (!strcasecmp(m->pairs[i].key, k)) return &m->pairs[i];
    /* "en-US" -> "en" */
    snprintf(k, sizeof k, "%.*s-%.*s", (int)base_len(from), from, (int)base_len(to), to);
    for (size_t i = 0; i < m->npairs; i++)
        if (code_eq(k, strlen(k), m->pairs[i].key)) return &m->pairs[i];
    return NULL;
}

static tolk_status mt_apertium_translate(void *self, tolk_request *r, const char *text,
                                         const char *from, const char *to)
{
    mt_apertium *m = self;
    pair *p = from && to ? find_pair(m, from, to) : NULL;
    if (!p) {
        m->declined++;
        TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "%s->%s declined: no such pair configured",
                 from ? from : "?", to ? to : "?");
        return TOLK_DECLINED;
    }
    if (!text || !r) return TOLK_E_INVAL;
    if (p->state == PS_BACKOFF && p->fails >= STORM_FAILS) {
        TOLK_LOG(m->host, m->inst, TOLK_LOG_DBG, "%s: refused, pipeline failing (%s)", p->mode,
                 p->last_error);
        return TOLK_E_BACKEND;
    }
    if (pending_requests(p) >= (size_t)m->max_queue) return TOLK_E_LIMIT;
    job *j = calloc(1, sizeof *j);
    if (!j) return TOLK_E_NOMEM;
    int nomem = 0;
    j->payload = encode_text(text, &j->len, &nomem);
    if (!j->payload) {
        free(j);
        return nomem ? TOLK_E_NOMEM : TOLK_E_INVAL;
    }
    j->r = r;
    j->t_enq = m->host->now();
    j->deadline = j->t_enq + m->timeout;
    job_link_tail(p, j);
    if (!p->wjob) p->wjob = j;
    p->requests++;
    kick_writer(p);
    arm_deadline(p);
    return TOLK_PENDING;
}

static void mt_apertium_cancel(void *self, tolk_request *r)
{
    mt_apertium *m = self;
    for (size_t i = 0; i < m->npairs; i++) {
        pair *p = &m->pairs[i];
        for (job *j = p->head; j; j = j->next) {
            if (j->r != r) continue;
            p->cancelled++;
            if (j->woff > 0 && j->fail == TOLK_OK && p->pr) {
                j->r = NULL; /* in the pipeline: its answer will be read and dropped */
            } else {
                job_unlink(p, j);
                job_free(j);
            }
            arm_deadline(p);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Instance                                                            */

static tolk_status mt_apertium_check_config(const json_t *cfg, tolk_config_error *err)
{
    pair *pairs = NULL;
    size_t n = 0;
    tolk_status st = build_pairs(cfg, &pairs, &n, err);
    pairs_free(pairs, n);
    return st;
}

/* Waits for a stage without the loop (destroy). 1: reaped or not ours. */
static int reap_now(stage *s)
{
    int status;
    pid_t r;
    do r = waitpid(s->pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == s->pid || (r < 0 && errno == ECHILD)) {
        s->alive = 0;
        return 1;
    }
    return 0;
}

static size_t reap_all(proc *list, double until, const tolk_host *host)
{
    size_t left;
    for (;;) {
        left = 0;
        for (proc *pr = list; pr; pr = pr->next)
            for (size_t i = 0; i < pr->nst; i++)
                if (pr->st[i].alive && !reap_now(&pr->st[i])) left++;
        if (!left || host->now() >= until) return left;
        struct timespec ts = {0, 1000000}; /* 1 ms */
        nanosleep(&ts, NULL);
    }
}

static void mt_apertium_destroy(void *self)
{
    mt_apertium *m = self;
    if (!m) return;
    for (size_t i = 0; i < m->npairs; i++) {
        pair *p = &m->pairs[i];
        ev_timer_stop(m->loop, &p->deadline_t);
        ev_timer_stop(m->loop, &p->restart_t);
        while (p->head) { /* the core cancelled its requests already */
            job *j = p->head;
            job_unlink(p, j);
            job_free(j);
        }
        if (p->pr) {
            proc *pr = p->pr;
            p->pr = NULL;
            proc_retire(pr);
        }
    }
    /* Pipelines a worker is spawning right now: the job cleans up after
     * itself when it comes back (kills and reaps what it started); it
     * keeps the program list it is reading. */
    for (spawn_job *sj = m->spawning; sj; sj = sj->next) {
        sj->m = NULL;
        sj->own_spec = 1;
        sj->p->spec = NULL;
        sj->p->nspec = 0;
    }
    m->spawning = NULL;
    /* Everything still running is ours to reap, here and now: the plugin
     * may be unloaded right after this returns. Stop the child watchers
     * first so that libev does not report them later. */
    proc *list = m->dying;
    m->dying = NULL;
    for (proc *pr = list; pr; pr = pr->next) {
        ev_timer_stop(m->loop, &pr->kill_t);
        for (size_t i = 0; i < pr->nst; i++) bg_child_stop(m->loop, &pr->st[i].cw);
    }
    if (list) {
        double t0 = m->host->now();
        size_t left = reap_all(list, t0 + m->kill_wait, m->host);
        if (left) {
            for (proc *pr = list; pr; pr = pr->next) proc_signal(pr, SIGKILL);
            left = reap_all(list, m->host->now() + REAP_AFTER_KILL, m->host);
            if (left)
                TOLK_LOG(m->host, m->inst, TOLK_LOG_ERR,
                         "%zu pipeline process(es) did not die after SIGKILL", left);
        }
        TOLK_LOG(m->host, m->inst, TOLK_LOG_VERB, "pipelines stopped in %.1f ms",
                 (m->host->now() - t0) * 1000.0);
    }
    while (list) {
        proc *pr = list;
        list = pr->next;
        proc_free(pr);
    }
    pairs_free(m->pairs, m->npairs);
    free(m);
}

static tolk_status mt_apertium_create(const tolk_host *host, tolk_instance *inst,
                                      const json_t *cfg, void **self)
{
    mt_apertium *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;
    m->loop = host->loop;
    m->timeout = (double)host->cfg_int(cfg, "timeout_ms") / 1000.0;
    m->startup_timeout = (double)host->cfg_int(cfg, "startup_timeout_ms") / 1000.0;
    m->backoff_max = (double)host->cfg_int(cfg, "backoff_max_ms") / 1000.0;
    m->kill_wait = (double)host->cfg_int(cfg, "kill_wait_ms") / 1000.0;
    m->max_queue = host->cfg_int(cfg, "max_queue");
    m->max_retries = host->cfg_int(cfg, "max_retries");
    m->warmup = host->cfg_bool(cfg, "warmup");
    if (m->timeout <= 0) m->timeout = 5.0;
    if (m->startup_timeout <= 0) m->startup_timeout = 30.0;
    if (m->max_queue <= 0) m->max_queue = 64;
    if (m->max_retries < 0) m->max_retries = 0;
    tolk_config_error err = {0};
    tolk_status st = build_pairs(cfg, &m->pairs, &m->npairs, &err);
    if (st != TOLK_OK) {
        host->log(inst, TOLK_LOG_ERR, "%s%s%s", err.key ? err.key : "", err.key ? ": " : "",
                  err.message);
        free(m);
        return st;
    }
    for (size_t i = 0; i < m->npairs; i++) {
        pair *p = &m->pairs[i];
        p->m = m;
        ev_init(&p->deadline_t, on_deadline);
        ev_init(&p->restart_t, on_restart_timer);
    }
    /* Start every pipeline now; they warm up while the loop runs. Starting
     * is a few posix_spawn()s; nothing here waits for Apertium. */
    for (size_t i = 0; i < m->npairs; i++) pair_start(&m->pairs[i]);
    TOLK_LOG(host, inst, TOLK_LOG_INFO, "%zu pair(s), timeout %.0f ms", m->npairs,
             m->timeout * 1000.0);
    *self = m;
    return TOLK_OK;
}

/* Start afresh: a warm pipeline is replaced (its requests in flight are
 * written again, without counting a try), one waiting out a backoff starts
 * now, and one that is still cold, i.e. already fresh (the plugin restarts
 * a failed pipeline by itself, and the core's recovery may reset right
 * after), is left to warm up. The count of failures in a row is kept: a
 * reset does not lift the guard against restart storms. */
static tolk_status mt_apertium_reset(void *self)
{
    mt_apertium *m = self;
    for (size_t i = 0; i < m->npairs; i++) {
        pair *p = &m->pairs[i];
        if (p->state == PS_STARTING || (p->state == PS_RUNNING && !p->warm)) continue;
        if (p->pr) {
            proc *pr = p->pr;
            p->pr = NULL;
            p->state = PS_DOWN;
            proc_retire(pr);
            requeue(p, 0);
        }
        TOLK_LOG(m->host, m->inst, TOLK_LOG_INFO, "%s: reset: starting a new pipeline", p->mode);
        pair_start(p); /* no mt_done() from in here: nothing was marked failed */
    }
    return TOLK_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(const pair *p, double q)
{
    if (!p->nlat) return -1;
    double v[LAT_RING];
    memcpy(v, p->lat, p->nlat * sizeof *v);
    qsort(v, p->nlat, sizeof *v, cmp_double);
    size_t k = (size_t)(q * (double)(p->nlat - 1) + 0.5);
    return v[k];
}

static tolk_health mt_apertium_health(void *self, json_t **detail_new)
{
    mt_apertium *m = self;
    tolk_health worst = TOLK_HEALTHY;
    json_t *pairs = detail_new ? json_object() : NULL;
    uint64_t unknown = 0;
    for (size_t i = 0; i < m->npairs; i++) {
        pair *p = &m->pairs[i];
        /* a pipeline starting or cold is up; one starting again after a
         * failure, or waiting to, is not quite */
        tolk_health h = TOLK_HEALTHY;
        if (p->state == PS_STARTING && p->fails > 0) h = TOLK_DEGRADED;
        if (p->state == PS_BACKOFF || p->state == PS_DOWN)
            h = p->fails >= STORM_FAILS ? TOLK_UNHEALTHY : TOLK_DEGRADED;
        if (h > worst) worst = h;
        uint64_t pu = p->marks[0] + p->marks[1] + p->marks[2];
        unknown += pu;
        if (!pairs) continue;
        size_t inflight = 0, queued = 0;
        for (job *j = p->head; j; j = j->next) {
            if (j->woff > 0)
                inflight++;
            else
                queued++;
        }
        json_t *pids = json_array();
        if (p->pr)
            for (size_t k = 0; k < p->pr->nst; k++)
                if (p->pr->st[k].alive) json_array_append_new(pids, json_integer(p->pr->st[k].pid));
        const char *state = p->state == PS_RUNNING    ? "running"
                            : p->state == PS_STARTING ? "starting"
                            : p->state == PS_BACKOFF  ? "restarting"
                                                      : "down";
        json_t *o = json_pack(
            "{s:s, s:s, s:b, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
            "s:I, s:f, s:f, s:f, s:f, s:f, s:I, s:{s:I, s:I, s:I}, s:s, s:s, s:I}",
            "mode", p->mode, "state", state, "warm", p->warm && p->state == PS_RUNNING, "pid",
            (json_int_t)(p->pr && p->pr->nst ? p->pr->st[0].pid : 0), "pids", pids, "stages",
            (json_int_t)p->nspec, "requests", (json_int_t)p->requests, "answered",
            (json_int_t)p->answered, "failed", (json_int_t)p->failed, "timeouts",
            (json_int_t)p->timeouts, "cancelled", (json_int_t)p->cancelled, "retried",
            (json_int_t)p->retried, "discarded", (json_int_t)p->discarded, "restarts",
            (json_int_t)p->restarts, "failures_in_a_row", (json_int_t)p->fails, "in_flight",
            (json_int_t)inflight, "queued", (json_int_t)queued, "p50_ms", percentile(p, 0.5),
            "p90_ms", percentile(p, 0.9), "last_ms", p->nlat ? p->last_ms : -1.0, "warmup_ms",
            p->warm ? p->warmup_ms : -1.0, "uptime_s",
            p->pr ? m->host->now() - p->pr->t_start : 0.0, "unknown_words", (json_int_t)pu,
            "marks", "unknown", (json_int_t)p->marks[0], "untranslated",
            (json_int_t)p->marks[1], "ungenerated", (json_int_t)p->marks[2], "last_error",
            p->last_error, "last_stderr", p->last_stderr, "incomplete_answers",
            (json_int_t)p->incomplete);
        if (o) json_object_set_new(pairs, p->key, o);
    }
    if (detail_new) {
        size_t dying = 0;
        for (proc *pr = m->dying; pr; pr = pr->next) dying++;
        *detail_new = json_pack("{s:o, s:I, s:I, s:I}", "pairs", pairs, "declined",
                                (json_int_t)m->declined, "unknown_words", (json_int_t)unknown,
                                "stopping_pipelines", (json_int_t)dying);
    }
    return worst;
}

static const tolk_mt mt_apertium_desc = {
    .base =
        {
            TOLK_PLUGIN_INIT(tolk_mt, TOLK_KIND_MT),
            .name = "mt_apertium",
            .version = "1.0.0",
            .description = "Apertium rule-based translation: one long-lived null-flush "
                           "pipeline per language pair",
            .options = mt_apertium_options,
            .check_config = mt_apertium_check_config,
            .create = mt_apertium_create,
            .destroy = mt_apertium_destroy,
            .reset = mt_apertium_reset,
            .health = mt_apertium_health,
        },
    .translate = mt_apertium_translate,
    .cancel = mt_apertium_cancel,
};

TOLK_PLUGIN_DEFINE(mt_apertium_desc)
