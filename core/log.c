#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = TOLK_LOG_INFO;
static int g_syslog;
static log_hook_fn g_hook;
static void *g_hook_ud;
static pthread_mutex_t g_hook_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"FATAL", "ERR", "WARN", "INFO", "VERB", "DEBUG"};
static const int syslog_prio[] = {LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_INFO, LOG_INFO, LOG_DEBUG};

/* Once log_open() ran, lines go through a bounded queue to one writer
 * thread: a reader that stops reading our standard error (a full pipe) or
 * a stalled syslog blocks that thread, never the loop. A full queue drops
 * lines and counts them; the count is logged where the gap is. */
#define LOG_QUEUE_BYTES (1u << 20)
typedef struct qline {
    struct qline *next;
    int prio; /* syslog priority */
    size_t len;
    char text[];
} qline;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t more, drained;
    qline *head, *tail;
    size_t bytes;
    unsigned long dropped;
    int running, stopping, writing;
    pthread_t thread;
} g_q = {.lock = PTHREAD_MUTEX_INITIALIZER,
         .more = PTHREAD_COND_INITIALIZER,
         .drained = PTHREAD_COND_INITIALIZER};

/* Standard error's file when it is one, as named at log_open(): logrotate
 * renames it, and SIGUSR1 must open a new file under the old name. */
static char g_log_path[1024];

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* nowhere to report it */
        p += w;
        n -= (size_t)w;
    }
}

static void emit(int prio, const char *text, size_t len) {
    if (g_syslog)
        syslog(prio, "%s", text);
    else
        write_all(2, text, len);
}

static void *log_writer(void *arg) {
    pthread_mutex_lock(&g_q.lock);
    for (;;) {
        qline *l = g_q.head;
        if (!l) {
            g_q.writing = 0;
            pthread_cond_broadcast(&g_q.drained);
            if (g_q.stopping) break;
            pthread_cond_wait(&g_q.more, &g_q.lock);
            continue;
        }
        g_q.head = l->next;
        if (!g_q.head) g_q.tail = NULL;
        g_q.writing = 1;
        pthread_mutex_unlock(&g_q.lock);
        emit(l->prio, l->text, l->len);
        pthread_mutex_lock(&g_q.lock);
        g_q.bytes -= l->len;
        free(l);
    }
    pthread_mutex_unlock(&g_q.lock);
    return NULL;
}

static qline *qline_new(int prio, const char *text, size_t len) {
    qline *l = malloc(sizeof *l + len + 1);
    if (!l) return NULL;
    l->next = NULL;
    l->prio = prio;
    l->len = len;
    memcpy(l->text, text, len);
    l->text[len] = 0;
    return l;
}

static void queue_push(qline *l) {
    if (g_q.tail)
        g_q.tail->next = l;
    else
        g_q.head = l;
    g_q.tail = l;
    g_q.bytes += l->len;
}

static size_t format_line(char *out, size_t cap, tolk_log_level level, const char *body);

/* 1 if queued (or dropped), 0 if there is no writer thread. */
static int enqueue(tolk_log_level level, const char *text, size_t len) {
    pthread_mutex_lock(&g_q.lock);
    if (!g_q.running) {
        pthread_mutex_unlock(&g_q.lock);
        return 0;
    }
    if (g_q.bytes + len > LOG_QUEUE_BYTES) {
        g_q.dropped++;
        pthread_mutex_unlock(&g_q.lock);
        return 1;
    }
    if (g_q.dropped) {
        char note[160], line[256];
        snprintf(note, sizeof note, "[log] %lu line%s dropped: the log reader did not keep up",
                 g_q.dropped, g_q.dropped == 1 ? "" : "s");
        size_t n = format_line(line, sizeof line, TOLK_LOG_WARN, note);
        qline *d = qline_new(syslog_prio[TOLK_LOG_WARN], line, n);
        if (d) {
            queue_push(d);
            g_q.dropped = 0;
        }
    }
    qline *l = qline_new(syslog_prio[level], text, len);
    if (l)
        queue_push(l);
    else
        g_q.dropped++;
    pthread_cond_signal(&g_q.more);
    pthread_mutex_unlock(&g_q.lock);
    return 1;
}

void log_open(int to_syslog, const char *ident) {
    g_syslog = to_syslog;
    if (to_syslog) openlog(ident ? ident : "tolkd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    struct stat st;
    g_log_path[0] = 0;
    if (!to_syslog && fstat(2, &st) == 0 && S_ISREG(st.st_mode)) {
        ssize_t n = readlink("/proc/self/fd/2", g_log_path, sizeof g_log_path - 1);
        g_log_path[n > 0 && g_log_path[0] == '/' ? n : 0] = 0;
    }
    pthread_mutex_lock(&g_q.lock);
    if (!g_q.running) {
        g_q.stopping = 0;
        g_q.running = pthread_create(&g_q.thread, NULL, log_writer, NULL) == 0;
    }
    pthread_mutex_unlock(&g_q.lock);
    /* a program that exits without log_close() still gets its last lines out */
    static int at_exit;
    if (!at_exit++) atexit(log_close);
}

void log_close(void) {
    pthread_mutex_lock(&g_q.lock);
    if (g_q.running) {
        /* what is queued gets a moment to be written; a reader that never
         * reads must not keep the process from exiting */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 2;
        g_q.stopping = 1;
        pthread_cond_signal(&g_q.more);
        int rc = 0;
        while ((g_q.head || g_q.writing) && rc == 0)
            rc = pthread_cond_timedwait(&g_q.drained, &g_q.lock, &until);
        g_q.running = 0;
        int drained = !g_q.head && !g_q.writing;
        pthread_mutex_unlock(&g_q.lock);
        if (drained)
            pthread_join(g_q.thread, NULL);
        else
            pthread_detach(g_q.thread);
        pthread_mutex_lock(&g_q.lock);
    }
    pthread_mutex_unlock(&g_q.lock);
    if (g_syslog) closelog();
    g_syslog = 0;
}

int log_reopen(char *path, size_t len) {
    snprintf(path, len, "%s", g_log_path);
    if (g_syslog || !g_log_path[0]) return 0;
    int fd = open(g_log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0) return -1;
    int rc = dup2(fd, 2) < 0 ? -1 : 1;
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

void log_set_level(tolk_log_level level) { atomic_store(&g_level, (int)level); }
tolk_log_level log_get_level(void) { return (tolk_log_level)atomic_load(&g_level); }
int log_enabled(tolk_log_level level) { return (int)level <= atomic_load(&g_level); }

int log_level_parse(const char *name) {
    static const struct {
        const char *name;
        tolk_log_level level;
    } names[] = {{"fatal", TOLK_LOG_FATAL}, {"err", TOLK_LOG_ERR},     {"error", TOLK_LOG_ERR},
                 {"warn", TOLK_LOG_WARN},   {"warning", TOLK_LOG_WARN}, {"info", TOLK_LOG_INFO},
                 {"verb", TOLK_LOG_VERB},   {"verbose", TOLK_LOG_VERB}, {"dbg", TOLK_LOG_DBG},
                 {"debug", TOLK_LOG_DBG}};
    if (!name) return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) return (int)names[i].level;
    return -1;
}

const char *log_level_name(tolk_log_level level) {
    if ((int)level < 0 || level > TOLK_LOG_DBG) return "?";
    return level_names[level];
}

void log_set_hook(log_hook_fn fn, void *ud) {
    pthread_mutex_lock(&g_hook_lock);
    g_hook = fn;
    g_hook_ud = ud;
    pthread_mutex_unlock(&g_hook_lock);
}

static size_t format_line(char *out, size_t cap, tolk_log_level level, const char *body) {
    int n;
    if (g_syslog) {
        n = snprintf(out, cap, "%s %s", level_names[level], body);
    } else {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        struct tm tm;
        localtime_r(&tv.tv_sec, &tm);
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
        n = snprintf(out, cap, "%s.%03ld %-5s %s\n", stamp, (long)(tv.tv_usec / 1000),
                     level_names[level], body);
    }
    if (n < 0) return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

void log_vmsg(tolk_log_level level, const char *who, const char *fmt, va_list ap) {
    if (!log_enabled(level)) return;
    char body[2048];
    int off = 0;
    if (who) off = snprintf(body, sizeof body, "[%s] ", who);
    if (off < 0 || (size_t)off >= sizeof body) off = 0;
    vsnprintf(body + off, sizeof body - (size_t)off, fmt, ap);

    pthread_mutex_lock(&g_hook_lock);
    if (g_hook) g_hook(level, body, g_hook_ud);
    pthread_mutex_unlock(&g_hook_lock);

    char line[2200];
    size_t n = format_line(line, sizeof line, level, body);
    if (enqueue(level, line, n)) return;
    /* no writer thread (tests, tolkd -t, before log_open) */
    if (g_syslog)
        syslog(syslog_prio[level], "%s", line);
    else
        fwrite(line, 1, n, stderr);
}

void log_msg(tolk_log_level level, const char *who, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, who, fmt, ap);
    va_end(ap);
}
