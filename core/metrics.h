/* The metrics registry: counters, gauges and histograms with labels. Written
 * by the core and plugins (any thread), read by exporters through a visit
 * that copies each series under its family's lock. */
#ifndef TOLK_CORE_METRICS_H
#define TOLK_CORE_METRICS_H

#include <tolk/plugin.h>

tolk_metric *metrics_family(const char *name, const char *help, tolk_metric_type type,
                            const char *label_names, const double *bounds, size_t nbounds);
tolk_series *metrics_series(tolk_metric *m, const char *const *label_values);
/* Shorthand for a series by up to 4 label values, NULL-terminated. */
tolk_series *metrics_series_v(tolk_metric *m, ...);
void metrics_add(tolk_series *s, double v);
void metrics_set(tolk_series *s, double v);
void metrics_observe(tolk_series *s, double v);
double metrics_value(tolk_series *s);        /* counter/gauge value; histogram sum */
uint64_t metrics_count(tolk_series *s);      /* histogram count */
/* Quantile estimate from a histogram series (linear within the bucket). */
double metrics_quantile(tolk_series *s, double q);
void metrics_visit(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud);
/* Also reports each family without series once, with label_values NULL. */
void metrics_visit_families(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud);
size_t metrics_series_count(void);
void metrics_shutdown(void);

#endif
