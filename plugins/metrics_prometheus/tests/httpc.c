#include "httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int httpc_connect(int family, int port) {
    int fd;
    if (family == 6) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                 .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) close(fd), fd = -1;
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) close(fd), fd = -1;
    }
    return fd;
}

/* Appends what arrives within the deadline; 1: data, 0: EOF, -1: timeout/error. */
static int read_more(int fd, char **buf, size_t *len, size_t *cap, double deadline) {
    double left = deadline - now_s();
    if (left <= 0) return -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, (int)(left * 1000) + 1);
    if (pr <= 0) return -1;
    if (*cap - *len < 65537) {
        *cap = *cap * 2 + 65537;
        *buf = realloc(*buf, *cap);
    }
    ssize_t n = recv(fd, *buf + *len, *cap - *len - 1, 0);
    if (n < 0) return errno == EINTR ? 1 : -1;
    if (n == 0) return 0;
    *len += (size_t)n;
    (*buf)[*len] = 0;
    return 1;
}

int httpc_exchange(int fd, const char *request, int head_only, double timeout, http_resp *r) {
    memset(r, 0, sizeof *r);
    double deadline = now_s() + timeout;
    size_t n = strlen(request), off = 0;
    while (off < n) {
        ssize_t w = send(fd, request + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    char *eoh = NULL;
    int rc;
    while (!(eoh = buf ? strstr(buf, "\r\n\r\n") : NULL)) {
        rc = read_more(fd, &buf, &len, &cap, deadline);
        if (rc <= 0) {
            free(buf);
            return -1;
        }
    }
    size_t hlen = (size_t)(eoh - buf) + 4;
    r->head = strndup(buf, hlen);
    sscanf(buf, "HTTP/%*d.%*d %d", &r->status);
    char *cl = httpc_header(r, "content-length");
    size_t want = cl ? (size_t)strtoull(cl, NULL, 10) : 0;
    free(cl);
    if (head_only) want = 0;
    while (len - hlen < want) {
        rc = read_more(fd, &buf, &len, &cap, deadline);
        if (rc <= 0) break;
    }
    if (len - hlen < want) {
        free(buf);
        return -1;
    }
    r->body_len = want;
    r->body = malloc(want + 1);
    memcpy(r->body, buf + hlen, want);
    r->body[want] = 0;
    /* anything more would be a body where none belongs (HEAD) */
    if (len - hlen > want) {
        free(buf);
        return -1;
    }
    free(buf);
    /* asked to close: did the server close, with nothing more sent? */
    if (strcasestr(request, "\r\nConnection: close\r\n")) {
        char *tail = NULL;
        size_t tl = 0, tc = 0;
        r->eof = read_more(fd, &tail, &tl, &tc, now_s() + 2) == 0;
        free(tail);
    }
    return 0;
}

int httpc_get(int port, const char *path, http_resp *r) {
    memset(r, 0, sizeof *r);
    int fd = httpc_connect(4, port);
    if (fd < 0) return -1;
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
             path, port);
    int rc = httpc_exchange(fd, req, 0, 10, r);
    close(fd);
    return rc;
}

char *httpc_header(const http_resp *r, const char *name) {
    if (!r->head) return NULL;
    size_t nl = strlen(name);
    for (const char *line = strstr(r->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (!strncasecmp(h, name, nl) && h[nl] == ':') {
            const char *v = h + nl + 1;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            return strndup(v, e ? (size_t)(e - v) : strlen(v));
        }
    }
    return NULL;
}

void httpc_free(http_resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}
