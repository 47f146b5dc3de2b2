/* A small blocking HTTP/1.1 client for the exporter's tests: one request
 * on a fresh loopback connection, the response read by Content-Length.
 * Runs on a test thread while the main thread turns the core's loop. */
#ifndef TOLK_TEST_HTTPC_H
#define TOLK_TEST_HTTPC_H

#include <stddef.h>

typedef struct http_resp {
    int status;      /* 0: no response */
    char *head;      /* status line and headers, NUL-terminated */
    char *body;      /* NUL-terminated (body_len bytes) */
    size_t body_len;
    int eof;         /* the server closed the connection after the response */
} http_resp;

/* A connected TCP socket to [::1] (family 6) or 127.0.0.1 (4), or -1. */
int httpc_connect(int family, int port);
/* Sends `request` (raw bytes) and reads one response; head_only for HEAD.
 * 0 on a complete response, -1 on error or after `timeout` seconds. */
int httpc_exchange(int fd, const char *request, int head_only, double timeout, http_resp *r);
/* GET path over a new connection (Connection: close). */
int httpc_get(int port, const char *path, http_resp *r);
/* A header's value (copy, free it), case-insensitive name, or NULL. */
char *httpc_header(const http_resp *r, const char *name);
void httpc_free(http_resp *r);

#endif
