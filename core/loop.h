/* The event loop's helpers for plugins: timers, a worker pool with ordered
 * queues for blocking engines, and cross-thread wakeups. */
#ifndef TOLK_CORE_LOOP_H
#define TOLK_CORE_LOOP_H

#include <ev.h>
#include <tolk/plugin.h>

typedef struct worker_pool worker_pool;

worker_pool *workers_start(struct ev_loop *loop, unsigned nthreads);
/* Waits for queued jobs to run, runs their done callbacks, joins threads. */
void workers_stop(worker_pool *wp);
/* Jobs queued or running (not yet done on the loop). */
unsigned workers_pending(worker_pool *wp);

tolk_workq *workq_new(worker_pool *wp);
void workq_free(tolk_workq *q);
tolk_status workq_submit(worker_pool *wp, tolk_workq *q, tolk_cb work, tolk_cb done, void *ud);

tolk_timer *loop_timer_start(struct ev_loop *loop, double after, double repeat, tolk_cb cb,
                             void *ud);
void loop_timer_stop(tolk_timer *t);

tolk_async *loop_async_new(struct ev_loop *loop, tolk_cb cb, void *ud);
void loop_async_send(tolk_async *a);
void loop_async_free(tolk_async *a);

/* File descriptor watchers. `owner` (may be NULL) is the list of watchers
 * of whoever started it, so loop_io_stop_all() can stop what is left when
 * its owner goes away. loop_io_stop() also works inside the watcher's own
 * callback: the memory is freed when the callback returns. */
typedef void (*loop_io_cb)(void *ud, int fd, unsigned revents);
tolk_io *loop_io_start(struct ev_loop *loop, tolk_io **owner, int fd, unsigned events,
                       loop_io_cb cb, void *ud);
void loop_io_set(tolk_io *io, unsigned events);
void loop_io_stop(tolk_io *io);
/* Stops every watcher on the list; returns how many there were. */
size_t loop_io_stop_all(tolk_io **owner);

#endif
