/* Helpers shared by the cmocka tests: temporary conf.d directories, a
 * core driven until a condition holds, log capture. */
#ifndef TOLK_TESTUTIL_H
#define TOLK_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>
/* cmocka.h needs the three above */
#include <cmocka.h>

#include "core.h"

char *tu_tmpdir(void);
void tu_write(const char *dir, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void tu_rm_rf(const char *dir);
/* The mock pipeline (stt_mock, mt_mock, tts_mock, chains) into dir. */
void tu_write_mock_pipeline(const char *dir);
/* Runs the loop until pred(ud) is true or `seconds` pass; returns pred. */
int tu_run_until(core *c, int (*pred)(void *ud), void *ud, double seconds);
/* Captures log lines; tu_log_has() looks for a substring. */
void tu_log_capture(void);
int tu_log_has(const char *needle);
int tu_log_count(const char *needle);
void tu_log_clear(void);
/* An instance's health detail (new reference), through the plugin's health(). */
json_t *tu_health(core *c, const char *instance);
/* key may be a dotted path: "frames_sent.a". -1 if absent. */
long long tu_health_int(core *c, const char *instance, const char *key);

/* Local fake servers for the network plugins' tests: a Python script
 * (path relative to top_srcdir) that binds 127.0.0.1:0 and writes its port
 * to the file named by its only argument. Returns the port; the pid goes
 * to *pid for tu_fake_stop(). */
int tu_fake_start(const char *script, pid_t *pid);
/* The same on a given port (0: any): a fake restarted where its clients
 * expect it. */
int tu_fake_start_port(const char *script, int port, pid_t *pid);
void tu_fake_stop(pid_t *pid);
/* A blocking HTTP/1.0 exchange with 127.0.0.1:port (a fake's control
 * side); the response body, new. */
char *tu_http(int port, const char *method, const char *path, const char *body);

#endif
