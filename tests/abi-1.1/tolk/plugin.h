/*
 * tolk/plugin.h -- the one header a tolk plugin includes.
 *
 * A plugin is a shared object exporting exactly one symbol, tolk_plugin_entry(),
 * which returns a constant descriptor: ABI numbers, kind, name, version, the
 * settings it accepts, and the function table of its kind. Everything else in
 * the plugin is static. Build against this header with
 *
 *     cc -shared -fPIC $(pkg-config --cflags tolk-plugin) my_plugin.c -o my_plugin.so
 *
 * and install into $(pkg-config --variable=plugindir tolk-plugin).
 *
 * ABI RULES (read these before changing this file)
 *
 *  1. TOLK_ABI_MAJOR changes only on an incompatible change. The core refuses a
 *     plugin built for any other major.
 *  2. TOLK_ABI_MINOR grows when members are appended. Members are only ever
 *     APPENDED to the end of a struct, never inserted, removed or retyped; each
 *     appended member is marked "since ABI 1.N".
 *  3. Every struct that crosses the ABI starts with `uint32_t size`, the
 *     sizeof() the other side was compiled with. A reader touches a member only
 *     if it lies inside that size (TOLK_HAS); a member beyond it is NULL/0.
 *  4. Hence: the core loads a plugin built against an OLDER or EQUAL minor of its
 *     major (the plugin's tables are shorter; the core treats the missing tail as
 *     absent), and refuses a plugin built against a NEWER minor, which may rely on
 *     host services this core does not have. A plugin that wants to run on older
 *     hosts anyway checks TOLK_HOST_HAS() itself; it never sees this refusal.
 *  5. The descriptor's build_abi string fingerprints what the version number
 *     cannot: pointer and long sizes and the majors of libraries whose types
 *     cross the ABI (jansson's json_t, libev's struct ev_loop). A mismatch is
 *     refused at load.
 *
 * THREADS
 *
 *  The core runs one libev loop on one thread, the "loop thread". Unless a
 *  member says otherwise, the core calls every plugin function on the loop
 *  thread, and a plugin calls every host service from the loop thread. Members
 *  marked [any thread] may be called from any thread. No plugin function may
 *  block: blocking engines (local recognisers, synthesisers) do their work in
 *  host->submit() jobs, or on a thread they own, and hand results back to the
 *  loop through the job's done callback or a tolk_async.
 *
 *  Re-entrancy: a plugin may deliver results (stt_result, mt_done,
 *  tts_audio, ...) from inside the call that asked for them (feed,
 *  translate, speak) or later from its own timers. In turn the core may call
 *  close() or cancel() from inside any host function the plugin calls (it
 *  does after stt_failed), so a plugin must not touch the stream or request
 *  after such a call returns unless it knows it is still open.
 *
 * OWNERSHIP
 *
 *  Pointers passed into a function are borrowed for the duration of that call
 *  unless the member says "stolen" (the callee takes the reference) or "new"
 *  (a returned json_t reference the caller must json_decref()). Strings
 *  returned by host services stay valid as long as the object they came from.
 *
 * HANDLES
 *
 *  tolk_instance, tolk_channel, tolk_stream and tolk_request belong to the
 *  core; the plugin's own state is the `void *self` it returns from create()
 *  and the `void *state` it returns from per-channel opens. A core handle
 *  outlives every plugin state opened on it, and after the plugin's close()
 *  or cancel() returns, the plugin must not use that handle again: the core
 *  aborts on a late callback in debug builds and ignores it otherwise.
 *
 * CONFIGURATION
 *
 *  Settings live in libconfig files in conf.d. The core, not the plugin, parses
 *  them: it checks each instance's `settings` group against the descriptor's
 *  options table (unknown key, wrong type, out of range, missing required
 *  value), fills in defaults, and hands the plugin the result as a jansson
 *  object. The core does this, instead of handing plugins a libconfig handle,
 *  because the core keeps the FILE:LINE of every value: errors found by the
 *  table, and errors the plugin's check_config() reports against a key, are
 *  printed as "FILE:LINE: ..." without the plugin knowing about files. It also
 *  means plugins never link libconfig, tests configure them from JSON, and
 *  reload compares settings with json_equal() to keep unchanged instances.
 */
#ifndef TOLK_PLUGIN_H
#define TOLK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOLK_ABI_MAJOR 1
#define TOLK_ABI_MINOR 1

/* Audio at the core's boundary: signed 16-bit native-endian mono at 16 kHz,
 * processed in 20 ms frames. Providers that need other rates resample at their
 * edge (host->resampler_new). */
#define TOLK_SAMPLE_RATE 16000
#define TOLK_FRAME_SAMPLES 320
#define TOLK_FRAME_BYTES 640
#define TOLK_FRAME_SECONDS 0.020

typedef struct json_t json_t; /* jansson 2.x */
struct ev_loop;               /* libev 4.x */

typedef struct tolk_instance tolk_instance;   /* core's handle for a plugin instance */
typedef struct tolk_channel tolk_channel;     /* a call */
typedef struct tolk_stream tolk_stream;       /* one STT stream (one direction of a call) */
typedef struct tolk_request tolk_request;     /* one MT or TTS request */
typedef struct tolk_timer tolk_timer;
typedef struct tolk_async tolk_async;
typedef struct tolk_workq tolk_workq;
typedef struct tolk_resampler tolk_resampler;
typedef struct tolk_metric tolk_metric;       /* a metric family */
typedef struct tolk_series tolk_series;       /* one label set of a family */

/* Results. The recovery manager reads them: E_AGAIN retries the same instance,
 * E_BACKEND moves to a backup, E_FATAL disables the instance, E_INVAL is the
 * caller's fault and is not retried. */
typedef enum tolk_status {
    TOLK_OK = 0,
    TOLK_PENDING = 1,   /* accepted; the outcome comes later by callback */
    TOLK_DECLINED = 2,  /* not for me (e.g. language not supported) */
    TOLK_E_INVAL = -1,  /* bad request or configuration */
    TOLK_E_AGAIN = -2,  /* transient failure */
    TOLK_E_BACKEND = -3,/* the provider behind the plugin failed */
    TOLK_E_TIMEOUT = -4,
    TOLK_E_FATAL = -5,  /* the instance is unusable until reset */
    TOLK_E_LIMIT = -6,  /* a configured limit was reached */
    TOLK_E_NOMEM = -7
} tolk_status;

typedef enum tolk_kind {
    TOLK_KIND_TRANSPORT = 1,
    TOLK_KIND_STT = 2,
    TOLK_KIND_MT = 3,
    TOLK_KIND_TTS = 4,
    TOLK_KIND_METRICS = 5
} tolk_kind;

typedef enum tolk_severity {
    TOLK_SEV_LOW = 0,
    TOLK_SEV_MEDIUM = 1,
    TOLK_SEV_HIGH = 2,
    TOLK_SEV_CRITICAL = 3
} tolk_severity;

typedef enum tolk_health {
    TOLK_HEALTHY = 0,
    TOLK_DEGRADED = 1,
    TOLK_UNHEALTHY = 2,
    TOLK_FAILED = 3
} tolk_health;

typedef enum tolk_log_level {
    TOLK_LOG_FATAL = 0,
    TOLK_LOG_ERR = 1,
    TOLK_LOG_WARN = 2,
    TOLK_LOG_INFO = 3,
    TOLK_LOG_VERB = 4,
    TOLK_LOG_DBG = 5
} tolk_log_level;

/* The two parties of a call: A is the caller, B the callee. Audio of leg A
 * is translated and played to leg B, and the reverse. */
typedef enum tolk_leg { TOLK_LEG_A = 0, TOLK_LEG_B = 1 } tolk_leg;

typedef enum tolk_mode {
    TOLK_MODE_DEFAULT = 0,       /* as configured */
    TOLK_MODE_BIDIRECTIONAL = 1, /* both parties translated */
    TOLK_MODE_UNIDIRECTIONAL = 2,/* A is translated for B; B is heard untranslated */
    TOLK_MODE_PASSTHROUGH = 3    /* audio bridged untranslated */
} tolk_mode;

/* ------------------------------------------------------------------ */
/* Settings schema                                                     */

typedef enum tolk_opt_type {
    TOLK_OPT_BOOL = 1,
    TOLK_OPT_INT = 2,     /* 64-bit integer; min/max apply */
    TOLK_OPT_DOUBLE = 3,  /* min/max apply; an integer is accepted */
    TOLK_OPT_STRING = 4,
    TOLK_OPT_STRING_LIST = 5, /* libconfig array or list of strings */
    TOLK_OPT_MAP = 6      /* group of key = "string" pairs with free keys */
} tolk_opt_type;

#define TOLK_OPT_REQUIRED 0x1u
#define TOLK_OPT_SECRET 0x2u /* the core never logs the value */

typedef struct tolk_option {
    const char *key;           /* NULL ends the table */
    tolk_opt_type type;
    unsigned flags;
    const char *default_value; /* as text: "20", "0.5", "true", "en"; a list's
                                  entries separated by '|'; NULL: none */
    double min, max;           /* numbers only; min == max == 0: unbounded
                                  (use +-1e18 for a one-sided bound) */
    const char *help;          /* one line, shown by tolkd --describe */
} tolk_option;

/* Filled by check_config(): the key the complaint is about (NULL: the whole
 * settings group; a string literal or a key of cfg) and the message. The
 * core prefixes FILE:LINE of that key. check_config() has no host: it reads
 * cfg with jansson or not at all. */
typedef struct tolk_config_error {
    const char *key;
    char message[256];
} tolk_config_error;

/* ------------------------------------------------------------------ */
/* Results carried back to the core                                   */

typedef struct tolk_transcript {
    uint32_t size;
    const char *text;      /* UTF-8 */
    int is_final;          /* 0: partial (may change), 1: final for this phrase */
    double confidence;     /* 0..1, or -1 when unknown */
    /* Where the phrase lies in the stream, in samples since the stream
     * opened (16 kHz). end_sample is the end of speech, which the core maps to
     * the wall-clock time that audio arrived: the start of the latency clock.
     * A stream reopened by recovery counts from its own open. */
    uint64_t start_sample, end_sample;
} tolk_transcript;

typedef struct tolk_stt_params {
    uint32_t size;
    const char *language;  /* BCP-47-ish code from config: "en", "es" */
    unsigned sample_rate;  /* always TOLK_SAMPLE_RATE in ABI 1 */
} tolk_stt_params;

typedef struct tolk_channel_info {
    uint32_t size;
    const char *id;           /* transport's call id (the core copies it) */
    const char *endpoint[2];  /* configured endpoint name per leg, or NULL */
    const char *language[2];  /* language spoken by each leg, or NULL: from config */
    const char *voice[2];     /* voice profile of each leg's own voice: the
                                 translation of leg A's words is spoken in
                                 voice[A]; NULL: the endpoint's, else the TTS
                                 plugin's default for the language */
    tolk_mode mode;
    /* Non-zero: the core paces play() at one 20 ms frame per leg on its
     * playback clock (a live call). Zero: play() is called as soon as audio
     * is ready (a file written as fast as the engines allow). */
    int paced;
} tolk_channel_info;

typedef enum tolk_metric_type {
    TOLK_METRIC_COUNTER = 1,
    TOLK_METRIC_GAUGE = 2,
    TOLK_METRIC_HISTOGRAM = 3
} tolk_metric_type;

/* One series, as seen by a metrics exporter during host->metrics_visit().
 * label_values is NULL for a family without series (metrics_visit_families). */
typedef struct tolk_metric_sample {
    uint32_t size;
    const char *name, *help;
    tolk_metric_type type;
    size_t nlabels;
    const char *const *label_names;
    const char *const *label_values;
    double value;                   /* counter and gauge */
    size_t nbuckets;                /* histogram: upper bounds, +Inf not included */
    const double *bounds;
    const uint64_t *cumulative;     /* nbuckets counts, cumulative (le=bounds[i]) */
    uint64_t count;                 /* histogram: also the +Inf bucket */
    double sum;
} tolk_metric_sample;

/* ------------------------------------------------------------------ */
/* Host services: lent by the core to create(), valid until destroy()  */

typedef void (*tolk_cb)(void *ud);

typedef struct tolk_host {
    uint32_t size;
    uint32_t abi_major, abi_minor;

    /** The core's libev loop, for plugins that own sockets (lws, curl multi). */
    struct ev_loop *loop;

    /** [any thread] Log a line; the core adds time, level and "plugin/instance". */
    void (*log)(tolk_instance *inst, tolk_log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    /** [any thread] Would a line at this level be written? */
    int (*log_enabled)(tolk_instance *inst, tolk_log_level level);
    /** Name of the instance as configured ("stt-main"). */
    const char *(*instance_name)(tolk_instance *inst);

    /** [any thread] Monotonic clock in seconds. */
    double (*now)(void);

    /** One-shot (repeat = 0) or repeating timer on the loop; never NULL for a
     * non-NULL cb. timer_stop() frees it (also from inside its own callback).
     * A one-shot timer frees itself after its callback returns: forget the
     * pointer in the callback, and never stop a one-shot that has fired. */
    tolk_timer *(*timer_start)(tolk_instance *inst, double after, double repeat,
                               tolk_cb cb, void *ud);
    void (*timer_stop)(tolk_timer *t);

    /** An ordered job queue for submit(). */
    tolk_workq *(*workq_new)(tolk_instance *inst);
    /** Frees the queue once its jobs have run; done callbacks still fire. */
    void (*workq_free)(tolk_workq *q);
    /** Run work(ud) on a worker thread, then done(ud) on the loop. Jobs on the
     * same queue run one at a time, in order; queue NULL means any order.
     * Returns TOLK_OK or TOLK_E_NOMEM. */
    tolk_status (*submit)(tolk_workq *q, tolk_cb work, tolk_cb done, void *ud);

    /** For plugins that own a thread: async_send() [any thread] makes cb(ud)
     * run once on the loop soon after. */
    tolk_async *(*async_new)(tolk_instance *inst, tolk_cb cb, void *ud);
    void (*async_send)(tolk_async *a);
    void (*async_free)(tolk_async *a);

    /** [any thread, one object per thread] speexdsp resampler, mono s16. */
    tolk_resampler *(*resampler_new)(unsigned in_rate, unsigned out_rate, int quality);
    /** Converts n input samples; returns samples written (<= out_cap). Size out
     * as n * out_rate / in_rate + 64. */
    size_t (*resample)(tolk_resampler *r, const int16_t *in, size_t n,
                       int16_t *out, size_t out_cap);
    void (*resampler_free)(tolk_resampler *r);

    /** Settings accessors for the object handed to create(). The core has
     * validated it and filled defaults, so a key from the options table is
     * always present unless it has no default and is not required. An absent
     * key reads as 0, 0.0, false, NULL or an empty list. */
    int64_t (*cfg_int)(const json_t *cfg, const char *key);
    double (*cfg_double)(const json_t *cfg, const char *key);
    int (*cfg_bool)(const json_t *cfg, const char *key);
    const char *(*cfg_string)(const json_t *cfg, const char *key); /* NULL if unset */
    size_t (*cfg_list_size)(const json_t *cfg, const char *key);
    const char *(*cfg_list_string)(const json_t *cfg, const char *key, size_t i);
    const char *(*cfg_map_string)(const json_t *cfg, const char *key, const char *name);

    /** Metrics registry. Families are process-wide and idempotent: registering
     * a name again with the same type and labels returns the same family.
     * label_names is comma-separated ("component,operation") or NULL.
     * Histogram bounds are ascending upper bounds without +Inf. */
    tolk_metric *(*metric_family)(const char *name, const char *help, tolk_metric_type type,
                                  const char *label_names, const double *bounds,
                                  size_t nbounds);
    /** Get or create the series for these label values (as many as names). */
    tolk_series *(*metric_series)(tolk_metric *m, const char *const *label_values);
    /** [any thread] counter/gauge += v; gauge = v; histogram observation. */
    void (*series_add)(tolk_series *s, double v);
    void (*series_set)(tolk_series *s, double v);
    void (*series_observe)(tolk_series *s, double v);
    /** Snapshot every series, calling fn once per series, in registration
     * order; for metrics exporters. Values are consistent per series. */
    void (*metrics_visit)(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud);

    /** The instance has trouble outside any request (a dropped connection, a
     * dead child process). The recovery manager decides what to do. */
    void (*report)(tolk_instance *inst, tolk_status st, tolk_severity sev, const char *why);
    /** Ends a reset() that returned TOLK_PENDING. */
    void (*reset_done)(tolk_instance *inst, tolk_status st);

    /* --- transports ---------------------------------------------------- */
    /** A new call. chan_state is the transport's per-call pointer, handed
     * back in play()/hangup(). Returns NULL if refused (limit reached,
     * shutting down, no route); *why says which. */
    tolk_channel *(*channel_open)(tolk_instance *transport, const tolk_channel_info *info,
                                  void *chan_state, tolk_status *why);
    /** Audio from a party: n samples at 16 kHz, any n (the core reframes).
     * Returns TOLK_OK, or TOLK_E_INVAL after the channel ended. */
    tolk_status (*channel_audio)(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n);
    /** That party will send no more audio (end of file, half-close). The
     * channel ends by itself (hangup() follows) once input has ended on every
     * leg that sent audio, and everything pending has been translated and
     * played. */
    void (*channel_input_end)(tolk_channel *ch, tolk_leg leg);
    /** An out-of-band event from the call (e.g. "dtmf" {"digit":"5"}). */
    void (*channel_event)(tolk_channel *ch, const char *name, const json_t *data);
    /** The call is gone (hangup on the far side). Pending work is cancelled;
     * the transport gets no play()/hangup() for it after this returns. */
    void (*channel_close)(tolk_channel *ch);
    const char *(*channel_id)(tolk_channel *ch);

    /* --- STT ----------------------------------------------------------- */
    /** A partial or final result of a stream. */
    void (*stt_result)(tolk_stream *s, const tolk_transcript *t);
    /** The stream broke; the core closes it (close() follows) and recovers. */
    void (*stt_failed)(tolk_stream *s, tolk_status st, tolk_severity sev, const char *why);
    /** Ends a flush() that returned TOLK_PENDING: no more results follow. */
    void (*stt_flushed)(tolk_stream *s);

    /* --- MT ------------------------------------------------------------ */
    /** Completes a translate() that returned TOLK_PENDING. text NULL on error. */
    void (*mt_done)(tolk_request *r, tolk_status st, const char *text);

    /* --- TTS ----------------------------------------------------------- */
    /** Audio of a speak() request, 16 kHz, in order, any n; then tts_done. */
    void (*tts_audio)(tolk_request *r, const int16_t *pcm, size_t n);
    void (*tts_done)(tolk_request *r, tolk_status st);

    /* --- since ABI 1.1 ------------------------------------------------- */
    /** As metrics_visit(), and a family that has no series yet is reported
     * once, with label_values NULL and zero values: an exporter can then
     * announce its HELP and TYPE before the first error, recovery or cache
     * lookup. */
    void (*metrics_visit_families)(void (*fn)(void *ud, const tolk_metric_sample *s), void *ud);
} tolk_host;

#define TOLK_HAS(ptr, type, member) \
    ((ptr)->size >= offsetof(type, member) + sizeof(((type *)0)->member))
#define TOLK_HOST_HAS(host, member) TOLK_HAS(host, tolk_host, member)

/* ------------------------------------------------------------------ */
/* Plugin descriptors                                                   */

/** Common head, first member of every kind's table. */
typedef struct tolk_plugin {
    uint32_t size;             /* sizeof the whole kind table */
    uint16_t abi_major, abi_minor;
    tolk_kind kind;
    const char *name;          /* == file name without .so == directory name */
    const char *version;
    const char *description;
    const char *build_abi;     /* TOLK_BUILD_ABI */
    const tolk_option *options;/* may be NULL: no settings */

    /** Optional. Validate settings beyond the table (cross-key rules,
     * file existence) without side effects. On failure fill err. */
    tolk_status (*check_config)(const json_t *cfg, tolk_config_error *err);
    /** Required. Make an instance. May be called several times per loaded
     * file: keep every mutable thing inside *self, never in globals. */
    tolk_status (*create)(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                          void **self);
    /** Required. Called when no channel and no configuration uses it. */
    void (*destroy)(void *self);
    /** Optional. Drop connections and caches and start afresh. TOLK_OK when
     * done; TOLK_PENDING means host->reset_done() follows. */
    tolk_status (*reset)(void *self);
    /** Optional. Current health, and a new detail object if detail_new is
     * not NULL (the caller json_decref()s it). */
    tolk_health (*health)(void *self, json_t **detail_new);
} tolk_plugin;

/** Connects calls to the core. Required: start, stop, play, hangup. */
typedef struct tolk_transport {
    tolk_plugin base;
    /** Begin accepting calls (bind, connect to ARI, open files...). */
    tolk_status (*start)(void *self);
    /** Stop accepting new calls; running calls go on. */
    void (*stop)(void *self);
    /** One 20 ms frame (TOLK_FRAME_SAMPLES) to play to `leg`. The core calls
     * it on its playback clock when the channel is paced (tolk_channel_info),
     * else as soon as audio is ready. */
    tolk_status (*play)(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                        size_t n); /* an error is logged by the transport; the core goes on */
    /** The core ends the call (drained, shutdown, error). The transport hangs
     * up and must not call host functions with this channel afterwards. */
    void (*hangup)(void *self, void *chan_state);
} tolk_transport;

/** Streaming speech recognition. Required: open, feed, close. */
typedef struct tolk_stt {
    tolk_plugin base;
    /** Start a stream; results go to host->stt_result(stream, ...). */
    tolk_status (*open)(void *self, tolk_stream *stream, const tolk_stt_params *p,
                        void **state);
    /** n samples at 16 kHz (the core sends whole 20 ms frames). */
    tolk_status (*feed)(void *state, const int16_t *pcm, size_t n);
    /** End the stream; no host callback for it after this returns. */
    void (*close)(void *state);
    /** Optional. No more audio: finalise what was heard. TOLK_OK: every
     * result is already out; TOLK_PENDING: host->stt_flushed() follows the
     * last one. Without flush the core assumes TOLK_OK. */
    tolk_status (*flush)(void *state);
} tolk_stt;

/** Translation of one phrase. Required: translate, cancel. */
typedef struct tolk_mt {
    tolk_plugin base;
    /** Translate text; either complete at once (return TOLK_OK after calling
     * host->mt_done) or return TOLK_PENDING and call mt_done later. A
     * negative status means it failed at once and mt_done will not be called. */
    tolk_status (*translate)(void *self, tolk_request *r, const char *text,
                             const char *from, const char *to);
    /** Forget r: no mt_done for it after this returns. */
    void (*cancel)(void *self, tolk_request *r);
} tolk_mt;

/** Synthesis of one phrase, streamed. Required: speak, cancel. */
typedef struct tolk_tts {
    tolk_plugin base;
    /** Same completion rules as translate(); audio via host->tts_audio. */
    tolk_status (*speak)(void *self, tolk_request *r, const char *text,
                         const char *language, const char *voice);
    /** Forget r: no tts_audio/tts_done for it after this returns. */
    void (*cancel)(void *self, tolk_request *r);
} tolk_tts;

/** Exporters read the registry through host->metrics_visit(). */
typedef struct tolk_metrics {
    tolk_plugin base;
} tolk_metrics;

/* ------------------------------------------------------------------ */
/* Entry point and the macros that do the version bookkeeping           */

#define TOLK_STR_(x) #x
#define TOLK_STR(x) TOLK_STR_(x)
#ifndef _FILE_OFFSET_BITS
#define TOLK_OFF_BITS_ "x"
#else
#define TOLK_OFF_BITS_ TOLK_STR(_FILE_OFFSET_BITS)
#endif
/** Fingerprint of the build: pointer/long size, off_t setting, libev 4 and
 * jansson 2 (whose types cross the ABI). */
#define TOLK_BUILD_ABI                                                               \
    "p" TOLK_STR(__SIZEOF_POINTER__) "l" TOLK_STR(__SIZEOF_LONG__) "o" TOLK_OFF_BITS_ \
    "-ev4-jansson2"

/** Fills the head of a descriptor: TOLK_PLUGIN_INIT(tolk_stt, TOLK_KIND_STT). */
#define TOLK_PLUGIN_INIT(type, kind_)                                                  \
    .size = sizeof(type), .abi_major = TOLK_ABI_MAJOR, .abi_minor = TOLK_ABI_MINOR, \
    .kind = (kind_), .build_abi = TOLK_BUILD_ABI

#if defined(__GNUC__)
#define TOLK_EXPORT __attribute__((visibility("default")))
#else
#define TOLK_EXPORT
#endif

/** The single exported symbol. It returns the plugin's descriptor whatever the
 * host's numbers are (a plugin may use them to pick among descriptors); the
 * core reads size, abi_major and abi_minor, which stay the first members in
 * every major, and refuses the plugin if they do not fit. */
typedef const tolk_plugin *(*tolk_plugin_entry_fn)(uint32_t host_abi_major,
                                                   uint32_t host_abi_minor);
#define TOLK_PLUGIN_ENTRY_SYMBOL "tolk_plugin_entry"

/** Emits tolk_plugin_entry() for the descriptor `desc` (a kind table). */
#define TOLK_PLUGIN_DEFINE(desc)                                                       \
    TOLK_EXPORT const tolk_plugin *tolk_plugin_entry(uint32_t host_abi_major,         \
                                                     uint32_t host_abi_minor);        \
    TOLK_EXPORT const tolk_plugin *tolk_plugin_entry(uint32_t host_abi_major,         \
                                                     uint32_t host_abi_minor) {       \
        (void)host_abi_major;                                                          \
        (void)host_abi_minor;                                                          \
        return &(desc).base;                                                           \
    }

/** Log through the host with a level test first, so arguments are not
 * formatted for lines nobody reads. */
#define TOLK_LOG(host, inst, level, ...)                                               \
    do {                                                                               \
        if ((host)->log_enabled((inst), (level))) (host)->log((inst), (level), __VA_ARGS__); \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif /* TOLK_PLUGIN_H */
