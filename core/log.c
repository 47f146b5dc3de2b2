#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>

static atomic_int g_level = TOLK_LOG_INFO;
static int g_syslog;
static log_hook_fn g_hook;
static void *g_hook_ud;
static pthread_mutex_t g_hook_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"FATAL", "ERR", "WARN", "INFO", "VERB", "DEBUG"};

void log_open(int to_syslog, const char *ident) {
    g_syslog = to_syslog;
    if (to_syslog) openlog(ident ? ident : "tolkd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void log_close(void) {
    if (g_syslog) closelog();
    g_syslog = 0;
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

    if (g_syslog) {
        static const int prio[] = {LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_INFO, LOG_INFO, LOG_DEBUG};
        syslog(prio[level], "%s %s", level_names[level], body);
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    char line[2200];
    int n = snprintf(line, sizeof line, "%s.%03ld %-5s %s\n", stamp, (long)(tv.tv_usec / 1000),
                     level_names[level], body);
    if (n > 0) fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
}

void log_msg(tolk_log_level level, const char *who, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, who, fmt, ap);
    va_end(ap);
}
