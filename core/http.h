/* The core's HTTP client (host->http_request and friends): one libcurl
 * multi handle per process, driven by the core's libev loop, shared by
 * every plugin so connections are reused across requests and plugins. */
#ifndef TOLK_CORE_HTTP_H
#define TOLK_CORE_HTTP_H

#include <tolk/plugin.h>

/* The host-table members, as documented in tolk/plugin.h. */
tolk_http *http_request(tolk_instance *inst, const tolk_http_request *req);
void http_cancel(tolk_http *h);
const char *http_header(tolk_http *h, const char *name);

/* After an instance's destroy(): cancels what it left open, with a warning
 * naming the instance. */
void http_forget_instance(tolk_instance *inst);
/* core_free(): cancels whatever is left and frees the multi handle and its
 * watchers. The next request (a new core in the same process) starts over. */
void http_shutdown(void);

#endif
