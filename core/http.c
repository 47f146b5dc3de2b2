/* The HTTP client lent to plugins: libcurl's multi-socket interface on the
 * core's libev loop (protocols.md §7), one multi handle per process so
 * every plugin shares its connection cache.
 *
 * libcurl refuses to be re-entered from its own callbacks (write, header),
 * yet plugins may start or cancel requests from inside on_response and
 * on_body. So while the loop is inside curl_multi_socket_action() a new
 * request is only queued and a cancelled one only marked; both are settled
 * right after libcurl returns (after_curl()). on_done is always called from
 * there or from a loop callback, never from inside libcurl or from inside
 * http_request().
 *
 * Choices plugin.h leaves open: redirects are not followed (a 3xx is a
 * response like any other); at most HTTP_MAX_HOST_CONNECTIONS connections
 * per host, more requests queue for a free one; idle_timeout also bounds
 * the wait for the first byte; the environment's proxy variables are
 * honoured, as by curl(1); "Expect: 100-continue" is never sent; the
 * User-Agent is tolk/VERSION unless the plugin sets one. */
#include "config.h"

#include "http.h"

#include <curl/curl.h>
#include <ev.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core.h"
#include "log.h"

#define HTTP_DEFAULT_CONNECT_TIMEOUT 10.0
#define HTTP_DEFAULT_MAX_BODY ((size_t)8 << 20)
/* Parallel requests to one host beyond this wait for a connection to come
 * free and reuse it, rather than each opening its own: a busy daemon would
 * otherwise hold a socket per request in flight. HTTP/2 services multiplex
 * them all over one connection (CURLOPT_PIPEWAIT). */
#define HTTP_MAX_HOST_CONNECTIONS 32
/* Idle connections kept for reuse, over all hosts. libcurl's default
 * shrinks with the number of transfers in flight, which would close a
 * service's connection between two phrases of a quiet call. */
#define HTTP_MAX_CACHED_CONNECTIONS 64

typedef enum req_state {
    REQ_QUEUED,   /* made inside a libcurl callback: added after it returns */
    REQ_ACTIVE,   /* in the multi handle */
    REQ_DOOMED,   /* cancelled inside a libcurl callback: freed after it returns */
    REQ_FINISHING /* finish() runs: cancel only silences what is still to come */
} req_state;

struct tolk_http {
    tolk_instance *inst; /* NULL once cancelled: the instance may be gone */
    req_state state;
    CURL *easy;
    struct curl_slist *req_headers;
    char *req_body;
    char *what; /* "POST https://host/path" without query or credentials, for logs */
    void (*on_response)(void *ud, tolk_http *h, int http_status);
    int (*on_body)(void *ud, tolk_http *h, const void *data, size_t n);
    void (*on_done)(void *ud, tolk_http *h, const tolk_http_result *res);
    void *ud;
    size_t max_body;
    double idle_timeout;
    ev_timer idle;
    curl_off_t sent; /* upload progress, so a long upload is not "idle" */
    ptr_vec resp_headers; /* each "name\0value" in one allocation */
    char *body;
    size_t body_len, body_cap;
    int responded;
    int silenced; /* cancelled from the late on_response finish() gave */
    int in_on_done;
    tolk_status fail; /* why we stopped the transfer ourselves, or TOLK_OK */
    char fail_msg[96];
    char errbuf[CURL_ERROR_SIZE];
    double t_start;
    tolk_http *prev, *next;
};

typedef struct sock_watch {
    ev_io io;
    struct sock_watch *prev, *next;
} sock_watch;

typedef struct http_client {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;   /* libcurl's one timeout */
    int in_curl;      /* inside curl_multi_socket_action() */
    size_t queued, doomed;
    tolk_http *reqs;  /* every request not yet freed */
    sock_watch *socks;
} http_client;

static http_client *g_http;

static void req_link(tolk_http *h) {
    h->next = g_http->reqs;
    if (h->next) h->next->prev = h;
    g_http->reqs = h;
}

static void req_free(tolk_http *h) {
    if (h->prev)
        h->prev->next = h->next;
    else
        g_http->reqs = h->next;
    if (h->next) h->next->prev = h->prev;
    ev_timer_stop(g_http->loop, &h->idle);
    curl_easy_cleanup(h->easy);
    curl_slist_free_all(h->req_headers);
    for (size_t i = 0; i < h->resp_headers.n; i++) free(h->resp_headers.v[i]);
    ptr_vec_free(&h->resp_headers);
    free(h->req_body);
    free(h->body);
    free(h->what);
    free(h);
}

static const char *req_who(const tolk_http *h) { return h->inst ? h->inst->who : "http"; }

static void set_fail(tolk_http *h, tolk_status st, const char *msg) {
    if (h->fail != TOLK_OK) return;
    h->fail = st;
    snprintf(h->fail_msg, sizeof h->fail_msg, "%s", msg);
}

static tolk_status status_of(CURLcode rc) {
    switch (rc) {
    case CURLE_OK:
        return TOLK_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return TOLK_E_TIMEOUT;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return TOLK_E_INVAL;
    case CURLE_OUT_OF_MEMORY:
        return TOLK_E_NOMEM;
    default: /* could not resolve or connect, TLS, reset, truncated, ... */
        return TOLK_E_BACKEND;
    }
}

static void respond(tolk_http *h) {
    long code = 0;
    curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &code);
    h->responded = 1;
    if (h->on_response) h->on_response(h->ud, h, (int)code);
}

/* The end of a request that has left the multi handle (or never entered
 * it): on_done once, then the handle is freed. */
static void finish(tolk_http *h, CURLcode rc) {
    ev_timer_stop(g_http->loop, &h->idle);
    h->state = REQ_FINISHING;
    tolk_status st = h->fail != TOLK_OK ? h->fail : status_of(rc);
    if (st == TOLK_OK && !h->responded) {
        respond(h); /* a response that ended without a header block */
        if (h->silenced) {
            req_free(h);
            return;
        }
    }
    long code = 0;
    curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &code);
    tolk_http_result res = {.size = sizeof res, .status = st, .http_status = (int)code};
    if (h->fail != TOLK_OK)
        res.error = h->fail_msg;
    else if (rc != CURLE_OK)
        res.error = h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc);
    else
        res.error = "";
    if (!h->on_body) {
        res.body = h->body ? h->body : "";
        res.body_len = h->body_len;
    }
    if (log_enabled(TOLK_LOG_DBG))
        log_msg(TOLK_LOG_DBG, req_who(h), "%s: %d, status %d, %zu bytes in %.3f s%s%s", h->what,
                (int)st, (int)code, h->body_len, mono_now() - h->t_start, *res.error ? ": " : "",
                res.error);
    h->in_on_done = 1;
    h->on_done(h->ud, h, &res);
    req_free(h);
}

/* ---- libcurl callbacks (inside curl_multi_socket_action) ---- */

/* idle_timeout is our own timer, re-armed on every byte that moves, and
 * not libcurl's CURLOPT_LOW_SPEED_LIMIT/TIME: those take whole seconds and
 * judge an average rate over that window, while a streaming TTS needs "no
 * byte for 0.5 s" to mean exactly that. It runs from the moment the request
 * starts, so it also bounds the wait for the first byte of the answer;
 * upload progress counts, so a long body being sent is not "idle". */
static void rearm_idle(tolk_http *h) {
    if (h->idle_timeout > 0) ev_timer_again(g_http->loop, &h->idle);
}

static size_t on_header(char *data, size_t size, size_t nitems, void *ud) {
    tolk_http *h = ud;
    size_t n = size * nitems;
    if (h->state != REQ_ACTIVE) return 0; /* cancelled: abort */
    rearm_idle(h);
    if (n >= 5 && !memcmp(data, "HTTP/", 5)) {
        /* A new header block (after a 100 Continue): only the last counts. */
        for (size_t i = 0; i < h->resp_headers.n; i++) free(h->resp_headers.v[i]);
        h->resp_headers.n = 0;
        return n;
    }
    size_t len = n;
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r')) len--;
    if (len == 0) { /* the end of a header block */
        long code = 0;
        curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 && !h->responded) {
            respond(h);
            if (h->state != REQ_ACTIVE) return 0;
        }
        return n;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon || data[0] == ' ' || data[0] == '\t') return n; /* obsolete line folding */
    size_t nlen = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    size_t vlen = (size_t)(end - v);
    char *line = xmalloc(nlen + vlen + 2);
    memcpy(line, data, nlen);
    line[nlen] = 0;
    memcpy(line + nlen + 1, v, vlen);
    line[nlen + 1 + vlen] = 0;
    ptr_vec_push(&h->resp_headers, line);
    return n;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
    tolk_http *h = ud;
    size_t n = size * nmemb;
    if (h->state != REQ_ACTIVE) return 0;
    rearm_idle(h);
    if (!h->responded) {
        respond(h);
        if (h->state != REQ_ACTIVE) return 0;
    }
    if (h->on_body) {
        int stop = h->on_body(h->ud, h, data, n);
        if (h->state != REQ_ACTIVE) return 0;
        if (stop) {
            set_fail(h, TOLK_E_INVAL, "stopped by on_body");
            return 0;
        }
        h->body_len += n;
        return n;
    }
    if (n > h->max_body - h->body_len) {
        char msg[64];
        snprintf(msg, sizeof msg, "body larger than %zu bytes", h->max_body);
        set_fail(h, TOLK_E_LIMIT, msg);
        return 0;
    }
    if (h->body_len + n + 1 > h->body_cap) {
        size_t cap = h->body_cap ? h->body_cap : 4096;
        while (cap < h->body_len + n + 1) cap *= 2;
        h->body = xrealloc(h->body, cap);
        h->body_cap = cap;
    }
    memcpy(h->body + h->body_len, data, n);
    h->body_len += n;
    h->body[h->body_len] = 0;
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    tolk_http *h = ud;
    if (h->state != REQ_ACTIVE) return 1;
    if (ulnow > h->sent) {
        h->sent = ulnow;
        rearm_idle(h);
    }
    return 0;
}

/* ---- the multi handle on the loop ---- */

static void after_curl(void);

static void drive(curl_socket_t fd, int action) {
    int running = 0;
    g_http->in_curl++;
    curl_multi_socket_action(g_http->multi, fd, action, &running);
    g_http->in_curl--;
    after_curl();
}

static void on_socket_ready(struct ev_loop *loop, ev_io *w, int revents) {
    drive(w->fd, (revents & EV_READ ? CURL_CSELECT_IN : 0) |
                     (revents & EV_WRITE ? CURL_CSELECT_OUT : 0));
}

static void on_multi_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    drive(CURL_SOCKET_TIMEOUT, 0);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
    sock_watch *w = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            ev_io_stop(g_http->loop, &w->io);
            if (w->prev)
                w->prev->next = w->next;
            else
                g_http->socks = w->next;
            if (w->next) w->next->prev = w->prev;
            free(w);
        }
        return 0;
    }
    int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!w) {
        w = xcalloc(1, sizeof *w);
        ev_io_init(&w->io, on_socket_ready, fd, events);
        w->next = g_http->socks;
        if (w->next) w->next->prev = w;
        g_http->socks = w;
        curl_multi_assign(g_http->multi, fd, w);
    } else {
        ev_io_stop(g_http->loop, &w->io);
        ev_io_set(&w->io, fd, events);
    }
    ev_io_start(g_http->loop, &w->io);
    return 0;
}

/* No libcurl calls in here (CURLMOPT_TIMERFUNCTION's rule). */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    ev_timer_stop(g_http->loop, &g_http->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&g_http->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(g_http->loop, &g_http->timer);
    }
    return 0;
}

static void on_idle(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_http *h = CONTAINER_OF(w, tolk_http, idle);
    char msg[64];
    snprintf(msg, sizeof msg, "no data for %.3g s", h->idle_timeout);
    set_fail(h, TOLK_E_TIMEOUT, msg);
    curl_multi_remove_handle(g_http->multi, h->easy);
    finish(h, CURLE_OK);
}

static CURLMcode add_to_multi(tolk_http *h) {
    CURLMcode mc = curl_multi_add_handle(g_http->multi, h->easy);
    if (mc != CURLM_OK) return mc;
    h->state = REQ_ACTIVE;
    rearm_idle(h);
    return CURLM_OK;
}

/* Settles what the callbacks could not do inside libcurl. */
static void after_curl(void) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(g_http->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result; /* m dies with remove_handle */
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        tolk_http *h = (tolk_http *)(void *)priv;
        curl_multi_remove_handle(g_http->multi, easy);
        if (h->state == REQ_DOOMED) {
            g_http->doomed--;
            req_free(h);
        } else {
            finish(h, rc);
        }
    }
    for (tolk_http *h = g_http->reqs, *next; h && (g_http->doomed || g_http->queued); h = next) {
        next = h->next;
        if (h->state == REQ_DOOMED) {
            g_http->doomed--;
            curl_multi_remove_handle(g_http->multi, h->easy);
            req_free(h);
        } else if (h->state == REQ_QUEUED) {
            g_http->queued--;
            CURLMcode mc = add_to_multi(h);
            if (mc != CURLM_OK) {
                set_fail(h, TOLK_E_NOMEM, curl_multi_strerror(mc));
                finish(h, CURLE_OK);
                next = g_http->reqs; /* on_done may have cancelled any other */
            }
        }
    }
}

static http_client *client_start(struct ev_loop *loop) {
    static int global_done;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) return NULL;
        global_done = 1; /* once per process: libcurl's global state is never torn down */
    }
    CURLM *multi = curl_multi_init();
    if (!multi) return NULL;
    http_client *hc = xcalloc(1, sizeof *hc);
    hc->loop = loop;
    hc->multi = multi;
    ev_timer_init(&hc->timer, on_multi_timer, 0., 0.);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)HTTP_MAX_HOST_CONNECTIONS);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)HTTP_MAX_CACHED_CONNECTIONS);
    return hc;
}

/* ---- the host services ---- */

static int is_token(const char *s) {
    if (!s || !*s) return 0;
    for (; *s; s++)
        if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') &&
            !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z'))
            return 0;
    return 1;
}

/* "METHOD scheme://host[:port]/path" of a URL libcurl accepts, or NULL
 * with *why set. The query and any user:password stay out: they may hold
 * keys, and this string goes to logs. */
static char *describe_url(const char *method, const char *url, const char **why) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *what = NULL;
    if (!u) {
        *why = "out of memory";
        return NULL;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
        *why = "malformed URL";
    } else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
               (strcasecmp(scheme, "http") && strcasecmp(scheme, "https"))) {
        *why = "not an http:// or https:// URL";
    } else {
        curl_url_get(u, CURLUPART_HOST, &host, 0);
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        curl_url_get(u, CURLUPART_PATH, &path, 0);
        what = xasprintf("%s %s://%s%s%s%s", method, scheme, host ? host : "", port ? ":" : "",
                         port ? port : "", path ? path : "/");
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return what;
}

static int header_ok(const char *hd) {
    return hd && strchr(hd, ':') && hd[0] != ':' && !strpbrk(hd, "\r\n");
}

static int has_header(const char *const *headers, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; headers && headers[i]; i++)
        if (!strncasecmp(headers[i], name, n) && headers[i][n] == ':') return 1;
    return 0;
}

static tolk_http *refuse(tolk_instance *inst, tolk_http *h, const char *why) {
    log_msg(TOLK_LOG_WARN, inst ? inst->who : "http", "HTTP request refused: %s", why);
    if (h) req_free(h);
    return NULL;
}

static void set_method_and_body(tolk_http *h, const char *method, const tolk_http_request *r) {
    CURL *e = h->easy;
    if (r->body_len) {
        h->req_body = xmalloc(r->body_len);
        memcpy(h->req_body, r->body, r->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, h->req_body);
        if (strcmp(method, "POST")) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
}

tolk_http *http_request(tolk_instance *inst, const tolk_http_request *req) {
    /* Read only what the caller's struct holds (ABI rule 3); a struct from
     * an older minor than 1.2 cannot exist, so anything shorter is garbage. */
    tolk_http_request r = {0};
    if (!req || req->size < offsetof(tolk_http_request, ud) + sizeof req->ud)
        return refuse(inst, NULL, "request struct too small");
    memcpy(&r, req, req->size < sizeof r ? req->size : sizeof r);
    if (!r.on_done) return refuse(inst, NULL, "no on_done callback");
    if (!r.url) return refuse(inst, NULL, "no URL");
    if (r.body_len && !r.body) return refuse(inst, NULL, "body_len without a body");
    const char *method = r.method ? r.method : r.body_len ? "POST" : "GET";
    if (!is_token(method)) return refuse(inst, NULL, "invalid method");
    for (size_t i = 0; r.headers && r.headers[i]; i++)
        if (!header_ok(r.headers[i])) return refuse(inst, NULL, "invalid header line");
    const char *why = NULL;
    char *what = describe_url(method, r.url, &why);
    if (!what) return refuse(inst, NULL, why);
    if (!g_http && !(g_http = client_start(inst ? inst->core->loop : EV_DEFAULT))) {
        free(what);
        return refuse(inst, NULL, "libcurl could not be initialised");
    }

    tolk_http *h = xcalloc(1, sizeof *h);
    h->inst = inst;
    h->what = what;
    h->state = REQ_QUEUED;
    h->on_response = r.on_response;
    h->on_body = r.on_body;
    h->on_done = r.on_done;
    h->ud = r.ud;
    h->max_body = r.max_body ? r.max_body : HTTP_DEFAULT_MAX_BODY;
    h->idle_timeout = r.idle_timeout > 0 ? r.idle_timeout : 0;
    h->t_start = mono_now();
    ev_init(&h->idle, on_idle);
    h->idle.repeat = h->idle_timeout;
    req_link(h);
    if (!(h->easy = curl_easy_init())) return refuse(inst, h, "out of memory");

    CURL *e = h->easy;
    curl_easy_setopt(e, CURLOPT_URL, r.url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)h);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85 deprecated the bit mask */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    /* Redirects are the plugin's business: a 3xx comes back as a response
     * (Location readable with http_header), and an Authorization header is
     * never replayed to a host the plugin did not name. */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
    if (h->idle_timeout > 0) {
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(e, CURLOPT_XFERINFODATA, h);
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    }
    double connect = r.connect_timeout > 0 ? r.connect_timeout : HTTP_DEFAULT_CONNECT_TIMEOUT;
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect * 1000 + 0.5));
    if (r.total_timeout > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(r.total_timeout * 1000 + 0.5));
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, r.insecure ? 0L : 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, r.insecure ? 0L : 2L);
    if (r.ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, r.ca_file);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "tolk/" PACKAGE_VERSION);
    set_method_and_body(h, method, &r);
    for (size_t i = 0; r.headers && r.headers[i]; i++)
        h->req_headers = curl_slist_append(h->req_headers, r.headers[i]);
    /* libcurl would wait for a "100 Continue" before sending a large body:
     * a round trip lost on every request to a server that never sends one. */
    if (!has_header(r.headers, "Expect")) h->req_headers = curl_slist_append(h->req_headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->req_headers);

    if (g_http->in_curl) {
        g_http->queued++; /* added by after_curl() */
    } else {
        CURLMcode mc = add_to_multi(h);
        if (mc != CURLM_OK) return refuse(inst, h, curl_multi_strerror(mc));
    }
    return h;
}

void http_cancel(tolk_http *h) {
    if (!h || !g_http || h->state == REQ_DOOMED) return;
    if (h->state == REQ_FINISHING) {
        h->silenced = !h->in_on_done; /* inside on_done it is already the end */
        return;
    }
    ev_timer_stop(g_http->loop, &h->idle);
    h->inst = NULL;
    if (h->state == REQ_QUEUED) {
        g_http->queued--;
        req_free(h);
    } else if (g_http->in_curl) {
        h->state = REQ_DOOMED; /* its callbacks now abort the transfer */
        g_http->doomed++;
    } else {
        curl_multi_remove_handle(g_http->multi, h->easy);
        req_free(h);
    }
}

const char *http_header(tolk_http *h, const char *name) {
    if (!h || !name) return NULL;
    for (size_t i = 0; i < h->resp_headers.n; i++) {
        const char *line = h->resp_headers.v[i];
        if (!strcasecmp(line, name)) return line + strlen(line) + 1;
    }
    return NULL;
}

void http_forget_instance(tolk_instance *inst) {
    if (!g_http || !inst) return;
    size_t n = 0;
    for (tolk_http *h = g_http->reqs, *next; h; h = next) {
        next = h->next;
        if (h->inst == inst && (h->state == REQ_ACTIVE || h->state == REQ_QUEUED)) {
            log_msg(TOLK_LOG_VERB, inst->who, "cancelling %s", h->what);
            http_cancel(h);
            n++;
        }
    }
    if (n)
        log_msg(TOLK_LOG_WARN, inst->who,
                "%zu HTTP request%s still open when the instance was destroyed: cancelled", n,
                n == 1 ? "" : "s");
}

void http_shutdown(void) {
    if (!g_http) return;
    size_t n = 0;
    for (tolk_http *h = g_http->reqs, *next; h; h = next) {
        next = h->next;
        if (h->state == REQ_ACTIVE || h->state == REQ_QUEUED) n++;
        if (h->state != REQ_QUEUED) curl_multi_remove_handle(g_http->multi, h->easy);
        req_free(h);
    }
    if (n) log_msg(TOLK_LOG_WARN, "http", "%zu HTTP request%s still open at exit: cancelled", n, n == 1 ? "" : "s");
    curl_multi_cleanup(g_http->multi);
    while (g_http->socks) {
        sock_watch *w = g_http->socks;
        g_http->socks = w->next;
        ev_io_stop(g_http->loop, &w->io);
        free(w);
    }
    ev_timer_stop(g_http->loop, &g_http->timer);
    free(g_http);
    g_http = NULL;
}
