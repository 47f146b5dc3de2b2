/* The core's HTTP client, as a plugin sees it through the host table,
 * against a local fake server (tests/httpfake.py): requests arrive as sent,
 * bodies come back collected or streamed as the server sends them, every
 * way a transfer can end maps to the documented status, cancel silences a
 * request (also from inside its own callbacks), connections are reused,
 * an instance's leftovers are cancelled when it is destroyed, and TLS is
 * verified unless told otherwise. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* Generous: a hang guard, never a measurement. */
#define WAIT 30.0

typedef struct server {
    pid_t pid;
    int port;
} server;

static server plain, tls;
static char *dir, *cert_pem;
static core *C;
static const tolk_host *H;

static tolk_instance *inst(void) {
    tolk_instance *i = core_find_instance(C, "mt-a");
    assert_non_null(i);
    return i;
}

static int start_server(server *s, const char *cert, const char *key) {
    char *script = xasprintf("%s/tests/httpfake.py", getenv("top_srcdir"));
    int p[2];
    assert_int_equal(pipe(p), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        if (cert)
            execlp("python3", "python3", script, "--cert", cert, "--key", key, (char *)NULL);
        else
            execlp("python3", "python3", script, (char *)NULL);
        _exit(127);
    }
    free(script);
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    s->port = 0;
    if (fscanf(f, "PORT %d", &s->port) != 1) s->port = 0;
    fclose(f);
    return s->port > 0;
}

static void stop_server(server *s) {
    if (s->pid <= 0) return;
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static int make_certificate(void) {
    char *cmd = xasprintf("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=IP:127.0.0.1,DNS:localhost "
                          "-keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
                          dir, dir);
    int rc = system(cmd);
    free(cmd);
    return rc == 0;
}

static int setup(void **state) {
    /* The fake server is on 127.0.0.1: a proxy from the environment must
     * not get in the way. */
    unsetenv("http_proxy");
    unsetenv("https_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("HTTPS_PROXY");
    unsetenv("ALL_PROXY");
    unsetenv("all_proxy");
    signal(SIGPIPE, SIG_IGN);
    dir = tu_tmpdir();
    tu_log_capture();
    tu_write(dir, "tolk.conf", "core: { workers = 1; log_level = \"info\"; };\n");
    tu_write_mock_pipeline(dir);
    C = core_new(dir, NULL);
    assert_int_equal(core_load(C), 0);
    H = &C->host;
    assert_true(TOLK_HOST_HAS(H, http_header));
    assert_true(start_server(&plain, NULL, NULL));
    if (make_certificate()) {
        cert_pem = xasprintf("%s/cert.pem", dir);
        char *key = xasprintf("%s/key.pem", dir);
        if (!start_server(&tls, cert_pem, key)) {
            free(cert_pem);
            cert_pem = NULL;
        }
        free(key);
    }
    return 0;
}

static int teardown(void **state) {
    stop_server(&plain);
    stop_server(&tls);
    core_free(C);
    tu_rm_rf(dir);
    free(dir);
    free(cert_pem);
    tu_log_clear();
    return 0;
}

/* ---- one request's outcome, as its callbacks saw it ---- */

typedef struct call {
    tolk_http *h;
    int responses, response_status, bodies, done;
    tolk_status status;
    int http_status;
    char error[256];
    char *body; /* collected (from on_done) or streamed (on_body) */
    size_t body_len;
    int body_was_null;
    char retry_after[2][16]; /* read in on_response and in on_done */
    int mixed_case_found;
    /* behaviour */
    int stream;         /* use on_body */
    int stop_in_body;   /* on_body returns non-zero */
    int cancel_in_body; /* on_body cancels its own request */
    int cancel_in_response;
    struct call *victim; /* on_body cancels this other request */
    const char *gate;   /* /stream: release the next chunk from on_body */
    struct call *releases;
    int nreleased;
} call;

static void copy_header(char *dst, size_t len, tolk_http *h, const char *name) {
    const char *v = H->http_header(h, name);
    snprintf(dst, len, "%s", v ? v : "(null)");
}

static void on_response(void *ud, tolk_http *h, int status) {
    call *c = ud;
    assert_ptr_equal(h, c->h);
    assert_int_equal(c->bodies, 0); /* before the first body byte */
    c->responses++;
    c->response_status = status;
    copy_header(c->retry_after[0], sizeof c->retry_after[0], h, "retry-after");
    if (c->cancel_in_response) H->http_cancel(h);
}

static call *start(call *c, const char *method, const char *url, const char *const *headers,
                   const char *body, const tolk_http_request *tweak);

static int on_body_cb(void *ud, tolk_http *h, const void *data, size_t n) {
    call *c = ud;
    assert_ptr_equal(h, c->h);
    assert_int_equal(c->responses, 1);
    c->bodies++;
    c->body = xrealloc(c->body, c->body_len + n + 1);
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = 0;
    if (c->cancel_in_body) {
        H->http_cancel(h);
        return 0;
    }
    if (c->victim && c->victim->h) {
        H->http_cancel(c->victim->h);
        c->victim->h = NULL;
    }
    if (c->gate) {
        /* Ask for the next chunk from inside the callback: a request made
         * while the client is inside libcurl. */
        int seen = 0;
        for (size_t i = 0; i < c->body_len; i++) seen += c->body[i] == ';';
        while (c->nreleased < seen) {
            char *url = xasprintf("http://127.0.0.1:%d/release?gate=%s&i=%d", plain.port,
                                  c->gate, c->nreleased);
            start(&c->releases[c->nreleased], NULL, url, NULL, NULL, NULL);
            free(url);
            c->nreleased++;
        }
    }
    return c->stop_in_body;
}

static void on_done(void *ud, tolk_http *h, const tolk_http_result *res) {
    call *c = ud;
    assert_ptr_equal(h, c->h);
    assert_int_equal(c->done, 0);
    c->done++;
    c->status = res->status;
    c->http_status = res->http_status;
    assert_non_null(res->error);
    snprintf(c->error, sizeof c->error, "%s", res->error);
    c->body_was_null = res->body == NULL;
    if (res->body) {
        assert_int_equal(res->body[res->body_len], 0);
        free(c->body);
        c->body = xmalloc(res->body_len + 1);
        memcpy(c->body, res->body, res->body_len + 1);
        c->body_len = res->body_len;
    }
    copy_header(c->retry_after[1], sizeof c->retry_after[1], h, "RETRY-AFTER");
    c->mixed_case_found = H->http_header(h, "x-MIXED-case") != NULL;
    H->http_cancel(h); /* harmless inside on_done */
}

static call *start(call *c, const char *method, const char *url, const char *const *headers,
                   const char *body, const tolk_http_request *tweak) {
    tolk_http_request r = tweak ? *tweak : (tolk_http_request){0};
    r.size = sizeof r;
    r.method = method;
    r.url = url;
    r.headers = headers;
    r.body = body;
    r.body_len = body ? strlen(body) : 0;
    r.on_response = on_response;
    r.on_body = c->stream || c->stop_in_body || c->cancel_in_body || c->gate || c->victim
                    ? on_body_cb
                    : NULL;
    r.on_done = on_done;
    r.ud = c;
    c->h = H->http_request(inst(), &r);
    assert_non_null(c->h);
    assert_int_equal(c->done, 0); /* never from inside http_request() */
    return c;
}

static call *get(call *c, const char *path, const tolk_http_request *tweak) {
    char *url = xasprintf("http://127.0.0.1:%d%s", plain.port, path);
    start(c, NULL, url, NULL, NULL, tweak);
    free(url);
    return c;
}

static int call_done(void *ud) { return ((call *)ud)->done > 0; }

static void wait_done(call *c) { assert_true(tu_run_until(C, call_done, c, WAIT)); }

static void call_free(call *c) {
    free(c->body);
    memset(c, 0, sizeof *c);
}

/* A request that completes after everything started before it had its
 * chance to call back: proof that silence is not just impatience. */
static void sentinel(void) {
    call s = {0};
    get(&s, "/say?t=sentinel", NULL);
    wait_done(&s);
    assert_int_equal(s.status, TOLK_OK);
    assert_string_equal(s.body, "sentinel");
    call_free(&s);
}

static const char *json_str(json_t *o, const char *path1, const char *path2) {
    json_t *v = json_object_get(o, path1);
    if (path2) v = json_object_get(v, path2);
    return json_string_value(v);
}

/* ---- tests ---- */

static void test_get_and_post_echo(void **state) {
    call c = {0};
    static const char *const hdr_get[] = {"X-Tolk-Test: one", NULL};
    char *url = xasprintf("http://127.0.0.1:%d/echo?x=1", plain.port);
    start(&c, NULL, url, hdr_get, NULL, NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    assert_int_equal(c.http_status, 200);
    assert_int_equal(c.responses, 1);
    assert_int_equal(c.response_status, 200);
    assert_string_equal(c.error, "");
    json_t *j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_str(j, "method", NULL), "GET");
    assert_string_equal(json_str(j, "path", NULL), "/echo?x=1");
    assert_string_equal(json_str(j, "headers", "x-tolk-test"), "one");
    assert_string_equal(json_str(j, "body", NULL), "");
    json_decref(j);
    call_free(&c);

    /* No method and a body: POST, the body and headers as given. */
    static const char *const hdr_post[] = {"Content-Type: application/json",
                                           "Authorization: Bearer s3cret", NULL};
    const char *body = "{\"q\":\"hello, wörld\",\"n\":[1,2,3]}";
    start(&c, NULL, url, hdr_post, body, NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_str(j, "method", NULL), "POST");
    assert_string_equal(json_str(j, "body", NULL), body);
    assert_string_equal(json_str(j, "headers", "content-type"), "application/json");
    assert_string_equal(json_str(j, "headers", "authorization"), "Bearer s3cret");
    assert_null(json_object_get(json_object_get(j, "headers"), "expect"));
    json_decref(j);
    call_free(&c);

    /* Any other method, with its body. */
    start(&c, "PUT", url, hdr_post, "{}", NULL);
    wait_done(&c);
    j = json_loads(c.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_str(j, "method", NULL), "PUT");
    assert_string_equal(json_str(j, "body", NULL), "{}");
    json_decref(j);
    call_free(&c);
    free(url);
}

static void test_response_headers(void **state) {
    call c = {0};
    get(&c, "/headers", NULL);
    wait_done(&c);
    /* A complete response is TOLK_OK whatever its HTTP status. */
    assert_int_equal(c.status, TOLK_OK);
    assert_int_equal(c.http_status, 429);
    assert_int_equal(c.response_status, 429);
    assert_string_equal(c.retry_after[0], "7");
    assert_string_equal(c.retry_after[1], "7");
    assert_true(c.mixed_case_found);
    assert_string_equal(c.body, "slow down");
    call_free(&c);
    /* A header the response does not have reads as NULL. */
    get(&c, "/say?t=x", NULL);
    wait_done(&c);
    assert_string_equal(c.retry_after[1], "(null)");
    call_free(&c);
}

static void test_chunked_stream(void **state) {
    call releases[8] = {{0}};
    call c = {.stream = 1, .gate = "s1", .releases = releases};
    get(&c, "/stream?gate=s1&n=4", NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    assert_string_equal(c.body, "chunk-0;chunk-1;chunk-2;chunk-3;");
    /* Each chunk exists only after the previous one was delivered. */
    assert_int_equal(c.bodies, 4);
    assert_true(c.body_was_null);
    for (int i = 0; i < c.nreleased; i++) {
        wait_done(&releases[i]);
        assert_int_equal(releases[i].status, TOLK_OK);
        call_free(&releases[i]);
    }
    call_free(&c);
}

static void test_idle_timeout(void **state) {
    call c = {0};
    get(&c, "/stall?hold=20", &(tolk_http_request){.idle_timeout = 0.3});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_TIMEOUT);
    assert_int_equal(c.http_status, 200);
    assert_int_equal(c.responses, 1);
    assert_non_null(strstr(c.error, "no data for"));
    call_free(&c);
}

static void test_total_timeout(void **state) {
    call c = {.stream = 1};
    get(&c, "/stall?hold=20", &(tolk_http_request){.total_timeout = 0.5});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_TIMEOUT);
    assert_int_equal(c.body_len, 10); /* what came before the stall */
    assert_string_not_equal(c.error, "");
    call_free(&c);
}

static void test_truncated_body(void **state) {
    static const char *const paths[] = {"/truncate", "/truncate-chunked"};
    for (size_t i = 0; i < ARRAY_LEN(paths); i++) {
        call c = {0};
        get(&c, paths[i], NULL);
        wait_done(&c);
        assert_int_equal(c.status, TOLK_E_BACKEND);
        assert_int_equal(c.http_status, 200);
        assert_string_not_equal(c.error, "");
        call_free(&c);
    }
}

static void test_connection_refused(void **state) {
    /* A bound socket that does not listen: connecting to it is refused. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    char *url = xasprintf("http://127.0.0.1:%d/", ntohs(a.sin_port));
    call c = {0};
    start(&c, NULL, url, NULL, NULL, NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_BACKEND);
    assert_int_equal(c.http_status, 0);
    assert_int_equal(c.responses, 0);
    assert_string_not_equal(c.error, "");
    call_free(&c);
    free(url);
    close(fd);
}

static void test_max_body(void **state) {
    call c = {0};
    get(&c, "/bytes?n=100000", &(tolk_http_request){.max_body = 1000});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_LIMIT);
    call_free(&c);
    /* Exactly the limit is fine. */
    get(&c, "/bytes?n=1000", &(tolk_http_request){.max_body = 1000});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    assert_int_equal(c.body_len, 1000);
    call_free(&c);
}

static void test_on_body_stops(void **state) {
    call c = {.stop_in_body = 1};
    get(&c, "/bytes?n=500000", NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_INVAL);
    assert_int_equal(c.bodies, 1);
    assert_true(c.body_was_null);
    call_free(&c);
}

static int responded(void *ud) { return ((call *)ud)->responses > 0; }

static void test_cancel(void **state) {
    /* At once. */
    call a = {0};
    get(&a, "/say?t=never", NULL);
    H->http_cancel(a.h);
    /* While the body is stalled. */
    call b = {0};
    get(&b, "/stall?hold=20", NULL);
    assert_true(tu_run_until(C, responded, &b, WAIT));
    H->http_cancel(b.h);
    /* From inside its own on_body and on_response. */
    call c = {.cancel_in_body = 1};
    get(&c, "/bytes?n=500000", NULL);
    call d = {.cancel_in_response = 1};
    get(&d, "/say?t=hello", NULL);
    /* Another request's, from inside an on_body. */
    call v = {0};
    get(&v, "/stall?hold=20", NULL);
    assert_true(tu_run_until(C, responded, &v, WAIT));
    call e = {.victim = &v};
    get(&e, "/say?t=killer", NULL);
    wait_done(&e);
    assert_int_equal(e.status, TOLK_OK);
    sentinel();
    assert_int_equal(v.done, 0);
    assert_null(v.h);
    assert_int_equal(a.done + a.responses, 0);
    assert_int_equal(b.done, 0);
    assert_int_equal(c.bodies, 1);
    assert_int_equal(c.done, 0);
    assert_int_equal(d.responses, 1);
    assert_int_equal(d.bodies + d.done, 0);
    call_free(&a);
    call_free(&b);
    call_free(&c);
    call_free(&d);
    call_free(&e);
    call_free(&v);
}

static int stats_connections(void) {
    call s = {0};
    get(&s, "/stats", NULL);
    wait_done(&s);
    json_t *j = json_loads(s.body, 0, NULL);
    assert_non_null(j);
    int n = (int)json_integer_value(json_object_get(j, "connections"));
    json_decref(j);
    call_free(&s);
    return n;
}

#define NPAR 100
static call par[NPAR];

static int all_done(void *ud) {
    for (int i = 0; i < NPAR; i++)
        if (!par[i].done) return 0;
    return 1;
}

static void test_parallel_reuse(void **state) {
    int before = stats_connections();
    for (int i = 0; i < NPAR; i++) {
        char path[64];
        snprintf(path, sizeof path, "/say?t=reply-%d", i);
        get(&par[i], path, NULL);
    }
    assert_true(tu_run_until(C, all_done, NULL, WAIT));
    int opened = stats_connections() - before;
    for (int i = 0; i < NPAR; i++) {
        char want[32];
        snprintf(want, sizeof want, "reply-%d", i);
        assert_int_equal(par[i].status, TOLK_OK);
        assert_string_equal(par[i].body, want);
        call_free(&par[i]);
    }
    print_message("%d requests in parallel over %d new connections\n", NPAR, opened);
    assert_true(opened < NPAR);
}

static void test_refused_at_once(void **state) {
    static const char *const bad_urls[] = {"not a url", "ftp://127.0.0.1/x", "http://", ""};
    call c = {0};
    tolk_http_request r = {.size = sizeof r, .on_done = on_done, .ud = &c};
    for (size_t i = 0; i < ARRAY_LEN(bad_urls); i++) {
        r.url = bad_urls[i];
        assert_null(H->http_request(inst(), &r));
    }
    char *url = xasprintf("http://127.0.0.1:%d/say", plain.port);
    r.url = url;
    static const char *const injected[] = {"X-A: 1\r\nX-B: 2", NULL};
    r.headers = injected;
    assert_null(H->http_request(inst(), &r));
    r.headers = NULL;
    r.method = "GET /x";
    assert_null(H->http_request(inst(), &r));
    r.method = NULL;
    r.on_done = NULL;
    assert_null(H->http_request(inst(), &r));
    free(url);
    sentinel();
    assert_int_equal(c.done, 0);
}

static void test_https(void **state) {
    if (!cert_pem) {
        print_message("openssl or python3's ssl missing: https not tested\n");
        skip();
    }
    char *url = xasprintf("https://127.0.0.1:%d/say?t=secure", tls.port);
    call c = {0};
    start(&c, NULL, url, NULL, NULL, NULL);
    wait_done(&c);
    assert_int_equal(c.status, TOLK_E_BACKEND); /* self-signed: refused by default */
    assert_int_equal(c.http_status, 0);
    call_free(&c);
    start(&c, NULL, url, NULL, NULL, &(tolk_http_request){.insecure = 1});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    assert_string_equal(c.body, "secure");
    call_free(&c);
    start(&c, NULL, url, NULL, NULL, &(tolk_http_request){.ca_file = cert_pem});
    wait_done(&c);
    assert_int_equal(c.status, TOLK_OK);
    assert_string_equal(c.body, "secure");
    call_free(&c);
    free(url);
}

/* Last: it replaces the instance the others use. */
static void test_instance_destroyed_with_requests(void **state) {
    call c[3] = {{0}};
    for (int i = 0; i < 3; i++) get(&c[i], "/stall?hold=20", NULL);
    assert_true(tu_run_until(C, responded, &c[0], WAIT));
    tu_log_clear();
    /* New settings: a reload makes a new mt-a and destroys the old one. */
    tu_write(dir, "30-mt.conf",
             "instance: { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 7; }; };\n");
    assert_int_equal(core_reload(C), 0);
    assert_true(tu_log_has("[mt_mock/mt-a] 3 HTTP requests still open when the instance was destroyed"));
    sentinel();
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].done, 0);
        call_free(&c[i]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_post_echo),
        cmocka_unit_test(test_response_headers),
        cmocka_unit_test(test_chunked_stream),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_total_timeout),
        cmocka_unit_test(test_truncated_body),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_max_body),
        cmocka_unit_test(test_on_body_stops),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_parallel_reuse),
        cmocka_unit_test(test_refused_at_once),
        cmocka_unit_test(test_https),
        cmocka_unit_test(test_instance_destroyed_with_requests),
    };
    return cmocka_run_group_tests_name("http", tests, setup, teardown);
}
