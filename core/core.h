/* The core's private model: instances, generations of configuration,
 * channels with their per-direction pipelines, and the core object that
 * owns the loop. Plugins never see this file. */
#ifndef TOLK_CORE_CORE_H
#define TOLK_CORE_CORE_H

#include <ev.h>
#include <jansson.h>
#include <stdint.h>
#include <tolk/plugin.h>

#include "conf.h"
#include "framebuf.h"
#include "loader.h"
#include "loop.h"
#include "util.h"

typedef struct core core;
typedef struct generation generation;
typedef struct direction direction;
typedef struct phrase phrase;

typedef struct phrase_fifo_head {
    phrase *head, *tail;
    size_t n;
} phrase_fifo_head;

/* ---- plugin instances ---- */

/* Outcomes of an instance's recent operations, for its health. */
#define HEALTH_RING 128
typedef struct health_track {
    double t[HEALTH_RING];
    uint8_t ok[HEALTH_RING];
    size_t head, n;
    uint64_t ops, failures;
} health_track;

struct tolk_instance {
    core *core;
    char *name;
    char who[128]; /* "plugin/instance", the log prefix */
    const tolk_plugin *desc;
    json_t *settings;
    void *self;
    int refs;    /* generations holding it */
    int started; /* transports: start() succeeded */
    tolk_health health;
    health_track track;
    int down;       /* failed over from: new calls avoid it until it is healthy */
    int permanent;  /* failed permanently (bad key, quota): no retries until healthy */
    int resetting;  /* a reset() is under way */
    int reset_ok;   /* outcome of the last reset */
    ev_timer reset_timer; /* reset timeout, or the deferred end of a synchronous reset */
    tolk_series *health_s, *success_s;
    /* MT: translations remembered (mtcache.c), created at the first lookup */
    struct mtcache *mtcache;
    tolk_series *cache_rate_s, *cache_hit_s, *cache_miss_s;
    struct tolk_io *ios; /* io watchers it started and has not stopped (loop.c) */
};

typedef struct chain {
    char *name;
    tolk_kind kind;
    tolk_instance **prov; /* primary first */
    size_t nprov;
    const conf_chain *conf;
    int resetting;        /* instances of a full reset still under way */
    int reset_failed;
    double last_reset;    /* mono time of the last full reset (tier 4) */
} chain;

/* One complete configuration. Channels hold the generation they started
 * with; a reload makes a new one and the old one lives until its last
 * channel ends. Instances with unchanged settings are shared. */
struct generation {
    unsigned id;
    int refs;
    conf_set *conf;
    ptr_vec instances; /* tolk_instance *, each holding one ref */
    chain *chains;
    size_t nchains;
};

/* ---- channels ---- */

typedef enum chan_state {
    CH_IDLE = 0,
    CH_RINGING,
    CH_CONNECTED,
    CH_TRANSLATING,
    CH_DISCONNECTING,
    CH_DISCONNECTED,
    CH_ERROR
} chan_state;
const char *chan_state_name(chan_state s);

/* Stages whose queues are measured: input -> stt -> mt -> tts -> playback. */
enum { Q_INPUT, Q_STT, Q_MT, Q_TTS, Q_PLAYBACK, Q_COUNT };
extern const char *const queue_names[Q_COUNT];

/* The core's side of a recogniser stream and of an MT/TTS request. Plugins
 * see only `handle` (handle.h), minted anew for each stream and request. */
struct tolk_stream {
    direction *dir;
    tolk_instance *inst;
    void *state;
    void *handle;
    int open;
    int ready;    /* open() completed (at once, or later through stt_ready) */
    int flushing; /* flush() returned PENDING, waiting for stt_flushed */
    int flushed;
};

struct tolk_request {
    phrase *ph;
    tolk_instance *inst;
    void *handle;
    int active;
};

/* Recovery tiers, in the order they are tried. */
typedef enum tier { TIER_NONE = 0, TIER_SOFT, TIER_HARD, TIER_FAILOVER, TIER_RESET } tier;
extern const char *const tier_names[];

/* Where one operation (a phrase at a stage, or a direction's STT stream)
 * stands on the recovery ladder. */
typedef struct ladder {
    int soft, hard, failovers, reset;
    tier last; /* tier of the attempt now running, TIER_NONE for the first */
    double t_fail; /* when the first failure of this operation happened */
    tolk_instance *failed; /* provider that failed first */
} ladder;

typedef enum stage_kind { STAGE_STT = 0, STAGE_MT, STAGE_TTS } stage_kind;

/* One provider stage of a direction: which chain, which of its providers
 * this call uses now, and what is waiting for recovery. */
typedef struct stage {
    stage_kind kind;
    direction *dir;
    chain *chain;
    size_t idx;             /* provider in use: chain->prov[idx] */
    phrase_fifo_head q;     /* MT/TTS: phrases waiting */
    phrase *busy;           /* MT/TTS: the phrase being served or recovered */
    ladder lad;             /* STT: the stream's ladder */
    ev_timer timeout;       /* request (or stream) timeout */
    ev_timer retry;         /* soft-retry delay */
    tolk_instance *wait_reset;
    chain *wait_chain;
    int pumping;
    int failback; /* STT: move the stream back to the chain's first choice */
} stage;

struct phrase {
    phrase *next;      /* in a stage queue */
    size_t pidx;       /* provider of the chain this phrase's request is on */
    char **context;    /* the direction's phrases before this one, oldest first */
    size_t ncontext;
    char *cache_key;   /* translation cache key (text and what changes the output) */
    double retry_after; /* provider's wish before the next attempt, seconds */
    phrase *mark_next; /* waiting for its first frame to be played */
    direction *dir;
    unsigned seq;
    char *text, *translation;
    uint64_t start_sample, end_sample;
    uint64_t out_pos; /* where its audio starts in the output leg */
    int has_audio;
    int mt_cached; /* the translation came from the MT provider's cache */
    /* times, monotonic seconds; 0 = not yet */
    double t_speech_end, t_stt_final, t_mt_start, t_mt_done, t_tts_start, t_tts_first,
        t_tts_done, t_first_out, t_enq;
    tolk_instance *stt_inst, *mt_inst, *tts_inst;
    tolk_request req;
    ladder lad;          /* the current stage's */
    uint64_t tts_got;    /* samples received from the current TTS attempt */
    uint64_t tts_keep;   /* samples of this phrase already queued to play */
    /* the highest recovery tier any stage of this phrase needed */
    tier recovery_tier;
    stage_kind recovery_stage;
    char recovery_from[64], recovery_to[64];
    uint64_t backlog; /* samples it adds to dir->phrase_samples while it lives */
    /* Speculative translation (pipeline.c): started on a tentative end of
     * the phrase; its audio is held here until the final result confirms
     * the text. `speculated` stays set once confirmed, for the report. */
    int speculative, speculated;
    int16_t *held;
    size_t nheld, capheld;
    double t_speculated; /* when the tentative end arrived */
    /* playback.c: the speed its translated speech plays at (1: as
     * synthesised), and whether the TTS was asked for it (rate hint) or the
     * core time-compresses the audio itself */
    double speed;
    int speed_by_tts;
};


#define ARRIVAL_RING 512 /* frames: 10.24 s of arrival times per direction */

struct direction {
    tolk_channel *ch;
    tolk_leg src, dst;
    char *from, *to, *voice;
    const conf_endpoint *ep; /* the speaker's endpoint (of ch->gen), or NULL */
    /* the call's last phrases in this direction, for MT context: ring */
    char *context[10];
    size_t ncontext;
    /* voice cloning (ep->clone_voice): the speaker's first voiced audio */
    int16_t *clone_pcm;
    size_t clone_n, clone_cap;
    int clone_state; /* 0 collecting, 1 lent and accepted, -1 done/declined */
    char *clone_voice; /* "clone:<id>:<a|b>" once accepted */
    uint64_t speech_start; /* direction sample where the current phrase began */
    int finalize_asked;    /* finalize() asked for the current phrase */
    int translate; /* 0: src is heard untranslated by dst */
    stage stt, mt, tts;
    tolk_stream stream;
    uint64_t stream_base; /* direction sample where the stream's sample 0 lies */
    double last_result;   /* mono time of the stream's last result (or open) */
    int16_t inbuf[TOLK_FRAME_SAMPLES];
    size_t nin;
    uint64_t samples_in;
    double arrival[ARRIVAL_RING];
    /* audio since the last final result, replayed into a new stream when
     * the recogniser fails: samples [replay_start, samples_in) */
    framebuf replay;
    uint64_t replay_start;
    int replay_voiced;
    double speech_since; /* mono time speech began with no result since; 0: none.
                          * Non-zero: the phrase counts in queue_depth{stt} */
    size_t unfed;        /* newest frames of the replay buffer no stream has had:
                          * queue_depth{input} while the recogniser recovers */
    phrase *marks_head, *marks_tail;
    phrase *spec; /* a speculative translation waiting for its final result */
    /* end of the last frame over the voice threshold (direction samples):
     * where a phrase's speech ended when a recogniser's result window also
     * covers the silence it waited for (Deepgram Flux, Nova) */
    uint64_t voiced_end;
    unsigned next_seq;
    int input_ended;
    int spoke; /* src sent audio */
    /* backlog.c: what this direction holds of the caller's audio beyond the
     * replay buffer: the source length of its phrases still in the
     * pipeline, and voiced audio that fell out of the replay buffer before
     * a final result covered it (lost if the recogniser now fails) */
    uint64_t phrase_samples;
    uint64_t replay_dropped;
    double last_final; /* mono time of the stream's last final result (or open) */
    int refused; /* pull channel: channel_audio() said TOLK_E_AGAIN */
    double last_arrival; /* channel_audio_at(): arrival times never go backwards */
    int bridged; /* untranslated, and the transport bridges src's voice itself */
    tolk_mode told; /* the mode last told to the transport (direction_mode) */
};

/* Phrases whose first frame was handed to play(), waiting for the
 * transport's played-out feedback (channel_played) to measure latency to
 * the ear: a few per leg, the oldest dropped when full. */
#define EAR_RING 8
typedef struct ear_mark {
    uint64_t frame; /* index of the phrase's first frame among those handed to play */
    double t_speech_end, t_first_out;
    unsigned seq;
} ear_mark;

/* Audio waiting to be played to one leg, in whole frames once complete. */
typedef struct outbuf {
    int16_t *buf;
    size_t cap, head, len; /* ring of samples */
    uint64_t written, played;
    tolk_channel *ch;
    tolk_leg leg;
    /* paced playback: the wheel slot this leg plays in while it talks */
    struct outbuf *wnext, *wprev;
    int slot; /* -1: not in the wheel */
    int continuous; /* stays in the wheel, playing silence when it has no audio */
    int in_spurt;   /* the last frame handed to play was audio */
    uint64_t handed; /* frames handed to play() (audio and silence) */
    uint64_t heard;  /* of those, frames the transport said were played out */
    ear_mark ear[EAR_RING];
    size_t ear_head, ear_n;
    /* playback.c: the time-compressor (libsonic) of the phrase being
     * queued, while it plays faster than synthesised; NULL otherwise */
    struct sonicStreamStruct *sonic;
    /* the speed of the audio at the head of the buffer: that of the last
     * phrase whose first frame was played (1 when none) */
    double playing_speed;
} outbuf;

struct tolk_channel {
    core *core;
    void *handle; /* what the transport holds (handle.h) */
    generation *gen;
    tolk_instance *transport;
    void *tstate;
    char *id;
    tolk_mode mode;
    int paced;
    unsigned flags;  /* TOLK_CHAN_* from the transport */
    int connected;   /* answered: the pipelines are set up */
    json_t *options; /* the transport's per-call options (a copy), or NULL */
    chan_state state;
    direction dir[2]; /* dir[TOLK_LEG_A]: A -> B; dir[TOLK_LEG_B]: B -> A */
    outbuf out[2];    /* out[leg]: what leg hears */
    uint64_t frames_in[2], frames_out[2];
    uint64_t frames_unanswered[2]; /* audio before the answer: dropped */
    uint64_t silence_out[2];       /* continuous playout's filler frames */
    int play_failed_logged;
    double t_open;
    int closed;      /* transport said it is gone: no more play()/hangup() */
    int ending;      /* end scheduled */
    ev_timer finish; /* deferred end, outside plugin callbacks */
    ev_timer drain_deadline;
    tolk_channel *prev, *next;
    /* backlog.c: flow control of the input */
    ev_check input_resume;  /* a refused pull leg may send again */
    ev_timer input_guard;   /* a refused leg whose recogniser stalls */
    double refused_since;
    double shed_logged;     /* mono time of the last "shedding" log line */
    /* core.max_backlog_seconds of the call's own generation, in samples:
     * read on every frame, so computed once (backlog_init) */
    uint64_t backlog_bound;
    uint64_t drain_progress; /* backlog_progress() when the drain deadline was armed */
    const char *end_reason;  /* why channel_end() ended it; NULL: it finished */
};

/* What tolk-translate prints and the bench measures, per phrase. */
typedef struct phrase_report {
    const char *channel_id;
    unsigned seq;
    tolk_leg from_leg;
    const char *from, *to;
    const char *text, *translation;
    const char *stt, *mt, *tts; /* instance names */
    double start_s, end_s;      /* position in the caller's audio */
    /* milliseconds; < 0 when the stage did not happen */
    double stt_ms;         /* end of speech -> final transcript */
    double mt_ms;          /* MT request -> translation */
    double tts_first_ms;   /* TTS request -> first audio */
    double latency_ms;     /* end of speech (as it arrived) -> first frame out */
    double mt_wait_ms, tts_wait_ms;
    double playback_wait_ms; /* first audio -> its first frame out */
    /* end of speech -> the transport said the first frame reached the
     * listener (channel_played); -1 when there is no such feedback (yet) */
    double ear_latency_ms;
    /* end of the phrase (capture time of its last sample) -> its translated
     * speech starts playing, on a paced call (the call's clock); -1 when the
     * call is not paced (a file as fast as the engines go) */
    double lag_ms;
    double speedup; /* speed its translated speech played at: 1 normal */
    int mt_cached; /* translation from the cache: mt_ms is the lookup */
    int ok; /* 0: the phrase was lost (error) */
    /* translated ahead of its final result (core.speculative_translation);
     * speculative_lead_ms: how long before the final it started */
    int speculated;
    double speculative_lead_ms;
    /* recovery: NULL when no stage of the phrase failed */
    const char *recovery_tier, *recovery_stage, *recovery_from, *recovery_to;
} phrase_report;

/* A recogniser result as the core publishes it (partial or final). */
typedef struct transcript_event {
    const char *channel_id;
    tolk_leg leg;
    const char *language;
    const char *text;
    int is_final;
    int eager_end; /* a tentative end of turn (TOLK_TRANSCRIPT_EAGER_END) */
    double stability; /* -1: unknown */
    double start_s, end_s; /* position in the speaker's audio */
} transcript_event;

typedef struct core_observer {
    void (*phrase)(void *ud, const phrase_report *r);
    void (*transcript)(void *ud, const transcript_event *e);
    /* an operation recovered: gap from its first failure to success */
    void (*recovered)(void *ud, const char *stage, const char *tier, double gap_ms);
    void (*channel_state)(void *ud, tolk_channel *ch, chan_state st);
    void (*channel_end)(void *ud, tolk_channel *ch);
    /* An event from the call: DTMF ("dtmf" {"digit":"5","duration_ms":120,
     * "leg":"a"}), call progress ("ringing", "answered", "joined" {"leg"}),
     * or a transport's own (channel_event). leg is -1 when the event is not
     * about one party. data is borrowed. */
    void (*event)(void *ud, tolk_channel *ch, int leg, const char *name, const json_t *data);
    /* The transport's played-out feedback reached a phrase's first frame:
     * a report with the phrase's identity (channel_id, seq, from_leg, from,
     * to), latency_ms and ear_latency_ms; other stages are -1. The phrase
     * itself was reported (phrase) when its first frame was handed to play. */
    void (*phrase_ear)(void *ud, const phrase_report *r);
    void *ud;
} core_observer;

typedef struct core_metrics {
    tolk_metric *latency, *component, *frames, *translations, *audio_bytes, *words, *errors,
        *recoveries, *queue_depth, *queue_wait, *active, *duration, *uptime, *health, *success,
        *refused, *channels_total, *reloads, *cache_rate, *cache_lookups, *voice_cache, *pipe_util;
    tolk_series *frames_s, *audio_bytes_s, *translations_s, *words_s, *active_s, *duration_s,
        *refused_s, *channels_total_s, *uptime_s;
    tolk_series *qdepth[Q_COUNT], *qwait[Q_COUNT];
    tolk_metric *events;
    /* playback.c: how far translated speech runs behind, and what was done */
    tolk_metric *lag, *lag_over, *lag_over_seconds, *speedup_seconds;
} core_metrics;

struct core {
    /* recovery.c's events; core_new() subscribes the pipeline (recovery.c
     * sits below pipeline.c and does not call it) */
    void (*on_reset_done)(core *c, tolk_instance *inst, chain *ch);
    void (*on_instance_down)(core *c, tolk_instance *inst, tolk_status st, tolk_severity sev,
                             const char *why);
    struct ev_loop *loop;
    worker_pool *workers;
    tolk_host host;
    generation *gen;
    unsigned next_gen_id;
    char *confdir;
    char *plugin_path;   /* command-line override or NULL */
    int daemon_transports; /* start transports of the configuration */
    tolk_channel *channels;
    size_t active;
    uint64_t total_channels, refused_channels, lost_phrases;
    uint64_t out_frames_dropped; /* audio still unplayed when its call ended */
    int stopping;
    int stop_signal; /* the SIGTERM or SIGINT that started the shutdown, or 0 */
    double started;
    /* The playback clock: a 1 ms timerfd that drives a wheel of 20 slots.
     * A leg that starts talking joins the next slot and plays one frame
     * each time the wheel comes round to it: every 20 ms on its own grid. */
    int clock_fd;
    ev_io clock_w;
    uint64_t tick; /* last slot tick processed */
    outbuf *wheel[20];
    size_t wheel_legs;
    size_t wheel_continuous; /* of those, legs with continuous playout */
    ev_signal sig_hup, sig_term, sig_int, sig_usr1;
    /* SIGHUP reads conf.d on a thread of its own, so the loop (and every
     * call) runs on while a large or slow directory is parsed; the new
     * generation is built on the loop, where plugins' create() must run. */
    worker_pool *reload_worker;
    int reload_running; /* a parse is under way */
    int reload_again;   /* SIGHUP while it ran: one more reload after it */
    int freeing;        /* core_free(): a parse that ends now is discarded */
    int signals_watched;
    ev_timer drain_timer;
    double drain_deadline_at;
    int drain_forced;
    ev_timer uptime_timer;
    ev_timer health_timer;
    core_observer obs;
    core_metrics m;
    int log_level_override; /* -l on the command line, -1 if none */
    int skip_metrics; /* tolk-translate: exporters of the configuration are not created */
};

/* The files of the core, top to bottom: each calls only files below it.
 *   core.c          the core object: signals, reload, drain, shutdown
 *   host.c          the host table lent to plugins (handles checked here)
 *   channel.c       calls: open, states, input framing, drain, end
 *   backlog.c       admission of a call's input (pull sources wait)
 *   pipeline.c      each direction's STT stream and MT/TTS stages, recovery
 *   shed.c          bounding what a call holds (live sources shed)
 *   generation.c    configurations and their plugin instances
 *   recovery.c      provider health and the recovery tiers
 *   playback.c      output buffers, the playback clock, the frame-out path
 *   phrase.c        phrases, stage queues, the per-phrase report, metrics
 *   core_metrics.c  the core's metric families and error counts
 * and beside them: loop.c, loader.c, conf.c, metrics.c, handle.c,
 * mtcache.c, framebuf.c, http.c, ws.c, log.c, util.c. */

/* ---- core.c ---- */
/* Creates the core on the default loop. confdir may be NULL (tests). */
core *core_new(const char *confdir, const char *plugin_path);
/* Load conf.d as the first generation; 0 or -1 (errors logged). */
int core_load(core *c);
/* Use this configuration (already loaded) as the first generation. */
int core_apply(core *c, conf_set *cs, conf_errors *errs);
/* Start the transports of the current generation. */
int core_start_transports(core *c);
/* Re-read conf.d now, on the calling thread; keep the old generation on
 * any error. */
int core_reload(core *c);
/* SIGHUP: read conf.d on the reload thread, then apply it on the loop as
 * core_reload() does. A request while one runs is coalesced into a single
 * reload after it. */
void core_request_reload(core *c);
/* SIGTERM: stop accepting, drain for drain_timeout, then end what is left. */
void core_shutdown(core *c);
/* Installs SIGHUP/SIGTERM/SIGINT/SIGUSR1 watchers. */
void core_watch_signals(core *c);
void core_free(core *c);
/* Add an instance of a plugin from JSON settings to the current generation
 * (tolk-translate's file transport). */
tolk_instance *core_add_instance(core *c, const char *name, const char *plugin,
                                 const json_t *settings, conf_errors *errs);
tolk_instance *core_find_instance(core *c, const char *name);
tolk_status instance_start_transport(tolk_instance *inst);

/* ---- host.c ---- */
void host_init(core *c, tolk_host *h);
void host_free(void);
/* A plugin used a retired handle: counted, logged once per plugin. */
void late_callback(const char *what, const void *handle);

/* ---- channel.c ---- */
tolk_channel *channel_open(core *c, tolk_instance *transport, const tolk_channel_info *info,
                           void *tstate, tolk_status *why);
tolk_status channel_audio(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n);
tolk_status channel_audio_at(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n,
                             double captured_at);
void channel_input_end(tolk_channel *ch, tolk_leg leg);
void channel_close(tolk_channel *ch);
/* End a channel from the core side (shutdown): hangs up the transport. */
void channel_end(tolk_channel *ch, const char *why);
void channel_dtmf(tolk_channel *ch, tolk_leg leg, char digit, unsigned duration_ms);
void channel_progress(tolk_channel *ch, tolk_progress p, tolk_leg leg);
/* Publishes an event of the call to the observer, the log and the metrics. */
void channel_publish(tolk_channel *ch, int leg, const char *name, const json_t *data);

/* ---- backlog.c ---- */
void backlog_init(tolk_channel *ch, const tolk_channel_info *info);
void backlog_stop(tolk_channel *ch);
/* Before channel_audio() takes audio of leg: TOLK_OK, or TOLK_E_AGAIN for a
 * pull channel that is full (input_ready() follows from the loop). A live
 * channel that is full sheds its oldest audio instead. backlog_admit() is
 * inline (after shed.c's declarations) because it runs on every frame of
 * every call; backlog_admit_pull() is a pull channel's part. */
tolk_status backlog_admit_pull(tolk_channel *ch, tolk_leg leg);
static inline tolk_status backlog_admit(tolk_channel *ch, tolk_leg leg);

/* ---- pipeline.c (and pipeline.h) ---- */
void stream_result(tolk_stream *s, const tolk_transcript *t);
void stream_failed(tolk_stream *s, tolk_status st, tolk_severity sev, const char *why);
void stream_flushed(tolk_stream *s);
void stream_ready(tolk_stream *s);
void request_mt_done(tolk_request *r, tolk_status st, const char *text);
void request_mt_result(tolk_request *r, const tolk_mt_result *res);
void request_tts_audio(tolk_request *r, const int16_t *pcm, size_t n);
void request_tts_done(tolk_request *r, tolk_status st);
/* recovery.c's events, as core_new() subscribes the pipeline to them: a
 * reset ended (every stage waiting for it resumes); report() marked inst
 * down (recognisers on it fail over). */
void channel_resume_after_reset(core *c, tolk_instance *inst, chain *ch);
void pipeline_instance_down(core *c, tolk_instance *inst, tolk_status st, tolk_severity sev,
                            const char *why);

/* ---- shed.c ---- */
/* The bound on a direction's unfinished audio, in samples, and the level a
 * call over it comes back under (three quarters). */
static inline uint64_t backlog_bound(const tolk_channel *ch) { return ch->backlog_bound; }
uint64_t backlog_low_water(const tolk_channel *ch);
/* Audio of the direction not yet translated and played, in samples. */
uint64_t backlog_samples(const direction *d);
/* A live channel over its bound drops its oldest audio (channel_audio()
 * and TTS audio call it; a pull channel's input waits instead). */
void backlog_shed(direction *d);
/* A number that grows while the channel gets work done. */
uint64_t backlog_progress(const tolk_channel *ch);
/* Every phrase still in the direction's pipeline is reported lost. */
void backlog_report_pending_lost(direction *d);
/* Voiced audio the recogniser never heard: counted, logged, reported. */
void backlog_audio_lost(direction *d, uint64_t samples, const char *reason);

static inline tolk_status backlog_admit(tolk_channel *ch, tolk_leg leg) {
    if (ch->flags & TOLK_CHAN_PULL) return backlog_admit_pull(ch, leg);
    /* backlog_shed()'s own first test, so that a call under its bound
     * makes no call at all */
    direction *d = &ch->dir[leg];
    if (d->phrase_samples + ch->out[d->dst].len > backlog_bound(ch)) backlog_shed(d);
    return TOLK_OK;
}

/* ---- generation.c ---- */
generation *generation_build(core *c, conf_set *cs, const generation *prev, conf_errors *errs);
void generation_ref(generation *g);
void generation_unref(generation *g);
chain *generation_route(generation *g, tolk_kind kind, const char *from, const char *to);
tolk_instance *instance_new(core *c, const conf_instance *ci, conf_errors *errs);
void instance_unref(tolk_instance *inst);

/* ---- recovery.c ---- */
void recovery_init(core *c);
void recovery_stop(core *c);
const conf_recovery *recovery_conf(core *c);
/* Outcome of one operation of inst, for its health. */
void health_record(core *c, tolk_instance *inst, int ok);
/* The provider new calls should use: the first one not down. */
size_t chain_pick(chain *ch);
/* Decide what to do after a failure of an operation on ladder lad served
 * by chain->prov[*idx]. Returns the tier to try next (and moves *idx on a
 * failover), or TIER_NONE when every tier is spent. */
tier recovery_next(core *c, const conf_recovery *rc, ladder *lad, chain *ch, size_t *idx,
                   tolk_status st, tolk_severity sev);
void recovery_count(core *c, tolk_instance *inst, tier t, int success);
/* Tier 2 / tier 4 work; when it ends, c->on_reset_done resumes every stage
 * waiting for it. */
void instance_reset(core *c, const conf_recovery *rc, tolk_instance *inst);
void chain_reset(core *c, const conf_recovery *rc, chain *ch);
void recovery_forget_chain(chain *ch);
double recovery_delay(const conf_recovery *rc, const ladder *lad);
/* host->report(): a failed operation of inst; a serious one marks it down
 * (and c->on_instance_down moves its streams). */
void instance_report(core *c, tolk_instance *inst, tolk_status st, tolk_severity sev,
                     const char *why);
void instance_reset_done(tolk_instance *inst, tolk_status st);

/* ---- playback.c ---- */
void playback_init(core *c);
void playback_free(core *c);
void outbuf_push(core *c, outbuf *ob, const int16_t *pcm, size_t n);
void outbuf_pad(core *c, outbuf *ob);
void outbuf_pop(outbuf *ob, int16_t *frame);
void outbuf_free(core *c, outbuf *ob);
/* Paced legs: join the wheel if a whole frame is waiting. */
void playback_schedule(core *c, outbuf *ob);
/* Plays one frame of ch's buffer for leg (the wheel calls it). */
void channel_play_frame(tolk_channel *ch, tolk_leg leg);
/* Continuous playout: a frame of silence for leg (the wheel calls it). */
void channel_play_silence(tolk_channel *ch, tolk_leg leg);
/* Audio is waiting for leg: played now (a file) or scheduled (a call). */
void deliver_now(tolk_channel *ch, tolk_leg leg);
/* host->channel_played(): latency to the ear. */
void channel_played(tolk_channel *ch, tolk_leg leg, uint64_t frames);
/* Running behind (core.max_lag_seconds, core.max_speedup): the speed ph's
 * translated speech should play at if its audio were queued now, from the
 * lag it would start with. 1.0 when nothing waits ahead of it. */
double playback_speed_for(direction *d, const phrase *ph);
/* The direction's speaker talks (a voiced frame): queued speech that would
 * hold up what is being said beyond the bound plays faster from now. */
void playback_talking(direction *d);
/* TTS audio of ph for the direction's listener: the first call (first)
 * decides the phrase's speed (unless the TTS was asked for it) and the
 * audio is time-compressed on its way to the output buffer when it plays
 * faster. playback_phrase_end() flushes what the compressor holds: at the
 * end of a phrase, and before the next one starts. */
void playback_phrase_audio(direction *d, phrase *ph, const int16_t *pcm, size_t n, int first);
void playback_phrase_end(direction *d);
/* Tells the transport the direction's new mode (direction_mode); when it
 * bridges an untranslated direction itself, the core stops playing it. */
void channel_direction_mode(direction *d, tolk_mode mode);

/* ---- core_metrics.c ---- */
void core_metrics_init(core *c);
void count_error(core *c, const char *component, const char *type, tolk_severity sev);

/* ---- small helpers every layer uses ---- */

static inline const char *leg_name(tolk_leg leg) { return leg == TOLK_LEG_A ? "a" : "b"; }

/* The call may be able to end: checked from the loop, never inside a
 * plugin's call (channel.c's on_finish decides). */
static inline void schedule_finish(tolk_channel *ch) {
    if (!ev_is_active(&ch->finish)) {
        ev_timer_set(&ch->finish, 0., 0.);
        ev_timer_start(ch->core->loop, &ch->finish);
    }
}

#endif
