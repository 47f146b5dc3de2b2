#include "loop.h"

#include <pthread.h>
#include <stdatomic.h>

#include "log.h"
#include "util.h"

typedef struct job {
    struct job *next;
    tolk_cb work, done;
    void *ud;
    tolk_workq *q;
} job;

struct tolk_workq {
    worker_pool *wp;
    job *head, *tail; /* waiting behind the running one */
    int busy;         /* one job of this queue is ready or running */
    int freeing;
    unsigned outstanding; /* submitted and not yet done on the loop */
};

struct worker_pool {
    struct ev_loop *loop;
    ev_async wake;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job *ready, *ready_tail;
    job *done, *done_tail;
    pthread_t *threads;
    unsigned nthreads;
    int stopping;
    atomic_uint pending;
};

static void list_append(job **head, job **tail, job *j) {
    j->next = NULL;
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static job *list_pop(job **head, job **tail) {
    job *j = *head;
    if (j) {
        *head = j->next;
        if (!*head) *tail = NULL;
    }
    return j;
}

static void *worker_main(void *arg) {
    worker_pool *wp = arg;
    pthread_mutex_lock(&wp->lock);
    for (;;) {
        job *j = list_pop(&wp->ready, &wp->ready_tail);
        if (!j) {
            if (wp->stopping) break;
            pthread_cond_wait(&wp->cond, &wp->lock);
            continue;
        }
        pthread_mutex_unlock(&wp->lock);
        if (j->work) j->work(j->ud);
        pthread_mutex_lock(&wp->lock);
        list_append(&wp->done, &wp->done_tail, j);
        tolk_workq *q = j->q;
        if (q) {
            job *next = list_pop(&q->head, &q->tail);
            if (next) {
                list_append(&wp->ready, &wp->ready_tail, next);
                pthread_cond_signal(&wp->cond);
            } else {
                q->busy = 0;
            }
        }
        ev_async_send(wp->loop, &wp->wake);
    }
    pthread_mutex_unlock(&wp->lock);
    return NULL;
}

static void run_done(worker_pool *wp) {
    pthread_mutex_lock(&wp->lock);
    job *list = wp->done;
    wp->done = wp->done_tail = NULL;
    pthread_mutex_unlock(&wp->lock);
    while (list) {
        job *j = list;
        list = j->next;
        if (j->done) j->done(j->ud);
        tolk_workq *q = j->q;
        free(j);
        atomic_fetch_sub(&wp->pending, 1);
        if (q && --q->outstanding == 0 && q->freeing) free(q);
    }
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
    run_done(CONTAINER_OF(w, worker_pool, wake));
}

worker_pool *workers_start(struct ev_loop *loop, unsigned nthreads) {
    worker_pool *wp = xcalloc(1, sizeof *wp);
    wp->loop = loop;
    pthread_mutex_init(&wp->lock, NULL);
    pthread_cond_init(&wp->cond, NULL);
    ev_async_init(&wp->wake, on_wake);
    ev_async_start(loop, &wp->wake);
    /* The wakeup watcher must not keep the loop alive on its own. */
    ev_unref(loop);
    if (nthreads == 0) nthreads = 1;
    wp->threads = xcalloc(nthreads, sizeof(pthread_t));
    for (unsigned i = 0; i < nthreads; i++) {
        if (pthread_create(&wp->threads[i], NULL, worker_main, wp) != 0) {
            log_msg(TOLK_LOG_ERR, "core", "cannot start worker thread %u", i);
            break;
        }
        wp->nthreads++;
    }
    return wp;
}

void workers_stop(worker_pool *wp) {
    if (!wp) return;
    pthread_mutex_lock(&wp->lock);
    wp->stopping = 1;
    pthread_cond_broadcast(&wp->cond);
    pthread_mutex_unlock(&wp->lock);
    for (unsigned i = 0; i < wp->nthreads; i++) pthread_join(wp->threads[i], NULL);
    run_done(wp);
    ev_ref(wp->loop);
    ev_async_stop(wp->loop, &wp->wake);
    pthread_mutex_destroy(&wp->lock);
    pthread_cond_destroy(&wp->cond);
    free(wp->threads);
    free(wp);
}

unsigned workers_pending(worker_pool *wp) { return wp ? atomic_load(&wp->pending) : 0; }

tolk_workq *workq_new(worker_pool *wp) {
    tolk_workq *q = xcalloc(1, sizeof *q);
    q->wp = wp;
    return q;
}

void workq_free(tolk_workq *q) {
    if (!q) return;
    if (q->outstanding == 0)
        free(q);
    else
        q->freeing = 1;
}

tolk_status workq_submit(worker_pool *wp, tolk_workq *q, tolk_cb work, tolk_cb done, void *ud) {
    if (!wp) return TOLK_E_INVAL;
    job *j = xcalloc(1, sizeof *j);
    j->work = work;
    j->done = done;
    j->ud = ud;
    j->q = q;
    atomic_fetch_add(&wp->pending, 1);
    pthread_mutex_lock(&wp->lock);
    if (q) {
        q->outstanding++;
        if (q->busy) {
            list_append(&q->head, &q->tail, j);
            pthread_mutex_unlock(&wp->lock);
            return TOLK_OK;
        }
        q->busy = 1;
    }
    list_append(&wp->ready, &wp->ready_tail, j);
    pthread_cond_signal(&wp->cond);
    pthread_mutex_unlock(&wp->lock);
    return TOLK_OK;
}

/* ---- timers ---- */

struct tolk_timer {
    ev_timer w;
    struct ev_loop *loop;
    tolk_cb cb;
    void *ud;
    int in_cb, stopped;
};

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_timer *t = CONTAINER_OF(w, tolk_timer, w);
    int oneshot = w->repeat == 0.;
    t->in_cb = 1;
    t->cb(t->ud);
    t->in_cb = 0;
    if (t->stopped || oneshot) {
        ev_timer_stop(loop, &t->w);
        free(t);
    }
}

tolk_timer *loop_timer_start(struct ev_loop *loop, double after, double repeat, tolk_cb cb,
                             void *ud) {
    if (!cb) return NULL;
    tolk_timer *t = xcalloc(1, sizeof *t);
    t->loop = loop;
    t->cb = cb;
    t->ud = ud;
    ev_timer_init(&t->w, on_timer, after < 0 ? 0 : after, repeat < 0 ? 0 : repeat);
    ev_timer_start(loop, &t->w);
    return t;
}

void loop_timer_stop(tolk_timer *t) {
    if (!t) return;
    if (t->in_cb) {
        t->stopped = 1;
        return;
    }
    ev_timer_stop(t->loop, &t->w);
    free(t);
}

/* ---- async ---- */

struct tolk_async {
    ev_async w;
    struct ev_loop *loop;
    tolk_cb cb;
    void *ud;
};

static void on_async(struct ev_loop *loop, ev_async *w, int revents) {
    tolk_async *a = CONTAINER_OF(w, tolk_async, w);
    a->cb(a->ud);
}

tolk_async *loop_async_new(struct ev_loop *loop, tolk_cb cb, void *ud) {
    if (!cb) return NULL;
    tolk_async *a = xcalloc(1, sizeof *a);
    a->loop = loop;
    a->cb = cb;
    a->ud = ud;
    ev_async_init(&a->w, on_async);
    ev_async_start(loop, &a->w);
    return a;
}

void loop_async_send(tolk_async *a) {
    if (a) ev_async_send(a->loop, &a->w);
}

void loop_async_free(tolk_async *a) {
    if (!a) return;
    ev_async_stop(a->loop, &a->w);
    free(a);
}

/* ---- file descriptor watchers ---- */

struct tolk_io {
    ev_io w;
    struct ev_loop *loop;
    loop_io_cb cb;
    void *ud;
    unsigned events; /* TOLK_IO_*; 0: paused */
    tolk_io **owner;
    tolk_io *prev, *next; /* in the owner's list */
    int in_cb, stopped;
};

static int ev_events_of(unsigned events) {
    return (events & TOLK_IO_READ ? EV_READ : 0) | (events & TOLK_IO_WRITE ? EV_WRITE : 0);
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents) {
    tolk_io *io = CONTAINER_OF(w, tolk_io, w);
    unsigned ready = (revents & EV_READ ? TOLK_IO_READ : 0) | (revents & EV_WRITE ? TOLK_IO_WRITE : 0);
    io->in_cb = 1;
    io->cb(io->ud, io->w.fd, ready);
    io->in_cb = 0;
    if (io->stopped) free(io);
}

tolk_io *loop_io_start(struct ev_loop *loop, tolk_io **owner, int fd, unsigned events,
                       loop_io_cb cb, void *ud) {
    if (!cb || fd < 0) return NULL;
    tolk_io *io = xcalloc(1, sizeof *io);
    io->loop = loop;
    io->cb = cb;
    io->ud = ud;
    io->events = events & (TOLK_IO_READ | TOLK_IO_WRITE);
    ev_io_init(&io->w, on_io, fd, ev_events_of(io->events));
    if (io->events) ev_io_start(loop, &io->w);
    if (owner) {
        io->owner = owner;
        io->next = *owner;
        if (*owner) (*owner)->prev = io;
        *owner = io;
    }
    return io;
}

void loop_io_set(tolk_io *io, unsigned events) {
    if (!io || io->stopped) return;
    events &= TOLK_IO_READ | TOLK_IO_WRITE;
    if (events == io->events) return;
    /* libev changes a watcher's events only while it is stopped */
    ev_io_stop(io->loop, &io->w);
    ev_io_set(&io->w, io->w.fd, ev_events_of(events));
    io->events = events;
    if (events) ev_io_start(io->loop, &io->w);
}

void loop_io_stop(tolk_io *io) {
    if (!io || io->stopped) return;
    ev_io_stop(io->loop, &io->w);
    if (io->owner) {
        if (io->prev)
            io->prev->next = io->next;
        else
            *io->owner = io->next;
        if (io->next) io->next->prev = io->prev;
        io->owner = NULL;
    }
    if (io->in_cb)
        io->stopped = 1; /* on_io frees it when the callback returns */
    else
        free(io);
}

size_t loop_io_stop_all(tolk_io **owner) {
    size_t n = 0;
    while (owner && *owner) {
        loop_io_stop(*owner);
        n++;
    }
    return n;
}
