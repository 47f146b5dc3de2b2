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
 *  4. Hence: the core loads a plugin whose descriptor says an OLDER or EQUAL
 *     minor of its major (the plugin's tables are shorter; the core treats the
 *     missing tail as absent), and refuses a descriptor that says a NEWER minor.
 *     The entry function is told the host's numbers, so a plugin built against
 *     a newer minor that can also run on an older host says so by returning its
 *     descriptor stamped with the host's minor (TOLK_PLUGIN_DEFINE_COMPAT does
 *     it), and checks TOLK_HOST_HAS() before each newer host service. A plugin
 *     that does not opt in is refused by an older host with a message naming
 *     both versions.
 *  5. The descriptor's build_abi string fingerprints the build's data model
 *     (pointer and long sizes), which decides the layout of every struct here.
 *     Since ABI 1.2 the libraries whose types cross the ABI (jansson's json_t,
 *     libev's struct ev_loop, libwebsockets' struct lws_context) are checked
 *     for real: the loader compares the sonames the plugin file links against
 *     with the ones tolkd runs with. Build settings that change no type here
 *     (_FILE_OFFSET_BITS, optimisation, sanitizers) do not matter. Older
 *     fingerprint strings ("p8l8o64-ev4-jansson2") are read by their data
 *     model part.

 * THREADS
 *
 *  The core runs one libev loop on one thread, the "loop thread": libev's
 *  default loop (EV_DEFAULT), handed to plugins as host->loop. Unless a
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
 *  and the `void *state` it returns from per-channel opens. Channel, stream
 *  and request handles are opaque values, never pointers to dereference: the
 *  core mints a new one for every call, stream and request (a stream reopened
 *  by recovery is a new stream) and retires it when it ends. A core handle
 *  outlives every plugin state opened on it, and after the plugin's close()
 *  or cancel() returns (for a transport: after hangup(), or after it called
 *  channel_close()), the plugin must not use that handle again. If it does
 *  (a "late callback"), the core recognises the retired handle without
 *  touching freed memory, ignores the call, counts it in errors_total
 *  {error_type="late_callback"}, logs it once per plugin, and aborts in a
 *  debug build (./configure --enable-debug) so the bug is found in tests.

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
#define TOLK_ABI_MINOR 2

/* Audio at the core's boundary: signed 16-bit native-endian mono at 16 kHz,
 * processed in 20 ms frames. Providers that need other rates resample at their
 * edge (host->resampler_new). */
#define TOLK_SAMPLE_RATE 16000
#define TOLK_FRAME_SAMPLES 320
#define TOLK_FRAME_BYTES 640
#define TOLK_FRAME_SECONDS 0.020

typedef struct json_t json_t; /* jansson 2.x */
struct ev_loop;               /* libev 4.x */
struct lws_context;           /* libwebsockets 4.x (since ABI 1.2) */

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
typedef struct tolk_io tolk_io;               /* a file descriptor watcher (since ABI 1.2) */
typedef struct tolk_http tolk_http;           /* one HTTP request (since ABI 1.2) */
typedef struct tolk_ws tolk_ws;               /* one WebSocket connection (since ABI 1.2) */

/* Results. The recovery manager reads them: E_AGAIN retries the same instance,
 * E_BACKEND moves to a backup, E_FATAL disables the instance, E_INVAL is the
 * caller's fault and is not retried. */
typedef enum tolk_status {
    TOLK_OK = 0,
    TOLK_PENDING = 1,   /* accepted; the outcome comes later by callback */
    TOLK_DECLINED = 2,  /* not for me (e.g. language not supported): the core
                           asks the chain's next provider for this request or
                           stream, with no health penalty (since ABI 1.2) */
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
    TOLK_SEV_CRITICAL = 3,
    /* Since ABI 1.2: the provider will not work until someone acts (a bad
     * key, 401/403, quota used up). The core neither retries nor resets: it
     * fails over at once, and falls back to passthrough only when no backup
     * is left. */
    TOLK_SEV_PERMANENT = 4
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
    /* --- since ABI 1.2 --- */
    /* Partials: how likely the text is to stay as it is, 0..1; -1 unknown. */
    double stability;
    unsigned flags; /* TOLK_TRANSCRIPT_* */
} tolk_transcript;

/* A result sent before the recogniser is sure the phrase ended (Deepgram
 * Flux's EagerEndOfTurn), with is_final = 0: it is later either confirmed by
 * a final with the same text, or withdrawn by a partial without the flag
 * (TurnResumed). A core may start translating it but plays nothing of it
 * until it is confirmed; a core that does not know the flag sees a partial. */
#define TOLK_TRANSCRIPT_EAGER_END 0x1u

typedef struct tolk_stt_params {
    uint32_t size;
    const char *language;  /* BCP-47-ish code from config: "en", "es" */
    unsigned sample_rate;  /* always TOLK_SAMPLE_RATE in ABI 1 */
    /* --- since ABI 1.2 --- */
    const char *channel_id;      /* the call, for the provider's logs */
    tolk_leg leg;                /* whose voice this stream hears */
    const char *target_language; /* what it will be translated into */
    const json_t *call_options;  /* the transport's per-call options, or NULL */
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
    /* --- since ABI 1.2 --- */
    unsigned flags;             /* TOLK_CHAN_* */
    /* Per-call options from the transport (e.g. the arguments of Asterisk's
     * Stasis application), copied by the core and handed to the call's
     * recognisers (tolk_stt_params.call_options). */
    const json_t *options;
} tolk_channel_info;

/* The call is still ringing: the core translates nothing until the
 * transport reports TOLK_PROGRESS_ANSWERED (host->channel_progress).
 * Audio sent before the answer is dropped: neither translated nor bridged. */
#define TOLK_CHAN_AWAIT_ANSWER 0x1u
/* Continuous playout (implies paced): while the call lasts, the core hands
 * the transport a frame for each leg every 20 ms, silence included
 * (TOLK_PLAY_SILENCE), through play_ex(), marking the first frame of each
 * talkspurt (TOLK_PLAY_TALKSPURT), as an RTP sender needs. Without it only
 * audio is played, and silence is the transport's business. */
#define TOLK_CHAN_CONTINUOUS 0x2u
/* The source can wait (a file, a FIFO read as fast as it comes): when the
 * call holds as much unfinished audio as it may (its backlog bound),
 * channel_audio() takes nothing and returns TOLK_E_AGAIN, and the core calls
 * the transport's input_ready() once it may send again. A live source
 * (without the flag) is never refused: the core sheds the oldest audio it
 * holds for the call instead, and counts and logs what it shed. */
#define TOLK_CHAN_PULL 0x4u

/* Call progress reported by a transport (since ABI 1.2). */
typedef enum tolk_progress {
    TOLK_PROGRESS_RINGING = 1,  /* the far party is being called */
    TOLK_PROGRESS_ANSWERED = 2, /* the call is up: translation starts */
    TOLK_PROGRESS_JOINED = 3    /* a party (leg) joined a call that was up */
} tolk_progress;

/* play_ex() flags (since ABI 1.2). */
#define TOLK_PLAY_TALKSPURT 0x1u /* first frame after silence (RTP marker bit) */
#define TOLK_PLAY_SILENCE 0x2u   /* a continuous-playout filler frame of zeros */

/* One translation request (since ABI 1.2; tolk_mt.translate_req). */
typedef struct tolk_mt_request {
    uint32_t size;
    const char *text, *from, *to;
    /* The call's previous phrases in this direction, oldest first, as the
     * speaker said them; only for plugins that set TOLK_MT_USES_CONTEXT
     * (the translation cache then keys on them too). */
    const char *const *context;
    size_t ncontext;
    const char *glossary;  /* the speaker's endpoint's glossary name, or NULL */
    const char *formality; /* "more", "less", "prefer_more", "prefer_less", or NULL */
    const char *channel_id;
    tolk_leg leg;          /* the speaker */
} tolk_mt_request;

/* The outcome of a translation (since ABI 1.2; host->mt_result). */
typedef struct tolk_mt_result {
    uint32_t size;
    tolk_status status;  /* TOLK_OK with text, or the failure */
    const char *text;
    /* > 0: the provider asked for this many seconds before another attempt
     * (HTTP Retry-After); the soft retry waits at least that long. */
    double retry_after;
    unsigned flags;      /* TOLK_MT_NO_CACHE */
} tolk_mt_result;
#define TOLK_MT_NO_CACHE 0x1u     /* tolk_mt_result.flags: keep it out of the cache */
#define TOLK_MT_USES_CONTEXT 0x1u /* tolk_mt.mt_flags: send the call's previous phrases */

/* One synthesis request (since ABI 1.2; tolk_tts.speak_req). */
typedef struct tolk_tts_request {
    uint32_t size;
    const char *text, *language;
    /* A voice profile name; "clone:<channel id>:<a|b>" once a voice_sample()
     * for that party was accepted. NULL: the plugin's default. */
    const char *voice;
    /* Speaking-rate hint: 1.0 normal, 1.3 = 30% faster. A plugin that cannot
     * honour it ignores it. The core asks for more than 1.0 when the call's
     * translated speech runs behind (core.max_speedup). A plugin that
     * honours it says so with a boolean option named "honour_rate" in its
     * options table (default true); the core then asks it for the speed
     * and leaves its audio as it comes. For every other plugin, and when
     * honour_rate is false, the hint stays 1.0 and the core time-compresses
     * the audio itself, so speech is never sped up twice. */
    double rate;
    const char *channel_id;
    tolk_leg leg; /* the party whose words these are */
} tolk_tts_request;

/* The first seconds of a party's own speech, lent to a TTS that clones
 * voices, for endpoints that opt in (clone_voice). Since ABI 1.2. */
typedef struct tolk_voice_sample {
    uint32_t size;
    const char *voice;   /* the name later speak requests use for this voice */
    const int16_t *pcm;  /* 16 kHz mono, borrowed: copy what you keep */
    size_t n;
    const char *language;
} tolk_voice_sample;

/* ---- network services (since ABI 1.2) ---- */

#define TOLK_IO_READ 0x1u
#define TOLK_IO_WRITE 0x2u

/* How an HTTP request ended. */
typedef struct tolk_http_result {
    uint32_t size;
    /* TOLK_OK: a complete response arrived, whatever its HTTP status.
     * TOLK_E_TIMEOUT: connect, total or between-chunks timeout.
     * TOLK_E_BACKEND: could not connect, TLS failure, connection reset,
     *                 truncated body.
     * TOLK_E_LIMIT: the collected body passed max_body.
     * TOLK_E_INVAL: on_body asked to stop, or a malformed URL. */
    tolk_status status;
    int http_status;    /* 0 when no response line arrived */
    const char *error;  /* what went wrong, for a log line; "" on success */
    const char *body;   /* collected body, NUL-terminated; NULL when on_body took it */
    size_t body_len;
} tolk_http_result;

/* One HTTP request through the core's client (libcurl on the loop).
 * Connections are reused across requests and plugins. */
typedef struct tolk_http_request {
    uint32_t size;
    const char *method;         /* NULL: GET, or POST when there is a body */
    const char *url;            /* http:// or https:// */
    const char *const *headers; /* "Name: value" strings, NULL-terminated, or NULL */
    const void *body;           /* copied by the host */
    size_t body_len;
    double connect_timeout;     /* seconds; 0: 10 s */
    double total_timeout;       /* seconds; 0: none */
    double idle_timeout;        /* seconds with no byte received; 0: none */
    const char *ca_file;        /* PEM bundle; NULL: the system's store */
    int insecure;               /* skip TLS verification (local tests only) */
    size_t max_body;            /* collected body limit; 0: 8 MiB */
    /* Optional: status and headers, once, before the first body byte. */
    void (*on_response)(void *ud, tolk_http *h, int http_status);
    /* Optional: body bytes as they arrive. Without it the body is collected
     * and handed to on_done. Return non-zero to stop the transfer (on_done
     * follows with TOLK_E_INVAL). */
    int (*on_body)(void *ud, tolk_http *h, const void *data, size_t n);
    /* Required: the end, exactly once, unless http_cancel() came first. The
     * handle is freed when it returns. Never called from inside
     * http_request(). */
    void (*on_done)(void *ud, tolk_http *h, const tolk_http_result *res);
    void *ud;
} tolk_http_request;

/* How a WebSocket connection ended. */
typedef struct tolk_ws_close_info {
    uint32_t size;
    /* TOLK_OK: a close handshake (either side); TOLK_E_BACKEND: the upgrade
     * was refused (http_status says how) or the connection failed or
     * dropped; TOLK_E_TIMEOUT: connect, ping or idle timeout. */
    tolk_status status;
    int http_status;     /* a refused upgrade's status (401, 429...), else 0 */
    int code;            /* close code (1000, 1008, 1011...), 1006 when none came */
    const char *reason;  /* close reason or error text, UTF-8, may be "" */
    int by_peer;         /* the far side closed or failed it */
} tolk_ws_close_info;

/* One WebSocket client connection through the core's client
 * (libwebsockets on the loop, one context per process). */
typedef struct tolk_ws_params {
    uint32_t size;
    const char *url;            /* ws:// or wss://, path and query included */
    const char *const *headers; /* "Name: value" strings, NULL-terminated, or NULL */
    const char *subprotocol;    /* Sec-WebSocket-Protocol, or NULL */
    const char *ca_file;
    int insecure;
    double connect_timeout;     /* seconds; 0: 10 s */
    double ping_interval;       /* seconds between pings; 0: none */
    double idle_timeout;        /* close if nothing arrives for this long; 0: never */
    size_t max_message;         /* reassembled message limit; 0: 1 MiB */
    void (*on_open)(void *ud, tolk_ws *ws);
    /* One whole message (fragments reassembled). */
    void (*on_message)(void *ud, tolk_ws *ws, const void *data, size_t n, int binary);
    /* The last callback; the handle is freed when it returns. Never called
     * from inside ws_connect(). */
    void (*on_close)(void *ud, tolk_ws *ws, const tolk_ws_close_info *info);
    void *ud;
} tolk_ws_params;

typedef struct tolk_host tolk_host;

/* Process-wide set-up of a plugin, for libraries that must be initialised
 * once per process (since ABI 1.2; every kind table's `process` member). */
typedef struct tolk_process_hooks {
    uint32_t size;
    /* Once, on the loop thread, before the first create() of this plugin.
     * host stays valid until unload(). Anything but TOLK_OK refuses the
     * plugin. */
    tolk_status (*load)(const tolk_host *host);
    /* Once, at exit, after the last destroy(). */
    void (*unload)(void);
} tolk_process_hooks;

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
     * dead child process). The recovery manager counts it as a failed
     * operation of the instance (errors_total, health); at TOLK_SEV_HIGH and
     * above, or TOLK_E_FATAL, the instance is marked down: new calls avoid
     * it, and running calls move off it to the chain's next provider at
     * their next request (STT: their streams fail over now). It comes back
     * when its health() says TOLK_HEALTHY, or after a successful reset. */
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

    /* --- since ABI 1.2 ------------------------------------------------- */

    /* File descriptors on the loop, for plugins that own sockets, FIFOs or
     * inotify descriptors; no <ev.h> needed. cb runs on the loop with the
     * events that are ready. io_set() changes the events (0 pauses);
     * io_stop() frees the watcher (also from inside its callback) and does
     * not close fd. Watchers an instance leaves behind are stopped, with a
     * warning, when it is destroyed. */
    tolk_io *(*io_start)(tolk_instance *inst, int fd, unsigned events,
                         void (*cb)(void *ud, int fd, unsigned revents), void *ud);
    void (*io_set)(tolk_io *io, unsigned events);
    void (*io_stop)(tolk_io *io);

    /* HTTP client (libcurl multi on the loop): see tolk_http_request.
     * Returns NULL when the request is refused at once (bad URL, no
     * on_done); the outcome otherwise always comes through on_done.
     * http_cancel(): no callback for h after it returns. http_header(): a
     * response header by name (case-insensitive), valid inside on_response,
     * on_body and on_done; NULL if absent. Requests an instance leaves
     * behind are cancelled when it is destroyed. */
    tolk_http *(*http_request)(tolk_instance *inst, const tolk_http_request *req);
    void (*http_cancel)(tolk_http *h);
    const char *(*http_header)(tolk_http *h, const char *name);

    /* WebSocket client (libwebsockets on the loop): see tolk_ws_params.
     * ws_send() copies the message; before on_open it is queued. It
     * returns TOLK_E_INVAL once the connection is closing. ws_buffered():
     * bytes queued and not yet written to the socket (backpressure).
     * ws_close(): starts the close handshake; on_close follows. ws_cancel():
     * drops the connection now; no callback after it returns. Connections an
     * instance leaves behind are cancelled when it is destroyed. */
    tolk_ws *(*ws_connect)(tolk_instance *inst, const tolk_ws_params *p);
    tolk_status (*ws_send)(tolk_ws *ws, const void *data, size_t n, int binary);
    size_t (*ws_buffered)(tolk_ws *ws);
    void (*ws_close)(tolk_ws *ws, int code, const char *reason);
    void (*ws_cancel)(tolk_ws *ws);

    /* The process's libwebsockets context, on the core's loop, for plugins
     * that serve HTTP or WebSocket themselves (a metrics exporter, a media
     * socket): they add a vhost to it (lws_create_vhost) and destroy only
     * that vhost. The core sets lws's log level and routes its log lines to
     * tolk's log; nobody else calls lws_set_log_level(). */
    struct lws_context *(*lws_context)(void);

    /* STT: an open() that returned TOLK_PENDING is ready: the core feeds it
     * the audio it kept meanwhile. Until then it gets no feed(). */
    void (*stt_ready)(tolk_stream *s);

    /* MT: completes a translate_req()/translate() that returned
     * TOLK_PENDING, with the result's hints (retry-after, no-cache). */
    void (*mt_result)(tolk_request *r, const tolk_mt_result *res);

    /* Transports. Audio as channel_audio(), with the monotonic time
     * (host->now()) at which its first sample was captured, so latency is
     * measured from the caller's side of the transport. */
    tolk_status (*channel_audio_at)(tolk_channel *ch, tolk_leg leg, const int16_t *pcm,
                                    size_t n, double captured_at);
    /* A DTMF digit ('0'-'9', '*', '#', 'A'-'D') pressed by leg. */
    void (*channel_dtmf)(tolk_channel *ch, tolk_leg leg, char digit, unsigned duration_ms);
    /* Call progress (TOLK_PROGRESS_*); leg says which party it is about. */
    void (*channel_progress)(tolk_channel *ch, tolk_progress p, tolk_leg leg);
    /* Played-out feedback: the first `frames` frames handed to play() for
     * leg have now reached the listener (e.g. Asterisk's queue drained).
     * Latency is then also measured to the ear. */
    void (*channel_played)(tolk_channel *ch, tolk_leg leg, uint64_t frames);
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
    /* --- since ABI 1.2 --- */
    const tolk_process_hooks *process; /* optional */
    /** Optional; preferred over play() when present. flags: TOLK_PLAY_*.
     * An error return is counted (errors_total{error_type="play"}). */
    tolk_status (*play_ex)(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                           size_t n, unsigned flags);
    /** Optional. The direction spoken by `from` changed mode: PASSTHROUGH
     * when it is no longer translated (every provider failed), BIDIRECTIONAL
     * or UNIDIRECTIONAL when it is again. Return TOLK_OK if the transport now
     * bridges from's original voice itself (the core then stops playing it
     * through play()); anything else and the core plays it. */
    tolk_status (*direction_mode)(void *self, void *chan_state, tolk_leg from, tolk_mode mode);
    /** Optional; for TOLK_CHAN_PULL channels. After channel_audio() returned
     * TOLK_E_AGAIN for leg, the core may take audio again. */
    void (*input_ready)(void *self, void *chan_state, tolk_leg leg);
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
    /* --- since ABI 1.2 --- */
    const tolk_process_hooks *process; /* optional */
    /** Optional. End the phrase now (hang-up, a phrase at its maximum
     * length, turn-taking) and send what was heard as a final result; the
     * stream goes on. TOLK_OK or TOLK_PENDING: a final follows (maybe an
     * empty one); TOLK_DECLINED: not possible, the core waits. */
    tolk_status (*finalize)(void *state);
    /* open() may also return TOLK_PENDING (a connection being set up):
     * the stream is ready at host->stt_ready(), or failed at
     * host->stt_failed(). */
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
    /* --- since ABI 1.2 --- */
    const tolk_process_hooks *process; /* optional */
    /** Optional; preferred over translate() when present. Completes with
     * host->mt_result() (or mt_done()), under translate()'s rules. */
    tolk_status (*translate_req)(void *self, tolk_request *r, const tolk_mt_request *req);
    unsigned mt_flags; /* TOLK_MT_USES_CONTEXT */
} tolk_mt;

/** Synthesis of one phrase, streamed. Required: speak, cancel. */
typedef struct tolk_tts {
    tolk_plugin base;
    /** Same completion rules as translate(); audio via host->tts_audio. */
    tolk_status (*speak)(void *self, tolk_request *r, const char *text,
                         const char *language, const char *voice);
    /** Forget r: no tts_audio/tts_done for it after this returns. */
    void (*cancel)(void *self, tolk_request *r);
    /* --- since ABI 1.2 --- */
    const tolk_process_hooks *process; /* optional */
    /** Optional; preferred over speak() when present. */
    tolk_status (*speak_req)(void *self, tolk_request *r, const tolk_tts_request *req);
    /** Optional. A party's own speech to clone a voice from, for endpoints
     * with clone_voice on: TOLK_OK if later requests may name sample->voice
     * (until it is ready the plugin speaks them in its default voice),
     * TOLK_DECLINED if it clones nothing. */
    tolk_status (*voice_sample)(void *self, const tolk_voice_sample *sample);
} tolk_tts;

/** Exporters read the registry through host->metrics_visit(). */
typedef struct tolk_metrics {
    tolk_plugin base;
    /* --- since ABI 1.2 --- */
    const tolk_process_hooks *process; /* optional */
} tolk_metrics;

/* ------------------------------------------------------------------ */
/* Entry point and the macros that do the version bookkeeping           */

#define TOLK_STR_(x) #x
#define TOLK_STR(x) TOLK_STR_(x)
/** Fingerprint of the build's data model: pointer and long sizes, which
 * decide the layout of every struct in this header. (The libraries whose
 * types cross the ABI are checked on the plugin file itself: rule 5.) */
#define TOLK_BUILD_ABI "p" TOLK_STR(__SIZEOF_POINTER__) "l" TOLK_STR(__SIZEOF_LONG__)

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

/** As TOLK_PLUGIN_DEFINE, for a plugin that can also run on a host as old
 * as ABI 1.<oldest_minor> (rule 4): on such a host it returns a copy of its
 * descriptor stamped with the host's minor, and must check TOLK_HOST_HAS()
 * before using any host service newer than that. */
#define TOLK_PLUGIN_DEFINE_COMPAT(type, desc, oldest_minor)                            \
    TOLK_EXPORT const tolk_plugin *tolk_plugin_entry(uint32_t host_abi_major,         \
                                                     uint32_t host_abi_minor);        \
    TOLK_EXPORT const tolk_plugin *tolk_plugin_entry(uint32_t host_abi_major,         \
                                                     uint32_t host_abi_minor) {       \
        static type tolk_compat_desc_;                                                 \
        if (host_abi_major != TOLK_ABI_MAJOR || host_abi_minor >= TOLK_ABI_MINOR ||    \
            host_abi_minor < (oldest_minor))                                           \
            return &(desc).base;                                                       \
        tolk_compat_desc_ = (desc);                                                    \
        tolk_compat_desc_.base.abi_minor = (uint16_t)host_abi_minor;                   \
        return &tolk_compat_desc_.base;                                                \
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
