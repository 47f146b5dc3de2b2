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

#endif
