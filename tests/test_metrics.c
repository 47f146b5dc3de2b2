/* The metrics registry: families, label sets, histogram maths, and exact
 * counts under concurrent updates from worker threads. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "metrics.h"
#include "testutil.h"

static void test_family_is_idempotent(void **state) {
    tolk_metric *a = metrics_family("t_requests_total", "h", TOLK_METRIC_COUNTER, "kind", NULL, 0);
    tolk_metric *b = metrics_family("t_requests_total", "h", TOLK_METRIC_COUNTER, "kind", NULL, 0);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    /* same name, other shape: refused */
    assert_null(metrics_family("t_requests_total", "h", TOLK_METRIC_GAUGE, "kind", NULL, 0));
    assert_null(metrics_family("t_requests_total", "h", TOLK_METRIC_COUNTER, "other", NULL, 0));
}

static void test_bad_names_refused(void **state) {
    assert_null(metrics_family("9bad", "h", TOLK_METRIC_COUNTER, NULL, NULL, 0));
    assert_null(metrics_family("bad-name", "h", TOLK_METRIC_COUNTER, NULL, NULL, 0));
    assert_null(metrics_family("t_ok", "h", TOLK_METRIC_COUNTER, "le", NULL, 0));
    assert_null(metrics_family("t_ok2", "h", TOLK_METRIC_COUNTER, "__x", NULL, 0));
    static const double desc_bounds[] = {2, 1};
    assert_null(metrics_family("t_hist_bad", "h", TOLK_METRIC_HISTOGRAM, NULL, desc_bounds, 2));
}

static void test_series_by_labels(void **state) {
    tolk_metric *m = metrics_family("t_errors_total", "h", TOLK_METRIC_COUNTER, "component,severity", NULL, 0);
    tolk_series *a = metrics_series_v(m, "stt", "high", NULL);
    tolk_series *b = metrics_series_v(m, "stt", "low", NULL);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(a, metrics_series_v(m, "stt", "high", NULL));
    metrics_add(a, 2);
    metrics_add(a, 1);
    assert_true(metrics_value(a) == 3);
    assert_true(metrics_value(b) == 0);
}

typedef struct seen {
    int found;
    double value, sum;
    uint64_t count, cum[8];
    size_t nb;
    char lbl[64];
} seen;

static void find_hist(void *ud, const tolk_metric_sample *s) {
    seen *w = ud;
    if (strcmp(s->name, "t_latency_seconds")) return;
    w->found++;
    w->count = s->count;
    w->sum = s->sum;
    w->nb = s->nbuckets;
    for (size_t i = 0; i < s->nbuckets && i < 8; i++) w->cum[i] = s->cumulative[i];
    strncpy(w->lbl, s->label_values[0], sizeof w->lbl - 1);
}

typedef struct fam_seen {
    int empty, series;
} fam_seen;

static void count_t_faults(void *ud, const tolk_metric_sample *s) {
    fam_seen *f = ud;
    if (strcmp(s->name, "t_faults_total")) return;
    if (s->label_values)
        f->series++;
    else
        f->empty++;
}

/* Exporters announce every family: one without series is visited once,
 * marked by label_values == NULL, and only by metrics_visit_families(). */
static void test_family_without_series_is_visited(void **state) {
    tolk_metric *m = metrics_family("t_faults_total", "e", TOLK_METRIC_COUNTER, "component", NULL, 0);
    fam_seen a = {0}, b = {0}, c = {0};
    metrics_visit_families(count_t_faults, &a);
    metrics_visit(count_t_faults, &b);
    assert_int_equal(a.empty, 1);
    assert_int_equal(a.series, 0);
    assert_int_equal(b.empty + b.series, 0);
    metrics_add(metrics_series_v(m, "mt-a", NULL), 1);
    metrics_visit_families(count_t_faults, &c);
    assert_int_equal(c.empty, 0);
    assert_int_equal(c.series, 1);
}

static void test_histogram_cumulative(void **state) {
    static const double b[] = {0.1, 0.5, 1.0};
    tolk_metric *m = metrics_family("t_latency_seconds", "h", TOLK_METRIC_HISTOGRAM, "stage", b, 3);
    tolk_series *s = metrics_series_v(m, "mt", NULL);
    const double obs[] = {0.05, 0.1, 0.3, 0.7, 2.0, 0.5};
    for (size_t i = 0; i < ARRAY_LEN(obs); i++) metrics_observe(s, obs[i]);
    seen w = {0};
    metrics_visit(find_hist, &w);
    assert_int_equal(w.found, 1);
    assert_int_equal(w.nb, 3);
    /* le=0.1 counts 0.05 and 0.1 (bounds are inclusive) */
    assert_int_equal(w.cum[0], 2);
    assert_int_equal(w.cum[1], 4);
    assert_int_equal(w.cum[2], 5);
    assert_int_equal(w.count, 6);
    assert_true(fabs(w.sum - 3.65) < 1e-9);
    assert_string_equal(w.lbl, "mt");
    double p50 = metrics_quantile(s, 0.5);
    assert_true(p50 > 0.1 && p50 <= 0.5);
}

typedef struct hammer {
    tolk_series *counter, *hist;
} hammer;

static void *hammer_thread(void *arg) {
    hammer *h = arg;
    for (int i = 0; i < 100000; i++) {
        metrics_add(h->counter, 1);
        metrics_observe(h->hist, (i % 10) * 0.1);
    }
    return NULL;
}

static void test_concurrent_updates_are_exact(void **state) {
    static const double b[] = {0.25, 0.5};
    hammer h = {
        .counter = metrics_series(metrics_family("t_hammer_total", "h", TOLK_METRIC_COUNTER, NULL, NULL, 0), NULL),
        .hist = metrics_series(metrics_family("t_hammer_hist", "h", TOLK_METRIC_HISTOGRAM, NULL, b, 2), NULL),
    };
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer_thread, &h);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    assert_true(metrics_value(h.counter) == 400000);
    assert_int_equal(metrics_count(h.hist), 400000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_is_idempotent),
        cmocka_unit_test(test_bad_names_refused),
        cmocka_unit_test(test_series_by_labels),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_family_without_series_is_visited),
        cmocka_unit_test(test_concurrent_updates_are_exact),
    };
    int rc = cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
    metrics_shutdown();
    return rc;
}
