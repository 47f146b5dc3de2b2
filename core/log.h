/* Logging: stderr (foreground) or syslog (daemon). Thread-safe: a line is
 * formatted into one buffer and written with one call. */
#ifndef TOLK_CORE_LOG_H
#define TOLK_CORE_LOG_H

#include <stdarg.h>
#include <tolk/plugin.h>

/* From log_open() on, lines are written by a thread of their own through a
 * bounded queue: logging never blocks the caller, whatever the reader of
 * standard error or syslog does. log_close() gives the queue 2 s. */
void log_open(int to_syslog, const char *ident);
void log_close(void);
/* SIGUSR1: if standard error was a regular file at log_open(), open the
 * file of that name again (logrotate moved the old one away) as standard
 * error. 1 reopened, 0 not logging to a file, -1 failed (errno); path gets
 * the file name. */
int log_reopen(char *path, size_t len);
void log_set_level(tolk_log_level level);
tolk_log_level log_get_level(void);
int log_enabled(tolk_log_level level);
/* -1 if the name is not a level. Accepts fatal, err/error, warn/warning,
 * info, verb/verbose, dbg/debug. */
int log_level_parse(const char *name);
const char *log_level_name(tolk_log_level level);

/* `who` is "plugin/instance" or a core subsystem; may be NULL. */
void log_msg(tolk_log_level level, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(tolk_log_level level, const char *who, const char *fmt, va_list ap);

/* Tests: see every line that passes the level test. */
typedef void (*log_hook_fn)(tolk_log_level level, const char *line, void *ud);
void log_set_hook(log_hook_fn fn, void *ud);

#define LOG_ERR(...) log_msg(TOLK_LOG_ERR, "core", __VA_ARGS__)
#define LOG_WARN(...) log_msg(TOLK_LOG_WARN, "core", __VA_ARGS__)
#define LOG_INFO(...) log_msg(TOLK_LOG_INFO, "core", __VA_ARGS__)
#define LOG_VERB(...) log_msg(TOLK_LOG_VERB, "core", __VA_ARGS__)
#define LOG_DBG(...) log_msg(TOLK_LOG_DBG, "core", __VA_ARGS__)

#endif
