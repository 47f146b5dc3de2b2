/* Channels: a call's lifecycle (open, answer, states, drain, end), its
 * input framing and events. Admission of its input is backlog.c's, the
 * provider stages of each direction and their recovery pipeline.c's, the
 * frames going out playback.c's, the per-phrase report phrase.c's. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "handle.h"
#include "log.h"
#include "metrics.h"
#include "phrase.h"
#include "pipeline.h"

const char *const queue_names[Q_COUNT] = {"input", "stt", "mt", "tts", "playback"};

static const char *const state_names[] = {"IDLE",          "RINGING",      "CONNECTED", "TRANSLATING",
                                          "DISCONNECTING", "DISCONNECTED", "ERROR"};

const char *chan_state_name(chan_state s) {
    return (int)s >= 0 && s <= CH_ERROR ? state_names[s] : "?";
}

static void set_state(tolk_channel *ch, chan_state st) {
    if (ch->state == st) return;
    ch->state = st;
    log_msg(TOLK_LOG_DBG, "channel", "%s: %s", ch->id, chan_state_name(st));
    if (ch->core->obs.channel_state) ch->core->obs.channel_state(ch->core->obs.ud, ch, st);
}

static const tolk_transport *transport_of(tolk_instance *i) {
    return (const tolk_transport *)i->desc;
}


/* ---- events ---- */

void channel_publish(tolk_channel *ch, int leg, const char *name, const json_t *data) {
    core *c = ch->core;
    if (log_enabled(TOLK_LOG_VERB)) {
        char *js = data ? json_dumps(data, JSON_COMPACT) : NULL;
        log_msg(TOLK_LOG_VERB, "channel", "%s: event %s %s", ch->id, name, js ? js : "");
        free(js);
    }
    metrics_add(metrics_series_v(c->m.events, name, NULL), 1);
    if (c->obs.event) c->obs.event(c->obs.ud, ch, leg, name, data);
}

static int dtmf_digit_valid(char digit) {
    return (digit >= '0' && digit <= '9') || digit == '*' || digit == '#' ||
           (digit >= 'A' && digit <= 'D');
}

void channel_dtmf(tolk_channel *ch, tolk_leg leg, char digit, unsigned duration_ms) {
    if (!ch || ch->closed || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    if (!dtmf_digit_valid(digit)) {
        log_msg(TOLK_LOG_WARN, ch->transport->who,
                "%s: DTMF digit 0x%02x from leg %s refused: not one of 0-9 * # A-D", ch->id,
                (unsigned)(unsigned char)digit, leg_name(leg));
        return;
    }
    char text[2] = {digit, 0};
    json_t *data = json_pack("{s:s,s:I,s:s}", "digit", text, "duration_ms", (json_int_t)duration_ms,
                             "leg", leg_name(leg));
    channel_publish(ch, (int)leg, "dtmf", data);
    json_decref(data);
}

static void channel_connect(tolk_channel *ch);

void channel_progress(tolk_channel *ch, tolk_progress p, tolk_leg leg) {
    if (!ch || ch->closed || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    const char *name = p == TOLK_PROGRESS_RINGING    ? "ringing"
                       : p == TOLK_PROGRESS_ANSWERED ? "answered"
                       : p == TOLK_PROGRESS_JOINED   ? "joined"
                                                     : NULL;
    if (!name) {
        log_msg(TOLK_LOG_WARN, ch->transport->who, "%s: unknown call progress %d ignored", ch->id,
                (int)p);
        return;
    }
    json_t *data = json_pack("{s:s}", "leg", leg_name(leg));
    channel_publish(ch, (int)leg, name, data);
    json_decref(data);
    if (p == TOLK_PROGRESS_ANSWERED && !ch->connected && !ch->ending) {
        log_msg(TOLK_LOG_INFO, "channel", "%s: answered after %.1f s (%llu frames before it dropped)",
                ch->id, mono_now() - ch->t_open,
                (unsigned long long)(ch->frames_unanswered[0] + ch->frames_unanswered[1]));
        channel_connect(ch);
    }
}

/* ---- input ---- */

/* `arrival` is when the frame's last sample was captured: the start of the
 * latency clock for what is said in it. */
static void frame_in(direction *d, const int16_t *frame, double arrival, double now) {
    tolk_channel *ch = d->ch;
    core *c = ch->core;
    if (!ch->connected) {
        /* still ringing: nothing is translated or bridged before the answer */
        ch->frames_unanswered[d->src]++;
        return;
    }
    uint64_t k = d->samples_in / TOLK_FRAME_SAMPLES;
    if (arrival < d->last_arrival) arrival = d->last_arrival;
    d->last_arrival = arrival;
    d->arrival[k % ARRIVAL_RING] = arrival;
    d->samples_in += TOLK_FRAME_SAMPLES;
    ch->frames_in[d->src]++;
    metrics_add(c->m.frames_s, 1);
    metrics_add(c->m.audio_bytes_s, TOLK_FRAME_BYTES);
    if (d->translate) {
        pipeline_frame(d, frame, now);
        return;
    }
    if (d->bridged) return; /* the transport carries the original voice */
    outbuf_push(c, &ch->out[d->dst], frame, TOLK_FRAME_SAMPLES);
    deliver_now(ch, d->dst);
}

/* captured_at < 0: the audio arrived now. Else it is the capture time of
 * pcm[0], and a frame's arrival is the capture time of its end. */
static double frame_arrival(double captured_at, size_t samples_to_end, double now) {
    if (captured_at < 0) return now;
    double at = captured_at + (double)samples_to_end / TOLK_SAMPLE_RATE;
    return at > now ? now : at; /* a transport's clock ahead of ours */
}

static tolk_status audio_in(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n,
                            double captured_at) {
    if (!ch || ch->closed || ch->ending || (leg != TOLK_LEG_A && leg != TOLK_LEG_B))
        return TOLK_E_INVAL;
    direction *d = &ch->dir[leg];
    if (d->input_ended) return TOLK_E_INVAL;
    tolk_status admit = backlog_admit(ch, leg);
    if (admit != TOLK_OK) return admit;
    d->spoke = 1;
    double now = mono_now();
    if (n == TOLK_FRAME_SAMPLES && d->nin == 0) {
        /* the usual case, one whole frame: used where it is, not copied
         * (frame_in() and everything under it copy what they keep) */
        frame_in(d, pcm, frame_arrival(captured_at, TOLK_FRAME_SAMPLES, now), now);
        return TOLK_OK;
    }
    size_t consumed = 0;
    while (n > 0) {
        size_t take = TOLK_FRAME_SAMPLES - d->nin;
        if (take > n) take = n;
        memcpy(d->inbuf + d->nin, pcm, take * sizeof(int16_t));
        d->nin += take;
        pcm += take;
        n -= take;
        consumed += take;
        if (d->nin == TOLK_FRAME_SAMPLES) {
            d->nin = 0;
            frame_in(d, d->inbuf, frame_arrival(captured_at, consumed, now), now);
            if (ch->closed || ch->ending) break;
        }
    }
    return TOLK_OK;
}

tolk_status channel_audio(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n) {
    return audio_in(ch, leg, pcm, n, -1);
}

tolk_status channel_audio_at(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n,
                             double captured_at) {
    return audio_in(ch, leg, pcm, n, captured_at < 0 ? 0 : captured_at);
}

/* ---- open / end ---- */

static const conf_endpoint *find_endpoint(const conf_set *cs, const char *name) {
    for (size_t i = 0; name && i < cs->endpoints.n; i++) {
        const conf_endpoint *ep = cs->endpoints.v[i];
        if (!strcmp(ep->name, name)) return ep;
    }
    return NULL;
}

static void on_finish(struct ev_loop *loop, ev_timer *w, int revents);
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents);

/* The call is up: the directions are routed, their recognisers open, and
 * a continuous playout starts. */
static void channel_connect(tolk_channel *ch) {
    core *c = ch->core;
    ch->connected = 1;
    set_state(ch, CH_CONNECTED);
    int tr_a = ch->mode == TOLK_MODE_BIDIRECTIONAL || ch->mode == TOLK_MODE_UNIDIRECTIONAL;
    int tr_b = ch->mode == TOLK_MODE_BIDIRECTIONAL;
    int differ = strcmp(ch->dir[0].from, ch->dir[0].to) != 0;
    /* a party that stopped sending while the call rang has nothing to translate */
    ch->dir[TOLK_LEG_A].translate = tr_a && differ && !ch->dir[TOLK_LEG_A].input_ended;
    ch->dir[TOLK_LEG_B].translate = tr_b && differ && !ch->dir[TOLK_LEG_B].input_ended;
    pipeline_setup(&ch->dir[TOLK_LEG_A]);
    pipeline_setup(&ch->dir[TOLK_LEG_B]);
    for (int i = 0; i < 2 && !ch->closed; i++)
        if (!ch->dir[i].translate) channel_direction_mode(&ch->dir[i], TOLK_MODE_PASSTHROUGH);
    if (ch->closed || ch->ending) return;
    if (ch->dir[0].translate || ch->dir[1].translate) set_state(ch, CH_TRANSLATING);
    if (ch->flags & TOLK_CHAN_CONTINUOUS) {
        for (int leg = 0; leg < 2; leg++) {
            ch->out[leg].continuous = 1;
            playback_schedule(c, &ch->out[leg]);
        }
    }
}

/* The ABI 1.0 channel_info: every member up to `paced`. */
#define CHANNEL_INFO_MIN_SIZE (offsetof(tolk_channel_info, paced) + sizeof(int))

tolk_channel *channel_open(core *c, tolk_instance *transport, const tolk_channel_info *info,
                           void *tstate, tolk_status *why) {
    tolk_status dummy;
    if (!why) why = &dummy;
    if (info && info->size < CHANNEL_INFO_MIN_SIZE) {
        log_msg(TOLK_LOG_ERR, transport->who,
                "call refused: its tolk_channel_info has size %u, less than ABI 1.0's %zu",
                (unsigned)info->size, CHANNEL_INFO_MIN_SIZE);
        *why = TOLK_E_INVAL;
        return NULL;
    }
    const char *id = info && info->id ? info->id : "call";
    if (c->stopping) {
        log_msg(TOLK_LOG_WARN, transport->who, "call %s refused: shutting down", id);
        metrics_add(c->m.refused_s, 1);
        c->refused_channels++;
        *why = TOLK_E_LIMIT;
        return NULL;
    }
    generation *g = c->gen;
    if (!g || c->active >= (size_t)g->conf->core.max_channels) {
        log_msg(TOLK_LOG_WARN, transport->who, "call %s refused: %zu calls active (max_channels %d)",
                id, c->active, g ? g->conf->core.max_channels : 0);
        metrics_add(c->m.refused_s, 1);
        c->refused_channels++;
        *why = TOLK_E_LIMIT;
        return NULL;
    }
    tolk_channel *ch = xcalloc(1, sizeof *ch);
    ch->core = c;
    ch->gen = g;
    generation_ref(g);
    ch->transport = transport;
    ch->tstate = tstate;
    ch->id = xstrdup(id);
    ch->flags = info && TOLK_HAS(info, tolk_channel_info, flags) ? info->flags : 0;
    ch->paced = (info && info->paced) || (ch->flags & TOLK_CHAN_CONTINUOUS);
    const json_t *options = info && TOLK_HAS(info, tolk_channel_info, options) ? info->options : NULL;
    if (json_is_object(options))
        ch->options = json_deep_copy(options);
    else if (options)
        log_msg(TOLK_LOG_WARN, transport->who, "call %s: options are not a JSON object: ignored", id);
    ch->t_open = mono_now();
    ev_init(&ch->finish, on_finish);
    ev_init(&ch->drain_deadline, on_drain_deadline);
    backlog_init(ch, info);
    set_state(ch, CH_RINGING);

    const conf_set *cs = g->conf;
    ch->mode = info && info->mode ? info->mode : cs->defaults.mode;
    const char *deflang[2] = {cs->defaults.caller_language, cs->defaults.callee_language};
    const char *lang[2], *voice[2];
    const conf_endpoint *eps[2] = {NULL, NULL};
    for (int leg = 0; leg < 2; leg++) {
        const char *epname = info && TOLK_HAS(info, tolk_channel_info, endpoint) ? info->endpoint[leg] : NULL;
        const conf_endpoint *ep = find_endpoint(cs, epname);
        eps[leg] = ep;
        if (epname && !ep)
            log_msg(TOLK_LOG_WARN, "channel", "%s: unknown endpoint '%s': using the defaults", ch->id,
                    epname);
        lang[leg] = info && info->language[leg] ? info->language[leg]
                    : ep                        ? ep->language
                                                : deflang[leg];
        voice[leg] = info && info->voice[leg] ? info->voice[leg] : ep ? ep->voice : NULL;
    }
    for (int leg = 0; leg < 2; leg++) {
        ch->out[leg].ch = ch;
        ch->out[leg].leg = (tolk_leg)leg;
        ch->out[leg].slot = -1;
        direction *d = &ch->dir[leg];
        d->ch = ch;
        d->src = (tolk_leg)leg;
        d->dst = (tolk_leg)!leg;
        d->from = xstrdup(lang[leg]);
        d->to = xstrdup(lang[!leg]);
        d->voice = xstrdup(voice[leg]);
        d->ep = eps[leg];
    }
    ch->prev = NULL;
    ch->next = c->channels;
    if (c->channels) c->channels->prev = ch;
    c->channels = ch;
    c->active++;
    c->total_channels++;
    metrics_set(c->m.active_s, (double)c->active);
    metrics_add(c->m.channels_total_s, 1);
    int await = (ch->flags & TOLK_CHAN_AWAIT_ANSWER) != 0;
    log_msg(TOLK_LOG_INFO, "channel", "%s: open via %s, %s, %s<->%s%s%s%s (generation %u, %zu active)",
            ch->id, transport->name, conf_mode_name(ch->mode), lang[0], lang[1],
            ch->paced ? ", paced" : "", ch->flags & TOLK_CHAN_CONTINUOUS ? ", continuous" : "",
            await ? ", awaiting the answer" : "", g->id, c->active);
    if (!await) channel_connect(ch);
    return ch;
}

/* Stops everything plugins are doing for this channel; after it, no
 * plugin callback can reach the channel. */
static void cancel_all(tolk_channel *ch) {
    if (!ch->connected) return; /* never set up */
    pipeline_cancel(&ch->dir[0]);
    pipeline_cancel(&ch->dir[1]);
}

static void channel_destroy(tolk_channel *ch) {
    core *c = ch->core;
    ev_timer_stop(c->loop, &ch->finish);
    ev_timer_stop(c->loop, &ch->drain_deadline);
    backlog_stop(ch);
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        c->channels = ch->next;
    if (ch->next) ch->next->prev = ch->prev;
    c->active--;
    metrics_set(c->m.active_s, (double)c->active);
    metrics_observe(c->m.duration_s, mono_now() - ch->t_open);
    set_state(ch, CH_DISCONNECTED);
    log_msg(TOLK_LOG_INFO, "channel", "%s: ended after %.1f s: frames in A=%llu B=%llu, out A=%llu B=%llu%s",
            ch->id, mono_now() - ch->t_open, (unsigned long long)ch->frames_in[0],
            (unsigned long long)ch->frames_in[1], (unsigned long long)ch->frames_out[0],
            (unsigned long long)ch->frames_out[1], ch->connected ? "" : " (never answered)");
    if (c->obs.channel_end) c->obs.channel_end(c->obs.ud, ch);
    for (int i = 0; i < 2; i++) {
        c->out_frames_dropped += ch->out[i].len / TOLK_FRAME_SAMPLES;
        outbuf_free(c, &ch->out[i]);
        pipeline_free(&ch->dir[i]);
        free(ch->dir[i].from);
        free(ch->dir[i].to);
        free(ch->dir[i].voice);
    }
    generation_unref(ch->gen);
    json_decref(ch->options);
    handle_retire(ch->handle);
    free(ch->id);
    free(ch);
}

static int channel_drained(tolk_channel *ch) {
    if (!ch->dir[0].input_ended && !ch->dir[1].input_ended) return 0;
    if (ch->out[0].len || ch->out[1].len) return 0;
    return pipeline_drained(&ch->dir[0]) && pipeline_drained(&ch->dir[1]);
}

static void on_finish(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, finish);
    if (ch->closed || ch->ending) {
        channel_destroy(ch);
        return;
    }
    if (channel_drained(ch)) channel_end(ch, "finished");
}

/* The deadline after the input ended guards against work that never
 * finishes (a provider that hangs), not against work that takes long: a
 * call that got something done since it was armed gets another period. */
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, drain_deadline);
    uint64_t now_progress = backlog_progress(ch);
    if (now_progress != ch->drain_progress) {
        ch->drain_progress = now_progress;
        ev_timer_again(loop, w);
        return;
    }
    log_msg(TOLK_LOG_WARN, "channel", "%s: nothing finished for %.0f s after the input ended "
            "(core.drain_timeout): the pending work is dropped", ch->id, w->repeat);
    channel_end(ch, "drain timeout: pending work dropped");
}

void channel_input_end(tolk_channel *ch, tolk_leg leg) {
    if (!ch || ch->closed || ch->ending || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    direction *d = &ch->dir[leg];
    if (d->input_ended) return;
    if (d->nin) {
        memset(d->inbuf + d->nin, 0, (TOLK_FRAME_SAMPLES - d->nin) * sizeof(int16_t));
        d->nin = 0;
        double now = mono_now();
        frame_in(d, d->inbuf, now, now);
    }
    d->input_ended = 1;
    if (d->translate) pipeline_input_end(d);
    double dt = ch->gen->conf->core.drain_timeout;
    if (dt > 0 && !ev_is_active(&ch->drain_deadline)) {
        ch->drain_progress = backlog_progress(ch);
        ev_timer_set(&ch->drain_deadline, dt, dt);
        ev_timer_start(ch->core->loop, &ch->drain_deadline);
    }
    schedule_finish(ch);
}

void channel_close(tolk_channel *ch) {
    if (!ch || ch->closed) return;
    ch->closed = 1;
    /* the transport said the call is gone: it has no business with it now */
    handle_retire(ch->handle);
    set_state(ch, CH_DISCONNECTING);
    cancel_all(ch);
    schedule_finish(ch);
}

void channel_end(tolk_channel *ch, const char *why) {
    if (!ch || ch->ending) return;
    ch->ending = 1;
    log_msg(TOLK_LOG_VERB, "channel", "%s: ending: %s", ch->id, why);
    if (strcmp(why, "finished") != 0) {
        /* cut short: what it still held is lost, and said so */
        ch->end_reason = why;
        if (!ch->closed) {
            backlog_report_pending_lost(&ch->dir[0]);
            backlog_report_pending_lost(&ch->dir[1]);
        }
    }
    if (!ch->closed) set_state(ch, CH_DISCONNECTING);
    cancel_all(ch);
    if (!ch->closed) {
        ch->closed = 1;
        transport_of(ch->transport)->hangup(ch->transport->self, ch->tstate);
        handle_retire(ch->handle);
    }
    schedule_finish(ch);
}
