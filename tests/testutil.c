#include <sys/wait.h>
#include <sys/socket.h>
#include <signal.h>
#include <arpa/inet.h>
#include "testutil.h"

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

char *tu_tmpdir(void) {
    char tmpl[] = "/tmp/tolk-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return xstrdup(d);
}

void tu_write(const char *dir, const char *name, const char *fmt, ...) {
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
    free(path);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

void tu_rm_rf(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

void tu_write_mock_pipeline(const char *dir) {
    tu_write(dir, "20-stt.conf",
             "instance: { name = \"stt-a\"; plugin = \"stt_mock\";\n"
             "  settings: { phrases = [ \"hello world\", \"thank you\", \"good morning\" ];\n"
             "              silence_ms = 200; latency_ms = 10; partial_ms = 0; }; };\n");
    tu_write(dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\";\n"
             "  settings: { latency_ms = 5;\n"
             "    dictionary: { hello = \"hola\"; world = \"mundo\"; thank = \"gracias\"; you = \"amigo\";\n"
             "                  good = \"buenos\"; morning = \"días\"; }; }; };\n");
    tu_write(dir, "40-tts.conf",
             "instance: { name = \"tts-a\"; plugin = \"tts_mock\";\n"
             "  settings: { latency_ms = 10; ms_per_char = 30; }; };\n");
    tu_write(dir, "50-chains.conf",
             "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\" ]; },\n"
             "           { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\" ]; },\n"
             "           { name = \"tts\"; kind = \"tts\"; providers = [ \"tts-a\" ]; } );\n");
}

static int never(void *ud) { return 0; }

int tu_run_until(core *c, int (*pred)(void *ud), void *ud, double seconds) {
    double deadline = mono_now() + seconds;
    if (!pred) pred = never;
    while (!pred(ud) && mono_now() < deadline) ev_run(c->loop, EVRUN_ONCE | EVRUN_NOWAIT), usleep(200);
    return pred(ud);
}

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static ptr_vec g_lines;

static void hook(tolk_log_level level, const char *line, void *ud) {
    pthread_mutex_lock(&g_lock);
    ptr_vec_push(&g_lines, xstrdup(line));
    pthread_mutex_unlock(&g_lock);
}

void tu_log_capture(void) { log_set_hook(hook, NULL); }

int tu_log_has(const char *needle) {
    int found = 0;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_lines.n && !found; i++) found = strstr(g_lines.v[i], needle) != NULL;
    pthread_mutex_unlock(&g_lock);
    return found;
}

int tu_log_count(const char *needle) {
    int n = 0;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_lines.n; i++) n += strstr(g_lines.v[i], needle) != NULL;
    pthread_mutex_unlock(&g_lock);
    return n;
}

void tu_log_clear(void) {
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_lines.n; i++) free(g_lines.v[i]);
    ptr_vec_free(&g_lines);
    pthread_mutex_unlock(&g_lock);
}

json_t *tu_health(core *c, const char *instance) {
    tolk_instance *inst = core_find_instance(c, instance);
    assert_non_null(inst);
    assert_non_null(inst->desc->health);
    json_t *detail = NULL;
    inst->desc->health(inst->self, &detail);
    assert_non_null(detail);
    return detail;
}

long long tu_health_int(core *c, const char *instance, const char *key) {
    json_t *d = tu_health(c, instance);
    char *path = xstrdup(key), *save = NULL;
    json_t *v = d;
    for (char *k = strtok_r(path, ".", &save); k && v; k = strtok_r(NULL, ".", &save))
        v = json_object_get(v, k);
    free(path);
    long long r = v ? (long long)json_number_value(v) : -1;
    json_decref(d);
    return r;
}

int tu_fake_start(const char *script, pid_t *pid) { return tu_fake_start_port(script, 0, pid); }

int tu_fake_start_port(const char *script, int want, pid_t *pid) {
    char *dir = tu_tmpdir();
    char want_s[16];
    snprintf(want_s, sizeof want_s, "%d", want);
    char *portfile = xasprintf("%s/port", dir);
    char *path = xasprintf("%s/%s", getenv("top_srcdir"), script);
    int port = 0;
    *pid = fork();
    if (*pid == 0) {
        execlp("python3", "python3", path, portfile, want_s, (char *)NULL);
        _exit(127);
    }
    /* the script writes the file whole (rename), once it listens */
    for (int t = 0; t < 300 && !port; t++) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = 0;
            fclose(f);
        }
        if (!port) usleep(20000);
    }
    assert_true(port > 0);
    tu_rm_rf(dir);
    free(dir);
    free(portfile);
    free(path);
    return port;
}

void tu_fake_stop(pid_t *pid) {
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

char *tu_http(int port, const char *method, const char *path, const char *body) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char *req = xasprintf("%s %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                          method, path, body ? strlen(body) : 0, body ? body : "");
    assert_true(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    free(req);
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap);
    ssize_t n;
    while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (len + 1 >= cap) buf = xrealloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';
    char *b = strstr(buf, "\r\n\r\n");
    char *out = xstrdup(b ? b + 4 : "");
    free(buf);
    return out;
}
