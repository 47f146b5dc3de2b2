/* bench_failover: the cost of recovery.
 *   1. STT failover gap: N concurrent calls (default 100) fed in real time;
 *      each call's primary recogniser drops its stream in the middle of the
 *      second of three phrases; the backup gets the audio since the last
 *      final result replayed. Prints, over the N failures, the time from the
 *      failure to the backup's first final result (p50/p99), and words lost
 *      (recognised words compared with what a fault-free call yields).
 *   2. MT failover gap: the primary translator fails every request; time
 *      from its failure to the backup's translation.
 *   3. Bookkeeping overhead: ns per recorded operation outcome.
 * Mocks throughout, with the delays written below; soft retries and the hard
 * reset are off so the figures are those of the failover tier itself.
 *
 *   bench_failover [calls] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "log.h"
#include "metrics.h"

typedef struct gaps {
    double *v;
    size_t n, cap;
    const char *stage;
    size_t words;
    size_t phrases, lost;
    int ended;
} gaps;

static void on_recovered(void *ud, const char *stage_name, const char *tier_name, double gap_ms) {
    gaps *g = ud;
    if (strcmp(stage_name, g->stage) || strcmp(tier_name, "failover")) return;
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 256;
        g->v = xrealloc(g->v, g->cap * sizeof(double));
    }
    g->v[g->n++] = gap_ms;
}

static void on_phrase(void *ud, const phrase_report *r) {
    gaps *g = ud;
    g->phrases++;
    if (!r->ok) g->lost++;
    else g->words += count_words(r->text);
}

static void on_end(void *ud, tolk_channel *ch) { ((gaps *)ud)->ended++; }

static void put(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(1); }
    fputs(text, f);
    fclose(f);
}

#define PHRASES "phrases = [ \"hello world\", \"thank you very much\", \"see you tomorrow\", \"good morning\" ]; choose = \"audio\"; silence_ms = 300; latency_ms = 50; partial_ms = 0;"

static gaps run(int calls, int fault, const char *which) {
    char dir[] = "/tmp/tolk-bfo-XXXXXX";
    if (!mkdtemp(dir)) exit(1);
    char buf[2048];
    snprintf(buf, sizeof buf,
             "core: { max_channels = %d; workers = 2; log_level = \"err\"; translation_cache = 0; };\n"
             "recovery: { soft_retries = 0; hard_reset = false; request_timeout = 5.0; };\n", calls + 10);
    put(dir, "tolk.conf", buf);
    snprintf(buf, sizeof buf,
             "instances = ( { name = \"stt-a\"; plugin = \"stt_mock\"; settings: { " PHRASES " drop_after_ms = %d; }; },\n"
             "  { name = \"stt-b\"; plugin = \"stt_mock\"; settings: { " PHRASES " }; } );\n",
             fault && !strcmp(which, "stt") ? 1400 : 0);
    put(dir, "20-stt.conf", buf);
    snprintf(buf, sizeof buf,
             "instances = ( { name = \"mt-a\"; plugin = \"mt_mock\"; settings: { latency_ms = 20; fail_every = %d; }; },\n"
             "  { name = \"mt-b\"; plugin = \"mt_mock\"; settings: { latency_ms = 20; }; } );\n",
             fault && !strcmp(which, "mt") ? 1 : 0);
    put(dir, "30-mt.conf", buf);
    put(dir, "40-tts.conf", "instance: { name = \"tts\"; plugin = \"tts_mock\"; settings: { latency_ms = 80; ms_per_char = 40; }; };\n");
    put(dir, "50-chains.conf",
        "chains = ( { name = \"stt\"; kind = \"stt\"; providers = [ \"stt-a\", \"stt-b\" ]; },\n"
        "  { name = \"mt\"; kind = \"mt\"; providers = [ \"mt-a\", \"mt-b\" ]; },\n"
        "  { name = \"tts\"; kind = \"tts\"; providers = [ \"tts\" ]; } );\n");
    snprintf(buf, sizeof buf,
             "instance: { name = \"calls\"; plugin = \"transport_mock\"; settings: { calls = %d; "
             "start_spread_ms = 1000; phrases = 3; speech_ms = 600; gap_ms = 500; mode = \"unidirectional\"; "
             "realtime = true; paced = true; }; };\n", calls);
    put(dir, "60-calls.conf", buf);
    gaps g = {.stage = which};
    core *c = core_new(dir, NULL);
    c->obs = (core_observer){.phrase = on_phrase, .recovered = on_recovered, .channel_end = on_end, .ud = &g};
    if (core_load(c) != 0) exit(1);
    core_start_transports(c);
    double end = mono_now() + 30;
    while ((g.ended < calls || c->active) && mono_now() < end) ev_run(c->loop, EVRUN_ONCE);
    core_free(c);
    snprintf(buf, sizeof buf, "rm -rf %s", dir);
    if (system(buf) != 0) exit(1);
    sort_doubles(g.v, g.n);
    return g;
}

int main(int argc, char **argv) {
    int calls = argc > 1 ? atoi(argv[1]) : 100;
    log_set_level(TOLK_LOG_ERR);
    gaps clean = run(calls, 0, "stt");
    gaps stt = run(calls, 1, "stt");
    printf("STT failover, %d calls in real time, mock recognisers (300 ms end-of-phrase silence + 50 ms):\n", calls);
    printf("  failures %zu; failure -> backup's first final result p50 %.0f ms, p99 %.0f ms\n", stt.n,
           percentile_sorted(stt.v, stt.n, 50), percentile_sorted(stt.v, stt.n, 99));
    printf("  (the failure comes mid-phrase: the gap includes the rest of the phrase, 300 ms of silence and 50 ms)\n");
    printf("  words recognised: %zu with failover, %zu without; words lost %ld; phrases lost %zu\n", stt.words,
           clean.words, (long)clean.words - (long)stt.words, stt.lost);
    gaps mt = run(calls, 1, "mt");
    printf("MT failover (primary fails every request, 20 ms mock latency each):\n");
    printf("  failovers %zu; failure -> backup's translation p50 %.1f ms, p99 %.1f ms; phrases lost %zu of %zu\n",
           mt.n, percentile_sorted(mt.v, mt.n, 50), percentile_sorted(mt.v, mt.n, 99), mt.lost, mt.phrases);

    /* bookkeeping: what every provider operation pays for health tracking */
    core *c = core_new(NULL, NULL);
    conf_set *cs = conf_new_empty();
    conf_errors errs = {0};
    core_apply(c, cs, &errs);
    tolk_instance inst = {.core = c, .name = "bench", .desc = NULL};
    snprintf(inst.who, sizeof inst.who, "bench");
    int n = 1000000;
    double t0 = mono_now();
    for (int i = 0; i < n; i++) health_record(c, &inst, i % 50 != 0);
    double ns = (mono_now() - t0) / n * 1e9;
    printf("recovery bookkeeping: %.0f ns per operation outcome (health window of %d operations)\n", ns,
           cs->recovery.window_operations);
    core_free(c);
    conf_errors_free(&errs);
    free(clean.v);
    free(stt.v);
    free(mt.v);
    return 0;
}
