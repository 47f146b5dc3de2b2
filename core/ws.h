/* The WebSocket client service (host->ws_*) and the process's one
 * libwebsockets context (host->lws_context), both on the core's libev loop.
 *
 * Choices the header leaves open, made here:
 *  - Timeouts (connect, ping, idle, close handshake) are the core's own
 *    ev_timers, not lws's retry_and_idle_policy: lws 4.1's libev glue can
 *    service its own timers many seconds late on a quiet loop (see
 *    kick_lws() in metrics_prometheus), and a plugin's deadline must hold.
 *  - Ping: a ping every ping_interval; if neither the pong nor any other
 *    frame arrived by the next one, the connection fails with
 *    TOLK_E_TIMEOUT. Idle: only data frames count (pongs do not), so the
 *    idle timeout watches the application, the ping the transport.
 *  - by_peer is 0 only when this side chose to end it: ws_close(), or a
 *    message over max_message (closed with 1009, status TOLK_OK). Refusals,
 *    failures and timeouts of the far side say 1, and so does a close that
 *    is not finished 10 s after ws_close() (the peer did not take the
 *    queue or did not answer the close frame: TOLK_E_TIMEOUT).
 *  - A close frame without a status code is reported as 1005 (RFC 6455
 *    7.1.5); 1006 means no close frame at all.
 *  - ws_buffered() counts the messages still in the core's queue; lws keeps
 *    at most the unsent tail of one message of its own.
 *  - on_close always comes from a callback of the loop of its own (never
 *    from inside ws_connect(), ws_close() or an lws callback), so a plugin
 *    may connect again or cancel anything from it. */
#ifndef TOLK_CORE_WS_H
#define TOLK_CORE_WS_H

#include <tolk/plugin.h>

typedef struct core core;

tolk_ws *ws_connect(tolk_instance *inst, const tolk_ws_params *p);
tolk_status ws_send(tolk_ws *ws, const void *data, size_t n, int binary);
size_t ws_buffered(tolk_ws *ws);
void ws_close(tolk_ws *ws, int code, const char *reason);
void ws_cancel(tolk_ws *ws);

/* The shared context, created on first use on the core's loop; NULL if lws
 * cannot join the loop (the event-lib plugin is missing). */
struct lws_context *ws_lws_context(void);

/* The core this service belongs to (host_init()). */
void ws_attach(core *c);
/* Cancels what inst left open, with a warning; instance_unref() calls it
 * after destroy(). */
void ws_forget_instance(tolk_instance *inst);
/* Cancels every connection and destroys the context (core_free(), after
 * the instances, whose vhosts go first). */
void ws_shutdown(void);

#endif
