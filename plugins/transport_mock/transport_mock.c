/*
 * transport_mock -- synthetic calls for tests and benchmarks.
 *
 * start() opens `calls` calls (spread over start_spread_ms). On each call the
 * talking parties send `phrases` tone bursts of speech_ms separated by gap_ms
 * of low noise, then either half-close their input (hangup = "end") or hang up
 * (hangup = "close"). Everything the core plays back is measured: frame counts,
 * frame sizes, energy, and for paced calls the timing of each frame against a
 * 20 ms grid. health() reports it all as JSON for tests and the benchmark; the
 * fields are documented in README.md and are kept stable.
 *
 * One timer per instance feeds every call, so a thousand calls cost one timer.
 * In realtime the calls are spread over feed_phases phases of the 20 ms frame
 * period (slot i is in phase i % feed_phases) and the timer fires once per
 * phase, feeding only that phase's calls: the work comes in small steady
 * slices, as from real RTP streams, rather than one burst every 20 ms.
 * The per-call pointer handed to the core is a generation-tagged slot number,
 * not a pointer, so a late play()/hangup() from the core for a call that is
 * over is caught and counted instead of touching freed memory.
 *
 * Settings (group `settings` of the instance):
 *   calls            int    1        concurrent calls opened at start
 *   start_spread_ms  int    0        spread call starts evenly over this window
 *   phrases          int    3        tone bursts each talking leg sends per call
 *   speech_ms        int    1200     length of a burst (rounded to 20 ms)
 *   gap_ms           int    1000     silence after each burst (rounded to 20 ms)
 *   legs             string "a"      who talks: "a", or "both" (B starts half a
 *                                    speech_ms+gap_ms later so they alternate)
 *   mode             string "default" default|bidirectional|unidirectional|passthrough
 *   from             string "en"     language of leg A
 *   to               string "es"     language of leg B
 *   paced            bool   true     ask the core to pace play() (a live call)
 *   realtime         bool   true     feed 1 frame per 20 ms per talking leg;
 *                                    false: as fast as the loop allows
 *   feed_phases      int    20       realtime: phases of the 20 ms period the
 *                                    calls are fed at (timer every 20/N ms;
 *                                    at most `calls`); 1: every call on the
 *                                    same tick
 *   hangup           string "end"    "end": input_end on each talking leg after
 *                                    its last gap, the core ends the call;
 *                                    "close": channel_close after the last frame
 *   amplitude        int    6000     peak amplitude of the bursts
 *   repeat           bool   false    start a new call whenever one ends (soak)
 *   endpoint_a       string (none)   endpoint (SIP peer) of leg A: its language
 *   endpoint_b       string (none)   and voice profile come from the core's
 *                                    endpoints list instead of from/to
 *
 * ABI 1.2 transport features (all off by default: the calls are then those
 * of a 1.1 transport):
 *   continuous       bool   false    TOLK_CHAN_CONTINUOUS: a frame per 20 ms per
 *                                    leg, silence included
 *   await_answer_ms  int    0        > 0: TOLK_CHAN_AWAIT_ANSWER, "ringing" at
 *                                    open and "answered" this long after
 *   dtmf             string (none)   digits sent by leg A at dtmf_at_ms, each
 *                                    lasting dtmf_duration_ms (any characters:
 *                                    the core refuses what is not a digit)
 *   dtmf_at_ms       int    500
 *   dtmf_duration_ms int    120
 *   played_feedback  bool   false    channel_played() for each frame handed to
 *                                    play, playout_delay_ms after it came
 *   playout_delay_ms int    60
 *   capture_offset_ms int   -1       >= 0: audio through channel_audio_at(),
 *                                    captured this long before it is sent
 *   bridge_passthrough bool false    direction_mode(PASSTHROUGH) returns OK
 *                                    (the mock "bridges"); else it declines
 *   play_error_every int    0        every Nth play returns TOLK_E_BACKEND
 *   call_options     string (none)   JSON object handed as the calls' options
 *   info_size        int    0        > 0: the size written in channel_info
 *                                    (to test the core's size check)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <tolk/plugin.h>

#define PLUGIN_NAME "transport_mock"
#define MAX_CALLS 100000
/* Realtime feeding: the 20 ms frame period is split into this many phases at
 * most (the timer then fires every 1 ms). */
#define FEED_PHASES_MAX 20
/* Records of this many most recent calls are kept for health(). */
#define REC_MAX 64
#define REC_EVENTS 64
/* Pacing histogram: 10 us buckets up to 20 ms, then one overflow bucket. */
#define HIST_BUCKET_S 10e-6
#define HIST_N 2000
/* A play() this long after the previous one on the same leg starts a new
 * talkspurt, and with it a new grid origin. */
#define TALKSPURT_GAP_S 0.060
/* Played-out feedback: the hand-over times of this many most recent frames
 * per leg are kept (2.56 s; playout_delay_ms is bounded by it). */
#define FB_RING 128
#define FB_PERIOD_S 0.002
/* Quiet frames that separate two "heard" events: bridges the dips of speech. */
#define HEARD_QUIET_FRAMES 3
/* A stalled loop is caught up at most this many frames per leg per tick. */
#define CATCHUP_MAX 10
/* Fast mode: frames per call per turn, and per turn in all, so one turn of
 * the loop stays short whatever the number of calls. */
#define FAST_PER_CALL 50
#define FAST_PER_TURN 4000
#define REFUSED_RETRY_S 1.0
#define SILENCE_NOISE 30 /* +-30 uniform: RMS ~17, far below 100 */
#define ENERGY_RMS 100.0
#define PITCHES 7
#define NOISE_LEN 8192
/* Above this the bursts are synthesized frame by frame instead (bursts
 * longer than about 18 s). */
#define BURST_TABLE_MAX (8u << 20)
#define TWO_PI 6.283185307179586

typedef enum legs_mode { LEGS_A = 0, LEGS_BOTH = 1 } legs_mode;
typedef enum hangup_mode { HANGUP_END = 0, HANGUP_CLOSE = 1 } hangup_mode;

typedef enum call_state {
    C_FREE = 0,
    C_OPENING, /* inside channel_open() */
    C_LIVE,
    C_CLOSING, /* inside our channel_close() */
    C_DEAD     /* over; the slot is recycled by sweep() */
} call_state;

typedef enum ev_code {
    EV_OPEN,
    EV_REFUSED,
    EV_TALK_A,
    EV_TALK_B,
    EV_PLAY_A,
    EV_PLAY_B,
    EV_END_A,
    EV_END_B,
    EV_CLOSE,
    EV_HANGUP,
    EV_REJECTED_A,
    EV_REJECTED_B,
    EV_HEARD_A,
    EV_HEARD_B
} ev_code;

static const char *const ev_names[] = {"open",   "refused", "talk_a", "talk_b",
                                       "play_a", "play_b",  "end_a",  "end_b",
                                       "close",  "hangup",  "rejected_a", "rejected_b",
                                       "heard_a", "heard_b"};

typedef struct call_rec {
    uint64_t seq; /* 0: unused */
    char id[96];
    const char *state; /* "opening" "active" "ended" "refused" */
    int refused_status;
    uint64_t sent[2], played[2], energy[2];
    unsigned nev;
    int truncated;
    uint8_t ev[REC_EVENTS];
    uint32_t ev_ms[REC_EVENTS]; /* since the call was opened */
} call_rec;

typedef struct leg_state {
    int talking;
    uint64_t offset; /* frames of silence before the first burst */
    uint64_t total;  /* frames this leg sends */
    uint64_t sent;
    int input_ended;
    int rejected; /* channel_audio refused: the channel is over */
    int waiting;  /* channel_audio said TOLK_E_AGAIN: until input_ready() */
    double pc, ps; /* carrier phasor */
    uint32_t rng;
    /* what the core plays to this party */
    uint64_t played;
    double last_play, t0;
    uint64_t k;
    unsigned quiet_run; /* played frames in a row at or under ENERGY_RMS */
    /* played-out feedback: when each frame was handed to play */
    uint64_t handed, reported;
    double hand_t[FB_RING];
} leg_state;

typedef struct mock_call {
    call_state state;
    uint32_t gen;
    uint64_t seq;
    tolk_channel *ch;
    double t_open, t_start;
    char id[96];
    int answered, dtmf_sent;
    leg_state leg[2];
} mock_call;

typedef struct mock {
    const tolk_host *host;
    tolk_instance *inst;

    /* settings */
    uint64_t ncalls;
    double spread_s;
    uint64_t phrases, speech_frames, gap_frames;
    legs_mode legs;
    tolk_mode mode;
    char *from, *to;
    char *endpoint[2];
    int paced, realtime;
    unsigned phases;    /* feed_phases: slot i is fed in phase i % phases */
    double feed_period; /* realtime timer period: TOLK_FRAME_SECONDS / phases */
    hangup_mode hangup;
    double amplitude;
    int repeat;
    char prefix[64];
    int continuous;
    double await_answer_s;
    char *dtmf;
    double dtmf_at_s;
    unsigned dtmf_duration_ms;
    int played_feedback;
    double playout_delay_s;
    double capture_offset_s; /* < 0: channel_audio() */
    int bridge_passthrough;
    uint64_t play_error_every;
    json_t *call_options;
    uint32_t info_size;
    tolk_timer *fb_timer;

    /* calls */
    mock_call *calls;
    unsigned slot_bits;
    uintptr_t slot_mask;
    uint32_t gen_mask;
    uint32_t *free_slots;
    uint64_t nfree;
    uint64_t ndead;
    uint64_t seq;
    uint64_t rr; /* fast mode: where the next turn starts */

    /* schedule */
    tolk_timer *timer;
    int timer_repeating;
    double timer_at;
    /* Realtime phase slots: slot s starts at feed_t0 + s * feed_period and
     * belongs to phase s % phases. feed_slot is the last slot fed. feed_t0
     * is the time of the timer's first tick, so the slots follow the
     * timer's own schedule. */
    double feed_t0;
    int64_t feed_slot;
    int feed_anchored;
    int in_tick;
    int depth; /* > 0 while inside a host call that may call us back */
    int started, stopped;
    double t_base;
    uint64_t initial_next; /* next of the `calls` initial calls to open */
    uint64_t pending_restart;
    uint64_t pending_retry;
    double retry_at;

    /* statistics */
    uint64_t calls_opened, calls_refused, calls_ended;
    uint64_t frames_sent[2], frames_played[2], energy_played[2];
    uint64_t play_bad_size, play_bad_leg, play_unknown_call, hangup_unknown_call;
    uint64_t audio_rejected;
    uint64_t audio_waits; /* channel_audio() said TOLK_E_AGAIN (a full pull call) */
    uint64_t silence_played[2], talkspurts[2], played_reported[2], passthrough_told[2];
    uint64_t play_calls, play_errors_returned, dtmf_sent, calls_answered;
    uint64_t hist[HIST_N + 1];
    uint64_t jitter_frames;
    double jitter_max_s;
    double feed_lag_max_s;

    call_rec recs[REC_MAX];
    int16_t *bursts; /* PITCHES x speech_frames frames, or NULL */
    int16_t noise[NOISE_LEN];
    int16_t frame[TOLK_FRAME_SAMPLES];
} mock;

/* ------------------------------------------------------------------ */
/* Settings                                                            */

static const tolk_option options[] = {
    {"calls", TOLK_OPT_INT, 0, "1", 1, MAX_CALLS, "concurrent calls opened at start"},
    {"start_spread_ms", TOLK_OPT_INT, 0, "0", 0, 86400000,
     "spread the call starts evenly over this many ms"},
    {"phrases", TOLK_OPT_INT, 0, "3", 0, 1000000, "tone bursts each talking leg sends per call"},
    {"speech_ms", TOLK_OPT_INT, 0, "1200", 20, 3600000,
     "length of a tone burst, ms (rounded to 20 ms)"},
    {"gap_ms", TOLK_OPT_INT, 0, "1000", 0, 3600000,
     "silence after each burst, ms (rounded to 20 ms)"},
    {"legs", TOLK_OPT_STRING, 0, "a", 0, 0,
     "who talks: \"a\", or \"both\" (B offset by half a burst+gap)"},
    {"mode", TOLK_OPT_STRING, 0, "default", 0, 0,
     "default, bidirectional, unidirectional or passthrough"},
    {"from", TOLK_OPT_STRING, 0, "en", 0, 0, "language of leg A"},
    {"to", TOLK_OPT_STRING, 0, "es", 0, 0, "language of leg B"},
    {"paced", TOLK_OPT_BOOL, 0, "true", 0, 0, "the core paces play() at 20 ms (a live call)"},
    {"realtime", TOLK_OPT_BOOL, 0, "true", 0, 0,
     "feed 20 ms per 20 ms; false: as fast as possible"},
    {"feed_phases", TOLK_OPT_INT, 0, "20", 1, FEED_PHASES_MAX,
     "realtime: calls fed at this many phases of the 20 ms period (1: all on one tick)"},
    {"hangup", TOLK_OPT_STRING, 0, "end", 0, 0,
     "\"end\": input_end and let the core end the call; \"close\": hang up after the last frame"},
    {"amplitude", TOLK_OPT_INT, 0, "6000", 0, 32767, "peak amplitude of the tone bursts"},
    {"repeat", TOLK_OPT_BOOL, 0, "false", 0, 0, "start a new call whenever one ends (soak)"},
    {"endpoint_a", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "endpoint of leg A: language and voice from the core's endpoints (not from)"},
    {"endpoint_b", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "endpoint of leg B: language and voice from the core's endpoints (not to)"},
    {"continuous", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "continuous playout: a frame per 20 ms per leg, silence included"},
    {"await_answer_ms", TOLK_OPT_INT, 0, "0", 0, 3600000,
     "> 0: the call rings (no translation) until answered this many ms after it opened"},
    {"dtmf", TOLK_OPT_STRING, 0, NULL, 0, 0, "DTMF digits leg A sends at dtmf_at_ms"},
    {"dtmf_at_ms", TOLK_OPT_INT, 0, "500", 0, 3600000, "when the DTMF digits are sent, ms after open"},
    {"dtmf_duration_ms", TOLK_OPT_INT, 0, "120", 0, 60000, "duration reported for each digit"},
    {"played_feedback", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "report frames as played out (channel_played) playout_delay_ms after play"},
    {"playout_delay_ms", TOLK_OPT_INT, 0, "60", 0, 2000,
     "played_feedback: time from play() to the listener"},
    {"capture_offset_ms", TOLK_OPT_INT, 0, "-1", -1, 60000,
     ">= 0: send audio with channel_audio_at(), captured this long before it is sent"},
    {"bridge_passthrough", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "accept direction_mode(PASSTHROUGH): the mock bridges untranslated audio itself"},
    {"play_error_every", TOLK_OPT_INT, 0, "0", 0, 1000000,
     "every Nth play() fails with TOLK_E_BACKEND (0: never)"},
    {"call_options", TOLK_OPT_STRING, 0, NULL, 0, 0, "JSON object passed as each call's options"},
    {"info_size", TOLK_OPT_INT, 0, "0", 0, 65536,
     "> 0: the size written in tolk_channel_info (tests of the core's check)"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static int parse_legs(const char *v, legs_mode *out) {
    if (v && strcmp(v, "a") == 0) *out = LEGS_A;
    else if (v && strcmp(v, "both") == 0) *out = LEGS_BOTH;
    else return -1;
    return 0;
}

static int parse_mode(const char *v, tolk_mode *out) {
    if (!v) return -1;
    if (strcmp(v, "default") == 0) *out = TOLK_MODE_DEFAULT;
    else if (strcmp(v, "bidirectional") == 0) *out = TOLK_MODE_BIDIRECTIONAL;
    else if (strcmp(v, "unidirectional") == 0) *out = TOLK_MODE_UNIDIRECTIONAL;
    else if (strcmp(v, "passthrough") == 0) *out = TOLK_MODE_PASSTHROUGH;
    else return -1;
    return 0;
}

static int parse_hangup(const char *v, hangup_mode *out) {
    if (v && strcmp(v, "end") == 0) *out = HANGUP_END;
    else if (v && strcmp(v, "close") == 0) *out = HANGUP_CLOSE;
    else return -1;
    return 0;
}

static tolk_status tm_check_config(const json_t *cfg, tolk_config_error *err) {
    legs_mode l;
    tolk_mode m;
    hangup_mode h;
    const char *v;
    if (parse_legs(v = json_string_value(json_object_get(cfg, "legs")), &l) != 0) {
        err->key = "legs";
        snprintf(err->message, sizeof err->message, "legs \"%s\": expected \"a\" or \"both\"",
                 v ? v : "");
        return TOLK_E_INVAL;
    }
    if (parse_mode(v = json_string_value(json_object_get(cfg, "mode")), &m) != 0) {
        err->key = "mode";
        snprintf(err->message, sizeof err->message,
                 "mode \"%s\": expected default, bidirectional, unidirectional or passthrough",
                 v ? v : "");
        return TOLK_E_INVAL;
    }
    if (parse_hangup(v = json_string_value(json_object_get(cfg, "hangup")), &h) != 0) {
        err->key = "hangup";
        snprintf(err->message, sizeof err->message,
                 "hangup \"%s\": expected \"end\" or \"close\"", v ? v : "");
        return TOLK_E_INVAL;
    }
    if ((v = json_string_value(json_object_get(cfg, "call_options")))) {
        json_t *o = json_loads(v, 0, NULL);
        int ok = json_is_object(o);
        json_decref(o);
        if (!ok) {
            err->key = "call_options";
            snprintf(err->message, sizeof err->message, "call_options: not a JSON object");
            return TOLK_E_INVAL;
        }
    }
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Call records and events                                             */

static call_rec *rec_of(mock *m, uint64_t seq) {
    call_rec *r = &m->recs[seq % REC_MAX];
    return r->seq == seq ? r : NULL;
}

static void rec_event(mock *m, mock_call *c, ev_code e) {
    call_rec *r = rec_of(m, c->seq);
    if (!r) return;
    if (r->nev >= REC_EVENTS) {
        r->truncated = 1;
        return;
    }
    double ms = (m->host->now() - c->t_open) * 1000.0;
    r->ev[r->nev] = (uint8_t)e;
    r->ev_ms[r->nev] = ms > 0 ? (uint32_t)(ms + 0.5) : 0;
    r->nev++;
}

static void rec_state(mock *m, mock_call *c, const char *state) {
    call_rec *r = rec_of(m, c->seq);
    if (r) r->state = state;
}

/* ------------------------------------------------------------------ */
/* Slots: the chan_state the core sees is (generation << bits | slot).  */

static void *token_of(mock *m, mock_call *c) {
    uintptr_t slot = (uintptr_t)(c - m->calls);
    return (void *)(((uintptr_t)c->gen << m->slot_bits) | slot);
}

/* The call behind a token, or NULL if the call is over (or never was). */
static mock_call *call_of(mock *m, void *token) {
    uintptr_t t = (uintptr_t)token;
    uintptr_t slot = t & m->slot_mask;
    if (slot >= m->ncalls) return NULL;
    mock_call *c = &m->calls[slot];
    if ((uint32_t)(t >> m->slot_bits) != c->gen) return NULL;
    if (c->state != C_OPENING && c->state != C_LIVE && c->state != C_CLOSING) return NULL;
    return c;
}

/* ------------------------------------------------------------------ */
/* Audio                                                               */

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static double burst_env(double t, double len) {
    /* Syllable-like 3 Hz modulation and 30 ms ramps at both ends. */
    double e = 0.6 + 0.4 * sin(TWO_PI * 3.0 * t - TWO_PI / 4);
    double ramp = t / 0.030;
    if ((len - t) / 0.030 < ramp) ramp = (len - t) / 0.030;
    if (ramp < 0) ramp = 0;
    return ramp < 1 ? e * ramp : e;
}

/* Frame w of a burst at pitch index `pitch` (0..PITCHES-1) into out. The
 * carrier phasor (*pc, *ps) carries the phase from frame to frame. */
static void tone_frame(const mock *m, unsigned pitch, uint64_t w, double *pc, double *ps,
                       int16_t *out) {
    /* 300 to 570 Hz, with a slight vibrato. */
    double f0 = 300.0 + 45.0 * pitch;
    double t = (double)w * TOLK_FRAME_SECONDS, len = (double)m->speech_frames * TOLK_FRAME_SECONDS;
    double freq = f0 * (1.0 + 0.03 * sin(TWO_PI * 5.0 * t));
    double dw = TWO_PI * freq / TOLK_SAMPLE_RATE, cr = cos(dw), sr = sin(dw);
    double ea = burst_env(t, len) * m->amplitude;
    double eb = burst_env(t + TOLK_FRAME_SECONDS, len) * m->amplitude;
    double de = (eb - ea) / TOLK_FRAME_SAMPLES;
    double c = *pc, sn = *ps;
    for (int i = 0; i < TOLK_FRAME_SAMPLES; i++) {
        double v = (ea + de * i) * sn;
        v += v >= 0 ? 0.5 : -0.5;
        if (v > 32767) v = 32767;
        if (v < -32768) v = -32768;
        out[i] = (int16_t)v;
        double nc = c * cr - sn * sr;
        sn = c * sr + sn * cr;
        c = nc;
    }
    double norm = 1.0 / sqrt(c * c + sn * sn); /* keeps rounding from drifting */
    *pc = c * norm;
    *ps = sn * norm;
}

/* Precomputes every burst once, when they fit in BURST_TABLE_MAX: feeding
 * a thousand calls is then a pointer into the table per frame. */
static int build_bursts(mock *m) {
    uint64_t per = m->speech_frames * TOLK_FRAME_SAMPLES;
    if ((double)per * PITCHES * sizeof(int16_t) > BURST_TABLE_MAX) return 0;
    m->bursts = malloc((size_t)per * PITCHES * sizeof(int16_t));
    if (!m->bursts) return -1;
    for (unsigned p = 0; p < PITCHES; p++) {
        double pc = 1, ps = 0;
        for (uint64_t w = 0; w < m->speech_frames; w++)
            tone_frame(m, p, w, &pc, &ps, m->bursts + p * per + w * TOLK_FRAME_SAMPLES);
    }
    return 0;
}

/* Frame number f of leg L. *burst_start is set if it starts a burst. */
static const int16_t *gen_frame(mock *m, mock_call *c, int L, uint64_t f, int *burst_start) {
    leg_state *lg = &c->leg[L];
    uint64_t cycle = m->speech_frames + m->gap_frames;
    uint64_t g = f - lg->offset, p = 0, w = 0;
    int speech = f >= lg->offset && cycle > 0;
    if (speech) {
        p = g / cycle;
        w = g % cycle;
        speech = p < m->phrases && w < m->speech_frames;
    }
    *burst_start = speech && w == 0;
    if (!speech)
        return m->noise + xorshift(&lg->rng) % (NOISE_LEN - TOLK_FRAME_SAMPLES);
    /* The pitch differs by call, phrase and leg. */
    unsigned pitch = (unsigned)((c->seq * 3 + p * 5 + (uint64_t)L * 2) % PITCHES);
    if (m->bursts)
        return m->bursts + (pitch * m->speech_frames + w) * TOLK_FRAME_SAMPLES;
    if (w == 0) {
        lg->pc = 1;
        lg->ps = 0;
    }
    tone_frame(m, pitch, w, &lg->pc, &lg->ps, m->frame);
    return m->frame;
}

/* ------------------------------------------------------------------ */
/* Call lifecycle                                                      */

static void mark_dead(mock *m, mock_call *c) {
    c->state = C_DEAD;
    c->ch = NULL;
    m->ndead++;
}

/* Recycles the slots of calls that are over. Only runs outside host calls,
 * so no frame of ours still refers to the call. */
static void sweep(mock *m) {
    if (m->ndead == 0 || m->depth > 0) return;
    for (uint64_t i = 0; i < m->ncalls && m->ndead > 0; i++) {
        mock_call *c = &m->calls[i];
        if (c->state != C_DEAD) continue;
        rec_state(m, c, "ended");
        c->state = C_FREE;
        m->free_slots[m->nfree++] = (uint32_t)i;
        m->ndead--;
        if (m->repeat && !m->stopped) m->pending_restart++;
    }
}

static void setup_legs(mock *m, mock_call *c) {
    uint64_t cycle = m->speech_frames + m->gap_frames;
    memset(c->leg, 0, sizeof c->leg);
    for (int L = 0; L < 2; L++) {
        leg_state *lg = &c->leg[L];
        lg->talking = L == TOLK_LEG_A || m->legs == LEGS_BOTH;
        lg->offset = L == TOLK_LEG_B ? cycle / 2 : 0;
        lg->total = lg->talking ? lg->offset + m->phrases * cycle : 0;
        lg->rng = (uint32_t)(c->seq * 2654435761u) ^ (L ? 0x9e3779b9u : 0x7f4a7c15u);
        if (lg->rng == 0) lg->rng = 1;
        lg->pc = 1;
        lg->quiet_run = HEARD_QUIET_FRAMES; /* the first loud frame is heard */
    }
}

static void feed_call(mock *m, mock_call *c, double now, uint64_t fast_n);

/* Realtime: the grid origin of a call opened at `now`, the start of the slot
 * of the call's phase nearest to now (within +-10 ms). The call's frames
 * then fall due halfway between two ticks of its phase, so a tick early or
 * late by less than 10 ms still finds exactly one frame due. */
static double phase_origin(const mock *m, const mock_call *c, double now) {
    double p = (double)((uint64_t)(c - m->calls) % m->phases);
    double x = (now - m->feed_t0) / m->feed_period;
    double s = p + (double)m->phases * floor((x - p) / (double)m->phases + 0.5);
    return m->feed_t0 + s * m->feed_period;
}

/* Returns 0 if a call was opened or refused, -1 if no slot is free. */
static int open_call(mock *m) {
    if (m->nfree == 0) return -1;
    uint32_t slot = m->free_slots[--m->nfree];
    mock_call *c = &m->calls[slot];
    c->gen = (c->gen + 1) & m->gen_mask;
    if (c->gen == 0) c->gen = 1; /* keeps every token non-NULL */
    c->seq = ++m->seq;
    snprintf(c->id, sizeof c->id, "%s-%llu", m->prefix, (unsigned long long)c->seq);
    c->t_open = c->t_start = m->host->now();
    c->ch = NULL;
    setup_legs(m, c);

    call_rec *r = &m->recs[c->seq % REC_MAX];
    memset(r, 0, sizeof *r);
    r->seq = c->seq;
    memcpy(r->id, c->id, sizeof r->id);
    r->state = "opening";

    tolk_channel_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    info.id = c->id;
    for (int leg = 0; leg < 2; leg++) {
        info.endpoint[leg] = m->endpoint[leg];
        if (!m->endpoint[leg]) info.language[leg] = leg == TOLK_LEG_A ? m->from : m->to;
    }
    info.mode = m->mode;
    info.paced = m->paced;
    /* fed as fast as the loop allows: the source can wait for the core */
    info.flags = (m->realtime ? 0u : TOLK_CHAN_PULL) | (m->continuous ? TOLK_CHAN_CONTINUOUS : 0u) |
                 (m->await_answer_s > 0 ? TOLK_CHAN_AWAIT_ANSWER : 0u);
    info.options = m->call_options;
    if (m->info_size) info.size = m->info_size;

    c->state = C_OPENING;
    tolk_status why = TOLK_E_BACKEND;
    m->depth++;
    tolk_channel *ch = m->host->channel_open(m->inst, &info, token_of(m, c), &why);
    m->depth--;
    if (!ch) {
        m->calls_refused++;
        r->refused_status = why;
        rec_event(m, c, EV_REFUSED);
        r->state = "refused";
        c->state = C_FREE;
        m->free_slots[m->nfree++] = slot;
        if (m->calls_refused <= 3 || (m->calls_refused & (m->calls_refused - 1)) == 0)
            TOLK_LOG(m->host, m->inst, TOLK_LOG_WARN, "call %s refused (status %d; %llu so far)",
                     c->id, (int)why, (unsigned long long)m->calls_refused);
        if (m->repeat && !m->stopped) {
            m->pending_retry++;
            m->retry_at = m->host->now() + REFUSED_RETRY_S;
        }
        return 0;
    }
    m->calls_opened++;
    rec_event(m, c, EV_OPEN);
    if (c->state == C_OPENING) { /* not hung up from inside channel_open() */
        c->state = C_LIVE;
        c->ch = ch;
        r->state = "active";
        if (m->await_answer_s > 0) {
            m->depth++;
            m->host->channel_progress(ch, TOLK_PROGRESS_RINGING, TOLK_LEG_B);
            m->depth--;
        }
        double now = m->host->now();
        c->t_start = m->realtime ? phase_origin(m, c, now) : now;
        /* The first frame goes out now; the rest at the call's phase. */
        if (m->realtime) feed_call(m, c, now, 0);
    }
    return 0;
}

static int leg_has_work(const leg_state *lg) {
    return lg->talking && !lg->rejected && !lg->waiting && !lg->input_ended && lg->sent < lg->total;
}

static int call_has_work(const mock_call *c) {
    return c->state == C_LIVE && (leg_has_work(&c->leg[0]) || leg_has_work(&c->leg[1]));
}

/* Every frame sent but the input_end or close not yet done (e.g. phrases = 0,
 * or a call the fast round-robin has not reached this turn). */
static int call_needs_finish(const mock *m, const mock_call *c) {
    if (c->state != C_LIVE || call_has_work(c)) return 0;
    for (int L = 0; L < 2; L++) {
        const leg_state *lg = &c->leg[L];
        if (lg->rejected) return 0; /* the core is ending it; wait for hangup() */
        if (lg->waiting) return 0;  /* frames left to send after input_ready() */
        if (m->hangup == HANGUP_END && lg->talking && !lg->input_ended) return 1;
    }
    return m->hangup == HANGUP_CLOSE;
}

/* After a leg's last frame: half-close it, or hang up once every talking leg
 * is done. */
static void finish_legs(mock *m, mock_call *c) {
    if (c->state != C_LIVE) return;
    if (m->hangup == HANGUP_END) {
        for (int L = 0; L < 2 && c->state == C_LIVE; L++) {
            leg_state *lg = &c->leg[L];
            if (!lg->talking || lg->input_ended || lg->rejected || lg->sent < lg->total) continue;
            lg->input_ended = 1;
            rec_event(m, c, L ? EV_END_B : EV_END_A);
            m->depth++;
            m->host->channel_input_end(c->ch, (tolk_leg)L);
            m->depth--;
        }
        return;
    }
    for (int L = 0; L < 2; L++)
        if (leg_has_work(&c->leg[L]) || c->leg[L].rejected) return;
    rec_event(m, c, EV_CLOSE);
    m->calls_ended++;
    tolk_channel *ch = c->ch;
    c->state = C_CLOSING;
    m->depth++;
    m->host->channel_close(ch);
    m->depth--;
    mark_dead(m, c);
}

static void feed_leg(mock *m, mock_call *c, int L, uint64_t n) {
    leg_state *lg = &c->leg[L];
    while (n-- > 0 && c->state == C_LIVE && leg_has_work(lg)) {
        int burst_start;
        const int16_t *pcm = gen_frame(m, c, L, lg->sent, &burst_start);
        if (burst_start) rec_event(m, c, L ? EV_TALK_B : EV_TALK_A);
        m->depth++;
        tolk_status st;
        if (m->capture_offset_s >= 0)
            st = m->host->channel_audio_at(c->ch, (tolk_leg)L, pcm, TOLK_FRAME_SAMPLES,
                                           m->host->now() - TOLK_FRAME_SECONDS - m->capture_offset_s);
        else
            st = m->host->channel_audio(c->ch, (tolk_leg)L, pcm, TOLK_FRAME_SAMPLES);
        m->depth--;
        if (st == TOLK_E_AGAIN && !m->realtime) {
            /* a pull call at its bound: this frame is sent again after
             * input_ready() */
            lg->waiting = 1;
            m->audio_waits++;
            break;
        }
        lg->sent++;
        m->frames_sent[L]++;
        call_rec *r = rec_of(m, c->seq);
        if (r) r->sent[L]++;
        if (st != TOLK_OK) {
            /* The channel is over on the core's side (its hangup follows):
             * neither party sends any more. */
            c->leg[0].rejected = c->leg[1].rejected = 1;
            m->audio_rejected++;
            rec_event(m, c, L ? EV_REJECTED_B : EV_REJECTED_A);
        }
    }
}

/* The call's timed events: the answer, the DTMF digits. */
static void call_events(mock *m, mock_call *c, double now) {
    if (m->await_answer_s > 0 && !c->answered && now - c->t_open >= m->await_answer_s) {
        c->answered = 1;
        m->calls_answered++;
        m->depth++;
        m->host->channel_progress(c->ch, TOLK_PROGRESS_ANSWERED, TOLK_LEG_B);
        m->depth--;
    }
    if (m->dtmf && !c->dtmf_sent && now - c->t_open >= m->dtmf_at_s) {
        c->dtmf_sent = 1;
        for (const char *d = m->dtmf; *d && c->state == C_LIVE; d++) {
            m->dtmf_sent++;
            m->depth++;
            m->host->channel_dtmf(c->ch, TOLK_LEG_A, *d, m->dtmf_duration_ms);
            m->depth--;
        }
    }
}

static void feed_call(mock *m, mock_call *c, double now, uint64_t fast_n) {
    if (c->state == C_LIVE) call_events(m, c, now);
    for (int L = 0; L < 2 && c->state == C_LIVE; L++) {
        leg_state *lg = &c->leg[L];
        if (!leg_has_work(lg)) continue;
        uint64_t n = fast_n;
        if (m->realtime) {
            /* Frames due by the clock, not by ticks: late ticks are made up
             * for and the schedule does not drift. */
            double due_f = floor((now - c->t_start) / TOLK_FRAME_SECONDS + 0.5) + 1;
            uint64_t due = due_f > 0 ? (uint64_t)due_f : 0;
            if (due > lg->total) due = lg->total;
            n = due > lg->sent ? due - lg->sent : 0;
            if (n > 1) {
                /* Frames owed beyond this tick's own: how late the loop ran. */
                double lag = (double)(n - 1) * TOLK_FRAME_SECONDS;
                if (lag > m->feed_lag_max_s) m->feed_lag_max_s = lag;
            }
            if (n > CATCHUP_MAX) n = CATCHUP_MAX;
        }
        feed_leg(m, c, L, n);
    }
    finish_legs(m, c);
}

/* ------------------------------------------------------------------ */
/* The instance timer                                                  */

static double initial_due(const mock *m, uint64_t i) {
    return m->t_base + m->spread_s * (double)i / (double)m->ncalls;
}

/* When the timer should next fire (absolute), or -1 when nothing is due. */
static double next_wake(mock *m, double now) {
    double when = -1;
    if (m->pending_restart > 0 || m->ndead > 0) return now;
    for (uint64_t i = 0; i < m->ncalls; i++)
        if (call_has_work(&m->calls[i]) || call_needs_finish(m, &m->calls[i])) return now;
    if (!m->stopped && m->started && m->initial_next < m->ncalls)
        when = initial_due(m, m->initial_next);
    if (m->pending_retry > 0 && (when < 0 || m->retry_at < when)) when = m->retry_at;
    return when;
}

static void tick(void *ud);
static void feedback_tick(void *ud);

static void schedule(mock *m) {
    if (m->in_tick || m->depth > 0) return; /* tick() schedules when it ends */
    double now = m->host->now();
    if (m->realtime) {
        /* One repeating timer, one tick per phase (20 ms / phases), while
         * anything is going on; the repeating timer keeps the schedule
         * steady. A slot in use is a call going on (or being swept). */
        int busy = m->nfree < m->ncalls || next_wake(m, now) >= 0;
        if (busy && !m->timer) {
            m->timer_repeating = 1;
            m->feed_anchored = 0; /* feed_t0 is set by the first tick */
            m->feed_slot = -1;
            m->timer = m->host->timer_start(m->inst, 0, m->feed_period, tick, m);
        } else if (!busy && m->timer) {
            m->host->timer_stop(m->timer);
            m->timer = NULL;
        }
        return;
    }
    double when = next_wake(m, now);
    if (when < 0) {
        if (m->timer) {
            m->host->timer_stop(m->timer);
            m->timer = NULL;
        }
        return;
    }
    if (m->timer && m->timer_at <= when + 1e-4) return;
    if (m->timer) m->host->timer_stop(m->timer);
    m->timer_repeating = 0;
    m->timer_at = when;
    m->timer = m->host->timer_start(m->inst, when > now ? when - now : 0, 0, tick, m);
}

static void tick(void *ud) {
    mock *m = ud;
    if (!m->timer_repeating) m->timer = NULL; /* a one-shot frees itself */
    m->in_tick = 1;
    double now = m->host->now();
    if (m->realtime && !m->feed_anchored) {
        m->feed_t0 = now;
        m->feed_anchored = 1;
    }

    /* Open what is due: initial calls (spread), restarts, retries. */
    while (!m->stopped && m->initial_next < m->ncalls && initial_due(m, m->initial_next) <= now &&
           open_call(m) == 0)
        m->initial_next++;
    while (m->pending_restart > 0 && !m->stopped && open_call(m) == 0) m->pending_restart--;
    if (m->pending_retry > 0 && now >= m->retry_at && !m->stopped) {
        /* A retry refused again queues itself anew, so take the batch first. */
        uint64_t n = m->pending_retry;
        m->pending_retry = 0;
        for (; n > 0; n--)
            if (open_call(m) != 0) break;
        m->pending_retry += n;
    }

    if (m->realtime) {
        now = m->host->now(); /* opening many calls takes time */
        /* Feed the phase of the next slot, and of every slot the clock says
         * has passed since (a late tick); every phase at most once. Each call
         * gets the frames due by the clock, so nothing is lost or doubled
         * whichever tick feeds it. */
        int64_t last = (int64_t)floor((now - m->feed_t0) / m->feed_period + 0.5);
        if (last <= m->feed_slot) last = m->feed_slot + 1;
        int64_t first = m->feed_slot + 1;
        if (last - first >= (int64_t)m->phases) first = last - (int64_t)m->phases + 1;
        for (int64_t s = first; s <= last; s++)
            for (uint64_t i = (uint64_t)s % m->phases; i < m->ncalls; i += m->phases)
                if (m->calls[i].state == C_LIVE) feed_call(m, &m->calls[i], now, 0);
        m->feed_slot = last;
    } else {
        /* Round-robin with a budget per turn so every call progresses and a
         * turn stays short. */
        uint64_t budget = FAST_PER_TURN, visited = 0, i = m->rr % m->ncalls;
        for (; visited < m->ncalls && budget > 0; visited++, i = (i + 1) % m->ncalls) {
            mock_call *c = &m->calls[i];
            if (!call_has_work(c)) {
                if (call_needs_finish(m, c)) finish_legs(m, c);
                continue;
            }
            uint64_t before = c->leg[0].sent + c->leg[1].sent;
            uint64_t n = budget < FAST_PER_CALL ? budget : FAST_PER_CALL;
            feed_call(m, c, now, n);
            uint64_t used = c->leg[0].sent + c->leg[1].sent - before;
            budget = used < budget ? budget - used : 0;
        }
        m->rr = i;
    }

    m->in_tick = 0;
    sweep(m); /* restarts it queues open on the next tick, never inside hangup() */
    schedule(m);
}

/* ------------------------------------------------------------------ */
/* Plugin functions                                                    */

static void tm_destroy(void *self) {
    mock *m = self;
    if (!m) return;
    if (m->timer) m->host->timer_stop(m->timer);
    if (m->fb_timer) m->host->timer_stop(m->fb_timer);
    uint64_t open = 0;
    for (uint64_t i = 0; m->calls && i < m->ncalls; i++)
        if (m->calls[i].state == C_LIVE || m->calls[i].state == C_OPENING) open++;
    if (open)
        TOLK_LOG(m->host, m->inst, TOLK_LOG_WARN, "destroyed with %llu calls still open",
                 (unsigned long long)open);
    free(m->calls);
    free(m->free_slots);
    free(m->bursts);
    free(m->from);
    free(m->to);
    free(m->endpoint[0]);
    free(m->endpoint[1]);
    free(m->dtmf);
    json_decref(m->call_options);
    free(m);
}

static tolk_status tm_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    mock *m = calloc(1, sizeof *m);
    if (!m) return TOLK_E_NOMEM;
    m->host = host;
    m->inst = inst;

    int64_t v = host->cfg_int(cfg, "calls");
    m->ncalls = v < 1 ? 1 : v > MAX_CALLS ? MAX_CALLS : (uint64_t)v;
    v = host->cfg_int(cfg, "start_spread_ms");
    m->spread_s = v > 0 ? (double)v / 1000.0 : 0;
    v = host->cfg_int(cfg, "phrases");
    m->phrases = v > 0 ? (uint64_t)v : 0;
    v = host->cfg_int(cfg, "speech_ms");
    m->speech_frames = v > 0 ? (uint64_t)(v + 10) / 20 : 1;
    if (m->speech_frames == 0) m->speech_frames = 1;
    v = host->cfg_int(cfg, "gap_ms");
    m->gap_frames = v > 0 ? (uint64_t)(v + 10) / 20 : 0;
    v = host->cfg_int(cfg, "amplitude");
    m->amplitude = v < 0 ? 0 : v > 32767 ? 32767 : (double)v;
    m->paced = host->cfg_bool(cfg, "paced") ? 1 : 0;
    m->realtime = host->cfg_bool(cfg, "realtime") ? 1 : 0;
    v = host->cfg_int(cfg, "feed_phases");
    m->phases = v < 1 ? 1 : v > FEED_PHASES_MAX ? FEED_PHASES_MAX : (unsigned)v;
    if (m->phases > m->ncalls) m->phases = (unsigned)m->ncalls; /* no empty phases */
    m->feed_period = TOLK_FRAME_SECONDS / (double)m->phases;
    m->repeat = host->cfg_bool(cfg, "repeat") ? 1 : 0;
    if (parse_legs(host->cfg_string(cfg, "legs"), &m->legs) != 0 ||
        parse_mode(host->cfg_string(cfg, "mode"), &m->mode) != 0 ||
        parse_hangup(host->cfg_string(cfg, "hangup"), &m->hangup) != 0) {
        TOLK_LOG(host, inst, TOLK_LOG_ERR, "bad legs, mode or hangup setting");
        tm_destroy(m);
        return TOLK_E_INVAL;
    }
    const char *from = host->cfg_string(cfg, "from"), *to = host->cfg_string(cfg, "to");
    m->from = strdup(from ? from : "en");
    m->to = strdup(to ? to : "es");
    const char *ep_a = host->cfg_string(cfg, "endpoint_a"), *ep_b = host->cfg_string(cfg, "endpoint_b");
    m->endpoint[0] = ep_a ? strdup(ep_a) : NULL;
    m->endpoint[1] = ep_b ? strdup(ep_b) : NULL;
    m->continuous = host->cfg_bool(cfg, "continuous") ? 1 : 0;
    m->await_answer_s = (double)host->cfg_int(cfg, "await_answer_ms") / 1000.0;
    const char *dtmf = host->cfg_string(cfg, "dtmf");
    m->dtmf = dtmf && *dtmf ? strdup(dtmf) : NULL;
    m->dtmf_at_s = (double)host->cfg_int(cfg, "dtmf_at_ms") / 1000.0;
    m->dtmf_duration_ms = (unsigned)host->cfg_int(cfg, "dtmf_duration_ms");
    m->played_feedback = host->cfg_bool(cfg, "played_feedback") ? 1 : 0;
    m->playout_delay_s = (double)host->cfg_int(cfg, "playout_delay_ms") / 1000.0;
    int64_t offset = host->cfg_int(cfg, "capture_offset_ms");
    m->capture_offset_s = offset < 0 ? -1 : (double)offset / 1000.0;
    m->bridge_passthrough = host->cfg_bool(cfg, "bridge_passthrough") ? 1 : 0;
    v = host->cfg_int(cfg, "play_error_every");
    m->play_error_every = v > 0 ? (uint64_t)v : 0;
    const char *opts = host->cfg_string(cfg, "call_options");
    m->call_options = opts ? json_loads(opts, 0, NULL) : NULL;
    v = host->cfg_int(cfg, "info_size");
    m->info_size = v > 0 ? (uint32_t)v : 0;
    const char *name = host->instance_name(inst);
    snprintf(m->prefix, sizeof m->prefix, "%s", name && *name ? name : "mock");

    m->slot_bits = 1;
    while (m->slot_bits < 32 && ((uint64_t)1 << m->slot_bits) < m->ncalls) m->slot_bits++;
    m->slot_mask = ((uintptr_t)1 << m->slot_bits) - 1;
    unsigned gen_bits = (unsigned)(sizeof(uintptr_t) * 8) - m->slot_bits;
    m->gen_mask = gen_bits >= 32 ? UINT32_MAX : (uint32_t)(((uint64_t)1 << gen_bits) - 1);

    m->calls = calloc(m->ncalls, sizeof *m->calls);
    m->free_slots = malloc(m->ncalls * sizeof *m->free_slots);
    if (!m->calls || !m->free_slots || !m->from || !m->to) {
        tm_destroy(m);
        return TOLK_E_NOMEM;
    }
    uint32_t seed = 0x2545f491u;
    for (size_t i = 0; i < NOISE_LEN; i++)
        m->noise[i] = (int16_t)((int)(xorshift(&seed) % (2 * SILENCE_NOISE + 1)) - SILENCE_NOISE);
    if (build_bursts(m) != 0) {
        tm_destroy(m);
        return TOLK_E_NOMEM;
    }
    /* Pop order hands out slot 0 first. */
    for (uint64_t i = 0; i < m->ncalls; i++)
        m->free_slots[i] = (uint32_t)(m->ncalls - 1 - i);
    m->nfree = m->ncalls;
    *self = m;
    return TOLK_OK;
}

static tolk_status tm_start(void *self) {
    mock *m = self;
    if (m->started && !m->stopped) return TOLK_OK;
    m->started = 1;
    m->stopped = 0;
    m->t_base = m->host->now();
    m->initial_next = 0;
    TOLK_LOG(m->host, m->inst, TOLK_LOG_INFO,
             "%llu call(s) over %.3f s: %llu phrase(s) of %llu ms, gap %llu ms, legs %s, %s%s%s",
             (unsigned long long)m->ncalls, m->spread_s, (unsigned long long)m->phrases,
             (unsigned long long)m->speech_frames * 20, (unsigned long long)m->gap_frames * 20,
             m->legs == LEGS_BOTH ? "both" : "a", m->realtime ? "realtime" : "fast",
             m->paced ? ", paced" : "", m->repeat ? ", repeat" : "");
    schedule(m);
    if (!m->timer) return TOLK_E_NOMEM;
    if (m->played_feedback && !m->fb_timer)
        m->fb_timer = m->host->timer_start(m->inst, FB_PERIOD_S, FB_PERIOD_S, feedback_tick, m);
    return TOLK_OK;
}

static void tm_stop(void *self) {
    mock *m = self;
    m->stopped = 1;
    m->pending_restart = 0;
    m->pending_retry = 0;
    schedule(m);
}

/* Played-out feedback: every frame handed to play() at least
 * playout_delay_ms ago has reached the listener. */
static void feedback_tick(void *ud) {
    mock *m = ud;
    double now = m->host->now();
    for (uint64_t i = 0; i < m->ncalls; i++) {
        mock_call *c = &m->calls[i];
        for (int L = 0; L < 2 && c->state == C_LIVE; L++) {
            leg_state *lg = &c->leg[L];
            uint64_t n = lg->reported;
            while (n < lg->handed && (lg->handed - n > FB_RING ||
                                      lg->hand_t[n % FB_RING] <= now - m->playout_delay_s))
                n++;
            if (n == lg->reported) continue;
            m->played_reported[L] += n - lg->reported;
            lg->reported = n;
            m->depth++;
            m->host->channel_played(c->ch, (tolk_leg)L, n);
            m->depth--;
        }
    }
}

static tolk_status tm_play_ex(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                              size_t n, unsigned flags) {
    mock *m = self;
    if (leg != TOLK_LEG_A && leg != TOLK_LEG_B) {
        m->play_bad_leg++;
        return TOLK_E_INVAL;
    }
    if (flags & TOLK_PLAY_SILENCE) m->silence_played[leg]++;
    if (flags & TOLK_PLAY_TALKSPURT) m->talkspurts[leg]++;
    m->frames_played[leg]++;
    if (n != TOLK_FRAME_SAMPLES) m->play_bad_size++;
    mock_call *c = call_of(m, chan_state);
    if (!c) {
        m->play_unknown_call++;
        return TOLK_E_INVAL;
    }
    leg_state *lg = &c->leg[leg];
    double now = m->host->now();
    lg->hand_t[lg->handed % FB_RING] = now;
    lg->handed++;
    if (lg->played == 0 || now - lg->last_play > TALKSPURT_GAP_S) {
        lg->t0 = now;
        lg->k = 0;
        rec_event(m, c, leg ? EV_PLAY_B : EV_PLAY_A);
    } else if (m->paced) {
        /* Against the grid of the talkspurt, so drift shows, not only
         * frame-to-frame jitter. The origin frame itself is not counted. */
        lg->k++;
        double dev = fabs(now - (lg->t0 + (double)lg->k * TOLK_FRAME_SECONDS));
        double b = dev / HIST_BUCKET_S;
        m->hist[b < HIST_N ? (size_t)b : HIST_N]++;
        m->jitter_frames++;
        if (dev > m->jitter_max_s) m->jitter_max_s = dev;
    }
    lg->last_play = now;
    lg->played++;
    call_rec *r = rec_of(m, c->seq);
    if (r) r->played[leg]++;
    int loud = 0;
    if (pcm && n > 0) {
        int64_t sum = 0;
        for (size_t i = 0; i < n; i++) sum += (int32_t)pcm[i] * pcm[i];
        loud = (double)sum / (double)n > ENERGY_RMS * ENERGY_RMS;
    }
    if (loud) {
        m->energy_played[leg]++;
        if (r) r->energy[leg]++;
        if (lg->quiet_run >= HEARD_QUIET_FRAMES)
            rec_event(m, c, leg ? EV_HEARD_B : EV_HEARD_A);
        lg->quiet_run = 0;
    } else {
        lg->quiet_run++;
    }
    m->play_calls++;
    if (m->play_error_every && m->play_calls % m->play_error_every == 0) {
        m->play_errors_returned++;
        return TOLK_E_BACKEND;
    }
    return TOLK_OK;
}

static void tm_input_ready(void *self, void *chan_state, tolk_leg leg) {
    mock *m = self;
    mock_call *c = call_of(m, chan_state);
    if (!c || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    c->leg[leg].waiting = 0;
    schedule(m);
}

static tolk_status tm_play(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                           size_t n) {
    return tm_play_ex(self, chan_state, leg, pcm, n, 0);
}

static tolk_status tm_direction_mode(void *self, void *chan_state, tolk_leg from, tolk_mode mode) {
    mock *m = self;
    if (!call_of(m, chan_state) || (from != TOLK_LEG_A && from != TOLK_LEG_B)) return TOLK_E_INVAL;
    if (mode != TOLK_MODE_PASSTHROUGH) return TOLK_DECLINED;
    m->passthrough_told[from]++;
    return m->bridge_passthrough ? TOLK_OK : TOLK_DECLINED;
}

static void tm_hangup(void *self, void *chan_state) {
    mock *m = self;
    mock_call *c = call_of(m, chan_state);
    if (!c) {
        m->hangup_unknown_call++;
        TOLK_LOG(m->host, m->inst, TOLK_LOG_WARN, "hangup() for a call that is already over");
        return;
    }
    rec_event(m, c, EV_HANGUP);
    if (c->state == C_CLOSING) return; /* from inside our channel_close(): counted there */
    m->calls_ended++;
    mark_dead(m, c);
    sweep(m);
    schedule(m);
}

static double hist_quantile_ms(const mock *m, double q) {
    if (m->jitter_frames == 0) return 0;
    uint64_t target = (uint64_t)ceil(q * (double)m->jitter_frames);
    if (target < 1) target = 1;
    uint64_t cum = 0;
    for (size_t i = 0; i < HIST_N; i++) {
        cum += m->hist[i];
        if (cum >= target) {
            /* The bucket's upper edge, but never above the exact maximum. */
            double edge = (double)(i + 1) * HIST_BUCKET_S;
            return (edge < m->jitter_max_s ? edge : m->jitter_max_s) * 1000.0;
        }
    }
    return m->jitter_max_s * 1000.0;
}

static json_t *legs_json(const uint64_t v[2]) {
    return json_pack("{s:I,s:I,s:I}", "a", (json_int_t)v[0], "b", (json_int_t)v[1], "total",
                     (json_int_t)(v[0] + v[1]));
}

static json_t *rec_json(const call_rec *r) {
    json_t *ev = json_array(), *ms = json_array();
    for (unsigned i = 0; i < r->nev; i++) {
        json_array_append_new(ev, json_string(ev_names[r->ev[i]]));
        json_array_append_new(ms, json_integer(r->ev_ms[i]));
    }
    json_t *o = json_pack("{s:I,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:o,s:o,s:b}", "seq",
                          (json_int_t)r->seq, "id", r->id, "state", r->state, "sent_a",
                          (json_int_t)r->sent[0], "sent_b", (json_int_t)r->sent[1], "played_a",
                          (json_int_t)r->played[0], "played_b", (json_int_t)r->played[1],
                          "energy_a", (json_int_t)r->energy[0], "energy_b",
                          (json_int_t)r->energy[1], "events", ev, "event_ms", ms, "truncated",
                          r->truncated);
    if (o && strcmp(r->state, "refused") == 0)
        json_object_set_new(o, "refused_status", json_integer(r->refused_status));
    return o;
}

static tolk_health tm_health(void *self, json_t **detail_new) {
    mock *m = self;
    if (!detail_new) return TOLK_HEALTHY;
    uint64_t active = 0;
    for (uint64_t i = 0; i < m->ncalls; i++)
        if (m->calls[i].state == C_LIVE || m->calls[i].state == C_OPENING ||
            m->calls[i].state == C_CLOSING)
            active++;
    json_t *calls = json_array();
    uint64_t first = m->seq > REC_MAX ? m->seq - REC_MAX + 1 : 1;
    for (uint64_t s = first; s <= m->seq; s++) {
        const call_rec *r = &m->recs[s % REC_MAX];
        if (r->seq == s) json_array_append_new(calls, rec_json(r));
    }
    json_t *d = json_pack(
        "{s:I,s:I,s:I,s:I,s:o,s:o,s:I,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:I,s:f}",
        "calls_opened", (json_int_t)m->calls_opened, "calls_refused",
        (json_int_t)m->calls_refused, "calls_ended", (json_int_t)m->calls_ended, "calls_active",
        (json_int_t)active, "frames_sent", legs_json(m->frames_sent), "frames_played",
        legs_json(m->frames_played), "energy_played",
        (json_int_t)(m->energy_played[0] + m->energy_played[1]), "energy_played_by_leg",
        legs_json(m->energy_played), "play_bad_size", (json_int_t)m->play_bad_size,
        "play_bad_leg", (json_int_t)m->play_bad_leg, "play_unknown_call",
        (json_int_t)m->play_unknown_call, "hangup_unknown_call",
        (json_int_t)m->hangup_unknown_call, "audio_rejected", (json_int_t)m->audio_rejected,
        "audio_waits", (json_int_t)m->audio_waits,
        "jitter_frames", (json_int_t)m->jitter_frames, "jitter_p50_ms",
        hist_quantile_ms(m, 0.50), "jitter_p99_ms", hist_quantile_ms(m, 0.99), "jitter_max_ms",
        m->jitter_max_s * 1000.0, "jitter_overflow", (json_int_t)m->hist[HIST_N],
        "feed_lag_max_ms", m->feed_lag_max_s * 1000.0);
    if (d) {
        json_object_set_new(d, "silence_played", legs_json(m->silence_played));
        json_object_set_new(d, "talkspurts", legs_json(m->talkspurts));
        json_object_set_new(d, "played_reported", legs_json(m->played_reported));
        json_object_set_new(d, "passthrough_told", legs_json(m->passthrough_told));
        json_object_set_new(d, "play_errors_returned", json_integer((json_int_t)m->play_errors_returned));
        json_object_set_new(d, "dtmf_sent", json_integer((json_int_t)m->dtmf_sent));
        json_object_set_new(d, "calls_answered", json_integer((json_int_t)m->calls_answered));
    }
    if (d) json_object_set_new(d, "calls", calls);
    else json_decref(calls);
    *detail_new = d;
    return TOLK_HEALTHY;
}

static const tolk_transport desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT),
             .name = PLUGIN_NAME,
             .version = "1.0.0",
             .description = "synthetic calls with tone bursts, for tests and benchmarks",
             .options = options,
             .check_config = tm_check_config,
             .create = tm_create,
             .destroy = tm_destroy,
             .health = tm_health},
    .start = tm_start,
    .stop = tm_stop,
    .play = tm_play,
    .hangup = tm_hangup,
    .input_ready = tm_input_ready,
    .play_ex = tm_play_ex,
    .direction_mode = tm_direction_mode,
};

TOLK_PLUGIN_DEFINE(desc)
