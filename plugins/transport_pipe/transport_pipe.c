/*
 * transport_pipe -- calls through named pipes in a media directory, for any
 * media source that can write and read a FIFO (a media server's helper, a
 * recorder, a test harness, a container sharing a volume).
 *
 * A call is a pair of FIFOs in the media directory: {id}_in.pcm, the audio
 * to translate, written by the media side, and {id}_out.pcm, its
 * translation, read by the media side; SLIN16 (16 kHz, signed 16-bit
 * little-endian, mono). A second pair {id}_b_in.pcm / {id}_b_out.pcm is the
 * other party of a two-party call. An optional {id}.json beside them names
 * the endpoints, languages, voices and mode. The call begins when its pair
 * appears (inotify, and a scan at start) and ends when its input has ended
 * (EOF, and no writer came back within eof_grace_ms) and everything was
 * played, or at once when one of its FIFOs is removed.
 *
 * Nothing outside the media directory is ever opened: every file is opened
 * relative to the directory's descriptor, by a checked name (no path
 * separator, bounded, only A-Z a-z 0-9 . _ -), with O_NOFOLLOW, and checked
 * with fstat() after open. Symbolic links, regular files and anything else
 * that is not a FIFO are refused, counted and logged. A FIFO that is
 * replaced under a running call (another inode) ends the call.
 *
 * The loop never waits on a pipe: every descriptor is non-blocking. Input is
 * read into a bounded buffer of whole frames (partial frames reassembled)
 * and fed to the core at 20 ms per frame against a clock (a writer faster
 * than real time is held back by the pipe once the buffer is full), or, with
 * input = "pull", as fast as the core takes it (TOLK_CHAN_PULL). Output goes
 * into a bounded buffer per pipe written with non-blocking writes of whole
 * frames; a slow or absent reader fills it, and then the oldest audio is
 * dropped and counted. The gauge pipe_buffer_utilization{component=
 * "<instance>:in"|"<instance>:out"} is the fill of the fullest buffer of
 * each direction.
 *
 * Settings and health detail: README.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>
#include <tolk/plugin.h>

#define PLUGIN_NAME "transport_pipe"
/* Asterisk's unique ids are at most 150 characters; a channel id longer
 * than this is refused (the FIFO names add at most 10). */
#define ID_MAX 128
#define JSON_MAX (64 * 1024)
/* Writes of at most PIPE_BUF bytes to a pipe are atomic: whole frames go
 * out or nothing does, so the reader never sees half a sample. */
#define FRAMES_PER_WRITE (PIPE_BUF / TOLK_FRAME_BYTES)
/* A paced leg's clock gives at most this much credit: frames that come
 * late (the writer or this loop stalled) are fed as soon as they arrive,
 * up to 1 s behind the clock, so a stall does not stay in every later
 * phrase's latency; a writer that was silent longer than that cannot then
 * send faster than real time for more than 1 s. */
#define CREDIT_FRAMES 50
/* A frame may go in this many frames ahead of the leg's clock: a writer
 * whose frames come a little early (its clock's phase, scheduling) is not
 * held until the next tick, which would add up to 20 ms to every phrase's
 * latency; the rate is still one frame per 20 ms. */
#define LEAD_FRAMES 1
/* A reader that is absent (open() says ENXIO) is looked for again this
 * often while there is audio for it. */
#define REOPEN_S 0.1
#define TICK_S TOLK_FRAME_SECONDS
/* Refusals are logged one by one up to this many, then at powers of two. */
#define LOG_FIRST 10
/* Input FIFOs (by inode) whose call was refused: both names of a pair
 * report it, and neither should count it twice or retry it. */
#define TRIED_RING 64

enum { K_IN = 0, K_OUT = 1 };
enum { IN_PACED = 0, IN_PULL = 1 };
enum { OUT_PACED = 0, OUT_CONTINUOUS = 1, OUT_UNPACED = 2 };
enum { MODE_AUTO = -1 };

typedef enum call_state { C_OPENING = 0, C_LIVE, C_DEAD } call_state;

typedef struct fifo_id {
    dev_t dev;
    ino_t ino;
} fifo_id;

typedef struct call call;

typedef struct in_side {
    call *c;
    int leg;
    int present;
    fifo_id id;
    int lock_fd; /* held open for the call: its flock() says the call is ours */
    int fd;      /* read end, reopened after each EOF */
    tolk_io *io;
    int reading; /* io watcher asks for READ */
    uint8_t part[TOLK_FRAME_BYTES];
    size_t npart;
    int16_t *ring; /* whole frames, cap of them */
    double *t;     /* arrival time of each frame */
    size_t cap, head, n;
    int clock_on;
    double t0;
    uint64_t fed_on_clock;
    int waiting; /* pull: the core said TOLK_E_AGAIN, until input_ready() */
    int had_data;
    int eof; /* every writer went away; the grace time runs */
    double eof_at;
    int ended; /* channel_input_end() sent */
    uint64_t frames;
} in_side;

typedef struct out_side {
    call *c;
    int leg;
    int present;
    int created; /* we made it (create_out): we remove it */
    fifo_id id;
    int fd; /* -1: no reader yet, or it went away */
    tolk_io *io;
    int writing;
    uint8_t *ring; /* whole frames, little-endian */
    size_t cap, head, n;
    size_t head_off; /* bytes of the head frame already written */
    double next_open;
    int reader_seen;
    uint64_t frames;
} out_side;

typedef struct pipe_tp pipe_tp;

struct call {
    pipe_tp *tp;
    call *next, *prev;
    call_state state;
    int closing; /* inside our channel_close() */
    char id[ID_MAX + 1];
    tolk_channel *ch;
    double t_open;
    int opening, hungup_while_opening;
    /* in[L]: leg L's voice; out[L]: its translation, played to the other leg */
    in_side in[2];
    out_side out[2];
    char *lang[2], *ep[2], *voice[2];
    int counted; /* the core took it: its end is counted */
    /* why the call must end, found where the core cannot be told (inside
     * play()): the next tick ends it */
    const char *close_why;
};

struct pipe_tp {
    const tolk_host *host;
    tolk_instance *inst;

    /* settings */
    char *media_dir;
    unsigned dir_mode, fifo_mode;
    char *from, *to, *endpoint[2];
    int mode; /* tolk_mode or MODE_AUTO */
    int input, output;
    int create_out;
    size_t in_frames, out_frames;
    double eof_grace, writer_timeout;
    int64_t max_calls;

    int dirfd, infd;
    tolk_io *inotify_io;
    int started;
    tolk_timer *tick;
    call *calls;
    size_t ncalls;
    int depth; /* inside host calls that may call back */

    tolk_series *util_in, *util_out;

    uint64_t calls_started, calls_ended, calls_refused, calls_removed, calls_busy;
    uint64_t refused_names, refused_symlinks, refused_not_fifo, refused_replaced, refused_json,
        refusals_logged;
    uint64_t frames_in, frames_out, frames_no_pipe, out_overflow, out_dropped_at_end;
    uint64_t writer_eofs, writer_returns, reader_gone, in_full;
    fifo_id tried[TRIED_RING];
    size_t ntried;
    double util_in_v, util_out_v;
};

/* ------------------------------------------------------------------ */
/* Settings                                                            */

static const tolk_option options[] = {
    {"media_dir", TOLK_OPT_STRING, 0, "/tmp/asterisk_media", 0, 0,
     "directory of the calls' FIFOs (absolute; created if absent)"},
    {"dir_mode", TOLK_OPT_STRING, 0, "0770", 0, 0,
     "permissions of the media directory when it is created (octal; never world-writable)"},
    {"fifo_mode", TOLK_OPT_STRING, 0, "0660", 0, 0,
     "permissions of an {id}_out.pcm the plugin creates (octal)"},
    {"from", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "language of party A when the call's JSON names none (unset: the core's defaults)"},
    {"to", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "language of party B when the call's JSON names none (unset: the core's defaults)"},
    {"endpoint_a", TOLK_OPT_STRING, 0, NULL, 0, 0, "endpoint of party A when the JSON names none"},
    {"endpoint_b", TOLK_OPT_STRING, 0, NULL, 0, 0, "endpoint of party B when the JSON names none"},
    {"mode", TOLK_OPT_STRING, 0, "auto", 0, 0,
     "auto (bidirectional with a _b pair, else unidirectional), bidirectional, unidirectional, "
     "passthrough, default"},
    {"input", TOLK_OPT_STRING, 0, "paced", 0, 0,
     "paced: 20 ms per frame into the core; pull: as fast as the core takes it (a file-like "
     "source)"},
    {"output", TOLK_OPT_STRING, 0, "paced", 0, 0,
     "paced: a frame per 20 ms while there is speech; continuous: silence frames between; "
     "unpaced: as soon as it is ready"},
    {"create_out", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "make {id}_out.pcm when only {id}_in.pcm appears (and remove it at the end)"},
    {"in_buffer_ms", TOLK_OPT_INT, 0, "1000", 100, 60000,
     "audio read ahead per input pipe; when full, the writer waits"},
    {"out_buffer_ms", TOLK_OPT_INT, 0, "1000", 100, 60000,
     "audio kept per output pipe for a slow or absent reader; then the oldest is dropped"},
    {"eof_grace_ms", TOLK_OPT_INT, 0, "2000", 0, 3600000,
     "a writer that went away may come back this long before its input ends"},
    {"writer_timeout_ms", TOLK_OPT_INT, 0, "30000", 0, 3600000,
     "a party whose input has had no audio at all this long has ended (0: wait forever)"},
    {"max_calls", TOLK_OPT_INT, 0, "1000", 1, 100000, "calls at once through this instance"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static int parse_mode(const char *v, int *out) {
    if (!v || !strcmp(v, "auto"))
        *out = MODE_AUTO;
    else if (!strcmp(v, "default"))
        *out = TOLK_MODE_DEFAULT;
    else if (!strcmp(v, "bidirectional"))
        *out = TOLK_MODE_BIDIRECTIONAL;
    else if (!strcmp(v, "unidirectional"))
        *out = TOLK_MODE_UNIDIRECTIONAL;
    else if (!strcmp(v, "passthrough"))
        *out = TOLK_MODE_PASSTHROUGH;
    else
        return -1;
    return 0;
}

static int parse_octal(const char *v, unsigned *out) {
    if (!v || !*v || strlen(v) > 4) return -1;
    unsigned m = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '7') return -1;
        m = m * 8 + (unsigned)(*p - '0');
    }
    *out = m;
    return 0;
}

static const char *jstr(const json_t *cfg, const char *key) {
    return json_string_value(json_object_get(cfg, key));
}

/* The checks an existing media directory must pass: a real directory (not
 * a link to one), ours or root's, and not writable by everyone (anyone could
 * then start calls or plant files). Fills err and returns -1 if not. */
static int check_dir_stat(const struct stat *st, const char *path, char *err, size_t errsz) {
    if (S_ISLNK(st->st_mode)) {
        snprintf(err, errsz, "%s is a symbolic link; the media directory must be a real one", path);
        return -1;
    }
    if (!S_ISDIR(st->st_mode)) {
        snprintf(err, errsz, "%s exists and is not a directory", path);
        return -1;
    }
    if (st->st_uid != geteuid() && st->st_uid != 0) {
        snprintf(err, errsz, "%s belongs to uid %lu, not to this process (uid %lu) or root", path,
                 (unsigned long)st->st_uid, (unsigned long)geteuid());
        return -1;
    }
    if (st->st_mode & S_IWOTH) {
        snprintf(err, errsz,
                 "%s is writable by every user (mode %04o): anyone could start calls there", path,
                 (unsigned)(st->st_mode & 07777));
        return -1;
    }
    return 0;
}

static tolk_status tp_check_config(const json_t *cfg, tolk_config_error *err) {
    const char *dir = jstr(cfg, "media_dir");
    unsigned m;
    int mode;
    if (dir && (dir[0] != '/' || strlen(dir) > 1024)) {
        err->key = "media_dir";
        snprintf(err->message, sizeof err->message,
                 "\"%.160s\": an absolute path (at most 1024 characters) is required", dir);
        return TOLK_E_INVAL;
    }
    if (parse_octal(jstr(cfg, "dir_mode"), &m) != 0 || (m & 0002) || !(m & 0700)) {
        err->key = "dir_mode";
        snprintf(err->message, sizeof err->message,
                 "\"%.32s\": an octal mode such as \"0770\", with rwx for the owner and never "
                 "writable by others",
                 jstr(cfg, "dir_mode") ? jstr(cfg, "dir_mode") : "");
        return TOLK_E_INVAL;
    }
    if (parse_octal(jstr(cfg, "fifo_mode"), &m) != 0 || (m & 0002) || (m & 0111)) {
        err->key = "fifo_mode";
        snprintf(err->message, sizeof err->message,
                 "\"%.32s\": an octal mode such as \"0660\", never writable by others",
                 jstr(cfg, "fifo_mode") ? jstr(cfg, "fifo_mode") : "");
        return TOLK_E_INVAL;
    }
    if (parse_mode(jstr(cfg, "mode"), &mode) != 0) {
        err->key = "mode";
        snprintf(err->message, sizeof err->message,
                 "\"%.64s\": expected auto, bidirectional, unidirectional, passthrough or default",
                 jstr(cfg, "mode"));
        return TOLK_E_INVAL;
    }
    const char *in = jstr(cfg, "input"), *out = jstr(cfg, "output");
    if (in && strcmp(in, "paced") && strcmp(in, "pull")) {
        err->key = "input";
        snprintf(err->message, sizeof err->message, "\"%.64s\": expected paced or pull", in);
        return TOLK_E_INVAL;
    }
    if (out && strcmp(out, "paced") && strcmp(out, "continuous") && strcmp(out, "unpaced")) {
        err->key = "output";
        snprintf(err->message, sizeof err->message,
                 "\"%.64s\": expected paced, continuous or unpaced", out);
        return TOLK_E_INVAL;
    }
    struct stat st;
    if (dir && lstat(dir, &st) == 0 &&
        check_dir_stat(&st, dir, err->message, sizeof err->message) != 0) {
        err->key = "media_dir";
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Names                                                               */

/* For log lines: a name from the directory may hold anything. */
static const char *shown(const char *name, char *buf, size_t sz) {
    size_t j = 0;
    for (size_t i = 0; name[i] && j + 4 < sz; i++) {
        unsigned char ch = (unsigned char)name[i];
        buf[j++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
        if (i >= 80) {
            memcpy(buf + j, "...", 3);
            j += 3;
            break;
        }
    }
    buf[j] = '\0';
    return buf;
}

static int valid_id(const char *id, size_t len) {
    if (len == 0 || len > ID_MAX || id[0] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = id[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static const char *const suffixes[2][2] = {{"_in.pcm", "_out.pcm"}, {"_b_in.pcm", "_b_out.pcm"}};

static int ends_with(const char *s, size_t n, const char *suf) {
    size_t k = strlen(suf);
    return n >= k && !memcmp(s + n - k, suf, k);
}

/* Splits a directory entry's name. Returns 1 for a call's FIFO name (id,
 * leg, kind filled), 0 for a name that is none of ours (ignored), -1 for a
 * .pcm name that is malformed. */
static int parse_name(const char *name, char *id, int *leg, int *kind) {
    size_t n = strlen(name);
    if (!ends_with(name, n, ".pcm")) return 0;
    /* the _b suffixes first: "x_b_in.pcm" is party B of call x */
    for (int L = 1; L >= 0; L--)
        for (int k = 0; k < 2; k++) {
            if (!ends_with(name, n, suffixes[L][k])) continue;
            size_t len = n - strlen(suffixes[L][k]);
            if (!valid_id(name, len)) return -1;
            memcpy(id, name, len);
            id[len] = '\0';
            *leg = L;
            *kind = k;
            return 1;
        }
    return -1;
}

static void fifo_name(char *buf, size_t sz, const char *id, int leg, int kind) {
    snprintf(buf, sz, "%s%s", id, suffixes[leg][kind]);
}

/* ------------------------------------------------------------------ */
/* Refusals                                                            */

static int should_log(uint64_t n) { return n <= LOG_FIRST || (n & (n - 1)) == 0; }

static void refuse(pipe_tp *tp, uint64_t *counter, const char *name, const char *why) {
    (*counter)++;
    tp->refusals_logged++;
    if (!should_log(tp->refusals_logged)) return;
    char b[128];
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "%s/%s refused: %s (%llu refusals so far)",
             tp->media_dir, shown(name, b, sizeof b), why, (unsigned long long)tp->refusals_logged);
}

/* What the directory holds under name, without following a link:
 * 1 a FIFO (identity in *id), 0 absent, -1 refused (counted, logged). */
static int probe_fifo_q(pipe_tp *tp, const char *name, fifo_id *id, int quiet) {
    struct stat st;
    if (fstatat(tp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT ? 0 : -1;
    if (quiet && !S_ISFIFO(st.st_mode)) return -1;
    if (S_ISLNK(st.st_mode)) {
        refuse(tp, &tp->refused_symlinks, name, "a symbolic link (links are never followed)");
        return -1;
    }
    if (!S_ISFIFO(st.st_mode)) {
        refuse(tp, &tp->refused_not_fifo, name,
               S_ISREG(st.st_mode) ? "a regular file, not a FIFO" : "not a FIFO");
        return -1;
    }
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    return 1;
}

static int probe_fifo(pipe_tp *tp, const char *name, fifo_id *id) {
    return probe_fifo_q(tp, name, id, 0);
}

/* The partner of a name that appeared: it was (or will be) counted under
 * its own name. */
static int probe_partner(pipe_tp *tp, const char *name, fifo_id *id) {
    return probe_fifo_q(tp, name, id, 1);
}

static void remember_tried(pipe_tp *tp, const fifo_id *id) {
    tp->tried[tp->ntried++ % TRIED_RING] = *id;
}

static int was_tried(const pipe_tp *tp, const fifo_id *id) {
    size_t n = tp->ntried < TRIED_RING ? tp->ntried : TRIED_RING;
    for (size_t i = 0; i < n; i++)
        if (tp->tried[i].dev == id->dev && tp->tried[i].ino == id->ino) return 1;
    return 0;
}

/* Opens a FIFO of the media directory, never following a link, and checks
 * that what was opened is the FIFO that was probed. Returns the descriptor,
 * or -1 with errno (ENXIO: no reader for a write end; ESTALE: replaced). */
static int open_fifo(pipe_tp *tp, const char *name, int flags, const fifo_id *want) {
    int fd = openat(tp->dirfd, name, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || st.st_dev != want->dev ||
        st.st_ino != want->ino) {
        close(fd);
        errno = ESTALE;
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------ */
/* Calls                                                               */

static void call_end_input(call *c, int L);
static void flush_out(call *c, int L);
static void on_in(void *ud, int fd, unsigned revents);
static void on_out(void *ud, int fd, unsigned revents);
static int probe_fifo(pipe_tp *tp, const char *name, fifo_id *id);
static void ensure_tick(pipe_tp *tp);

static call *find_call(pipe_tp *tp, const char *id) {
    for (call *c = tp->calls; c; c = c->next)
        if (c->state != C_DEAD && !strcmp(c->id, id)) return c;
    return NULL;
}

static void in_close(pipe_tp *tp, in_side *in) {
    if (in->io) tp->host->io_stop(in->io);
    in->io = NULL;
    in->reading = 0;
    if (in->fd >= 0) close(in->fd);
    in->fd = -1;
}

static void out_close(pipe_tp *tp, out_side *o) {
    if (o->io) tp->host->io_stop(o->io);
    o->io = NULL;
    o->writing = 0;
    if (o->fd >= 0) close(o->fd);
    o->fd = -1;
}

/* Releases everything the call holds and removes what the plugin created;
 * the struct itself is freed by sweep(), outside any callback. */
static void call_release(call *c) {
    pipe_tp *tp = c->tp;
    char name[ID_MAX + 16];
    for (int L = 0; L < 2; L++) {
        in_side *in = &c->in[L];
        out_side *o = &c->out[L];
        in_close(tp, in);
        if (in->lock_fd >= 0) close(in->lock_fd);
        in->lock_fd = -1;
        if (o->present && o->n) {
            flush_out(c, L);
            tp->out_dropped_at_end += o->n;
            o->n = 0;
        }
        out_close(tp, o);
        if (o->created) {
            /* Only the FIFO that was made here, not one that replaced it. */
            fifo_id now;
            struct stat st;
            fifo_name(name, sizeof name, c->id, L, K_OUT);
            if (fstatat(tp->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISFIFO(st.st_mode)) {
                now.dev = st.st_dev;
                now.ino = st.st_ino;
                if (now.dev == o->id.dev && now.ino == o->id.ino) unlinkat(tp->dirfd, name, 0);
            }
            o->created = 0;
        }
        in->present = o->present = 0;
    }
    if (c->state != C_DEAD) {
        c->state = C_DEAD;
        tp->ncalls--;
        if (c->counted) tp->calls_ended++;
    }
}

static void call_free(call *c) {
    for (int L = 0; L < 2; L++) {
        free(c->in[L].ring);
        free(c->in[L].t);
        free(c->out[L].ring);
        free(c->lang[L]);
        free(c->ep[L]);
        free(c->voice[L]);
    }
    free(c);
}

static void sweep(pipe_tp *tp) {
    if (tp->depth) return;
    call *c = tp->calls;
    while (c) {
        call *next = c->next;
        if (c->state == C_DEAD) {
            if (c->prev)
                c->prev->next = c->next;
            else
                tp->calls = c->next;
            if (c->next) c->next->prev = c->prev;
            call_free(c);
        }
        c = next;
    }
}

/* Ends the call from this side (a FIFO was removed or replaced): the core
 * cancels its work and sends no play() or hangup() for it afterwards. */
static void call_close(call *c, const char *why) {
    pipe_tp *tp = c->tp;
    if (c->state == C_DEAD) return;
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "call %s ended: %s", c->id, why);
    if (c->ch && c->state == C_LIVE) {
        tolk_channel *ch = c->ch;
        c->ch = NULL;
        c->closing = 1;
        tp->depth++;
        tp->host->channel_close(ch);
        tp->depth--;
        c->closing = 0;
    }
    call_release(c);
}

/* Attaches leg L's input FIFO: a lock descriptor (the flock that keeps a
 * second instance or process off this call) and the read end. */
static int attach_in(call *c, int L, const fifo_id *id) {
    pipe_tp *tp = c->tp;
    in_side *in = &c->in[L];
    char name[ID_MAX + 16];
    fifo_name(name, sizeof name, c->id, L, K_IN);
    int lfd = open_fifo(tp, name, O_RDONLY, id);
    if (lfd < 0) {
        if (errno == ESTALE) refuse(tp, &tp->refused_replaced, name, "replaced while opening");
        return -1;
    }
    if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        close(lfd);
        tp->calls_busy++;
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_VERB,
                 "%s is served by another instance or process; left alone", name);
        return -2;
    }
    int fd = open_fifo(tp, name, O_RDONLY, id);
    if (fd < 0) {
        close(lfd);
        return -1;
    }
    in->lock_fd = lfd;
    in->fd = fd;
    in->id = *id;
    in->present = 1;
    in->cap = tp->in_frames;
    in->ring = malloc(in->cap * TOLK_FRAME_BYTES);
    in->t = malloc(in->cap * sizeof(double));
    if (!in->ring || !in->t) return -1;
    return 0;
}

static int attach_out(call *c, int L, const fifo_id *id, int created) {
    pipe_tp *tp = c->tp;
    out_side *o = &c->out[L];
    o->cap = tp->out_frames;
    o->ring = malloc(o->cap * TOLK_FRAME_BYTES);
    if (!o->ring) return -1;
    o->id = *id;
    o->created = created;
    o->present = 1;
    o->fd = -1;
    o->next_open = 0;
    return 0;
}

static void start_reading(call *c, int L) {
    pipe_tp *tp = c->tp;
    in_side *in = &c->in[L];
    if (in->fd < 0) return;
    if (!in->io)
        in->io = tp->host->io_start(tp->inst, in->fd, TOLK_IO_READ, on_in, in);
    else
        tp->host->io_set(in->io, TOLK_IO_READ);
    in->reading = in->io != NULL;
}

/* Makes {id}_out.pcm for leg L when create_out says so. 1: made (identity
 * in *id), 0: not made, -1: failed. */
static int make_out(pipe_tp *tp, const char *id, int L, fifo_id *fid) {
    char name[ID_MAX + 16];
    fifo_name(name, sizeof name, id, L, K_OUT);
    if (!tp->create_out) return 0;
    if (mkfifoat(tp->dirfd, name, tp->fifo_mode) != 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "%s/%s: cannot create the FIFO: %s",
                 tp->media_dir, name, strerror(errno));
        return -1;
    }
    /* mkfifo() is subject to the umask; the mode asked for is the setting */
    fchmodat(tp->dirfd, name, tp->fifo_mode, 0);
    return probe_fifo(tp, name, fid) == 1 ? 1 : -1;
}

/* The b pair of a running call appeared: party B joins. */
static void try_attach_b(call *c) {
    pipe_tp *tp = c->tp;
    char name[ID_MAX + 16];
    fifo_id iid, oid;
    if (c->in[1].present || c->state == C_DEAD) return;
    fifo_name(name, sizeof name, c->id, 1, K_IN);
    if (probe_partner(tp, name, &iid) != 1) return;
    fifo_name(name, sizeof name, c->id, 1, K_OUT);
    int r = probe_partner(tp, name, &oid), created = 0;
    if (r == 0) {
        r = make_out(tp, c->id, 1, &oid);
        created = r == 1;
    }
    if (r != 1) return;
    if (attach_out(c, 1, &oid, created) != 0 || attach_in(c, 1, &iid) != 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "call %s: party B's pipes could not be opened",
                 c->id);
        c->out[1].present = c->in[1].present = 0;
        return;
    }
    c->in[1].eof_at = tp->host->now();
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "call %s: party B joined", c->id);
    start_reading(c, 1);
    if (c->ch) {
        tp->depth++;
        tp->host->channel_progress(c->ch, TOLK_PROGRESS_JOINED, TOLK_LEG_B);
        tp->depth--;
    }
}

static char *dup_or_null(const char *v) { return v ? strdup(v) : NULL; }

/* Reads {id}.json if there is one. 0: fine (or absent), -1: refused. */
static int read_call_json(call *c, int *mode, json_t **call_opts) {
    pipe_tp *tp = c->tp;
    char name[ID_MAX + 16];
    snprintf(name, sizeof name, "%s.json", c->id);
    int fd = openat(tp->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        if (errno == ELOOP)
            refuse(tp, &tp->refused_symlinks, name, "a symbolic link (links are never followed)");
        else {
            char why[160];
            snprintf(why, sizeof why, "cannot open: %s", strerror(errno));
            refuse(tp, &tp->refused_json, name, why);
        }
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > JSON_MAX) {
        int reg = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
        close(fd);
        refuse(tp, &tp->refused_json, name,
               reg ? "larger than 64 KiB" : "not a regular file (the call's JSON must be one)");
        return -1;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t len = 0;
    ssize_t r = 0;
    while (buf && len < (size_t)st.st_size &&
           (r = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
        len += (size_t)r;
    close(fd);
    if (!buf) return -1;
    json_error_t je;
    json_t *j = json_loadb(buf, len, 0, &je);
    free(buf);
    char why[320];
    if (!j || !json_is_object(j)) {
        if (j)
            snprintf(why, sizeof why, "not a JSON object");
        else
            snprintf(why, sizeof why, "line %d, column %d: %s", je.line, je.column, je.text);
        json_decref(j);
        refuse(tp, &tp->refused_json, name, why);
        return -1;
    }
    static const char *const keys[] = {"mode",       "endpoint_a", "endpoint_b",
                                       "language_a", "language_b", "voice_a",
                                       "voice_b",    "options",    NULL};
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        int known = 0;
        for (size_t i = 0; keys[i]; i++)
            known |= !strcmp(k, keys[i]);
        int ok = known && (!strcmp(k, "options") ? json_is_object(v) || json_is_null(v)
                                                 : json_is_string(v) || json_is_null(v));
        if (!ok) {
            snprintf(why, sizeof why,
                     known ? "\"%.64s\" has the wrong type"
                           : "unknown key \"%.64s\" (known: "
                             "mode, endpoint_a, endpoint_b, "
                             "language_a, language_b, voice_a, "
                             "voice_b, options)",
                     k);
            json_decref(j);
            refuse(tp, &tp->refused_json, name, why);
            return -1;
        }
    }
    const char *m = json_string_value(json_object_get(j, "mode"));
    if (m && parse_mode(m, mode) != 0) {
        snprintf(why, sizeof why,
                 "mode \"%.64s\": expected auto, bidirectional, unidirectional, passthrough or "
                 "default",
                 m);
        json_decref(j);
        refuse(tp, &tp->refused_json, name, why);
        return -1;
    }
    static const char *const per_leg[3][2] = {
        {"endpoint_a", "endpoint_b"}, {"language_a", "language_b"}, {"voice_a", "voice_b"}};
    for (int L = 0; L < 2; L++) {
        const char *e = json_string_value(json_object_get(j, per_leg[0][L]));
        const char *l = json_string_value(json_object_get(j, per_leg[1][L]));
        const char *vo = json_string_value(json_object_get(j, per_leg[2][L]));
        if (e) {
            free(c->ep[L]);
            c->ep[L] = strdup(e);
        }
        if (l) {
            free(c->lang[L]);
            c->lang[L] = strdup(l);
        }
        if (vo) {
            free(c->voice[L]);
            c->voice[L] = strdup(vo);
        }
    }
    json_t *o = json_object_get(j, "options");
    if (json_is_object(o)) *call_opts = json_incref(o);
    json_decref(j);
    return 0;
}

/* The pair of call `id` is there (leg A's FIFOs are probed): open the call. */
static void call_begin(pipe_tp *tp, const char *id) {
    char name[ID_MAX + 16];
    fifo_id iid, oid;
    fifo_name(name, sizeof name, id, 0, K_IN);
    if (probe_partner(tp, name, &iid) != 1 || was_tried(tp, &iid)) return;
    fifo_name(name, sizeof name, id, 0, K_OUT);
    int r = probe_partner(tp, name, &oid), created = 0;
    if (r < 0) return;
    if (r == 0) {
        if (!tp->create_out) return; /* the pair is not complete yet */
        if ((r = make_out(tp, id, 0, &oid)) != 1) return;
        created = 1;
    }
    if ((int64_t)tp->ncalls >= tp->max_calls) {
        remember_tried(tp, &iid);
        tp->calls_refused++;
        if (should_log(tp->calls_refused))
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN,
                     "call %s refused: %llu calls already (max_calls)", id,
                     (unsigned long long)tp->ncalls);
        if (created) unlinkat(tp->dirfd, name, 0);
        return;
    }

    call *c = calloc(1, sizeof *c);
    if (!c) return;
    c->tp = tp;
    snprintf(c->id, sizeof c->id, "%s", id);
    for (int L = 0; L < 2; L++) {
        c->in[L].fd = c->in[L].lock_fd = c->out[L].fd = -1;
        c->in[L].c = c->out[L].c = c;
        c->in[L].leg = c->out[L].leg = L;
    }
    c->state = C_OPENING;
    c->next = tp->calls;
    if (tp->calls) tp->calls->prev = c;
    tp->calls = c;
    tp->ncalls++;
    c->t_open = tp->host->now();

    for (int L = 0; L < 2; L++) {
        c->lang[L] = dup_or_null(L ? tp->to : tp->from);
        c->ep[L] = dup_or_null(tp->endpoint[L]);
    }
    int mode = tp->mode;
    json_t *opts = NULL;
    if (attach_out(c, 0, &oid, created) != 0) {
        call_release(c);
        return;
    }
    if (read_call_json(c, &mode, &opts) != 0) {
        remember_tried(tp, &iid);
        call_release(c);
        return;
    }
    int a = attach_in(c, 0, &iid);
    if (a != 0) {
        if (a == -1)
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "call %s not started: %s_in.pcm: %s", id,
                     id, strerror(errno));
        remember_tried(tp, &iid);
        call_release(c);
        return;
    }
    try_attach_b(c);
    if (mode == MODE_AUTO)
        mode = c->in[1].present ? TOLK_MODE_BIDIRECTIONAL : TOLK_MODE_UNIDIRECTIONAL;

    tolk_channel_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    info.id = c->id;
    for (int L = 0; L < 2; L++) {
        info.endpoint[L] = c->ep[L];
        info.language[L] = c->lang[L];
        info.voice[L] = c->voice[L];
    }
    info.mode = (tolk_mode)mode;
    info.paced = tp->output != OUT_UNPACED;
    info.flags = (tp->input == IN_PULL ? TOLK_CHAN_PULL : 0u) |
                 (tp->output == OUT_CONTINUOUS ? TOLK_CHAN_CONTINUOUS : 0u);
    info.options = opts;

    tolk_status why = TOLK_E_BACKEND;
    c->opening = 1;
    tp->depth++;
    tolk_channel *ch = tp->host->channel_open(tp->inst, &info, c, &why);
    tp->depth--;
    c->opening = 0;
    json_decref(opts);
    if (!ch) {
        remember_tried(tp, &iid);
        tp->calls_refused++;
        if (should_log(tp->calls_refused))
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "call %s refused by the core (status %d)",
                     id, (int)why);
        call_release(c);
        return;
    }
    tp->calls_started++;
    c->counted = 1;
    if (c->hungup_while_opening) {
        call_release(c);
        return;
    }
    c->ch = ch;
    c->state = C_LIVE;
    for (int L = 0; L < 2; L++)
        c->in[L].eof_at = c->t_open;
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "call %s began (%s%s)", id,
             c->in[1].present ? "two parties" : "one party", opts ? ", options from its JSON" : "");
    for (int L = 0; L < 2; L++)
        start_reading(c, L);
    ensure_tick(tp);
}

/* ------------------------------------------------------------------ */
/* Input                                                               */

static int in_push(in_side *in, const uint8_t *bytes, double t) {
    if (in->n == in->cap) return -1;
    size_t slot = (in->head + in->n) % in->cap;
    int16_t *f = in->ring + slot * TOLK_FRAME_SAMPLES;
    for (size_t i = 0; i < TOLK_FRAME_SAMPLES; i++)
        f[i] = (int16_t)(uint16_t)(bytes[2 * i] | (bytes[2 * i + 1] << 8));
    in->t[slot] = t;
    in->n++;
    return 0;
}

/* Hands the oldest buffered frame to the core. 1 fed, 0 refused for now
 * (pull), -1 the channel is over. */
static int feed_one(call *c, int L) {
    pipe_tp *tp = c->tp;
    in_side *in = &c->in[L];
    const int16_t *f = in->ring + in->head * TOLK_FRAME_SAMPLES;
    tp->depth++;
    tolk_status st =
        tp->host->channel_audio_at(c->ch, (tolk_leg)L, f, TOLK_FRAME_SAMPLES, in->t[in->head]);
    tp->depth--;
    if (st == TOLK_E_AGAIN && tp->input == IN_PULL) {
        in->waiting = 1;
        return 0;
    }
    in->head = (in->head + 1) % in->cap;
    in->n--;
    in->frames++;
    tp->frames_in++;
    return st == TOLK_OK ? 1 : -1;
}

/* Feeds what is due: in pull mode everything the core takes; paced, one
 * frame per 20 ms on the leg's clock, catching up late frames. */
static void feed(call *c, int L, double now) {
    in_side *in = &c->in[L];
    if (c->state != C_LIVE || !c->ch || in->ended || in->waiting) return;
    if (c->tp->input == IN_PULL) {
        while (in->n && c->state == C_LIVE && c->ch && !in->waiting)
            if (feed_one(c, L) < 0) return;
        return;
    }
    if (!in->clock_on) {
        if (!in->n) return;
        in->clock_on = 1;
        in->t0 = now;
        in->fed_on_clock = 0;
    }
    double behind = (now - in->t0) / TOLK_FRAME_SECONDS - (double)in->fed_on_clock;
    if (behind > CREDIT_FRAMES) in->t0 += (behind - CREDIT_FRAMES) * TOLK_FRAME_SECONDS;
    int64_t due = (int64_t)floor((now - in->t0) / TOLK_FRAME_SECONDS) + 1 + LEAD_FRAMES -
                  (int64_t)in->fed_on_clock;
    while (due > 0 && in->n && c->state == C_LIVE && c->ch) {
        if (feed_one(c, L) < 0) return;
        in->fed_on_clock++;
        due--;
    }
}

/* After EOF: a new read end, so the next writer is seen. The old one
 * reports the hang-up as long as it is open. */
static int reopen_in(call *c, int L) {
    pipe_tp *tp = c->tp;
    in_side *in = &c->in[L];
    char name[ID_MAX + 16];
    fifo_name(name, sizeof name, c->id, L, K_IN);
    in_close(tp, in);
    in->fd = open_fifo(tp, name, O_RDONLY, &in->id);
    if (in->fd >= 0) return 0;
    if (errno == ESTALE) {
        refuse(tp, &tp->refused_replaced, name, "replaced by another file during the call");
        call_close(c, "its input FIFO was replaced");
    } else if (errno == ENOENT || errno == ELOOP) {
        if (errno == ELOOP) refuse(tp, &tp->refused_symlinks, name, "replaced by a symbolic link");
        call_close(c, "its input FIFO was removed or replaced");
    } else {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "call %s: reopening %s: %s", c->id, name,
                 strerror(errno));
        call_close(c, "its input FIFO cannot be reopened");
    }
    return -1;
}

static void on_in(void *ud, int fd, unsigned revents) {
    in_side *in = ud;
    call *c = in->c;
    pipe_tp *tp = c->tp;
    int L = in->leg;
    (void)fd;
    (void)revents;
    {
        if (c->state != C_LIVE || !in->present || in->ended || in->fd < 0 || !in->reading) return;
        double now = tp->host->now();
        uint8_t buf[16 * TOLK_FRAME_BYTES];
        for (;;) {
            size_t room = (in->cap - in->n) * TOLK_FRAME_BYTES;
            if (room <= in->npart) {
                /* Full: stop reading, so the pipe fills and the writer waits. */
                tp->host->io_set(in->io, 0);
                in->reading = 0;
                tp->in_full++;
                break;
            }
            room -= in->npart;
            if (room > sizeof buf) room = sizeof buf;
            ssize_t r = read(in->fd, buf, room);
            if (r > 0) {
                if (in->eof) {
                    tp->writer_returns++;
                    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO,
                             "call %s: the writer of party %c came back after %.2f s", c->id,
                             L ? 'B' : 'A', now - in->eof_at);
                    in->eof = 0;
                }
                in->had_data = 1;
                size_t off = 0;
                while (off < (size_t)r) {
                    size_t k = TOLK_FRAME_BYTES - in->npart;
                    if (k > (size_t)r - off) k = (size_t)r - off;
                    memcpy(in->part + in->npart, buf + off, k);
                    in->npart += k;
                    off += k;
                    if (in->npart == TOLK_FRAME_BYTES) {
                        in_push(in, in->part, now);
                        in->npart = 0;
                    }
                }
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            /* EOF: no writer holds the FIFO open. Not the end of the call
             * until eof_grace_ms pass with no writer back. */
            if (r < 0)
                TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "call %s: read: %s", c->id,
                         strerror(errno));
            if (!in->eof) {
                in->eof = 1;
                in->eof_at = now;
                tp->writer_eofs++;
                TOLK_LOG(tp->host, tp->inst, TOLK_LOG_VERB,
                         "call %s: the writer of party %c went away; waiting %.1f s for it", c->id,
                         L ? 'B' : 'A', tp->eof_grace);
            }
            if (reopen_in(c, L) != 0) return;
            start_reading(c, L);
            break;
        }
        feed(c, L, now);
    }
    sweep(tp);
}

static void call_end_input(call *c, int L) {
    pipe_tp *tp = c->tp;
    in_side *in = &c->in[L];
    if (in->ended || c->state != C_LIVE) return;
    in->ended = 1;
    in_close(tp, in);
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_VERB,
             "call %s: input of party %c ended after %llu frames", c->id, L ? 'B' : 'A',
             (unsigned long long)in->frames);
    if (!c->ch) return;
    if (in->npart) {
        /* the last partial frame; the core pads it */
        int16_t pcm[TOLK_FRAME_SAMPLES];
        size_t ns = in->npart / 2;
        for (size_t i = 0; i < ns; i++)
            pcm[i] = (int16_t)(uint16_t)(in->part[2 * i] | (in->part[2 * i + 1] << 8));
        in->npart = 0;
        if (ns) {
            tp->depth++;
            tp->host->channel_audio(c->ch, (tolk_leg)L, pcm, ns);
            tp->depth--;
        }
        if (c->state != C_LIVE || !c->ch) return;
    }
    tp->depth++;
    tp->host->channel_input_end(c->ch, (tolk_leg)L); /* may hang up before it returns */
    tp->depth--;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

static void out_set_writing(pipe_tp *tp, out_side *o, int on) {
    if (on == o->writing || o->fd < 0) return;
    if (!o->io) {
        if (!on) return;
        o->io = tp->host->io_start(tp->inst, o->fd, TOLK_IO_WRITE, on_out, o);
    } else {
        tp->host->io_set(o->io, on ? TOLK_IO_WRITE : 0);
    }
    o->writing = on && o->io;
}

static void flush_out(call *c, int L) {
    pipe_tp *tp = c->tp;
    out_side *o = &c->out[L];
    if (!o->present) return;
    if (o->fd < 0) {
        if (!o->n) return;
        double now = tp->host->now();
        if (now < o->next_open) return;
        char name[ID_MAX + 16];
        fifo_name(name, sizeof name, c->id, L, K_OUT);
        o->fd = open_fifo(tp, name, O_WRONLY, &o->id);
        if (o->fd < 0) {
            o->next_open = now + REOPEN_S;
            if (errno == ENXIO) return; /* no reader yet */
            if (errno == ESTALE) {
                refuse(tp, &tp->refused_replaced, name, "replaced by another file during the call");
                if (!c->close_why) c->close_why = "its output FIFO was replaced";
            } else if (errno == ELOOP) {
                refuse(tp, &tp->refused_symlinks, name, "replaced by a symbolic link");
                if (!c->close_why) c->close_why = "its output FIFO was replaced";
            }
            return;
        }
        if (!o->reader_seen)
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_VERB, "call %s: %s has a reader", c->id, name);
        o->reader_seen = 1;
    }
    while (o->n) {
        size_t k = o->n, contig = o->cap - o->head;
        if (k > contig) k = contig;
        if (k > FRAMES_PER_WRITE) k = FRAMES_PER_WRITE;
        size_t bytes = k * TOLK_FRAME_BYTES - o->head_off;
        ssize_t w = write(o->fd, o->ring + o->head * TOLK_FRAME_BYTES + o->head_off, bytes);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                out_set_writing(tp, o, 1);
                return;
            }
            /* EPIPE: the reader went away. Keep the audio for the next. */
            tp->reader_gone++;
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_VERB, "call %s: the reader of %s_%sout.pcm %s",
                     c->id, c->id, L ? "b_" : "", errno == EPIPE ? "went away" : strerror(errno));
            out_close(tp, o);
            o->next_open = tp->host->now() + REOPEN_S;
            return;
        }
        size_t done = (size_t)w + o->head_off;
        size_t whole = done / TOLK_FRAME_BYTES;
        o->head_off = done % TOLK_FRAME_BYTES;
        o->head = (o->head + whole) % o->cap;
        o->n -= whole;
        o->frames += whole;
        tp->frames_out += whole;
    }
    out_set_writing(tp, o, 0);
}

static void on_out(void *ud, int fd, unsigned revents) {
    out_side *o = ud;
    call *c = o->c;
    (void)fd;
    (void)revents;
    if (c->state != C_DEAD) flush_out(c, o->leg);
    sweep(c->tp);
}

static void out_push(pipe_tp *tp, out_side *o, const int16_t *pcm, size_t n) {
    if (o->n == o->cap) {
        /* Full: the oldest audio goes. A frame partly written stays, so
         * the reader's stream keeps its sample alignment. */
        if (o->head_off) {
            size_t second = (o->head + 1) % o->cap;
            memcpy(o->ring + second * TOLK_FRAME_BYTES, o->ring + o->head * TOLK_FRAME_BYTES,
                   TOLK_FRAME_BYTES);
        }
        o->head = (o->head + 1) % o->cap;
        o->n--;
        tp->out_overflow++;
        if (should_log(tp->out_overflow))
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN,
                     "an output pipe's reader is slow or absent: its buffer is full and the "
                     "oldest audio is dropped (%llu frames so far)",
                     (unsigned long long)tp->out_overflow);
    }
    uint8_t *f = o->ring + ((o->head + o->n) % o->cap) * TOLK_FRAME_BYTES;
    size_t i = 0;
    for (; i < n && i < TOLK_FRAME_SAMPLES; i++) {
        uint16_t v = (uint16_t)pcm[i];
        f[2 * i] = (uint8_t)(v & 0xff);
        f[2 * i + 1] = (uint8_t)(v >> 8);
    }
    memset(f + 2 * i, 0, TOLK_FRAME_BYTES - 2 * i);
    o->n++;
}

/* ------------------------------------------------------------------ */
/* The tick: paced input, grace times, absent readers, the gauges      */

static void tick(void *ud) {
    pipe_tp *tp = ud;
    double now = tp->host->now();
    double util_in = 0, util_out = 0;
    tp->depth++;
    for (call *c = tp->calls; c; c = c->next) {
        if (c->state == C_LIVE && c->close_why) call_close(c, c->close_why);
        if (c->state != C_LIVE) continue;
        for (int L = 0; L < 2 && c->state == C_LIVE; L++) {
            in_side *in = &c->in[L];
            out_side *o = &c->out[L];
            if (in->present && !in->ended) {
                /* sampled before this tick's frame goes: a full buffer shows 1 */
                double u = (double)in->n / (double)in->cap;
                if (u > util_in) util_in = u;
                feed(c, L, now);
                if (c->state != C_LIVE) break;
                if (!in->reading && !in->waiting && in->n < in->cap) start_reading(c, L);
                double wait = in->had_data ? tp->eof_grace : tp->writer_timeout;
                int quiet = in->had_data ? in->eof : 1;
                if (quiet && in->n == 0 && (in->had_data || tp->writer_timeout > 0) &&
                    now - in->eof_at >= wait) {
                    if (!in->had_data)
                        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO,
                                 "call %s: no writer for party %c's input in %.1f s", c->id,
                                 L ? 'B' : 'A', wait);
                    call_end_input(c, L);
                    if (c->state != C_LIVE) break;
                }
            }
            if (o->present) {
                if (o->fd < 0 && o->n) flush_out(c, L);
                double u = (double)o->n / (double)o->cap;
                if (u > util_out) util_out = u;
            }
        }
    }
    tp->depth--;
    tp->util_in_v = util_in;
    tp->util_out_v = util_out;
    if (tp->util_in) tp->host->series_set(tp->util_in, util_in);
    if (tp->util_out) tp->host->series_set(tp->util_out, util_out);
    sweep(tp);
    if (!tp->calls && tp->tick) {
        tp->host->timer_stop(tp->tick);
        tp->tick = NULL;
    }
}

static void ensure_tick(pipe_tp *tp) {
    if (!tp->tick) tp->tick = tp->host->timer_start(tp->inst, TICK_S, TICK_S, tick, tp);
}

/* ------------------------------------------------------------------ */
/* The directory                                                       */

static void entry_appeared(pipe_tp *tp, const char *name) {
    char id[ID_MAX + 1];
    int L, kind;
    int r = parse_name(name, id, &L, &kind);
    if (r == 0) return;
    if (r < 0) {
        refuse(tp, &tp->refused_names, name,
               "not a call's FIFO name ({id}_in.pcm, {id}_out.pcm, {id}_b_in.pcm, "
               "{id}_b_out.pcm; an id of 1-128 characters A-Z a-z 0-9 . _ -, not starting "
               "with a dot)");
        return;
    }
    fifo_id fid;
    int p = probe_fifo(tp, name, &fid);
    call *c = find_call(tp, id);
    if (p != 1) {
        /* a link or a file renamed over a running call's FIFO */
        if (p < 0 && c && (kind == K_IN ? c->in[L].present : c->out[L].present)) {
            tp->refused_replaced++;
            call_close(c, "one of its FIFOs was replaced by something that is not a FIFO");
        }
        return;
    }
    if (c) {
        int present = kind == K_IN ? c->in[L].present : c->out[L].present;
        fifo_id *have = kind == K_IN ? &c->in[L].id : &c->out[L].id;
        if (present && (have->dev != fid.dev || have->ino != fid.ino)) {
            refuse(tp, &tp->refused_replaced, name, "replaced by another FIFO during the call");
            call_close(c, "one of its FIFOs was replaced");
        } else if (!present && L == 1) {
            try_attach_b(c);
        }
        return;
    }
    if (L == 0) call_begin(tp, id);
}

static void entry_gone(pipe_tp *tp, const char *name) {
    char id[ID_MAX + 1];
    int L, kind;
    if (parse_name(name, id, &L, &kind) != 1) return;
    call *c = find_call(tp, id);
    if (!c) return;
    if (kind == K_IN ? c->in[L].present : c->out[L].present) {
        tp->calls_removed++;
        char why[ID_MAX + 64];
        snprintf(why, sizeof why, "%s was removed", name);
        call_close(c, why);
    }
}

static void scan_dir(pipe_tp *tp) {
    int fd = openat(tp->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    struct dirent *e;
    /* names first, calls after: starting a call must not disturb readdir */
    size_t n = 0, cap = 0;
    char **names = NULL;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) break;
            names = nn;
            cap = nc;
        }
        if (!(names[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        entry_appeared(tp, names[i]);
        free(names[i]);
    }
    free(names);
}

static void on_inotify(void *ud, int fd, unsigned revents) {
    pipe_tp *tp = ud;
    (void)revents;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    int rescan = 0;
    tp->depth++;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) break;
        for (char *p = buf; p < buf + r;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) rescan = 1;
            if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
                TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR,
                         "the media directory %s was removed or moved: no new calls until "
                         "restart",
                         tp->media_dir);
                continue;
            }
            if (!ev->len || !ev->name[0]) continue;
            if (ev->mask & (IN_DELETE | IN_MOVED_FROM)) entry_gone(tp, ev->name);
            if (ev->mask & (IN_CREATE | IN_MOVED_TO)) entry_appeared(tp, ev->name);
        }
    }
    if (rescan) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "inotify queue overflowed: rescanning %s",
                 tp->media_dir);
        scan_dir(tp);
    }
    tp->depth--;
    sweep(tp);
}

/* Creates the media directory if absent (mode dir_mode, whatever the
 * umask) and opens it; refuses one that is a link, someone else's, or
 * world-writable. */
static int open_media_dir(pipe_tp *tp) {
    struct stat st;
    char err[512];
    int made = 0;
    if (lstat(tp->media_dir, &st) != 0) {
        if (errno != ENOENT) {
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "media directory %s: %s", tp->media_dir,
                     strerror(errno));
            return -1;
        }
        if (mkdir(tp->media_dir, tp->dir_mode) != 0 && errno != EEXIST) {
            TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "cannot create the media directory %s: %s",
                     tp->media_dir, strerror(errno));
            return -1;
        }
        made = 1;
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "created the media directory %s (mode %04o)",
                 tp->media_dir, tp->dir_mode);
    }
    int fd = open(tp->media_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "media directory %s: %s", tp->media_dir,
                 errno == ELOOP || errno == ENOTDIR ? "a symbolic link or not a directory"
                                                    : strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || check_dir_stat(&st, tp->media_dir, err, sizeof err) != 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "%s", err);
        close(fd);
        return -1;
    }
    /* A directory made just now gets the mode asked for, whatever the umask. */
    if (made && (st.st_mode & 07777) != tp->dir_mode && fchmod(fd, tp->dir_mode) != 0)
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_WARN, "chmod %s: %s", tp->media_dir, strerror(errno));
    tp->dirfd = fd;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Plugin functions                                                    */

static void tp_destroy(void *self) {
    pipe_tp *tp = self;
    if (!tp) return;
    for (call *c = tp->calls; c; c = c->next)
        if (c->state != C_DEAD) call_release(c);
    tp->depth = 0;
    sweep(tp);
    if (tp->tick) tp->host->timer_stop(tp->tick);
    if (tp->inotify_io) tp->host->io_stop(tp->inotify_io);
    if (tp->infd >= 0) close(tp->infd);
    if (tp->dirfd >= 0) close(tp->dirfd);
    free(tp->media_dir);
    free(tp->from);
    free(tp->to);
    free(tp->endpoint[0]);
    free(tp->endpoint[1]);
    free(tp);
}

static tolk_status tp_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    pipe_tp *tp = calloc(1, sizeof *tp);
    if (!tp) return TOLK_E_NOMEM;
    tp->host = host;
    tp->inst = inst;
    tp->dirfd = tp->infd = -1;
    tp->media_dir = dup_or_null(host->cfg_string(cfg, "media_dir"));
    tp->from = dup_or_null(host->cfg_string(cfg, "from"));
    tp->to = dup_or_null(host->cfg_string(cfg, "to"));
    tp->endpoint[0] = dup_or_null(host->cfg_string(cfg, "endpoint_a"));
    tp->endpoint[1] = dup_or_null(host->cfg_string(cfg, "endpoint_b"));
    const char *in = host->cfg_string(cfg, "input"), *out = host->cfg_string(cfg, "output");
    tp->input = in && !strcmp(in, "pull") ? IN_PULL : IN_PACED;
    tp->output = out && !strcmp(out, "continuous") ? OUT_CONTINUOUS
                 : out && !strcmp(out, "unpaced")  ? OUT_UNPACED
                                                   : OUT_PACED;
    tp->create_out = host->cfg_bool(cfg, "create_out");
    tp->in_frames = (size_t)(host->cfg_int(cfg, "in_buffer_ms") / 20);
    tp->out_frames = (size_t)(host->cfg_int(cfg, "out_buffer_ms") / 20);
    if (tp->in_frames < 5) tp->in_frames = 5;
    if (tp->out_frames < 5) tp->out_frames = 5;
    tp->eof_grace = (double)host->cfg_int(cfg, "eof_grace_ms") / 1000.0;
    tp->writer_timeout = (double)host->cfg_int(cfg, "writer_timeout_ms") / 1000.0;
    tp->max_calls = host->cfg_int(cfg, "max_calls");
    if (!tp->media_dir || parse_mode(host->cfg_string(cfg, "mode"), &tp->mode) != 0 ||
        parse_octal(host->cfg_string(cfg, "dir_mode"), &tp->dir_mode) != 0 ||
        parse_octal(host->cfg_string(cfg, "fifo_mode"), &tp->fifo_mode) != 0) {
        tp_destroy(tp);
        return TOLK_E_INVAL;
    }
    const char *name = host->instance_name(inst);
    char label[160];
    tolk_metric *m = host->metric_family("pipe_buffer_utilization",
                                         "Fill of a transport's media pipe buffers, 0..1 (the "
                                         "fullest one)",
                                         TOLK_METRIC_GAUGE, "component", NULL, 0);
    if (m) {
        const char *lv[1] = {label};
        snprintf(label, sizeof label, "%s:in", name ? name : PLUGIN_NAME);
        tp->util_in = host->metric_series(m, lv);
        snprintf(label, sizeof label, "%s:out", name ? name : PLUGIN_NAME);
        tp->util_out = host->metric_series(m, lv);
    }
    *self = tp;
    return TOLK_OK;
}

static tolk_status tp_start(void *self) {
    pipe_tp *tp = self;
    if (tp->started) return TOLK_OK;
    if (tp->dirfd < 0 && open_media_dir(tp) != 0) return TOLK_E_INVAL;
    tp->infd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (tp->infd < 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "inotify: %s", strerror(errno));
        return TOLK_E_BACKEND;
    }
    if (inotify_add_watch(tp->infd, tp->media_dir,
                          IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF |
                              IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW) < 0) {
        TOLK_LOG(tp->host, tp->inst, TOLK_LOG_ERR, "inotify on %s: %s", tp->media_dir,
                 strerror(errno));
        close(tp->infd);
        tp->infd = -1;
        return TOLK_E_BACKEND;
    }
    tp->inotify_io = tp->host->io_start(tp->inst, tp->infd, TOLK_IO_READ, on_inotify, tp);
    if (!tp->inotify_io) {
        close(tp->infd);
        tp->infd = -1;
        return TOLK_E_NOMEM;
    }
    tp->started = 1;
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "watching %s for calls", tp->media_dir);
    tp->depth++;
    scan_dir(tp); /* pairs that were there before */
    tp->depth--;
    sweep(tp);
    return TOLK_OK;
}

/* No new calls; running calls go on until their input ends. */
static void tp_stop(void *self) {
    pipe_tp *tp = self;
    if (!tp->started) return;
    tp->started = 0;
    if (tp->inotify_io) tp->host->io_stop(tp->inotify_io);
    tp->inotify_io = NULL;
    if (tp->infd >= 0) close(tp->infd);
    tp->infd = -1;
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO, "no longer watching %s for calls", tp->media_dir);
}

static tolk_status tp_play_ex(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                              size_t n, unsigned flags) {
    pipe_tp *tp = self;
    call *c = chan_state;
    (void)flags;
    if (!c || c->state == C_DEAD || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return TOLK_E_INVAL;
    /* what leg hears is the translation of the other party's input */
    int L = leg == TOLK_LEG_A ? 1 : 0;
    out_side *o = &c->out[L];
    if (!o->present) {
        tp->frames_no_pipe++;
        return TOLK_OK;
    }
    size_t done = 0;
    do {
        size_t k = n - done > TOLK_FRAME_SAMPLES ? TOLK_FRAME_SAMPLES : n - done;
        out_push(tp, o, pcm ? pcm + done : NULL, pcm ? k : 0);
        done += k;
    } while (done < n);
    tp->depth++;
    flush_out(c, L);
    tp->depth--;
    return TOLK_OK;
}

static tolk_status tp_play(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                           size_t n) {
    return tp_play_ex(self, chan_state, leg, pcm, n, 0);
}

static void tp_input_ready(void *self, void *chan_state, tolk_leg leg) {
    pipe_tp *tp = self;
    call *c = chan_state;
    if (!c || c->state != C_LIVE || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    in_side *in = &c->in[leg];
    in->waiting = 0;
    tp->depth++;
    feed(c, leg, tp->host->now());
    if (c->state == C_LIVE && !in->ended && !in->reading && in->n < in->cap) start_reading(c, leg);
    tp->depth--;
}

static void tp_hangup(void *self, void *chan_state) {
    pipe_tp *tp = self;
    call *c = chan_state;
    if (!c || c->state == C_DEAD || c->closing) return;
    if (c->opening) {
        c->hungup_while_opening = 1;
        return;
    }
    TOLK_LOG(tp->host, tp->inst, TOLK_LOG_INFO,
             "call %s ended: %llu frames in, %llu out (A) / %llu in, %llu out (B)", c->id,
             (unsigned long long)c->in[0].frames, (unsigned long long)c->out[0].frames,
             (unsigned long long)c->in[1].frames, (unsigned long long)c->out[1].frames);
    c->ch = NULL;
    call_release(c);
}

static tolk_health tp_health(void *self, json_t **detail_new) {
    pipe_tp *tp = self;
    if (detail_new) {
        json_t *d = json_object();
        struct {
            const char *k;
            uint64_t v;
        } f[] = {{"calls_active", tp->ncalls},
                 {"calls_started", tp->calls_started},
                 {"calls_ended", tp->calls_ended},
                 {"calls_refused", tp->calls_refused},
                 {"calls_removed", tp->calls_removed},
                 {"calls_busy", tp->calls_busy},
                 {"refused_names", tp->refused_names},
                 {"refused_symlinks", tp->refused_symlinks},
                 {"refused_not_fifo", tp->refused_not_fifo},
                 {"refused_replaced", tp->refused_replaced},
                 {"refused_json", tp->refused_json},
                 {"frames_in", tp->frames_in},
                 {"frames_out", tp->frames_out},
                 {"frames_no_pipe", tp->frames_no_pipe},
                 {"out_overflow_frames", tp->out_overflow},
                 {"out_dropped_at_end", tp->out_dropped_at_end},
                 {"writer_eofs", tp->writer_eofs},
                 {"writer_returns", tp->writer_returns},
                 {"reader_gone", tp->reader_gone},
                 {"in_buffer_full", tp->in_full}};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
            json_object_set_new(d, f[i].k, json_integer((json_int_t)f[i].v));
        json_object_set_new(d, "buffer_utilization_in", json_real(tp->util_in_v));
        json_object_set_new(d, "buffer_utilization_out", json_real(tp->util_out_v));
        json_object_set_new(d, "watching", json_boolean(tp->started));
        json_object_set_new(d, "media_dir", json_string(tp->media_dir));
        *detail_new = d;
    }
    return tp->started || tp->dirfd < 0 ? TOLK_HEALTHY : TOLK_DEGRADED;
}

static const tolk_transport desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT), .name = PLUGIN_NAME,
             .version = "1.0.0",
             .description = "calls through named pipes (FIFOs) in a media directory",
             .options = options, .check_config = tp_check_config, .create = tp_create,
             .destroy = tp_destroy, .health = tp_health},
    .start = tp_start,
    .stop = tp_stop,
    .play = tp_play,
    .hangup = tp_hangup,
    .play_ex = tp_play_ex,
    .input_ready = tp_input_ready,
};

TOLK_PLUGIN_DEFINE(desc)
