#include "metrics.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct tolk_series {
    struct tolk_series *next;
    struct tolk_metric *fam;
    char **values;
    _Atomic double value; /* counter, gauge: updated without the lock */
    double sum;
    uint64_t count;
    uint64_t *buckets; /* per bucket, not cumulative */
};

struct tolk_metric {
    struct tolk_metric *next;
    char *name, *help;
    tolk_metric_type type;
    size_t nlabels;
    char **labels;
    size_t nbounds;
    double *bounds;
    pthread_mutex_t lock;
    tolk_series *series, **tail;
    size_t nseries;
};

static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static tolk_metric *g_families, **g_tail = &g_families;

static int valid_name(const char *s, int allow_colon) {
    if (!s || !*s || isdigit((unsigned char)*s)) return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' || (allow_colon && *s == ':'))) return 0;
    return 1;
}

static size_t split_labels(const char *csv, char ***out) {
    *out = NULL;
    if (!csv || !*csv) return 0;
    size_t n = 0;
    char *copy = xstrdup(csv), *save = NULL;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        *out = xrealloc(*out, (n + 1) * sizeof(char *));
        (*out)[n++] = xstrdup(t);
    }
    free(copy);
    return n;
}

static int same_shape(const tolk_metric *m, tolk_metric_type type, char **labels, size_t nl,
                      const double *bounds, size_t nb) {
    if (m->type != type || m->nlabels != nl) return 0;
    for (size_t i = 0; i < nl; i++)
        if (strcmp(m->labels[i], labels[i])) return 0;
    if (type == TOLK_METRIC_HISTOGRAM) {
        if (m->nbounds != nb) return 0;
        for (size_t i = 0; i < nb; i++)
            if (m->bounds[i] != bounds[i]) return 0;
    }
    return 1;
}

static void free_strv(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

tolk_metric *metrics_family(const char *name, const char *help, tolk_metric_type type,
                            const char *label_names, const double *bounds, size_t nbounds) {
    if (!valid_name(name, 1) || type < TOLK_METRIC_COUNTER || type > TOLK_METRIC_HISTOGRAM) {
        log_msg(TOLK_LOG_ERR, "metrics", "refusing metric '%s': bad name or type",
                name ? name : "(null)");
        return NULL;
    }
    char **labels;
    size_t nl = split_labels(label_names, &labels);
    for (size_t i = 0; i < nl; i++) {
        if (!valid_name(labels[i], 0) || !strncmp(labels[i], "__", 2) || !strcmp(labels[i], "le")) {
            log_msg(TOLK_LOG_ERR, "metrics", "refusing metric '%s': bad label name '%s'", name,
                    labels[i]);
            free_strv(labels, nl);
            return NULL;
        }
    }
    if (type == TOLK_METRIC_HISTOGRAM) {
        for (size_t i = 1; i < nbounds; i++)
            if (!(bounds[i] > bounds[i - 1])) {
                log_msg(TOLK_LOG_ERR, "metrics", "refusing histogram '%s': bounds not ascending",
                        name);
                free_strv(labels, nl);
                return NULL;
            }
    } else {
        nbounds = 0;
    }
    pthread_mutex_lock(&g_reg_lock);
    for (tolk_metric *m = g_families; m; m = m->next) {
        if (strcmp(m->name, name)) continue;
        int ok = same_shape(m, type, labels, nl, bounds, nbounds);
        pthread_mutex_unlock(&g_reg_lock);
        free_strv(labels, nl);
        if (!ok)
            log_msg(TOLK_LOG_ERR, "metrics",
                    "metric '%s' already registered with another type, labels or buckets", name);
        return ok ? m : NULL;
    }
    tolk_metric *m = xcalloc(1, sizeof *m);
    m->name = xstrdup(name);
    m->help = xstrdup(help ? help : "");
    m->type = type;
    m->nlabels = nl;
    m->labels = labels;
    m->nbounds = nbounds;
    if (nbounds) {
        m->bounds = xmalloc(nbounds * sizeof(double));
        memcpy(m->bounds, bounds, nbounds * sizeof(double));
    }
    pthread_mutex_init(&m->lock, NULL);
    m->tail = &m->series;
    *g_tail = m;
    g_tail = &m->next;
    pthread_mutex_unlock(&g_reg_lock);
    return m;
}

tolk_series *metrics_series(tolk_metric *m, const char *const *values) {
    if (!m) return NULL;
    pthread_mutex_lock(&m->lock);
    for (tolk_series *s = m->series; s; s = s->next) {
        size_t i;
        for (i = 0; i < m->nlabels; i++)
            if (strcmp(s->values[i], values[i] ? values[i] : "")) break;
        if (i == m->nlabels) {
            pthread_mutex_unlock(&m->lock);
            return s;
        }
    }
    tolk_series *s = xcalloc(1, sizeof *s);
    s->fam = m;
    if (m->nlabels) {
        s->values = xcalloc(m->nlabels, sizeof(char *));
        for (size_t i = 0; i < m->nlabels; i++) s->values[i] = xstrdup(values[i] ? values[i] : "");
    }
    if (m->type == TOLK_METRIC_HISTOGRAM) s->buckets = xcalloc(m->nbounds + 1, sizeof(uint64_t));
    *m->tail = s;
    m->tail = &s->next;
    m->nseries++;
    pthread_mutex_unlock(&m->lock);
    return s;
}

tolk_series *metrics_series_v(tolk_metric *m, ...) {
    const char *vals[8] = {0};
    va_list ap;
    va_start(ap, m);
    for (size_t i = 0; i < 8; i++) {
        vals[i] = va_arg(ap, const char *);
        if (!vals[i]) break;
    }
    va_end(ap);
    return metrics_series(m, vals);
}

/* Counters and gauges are one atomic double each: the hot paths (every
 * 20 ms frame of every call counts frames and bytes) take no lock. A
 * histogram's buckets, count and sum change together under the family's
 * lock, so an exporter never sees a count that disagrees with its buckets. */

void metrics_add(tolk_series *s, double v) {
    if (!s) return;
    /* a CAS loop rather than `+=`, which would want libatomic for the
     * floating-point exception bookkeeping */
    double old = atomic_load_explicit(&s->value, memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&s->value, &old, old + v)) {
    }
}

void metrics_set(tolk_series *s, double v) {
    if (s) atomic_store(&s->value, v);
}

void metrics_observe(tolk_series *s, double v) {
    if (!s || !s->buckets || isnan(v)) return;
    tolk_metric *m = s->fam;
    pthread_mutex_lock(&m->lock);
    size_t i = 0;
    while (i < m->nbounds && v > m->bounds[i]) i++;
    s->buckets[i]++;
    s->count++;
    s->sum += v;
    pthread_mutex_unlock(&m->lock);
}

double metrics_value(tolk_series *s) {
    if (!s) return 0;
    if (!s->buckets) return atomic_load(&s->value);
    tolk_metric *m = s->fam;
    pthread_mutex_lock(&m->lock);
    double v = s->sum;
    pthread_mutex_unlock(&m->lock);
    return v;
}

uint64_t metrics_count(tolk_series *s) {
    if (!s) return 0;
    tolk_metric *m = s->fam;
    pthread_mutex_lock(&m->lock);
    uint64_t c = s->count;
    pthread_mutex_unlock(&m->lock);
    return c;
}

double metrics_quantile(tolk_series *s, double q) {
    if (!s || !s->buckets) return NAN;
    tolk_metric *m = s->fam;
    pthread_mutex_lock(&m->lock);
    double res = NAN;
    if (s->count) {
        double rank = q * (double)s->count, cum = 0, lo = 0;
        for (size_t i = 0; i <= m->nbounds; i++) {
            double hi = i < m->nbounds ? m->bounds[i] : (m->nbounds ? m->bounds[m->nbounds - 1] : 0);
            if (cum + (double)s->buckets[i] >= rank && s->buckets[i]) {
                res = lo + (hi - lo) * ((rank - cum) / (double)s->buckets[i]);
                break;
            }
            cum += (double)s->buckets[i];
            lo = hi;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return res;
}

static const char *const no_values[1];

static void visit(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud, int empty_too) {
    pthread_mutex_lock(&g_reg_lock);
    tolk_metric *head = g_families;
    pthread_mutex_unlock(&g_reg_lock);
    for (tolk_metric *m = head; m; m = m->next) {
        uint64_t *cum = m->nbounds ? xcalloc(m->nbounds, sizeof(uint64_t)) : NULL;
        pthread_mutex_lock(&m->lock);
        size_t n = m->nseries;
        tolk_series **list = xcalloc(n, sizeof *list);
        size_t i = 0;
        for (tolk_series *s = m->series; s; s = s->next) list[i++] = s;
        pthread_mutex_unlock(&m->lock);
        tolk_metric_sample smp = {.size = sizeof smp,
                                  .name = m->name,
                                  .help = m->help,
                                  .type = m->type,
                                  .nlabels = m->nlabels,
                                  .label_names = (const char *const *)m->labels,
                                  .nbuckets = m->nbounds,
                                  .bounds = m->bounds,
                                  .cumulative = cum};
        if (n == 0 && empty_too) fn(ud, &smp); /* label_values NULL: a family without series */
        for (i = 0; i < n; i++) {
            tolk_series *s = list[i];
            smp.label_values = s->values ? (const char *const *)s->values : no_values;
            pthread_mutex_lock(&m->lock);
            smp.value = atomic_load(&s->value);
            smp.count = s->count;
            smp.sum = s->sum;
            uint64_t run = 0;
            for (size_t b = 0; b < m->nbounds; b++) cum[b] = (run += s->buckets[b]);
            pthread_mutex_unlock(&m->lock);
            fn(ud, &smp);
        }
        free(list);
        free(cum);
    }
}

void metrics_visit(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud) { visit(fn, ud, 0); }

void metrics_visit_families(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud) {
    visit(fn, ud, 1);
}

size_t metrics_series_count(void) {
    size_t n = 0;
    pthread_mutex_lock(&g_reg_lock);
    for (tolk_metric *m = g_families; m; m = m->next) n += m->nseries;
    pthread_mutex_unlock(&g_reg_lock);
    return n;
}

void metrics_shutdown(void) {
    pthread_mutex_lock(&g_reg_lock);
    tolk_metric *m = g_families;
    g_families = NULL;
    g_tail = &g_families;
    pthread_mutex_unlock(&g_reg_lock);
    while (m) {
        tolk_metric *next = m->next;
        for (tolk_series *s = m->series, *sn; s; s = sn) {
            sn = s->next;
            free_strv(s->values, m->nlabels);
            free(s->buckets);
            free(s);
        }
        free_strv(m->labels, m->nlabels);
        free(m->bounds);
        free(m->name);
        free(m->help);
        pthread_mutex_destroy(&m->lock);
        free(m);
        m = next;
    }
}
