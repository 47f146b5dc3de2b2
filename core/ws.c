/* The WebSocket client service and the process's libwebsockets context.
 * See ws.h for the behaviour chosen where plugin.h leaves room. */
#include "ws.h"

#include <ctype.h>
#include <ev.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "core.h"
#include "log.h"

#define DEFAULT_CONNECT_TIMEOUT 10.0
#define DEFAULT_MAX_MESSAGE (1024 * 1024)
#define CLOSE_TIMEOUT 10.0 /* ws_close() to the peer's close frame: queue, ours, theirs */
#define CLIENT_PROTOCOL "tolk-ws"

typedef enum ws_state { WS_CONNECTING, WS_OPEN, WS_CLOSING, WS_DONE } ws_state;

typedef struct out_msg {
    struct out_msg *next;
    size_t n;
    int binary;
    unsigned char buf[]; /* LWS_PRE bytes of headroom, then the message */
} out_msg;

struct tolk_ws {
    tolk_ws *prev, *next; /* live connections (g.conns) */
    tolk_instance *inst;
    struct lws *wsi; /* NULL once detached: lws finishes it on its own */
    ws_state state;
    /* the parameters, copied */
    char *host, *path, *host_header, *subprotocol;
    char **headers;
    int port, tls, insecure;
    double connect_timeout, ping_interval, idle_timeout;
    size_t max_message;
    void (*on_open)(void *ud, tolk_ws *ws);
    void (*on_message)(void *ud, tolk_ws *ws, const void *data, size_t n, int binary);
    void (*on_close)(void *ud, tolk_ws *ws, const tolk_ws_close_info *info);
    void *ud;
    /* sending */
    out_msg *q_head, *q_tail;
    size_t buffered;
    int ping_due;        /* a ping waits for WRITEABLE */
    int ping_unanswered; /* sent, and nothing arrived since */
    /* our close (ws_close or 1009), sent once the queue is empty */
    int close_code;
    char close_reason[124]; /* a close frame carries at most 123 bytes of reason */
    /* the peer's close frame */
    int peer_closed, peer_code;
    char peer_reason[124];
    /* receiving */
    unsigned char *rx;
    size_t rx_len, rx_cap;
    int rx_binary;
    int rx_refused; /* closed with 1009: the rest is not wanted */
    ev_tstamp last_data;
    ev_timer connect_timer, ping_timer, idle_timer, close_timer, report_timer;
    /* re-entrancy */
    int in_user_cb; /* inside on_open/on_message */
    int cancelled;  /* ws_cancel() from inside them: freed on the way out */
    int reporting;  /* inside on_close */
    tolk_ws_close_info info;
    char info_reason[256];
};

static struct {
    core *core;
    struct ev_loop *loop;
    struct lws_context *ctx;
    struct lws_vhost *client_vh; /* the system's CA store */
    struct ca_vhost {
        struct ca_vhost *next;
        char *ca_file;
        struct lws_vhost *vh;
    } *ca_vhosts;
    int create_failed_logged;
    tolk_ws *conns;
} g;

/* ------------------------------------------------------------------ */
/* lws's log and the context                                           */

/* lws's own errors are about one connection, and the service reports what
 * matters to the plugin that owns it: lws's lines go one level lower.
 * Only errors and warnings are asked for: lws formats every line at the
 * levels it is given before anyone can drop it, and Debian's libev glue
 * logs a notice per I/O event. */
static void lws_emit(int level, const char *line) {
    tolk_log_level tl = (level & LLL_ERR) ? TOLK_LOG_WARN : TOLK_LOG_VERB;
    if (!log_enabled(tl)) return;
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    log_msg(tl, "lws", "%.*s", (int)n, line);
}

/* The core owns the signals; lws must never break the core's loop. */
static void ignore_signal(void *handle, int signum) {
    (void)handle;
    (void)signum;
}

static int client_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len);

static const struct lws_protocols client_protocols[] = {
    {CLIENT_PROTOCOL, client_cb, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* lws indexes its connections by fd number: the table must cover every fd
 * the process may hold, but not a million of them. */
static unsigned fd_table_size(void) {
    struct rlimit rl;
    rlim_t n = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) n = rl.rlim_cur;
    if (n < 1024) n = 1024;
    if (n > 65536) n = 65536;
    return (unsigned)n;
}

static struct lws_vhost *client_vhost(const char *ca_file) {
    if (!ca_file && g.client_vh) return g.client_vh;
    for (struct ca_vhost *cv = g.ca_vhosts; ca_file && cv; cv = cv->next)
        if (!strcmp(cv->ca_file, ca_file)) return cv->vh;
    struct lws_context_creation_info vi;
    memset(&vi, 0, sizeof vi);
    vi.port = CONTEXT_PORT_NO_LISTEN;
    vi.protocols = client_protocols;
    vi.vhost_name = ca_file ? "tolk-ws-client-ca" : "tolk-ws-client";
    vi.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    vi.client_ssl_ca_filepath = ca_file;
    vi.gid = -1;
    vi.uid = -1;
    struct lws_vhost *vh = lws_create_vhost(g.ctx, &vi);
    if (!vh) {
        log_msg(TOLK_LOG_ERR, "ws", "libwebsockets could not create a client vhost%s%s",
                ca_file ? " with CA file " : "", ca_file ? ca_file : "");
        return NULL;
    }
    if (!ca_file) {
        g.client_vh = vh;
    } else {
        struct ca_vhost *cv = xcalloc(1, sizeof *cv);
        cv->ca_file = xstrdup(ca_file);
        cv->vh = vh;
        cv->next = g.ca_vhosts;
        g.ca_vhosts = cv;
    }
    return vh;
}

struct lws_context *ws_lws_context(void) {
    if (g.ctx || !g.loop) return g.ctx;
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
    struct lws_context_creation_info ci;
    memset(&ci, 0, sizeof ci);
    void *loops[1] = {g.loop};
    ci.options = LWS_SERVER_OPTION_LIBEV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                 LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    ci.foreign_loops = loops;
    ci.signal_cb = ignore_signal;
    ci.pcontext = &g.ctx; /* lws clears it when the context is gone */
    ci.gid = -1;
    ci.uid = -1;
    ci.server_string = "tolkd";
    ci.fd_limit_per_thread = fd_table_size();
    /* a cloud provider's upgrade response or a scrape's request: lws's
     * 4 KiB header table is tight for either */
    ci.max_http_header_data = 8192;
    g.ctx = lws_create_context(&ci);
    if (!g.ctx && !g.create_failed_logged) {
        g.create_failed_logged = 1;
        log_msg(TOLK_LOG_ERR, "ws",
                "libwebsockets could not create its context on the core's libev loop (is the "
                "Debian package libwebsockets-evlib-ev installed?)");
    }
    return g.ctx;
}

void ws_attach(core *c) {
    g.core = c;
    g.loop = c->loop;
}

/* ------------------------------------------------------------------ */
/* The handle's end                                                    */

static void stop_timers(tolk_ws *ws) {
    ev_timer_stop(g.loop, &ws->connect_timer);
    ev_timer_stop(g.loop, &ws->ping_timer);
    ev_timer_stop(g.loop, &ws->idle_timer);
    ev_timer_stop(g.loop, &ws->close_timer);
    ev_timer_stop(g.loop, &ws->report_timer);
}

/* From here on lws finishes the connection without us. */
static void detach(tolk_ws *ws) {
    if (!ws->wsi) return;
    lws_set_opaque_user_data(ws->wsi, NULL);
    ws->wsi = NULL;
}

/* Close a detached connection now. Never for the wsi lws is servicing:
 * there the callback returns -1 instead. */
static void kill_wsi(struct lws *wsi) {
    if (wsi) lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

static void unlink_conn(tolk_ws *ws) {
    if (ws->prev)
        ws->prev->next = ws->next;
    else if (g.conns == ws)
        g.conns = ws->next;
    if (ws->next) ws->next->prev = ws->prev;
    ws->prev = ws->next = NULL;
}

static void free_handle(tolk_ws *ws) {
    stop_timers(ws);
    for (out_msg *m = ws->q_head, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    for (size_t i = 0; ws->headers && ws->headers[i]; i++) free(ws->headers[i]);
    free(ws->headers);
    free(ws->host);
    free(ws->path);
    free(ws->host_header);
    free(ws->subprotocol);
    free(ws->rx);
    free(ws);
}

static void on_report(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_ws *ws = CONTAINER_OF(w, tolk_ws, report_timer);
    unlink_conn(ws);
    ws->reporting = 1;
    ws->on_close(ws->ud, ws, &ws->info);
    free_handle(ws);
}

/* The connection is over: say how, once, from a callback of its own. */
static void finish(tolk_ws *ws, tolk_status st, int http_status, int code, const char *reason,
                   int by_peer) {
    if (ws->state == WS_DONE) return;
    ws->state = WS_DONE;
    detach(ws);
    stop_timers(ws);
    snprintf(ws->info_reason, sizeof ws->info_reason, "%s", reason ? reason : "");
    ws->info = (tolk_ws_close_info){.size = sizeof(tolk_ws_close_info),
                                    .status = st,
                                    .http_status = http_status,
                                    .code = code,
                                    .reason = ws->info_reason,
                                    .by_peer = by_peer};
    ev_timer_set(&ws->report_timer, 0., 0.);
    ev_timer_start(g.loop, &ws->report_timer);
}

/* A failure noticed outside lws's callbacks (our timers). */
static void fail_now(tolk_ws *ws, tolk_status st, const char *why) {
    struct lws *wsi = ws->wsi;
    finish(ws, st, 0, 1006, why, 1);
    kill_wsi(wsi);
}

/* ------------------------------------------------------------------ */
/* Timers                                                              */

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_ws *ws = CONTAINER_OF(w, tolk_ws, connect_timer);
    char why[96];
    snprintf(why, sizeof why, "connect timeout: no WebSocket after %.1f s", ws->connect_timeout);
    fail_now(ws, TOLK_E_TIMEOUT, why);
}

static void on_ping_tick(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_ws *ws = CONTAINER_OF(w, tolk_ws, ping_timer);
    if (ws->ping_unanswered) {
        char why[96];
        snprintf(why, sizeof why, "ping timeout: no pong within %.1f s", ws->ping_interval);
        fail_now(ws, TOLK_E_TIMEOUT, why);
        return;
    }
    ws->ping_unanswered = 1;
    ws->ping_due = 1;
    if (ws->wsi) lws_callback_on_writable(ws->wsi);
}

static void on_idle_tick(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_ws *ws = CONTAINER_OF(w, tolk_ws, idle_timer);
    ev_tstamp left = ws->last_data + ws->idle_timeout - ev_now(loop);
    if (left > 0) {
        w->repeat = left;
        ev_timer_again(loop, w);
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "idle timeout: no message for %.1f s", ws->idle_timeout);
    fail_now(ws, TOLK_E_TIMEOUT, why);
}

/* The peer did not take the rest of the queue, or did not answer our close
 * frame: it failed, whoever started the close. */
static void on_close_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_ws *ws = CONTAINER_OF(w, tolk_ws, close_timer);
    char why[96];
    snprintf(why, sizeof why, "close handshake not finished within %.0f s", CLOSE_TIMEOUT);
    fail_now(ws, TOLK_E_TIMEOUT, why);
}

/* ------------------------------------------------------------------ */
/* lws callbacks                                                       */

/* The plugin's on_open/on_message; -1 when it cancelled the connection
 * from inside (lws then closes the wsi; the handle goes now). */
static int after_user_cb(tolk_ws *ws) {
    if (--ws->in_user_cb > 0 || !ws->cancelled) return 0;
    free_handle(ws);
    return -1;
}

static int append_headers(tolk_ws *ws, struct lws *wsi, unsigned char **p, unsigned char *end) {
    for (size_t i = 0; ws->headers && ws->headers[i]; i++) {
        const char *h = ws->headers[i], *colon = strchr(h, ':');
        char name[128];
        size_t nl = (size_t)(colon - h);
        if (nl + 2 > sizeof name) return -1;
        memcpy(name, h, nl);
        name[nl] = ':';
        name[nl + 1] = 0;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)v,
                                        (int)strlen(v), p, end))
            return -1;
    }
    return 0;
}

static void on_established(tolk_ws *ws, struct lws *wsi) {
    ev_timer_stop(g.loop, &ws->connect_timer);
    ws->state = ws->close_code ? WS_CLOSING : WS_OPEN;
    ws->last_data = ev_now(g.loop);
    if (ws->ping_interval > 0) {
        ev_timer_set(&ws->ping_timer, ws->ping_interval, ws->ping_interval);
        ev_timer_start(g.loop, &ws->ping_timer);
    }
    if (ws->idle_timeout > 0) {
        ev_timer_set(&ws->idle_timer, 0., ws->idle_timeout);
        ev_timer_again(g.loop, &ws->idle_timer);
    }
    if (ws->q_head || ws->close_code) lws_callback_on_writable(wsi);
}

/* Starts our close: the queue goes out first, then the close frame. */
static void start_close(tolk_ws *ws, int code, const char *reason) {
    ws->close_code = code;
    snprintf(ws->close_reason, sizeof ws->close_reason, "%s", reason ? reason : "");
    /* cut at a character boundary: the reason is UTF-8 */
    size_t n = strlen(ws->close_reason);
    if (n == sizeof ws->close_reason - 1)
        while (n && ((unsigned char)ws->close_reason[n] & 0xc0) == 0x80) ws->close_reason[n--] = 0;
    ws->state = WS_CLOSING;
    ev_timer_set(&ws->close_timer, CLOSE_TIMEOUT, 0.);
    ev_timer_start(g.loop, &ws->close_timer);
}

static int send_close_frame(tolk_ws *ws, struct lws *wsi) {
    lws_close_reason(wsi, (enum lws_close_status)ws->close_code, (unsigned char *)ws->close_reason,
                     strlen(ws->close_reason));
    return -1; /* lws sends the frame and waits for the peer's */
}

static int on_writeable(tolk_ws *ws, struct lws *wsi) {
    if (ws->ping_due) {
        unsigned char buf[LWS_PRE + 1];
        ws->ping_due = 0;
        if (lws_write(wsi, buf + LWS_PRE, 0, LWS_WRITE_PING) < 0) return -1;
        if (ws->q_head || ws->state == WS_CLOSING) lws_callback_on_writable(wsi);
        return 0;
    }
    out_msg *m = ws->q_head;
    if (m) {
        ws->q_head = m->next;
        if (!ws->q_head) ws->q_tail = NULL;
        ws->buffered -= m->n;
        int w = lws_write(wsi, m->buf + LWS_PRE, m->n, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        free(m);
        if (w < 0) return -1;
        if (ws->q_head || ws->state == WS_CLOSING) lws_callback_on_writable(wsi);
        return 0;
    }
    if (ws->state == WS_CLOSING) return send_close_frame(ws, wsi);
    return 0;
}

static int on_receive(tolk_ws *ws, struct lws *wsi, const void *in, size_t len) {
    ws->ping_unanswered = 0;
    ws->last_data = ev_now(g.loop);
    /* after ws_close() messages still arrive until the peer's close frame
     * (a recogniser's last results come then) */
    if (ws->rx_refused) return 0;
    if (ws->rx_len == 0) ws->rx_binary = lws_frame_is_binary(wsi);
    if (len > ws->max_message - ws->rx_len) {
        char why[96];
        snprintf(why, sizeof why, "message over max_message (%zu bytes)", ws->max_message);
        log_msg(TOLK_LOG_WARN, ws->inst ? ws->inst->who : "ws", "WebSocket closed with 1009: %s", why);
        ws->rx_len = 0;
        ws->rx_refused = 1;
        start_close(ws, 1009, why);
        return send_close_frame(ws, wsi);
    }
    if (ws->rx_len + len + 1 > ws->rx_cap) {
        size_t cap = ws->rx_cap ? ws->rx_cap : 4096;
        while (cap < ws->rx_len + len + 1) cap *= 2;
        ws->rx = xrealloc(ws->rx, cap);
        ws->rx_cap = cap;
    }
    if (len) memcpy(ws->rx + ws->rx_len, in, len);
    ws->rx_len += len;
    if (!lws_is_final_fragment(wsi)) return 0;
    size_t n = ws->rx_len;
    ws->rx_len = 0;
    ws->rx[n] = 0; /* text arrives NUL-terminated, as a courtesy */
    if (!ws->on_message) return 0;
    ws->in_user_cb++;
    ws->on_message(ws->ud, ws, ws->rx, n, ws->rx_binary);
    return after_user_cb(ws);
}

static void on_peer_close(tolk_ws *ws, const unsigned char *in, size_t len) {
    ws->peer_closed = 1;
    ws->peer_code = 1005;
    ws->peer_reason[0] = 0;
    if (len >= 2) {
        ws->peer_code = (in[0] << 8) | in[1];
        size_t rl = len - 2 < sizeof ws->peer_reason - 1 ? len - 2 : sizeof ws->peer_reason - 1;
        memcpy(ws->peer_reason, in + 2, rl);
        ws->peer_reason[rl] = 0;
    }
}

/* The HTTP status of a refused upgrade: lws 4.1 keeps the response line in
 * the header table until it reports CLIENT_CONNECTION_ERROR. */
static int refused_status(struct lws *wsi) {
    int st = (int)lws_http_client_http_response(wsi);
    if (st) return st;
    char buf[16];
    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP) > 0) st = atoi(buf);
    return st > 0 && st != 101 ? st : 0;
}

static void on_connection_error(tolk_ws *ws, struct lws *wsi, const char *in, size_t len) {
    int status = refused_status(wsi);
    char why[200];
    if (status)
        snprintf(why, sizeof why, "upgrade refused with HTTP %d (%.*s)", status, (int)len, in ? in : "");
    else
        snprintf(why, sizeof why, "%.*s", in ? (int)len : 18, in ? in : "connection failed");
    finish(ws, TOLK_E_BACKEND, status, 1006, why, 1);
}

static void on_closed(tolk_ws *ws) {
    if (ws->peer_closed)
        finish(ws, TOLK_OK, 0, ws->peer_code, ws->peer_reason, 1);
    else if (ws->close_code)
        finish(ws, TOLK_OK, 0, ws->close_code, ws->close_reason, 0);
    else if (ws->state == WS_CONNECTING)
        finish(ws, TOLK_E_BACKEND, 0, 1006, "connection failed before the upgrade", 1);
    else
        finish(ws, TOLK_E_BACKEND, 0, 1006, "connection dropped without a close frame", 1);
}

static int client_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len) {
    tolk_ws *ws = lws_get_opaque_user_data(wsi);
    /* a callback from inside lws_client_connect_via_info(), before
     * ws_connect() learnt the wsi */
    if (ws && !ws->wsi) ws->wsi = wsi;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        if (!ws) return -1;
        return append_headers(ws, wsi, (unsigned char **)in, *(unsigned char **)in + len);
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (!ws) return -1;
        on_established(ws, wsi);
        if (!ws->on_open) return 0;
        ws->in_user_cb++;
        ws->on_open(ws->ud, ws);
        return after_user_cb(ws);
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (!ws) return -1;
        return on_receive(ws, wsi, in, len);
    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        if (ws) ws->ping_unanswered = 0;
        return ws ? 0 : -1;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (!ws) return -1;
        return on_writeable(ws, wsi);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (ws) on_peer_close(ws, in, len);
        return 0; /* lws answers with a close frame and closes */
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (ws) on_connection_error(ws, wsi, in, len);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
        if (ws) on_closed(ws);
        return 0;
    default:
        break;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The service                                                         */

/* ws://host[:port][/path][?query], wss://...; [v6] literals. */
static int parse_url(tolk_ws *ws, const char *url) {
    const char *p;
    if (!strncasecmp(url, "ws://", 5)) {
        p = url + 5;
        ws->tls = 0;
    } else if (!strncasecmp(url, "wss://", 6)) {
        p = url + 6;
        ws->tls = 1;
    } else {
        return -1;
    }
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end) return -1;
        p = host_end + 1;
    } else {
        p += strcspn(p, ":/?#");
        host_end = p;
    }
    if (host_end == host) return -1;
    ws->port = ws->tls ? 443 : 80;
    if (*p == ':') {
        char *e;
        long port = strtol(p + 1, &e, 10);
        if (e == p + 1 || port < 1 || port > 65535) return -1;
        ws->port = (int)port;
        p = e;
    }
    if (*p && *p != '/' && *p != '?') return -1;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f) return -1;
    size_t hl = (size_t)(host_end - host);
    ws->host = xcalloc(1, hl + 1);
    memcpy(ws->host, host, hl);
    size_t plen = strcspn(p, "#");
    ws->path = xasprintf("%s%.*s", *p == '/' ? "" : "/", (int)plen, p);
    int v6 = strchr(ws->host, ':') != NULL;
    if (ws->port == (ws->tls ? 443 : 80))
        ws->host_header = xasprintf(v6 ? "[%s]" : "%s", ws->host);
    else
        ws->host_header = xasprintf(v6 ? "[%s]:%d" : "%s:%d", ws->host, ws->port);
    return 0;
}

/* "Name: value", without line breaks a server would read as more headers. */
static int header_ok(const char *h) {
    const char *colon = strchr(h, ':');
    if (!colon || colon == h) return 0;
    for (const char *c = h; c < colon; c++)
        if (!isgraph((unsigned char)*c)) return 0;
    return strpbrk(h, "\r\n") == NULL;
}

static const char *who(tolk_instance *inst) { return inst ? inst->who : "ws"; }

tolk_ws *ws_connect(tolk_instance *inst, const tolk_ws_params *p) {
    if (!p || p->size < offsetof(tolk_ws_params, ud) + sizeof p->ud || !p->url || !p->on_close) {
        log_msg(TOLK_LOG_ERR, who(inst), "ws_connect: %s", !p || p->size == 0 ? "no parameters"
                                                           : !p->url  ? "no url"
                                                                       : "no on_close callback");
        return NULL;
    }
    tolk_ws *ws = xcalloc(1, sizeof *ws);
    if (parse_url(ws, p->url) != 0) {
        log_msg(TOLK_LOG_ERR, who(inst), "ws_connect: '%s' is not a ws:// or wss:// URL", p->url);
        free_handle(ws);
        return NULL;
    }
    size_t nh = 0;
    while (p->headers && p->headers[nh]) nh++;
    ws->headers = xcalloc(nh + 1, sizeof *ws->headers);
    for (size_t i = 0; i < nh; i++) {
        if (!header_ok(p->headers[i])) {
            log_msg(TOLK_LOG_ERR, who(inst), "ws_connect: header %zu is not 'Name: value' on one line",
                    i);
            free_handle(ws);
            return NULL;
        }
        ws->headers[i] = xstrdup(p->headers[i]);
    }
    if (!ws_lws_context()) {
        free_handle(ws);
        return NULL;
    }
    struct lws_vhost *vh = client_vhost(p->ca_file);
    if (!vh) {
        free_handle(ws);
        return NULL;
    }
    ws->inst = inst;
    ws->subprotocol = p->subprotocol && *p->subprotocol ? xstrdup(p->subprotocol) : NULL;
    ws->insecure = p->insecure;
    ws->connect_timeout = p->connect_timeout > 0 ? p->connect_timeout : DEFAULT_CONNECT_TIMEOUT;
    ws->ping_interval = p->ping_interval > 0 ? p->ping_interval : 0;
    ws->idle_timeout = p->idle_timeout > 0 ? p->idle_timeout : 0;
    ws->max_message = p->max_message ? p->max_message : DEFAULT_MAX_MESSAGE;
    ws->on_open = p->on_open;
    ws->on_message = p->on_message;
    ws->on_close = p->on_close;
    ws->ud = p->ud;
    ev_init(&ws->connect_timer, on_connect_timeout);
    ev_init(&ws->ping_timer, on_ping_tick);
    ev_init(&ws->idle_timer, on_idle_tick);
    ev_init(&ws->close_timer, on_close_timeout);
    ev_init(&ws->report_timer, on_report);
    ws->next = g.conns;
    if (g.conns) g.conns->prev = ws;
    g.conns = ws;

    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = g.ctx;
    ci.vhost = vh;
    ci.address = ws->host;
    ci.port = ws->port;
    ci.path = ws->path;
    ci.host = ws->host_header;
    ci.protocol = ws->subprotocol;
    ci.local_protocol_name = CLIENT_PROTOCOL;
    ci.opaque_user_data = ws;
    if (ws->tls) {
        ci.ssl_connection = LCCSCF_USE_SSL;
        if (ws->insecure)
            ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                 LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
        ci.alpn = "http/1.1"; /* WebSocket over HTTP/1.1, never h2 */
    }
    /* lws may already fail inside this call (CLIENT_CONNECTION_ERROR):
     * finish() then only schedules on_close */
    struct lws *wsi = lws_client_connect_via_info(&ci);
    if (ws->state == WS_DONE) {
        if (wsi && !ws->wsi) lws_set_opaque_user_data(wsi, NULL);
    } else {
        ws->wsi = wsi;
    }
    if (!wsi && ws->state != WS_DONE)
        finish(ws, TOLK_E_BACKEND, 0, 1006, "libwebsockets could not start the connection", 1);
    if (ws->state != WS_DONE) {
        ev_timer_set(&ws->connect_timer, ws->connect_timeout, 0.);
        ev_timer_start(g.loop, &ws->connect_timer);
    }
    return ws;
}

tolk_status ws_send(tolk_ws *ws, const void *data, size_t n, int binary) {
    if (!ws || ws->cancelled || ws->state == WS_CLOSING || ws->state == WS_DONE || (n && !data))
        return TOLK_E_INVAL;
    out_msg *m = malloc(sizeof *m + LWS_PRE + n);
    if (!m) return TOLK_E_NOMEM;
    m->next = NULL;
    m->n = n;
    m->binary = binary != 0;
    if (n) memcpy(m->buf + LWS_PRE, data, n);
    if (ws->q_tail)
        ws->q_tail->next = m;
    else
        ws->q_head = m;
    ws->q_tail = m;
    ws->buffered += n;
    if (ws->state == WS_OPEN && ws->wsi) lws_callback_on_writable(ws->wsi);
    return TOLK_OK;
}

size_t ws_buffered(tolk_ws *ws) { return ws ? ws->buffered : 0; }

void ws_close(tolk_ws *ws, int code, const char *reason) {
    if (!ws || ws->cancelled || ws->state == WS_CLOSING || ws->state == WS_DONE) return;
    /* codes a client may send (RFC 6455 7.4): 1000, 1001, 1003, 1007-1014 and 3000-4999 */
    if (code < 1000 || code > 4999 || code == 1004 || code == 1005 || code == 1006 ||
        (code > 1014 && code < 3000))
        code = 1000;
    int was_open = ws->state == WS_OPEN;
    start_close(ws, code, reason);
    if (was_open) {
        if (ws->wsi) lws_callback_on_writable(ws->wsi);
        return;
    }
    /* not upgraded yet: nothing to hand-shake with */
    struct lws *wsi = ws->wsi;
    finish(ws, TOLK_OK, 0, ws->close_code, ws->close_reason, 0);
    kill_wsi(wsi);
}

void ws_cancel(tolk_ws *ws) {
    if (!ws || ws->cancelled || ws->reporting) return;
    struct lws *wsi = ws->wsi;
    detach(ws);
    unlink_conn(ws);
    ws->state = WS_DONE;
    ws->cancelled = 1;
    stop_timers(ws);
    if (ws->in_user_cb) return; /* its callback returns -1 and frees it */
    kill_wsi(wsi);
    free_handle(ws);
}

void ws_forget_instance(tolk_instance *inst) {
    size_t left = 0;
    for (tolk_ws *ws = g.conns, *next; ws; ws = next) {
        next = ws->next;
        if (ws->inst != inst) continue;
        left++;
        ws_cancel(ws);
    }
    if (left)
        log_msg(TOLK_LOG_WARN, inst->who,
                "destroyed with %zu WebSocket connection%s open: cancelled", left,
                left == 1 ? "" : "s");
}

void ws_shutdown(void) {
    for (tolk_ws *ws = g.conns, *next; ws; ws = next) {
        next = ws->next;
        log_msg(TOLK_LOG_WARN, who(ws->inst), "WebSocket connection still open at exit: cancelled");
        ws_cancel(ws);
    }
    if (g.ctx) {
        lws_context_destroy(g.ctx);
        /* lws clears g.ctx once its watchers on the loop are closed; the
         * loop may have to turn for that on a foreign loop */
        for (int i = 0; g.ctx && i < 100; i++) ev_run(g.loop, EVRUN_NOWAIT);
        if (g.ctx) log_msg(TOLK_LOG_WARN, "ws", "libwebsockets did not finish destroying its context");
    }
    for (struct ca_vhost *cv = g.ca_vhosts, *next; cv; cv = next) {
        next = cv->next;
        free(cv->ca_file);
        free(cv);
    }
    memset(&g, 0, sizeof g);
}
