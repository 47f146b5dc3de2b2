/* Channels and their pipelines. Per direction (A->B, B->A):
 *   input frames -> STT stream -> MT queue -> TTS queue -> playback buffer.
 * Each stage is a FIFO served one request at a time, so phrases come out in
 * the order they were spoken; different stages work on different phrases
 * at once. Plugin callbacks can re-enter the pipeline (a synchronous
 * mt_done from inside translate()), so pumps loop instead of recursing and
 * a channel ends from a deferred timer, never inside a plugin's call. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "log.h"
#include "metrics.h"

const char *const queue_names[Q_COUNT] = {"input", "stt", "mt", "tts", "playback"};

static const char *const state_names[] = {"IDLE",          "RINGING",      "CONNECTED", "TRANSLATING",
                                          "DISCONNECTING", "DISCONNECTED", "ERROR"};

const char *chan_state_name(chan_state s) {
    return (int)s >= 0 && s <= CH_ERROR ? state_names[s] : "?";
}

static void set_state(tolk_channel *ch, chan_state st) {
    if (ch->state == st) return;
    ch->state = st;
    if (ch->nhistory < ARRAY_LEN(ch->history)) ch->history[ch->nhistory++] = st;
    log_msg(TOLK_LOG_DBG, "channel", "%s: %s", ch->id, chan_state_name(st));
    if (ch->core->obs.channel_state) ch->core->obs.channel_state(ch->core->obs.ud, ch, st);
}

static const tolk_stt *stt_of(tolk_instance *i) { return (const tolk_stt *)i->desc; }
static const tolk_mt *mt_of(tolk_instance *i) { return (const tolk_mt *)i->desc; }
static const tolk_tts *tts_of(tolk_instance *i) { return (const tolk_tts *)i->desc; }
static const tolk_transport *transport_of(tolk_instance *i) {
    return (const tolk_transport *)i->desc;
}

static void schedule_finish(tolk_channel *ch);

/* ---- metrics helpers ---- */

static void queue_depth(core *c, int q, double delta) { metrics_add(c->m.qdepth[q], delta); }

static void observe_stage(direction *d, const char *stage, double seconds) {
    core *c = d->ch->core;
    if (seconds < 0) return;
    metrics_observe(metrics_series_v(c->m.latency, d->from, d->to, stage, NULL), seconds);
}

static void observe_component(core *c, tolk_instance *inst, const char *op, double seconds) {
    if (!inst || seconds < 0) return;
    metrics_observe(metrics_series_v(c->m.component, inst->name, op, NULL), seconds * 1000.0);
}

/* ---- phrases ---- */

static void fifo_push(phrase_fifo *f, phrase *p) {
    p->next = NULL;
    if (f->tail)
        f->tail->next = p;
    else
        f->head = p;
    f->tail = p;
    f->n++;
}

static phrase *fifo_pop(phrase_fifo *f) {
    phrase *p = f->head;
    if (p) {
        f->head = p->next;
        if (!f->head) f->tail = NULL;
        f->n--;
        p->next = NULL;
    }
    return p;
}

static void phrase_free(phrase *ph) {
    free(ph->text);
    free(ph->translation);
    free(ph);
}

static double ms_between(double a, double b) { return a > 0 && b > 0 ? (b - a) * 1000.0 : -1; }

static void phrase_report_emit(phrase *ph, int ok) {
    direction *d = ph->dir;
    core *c = d->ch->core;
    if (!ok) c->lost_phrases++;
    if (!c->obs.phrase) return;
    phrase_report r = {
        .channel_id = d->ch->id,
        .seq = ph->seq,
        .from_leg = d->src,
        .from = d->from,
        .to = d->to,
        .text = ph->text,
        .translation = ph->translation,
        .stt = ph->stt_inst ? ph->stt_inst->name : NULL,
        .mt = ph->mt_inst ? ph->mt_inst->name : NULL,
        .tts = ph->tts_inst ? ph->tts_inst->name : NULL,
        .start_s = (double)ph->start_sample / TOLK_SAMPLE_RATE,
        .end_s = (double)ph->end_sample / TOLK_SAMPLE_RATE,
        .stt_ms = ms_between(ph->t_speech_end, ph->t_stt_final),
        .mt_ms = ms_between(ph->t_mt_start, ph->t_mt_done),
        .tts_first_ms = ms_between(ph->t_tts_start, ph->t_tts_first),
        .latency_ms = ms_between(ph->t_speech_end, ph->t_first_out),
        .mt_wait_ms = ms_between(ph->t_stt_final, ph->t_mt_start),
        .tts_wait_ms = ms_between(ph->t_mt_done, ph->t_tts_start),
        .playback_wait_ms = ms_between(ph->t_tts_first, ph->t_first_out),
        .ok = ok,
    };
    c->obs.phrase(c->obs.ud, &r);
}

/* A phrase that cannot be finished: counted, reported, and the pipeline
 * goes on with the next one. */
static void phrase_lost(phrase *ph, const char *stage, tolk_instance *inst, tolk_status st) {
    core *c = ph->dir->ch->core;
    log_msg(TOLK_LOG_WARN, "channel", "%s: phrase %u lost at %s (%s, status %d): \"%s\"",
            ph->dir->ch->id, ph->seq, stage, inst ? inst->who : "no provider", (int)st,
            ph->text ? ph->text : "");
    count_error(c, inst ? inst->name : stage, st == TOLK_E_TIMEOUT ? "timeout" : "request_failed",
                TOLK_SEV_MEDIUM);
    phrase_report_emit(ph, 0);
    phrase_free(ph);
}

static double arrival_time(direction *d, uint64_t end_sample) {
    uint64_t frames = d->samples_in / TOLK_FRAME_SAMPLES;
    if (frames == 0) return mono_now();
    uint64_t k = end_sample ? (end_sample - 1) / TOLK_FRAME_SAMPLES : 0;
    if (k >= frames) k = frames - 1;
    if (frames - k > ARRIVAL_RING) k = frames - ARRIVAL_RING;
    return d->arrival[k % ARRIVAL_RING];
}

/* ---- pumps ---- */

static void pump_tts(direction *d);

static void pump_mt(direction *d) {
    core *c = d->ch->core;
    while (!d->mt_busy && d->mt_q.head && !d->ch->ending) {
        phrase *ph = fifo_pop(&d->mt_q);
        queue_depth(c, Q_MT, -1);
        double now = mono_now();
        metrics_observe(c->m.qwait[Q_MT], (now - ph->t_enq) * 1000.0);
        tolk_instance *inst = d->mt->prov[0];
        ph->mt_inst = inst;
        ph->t_mt_start = now;
        ph->req = (tolk_request){.ph = ph, .inst = inst, .active = 1};
        d->mt_busy = ph;
        tolk_status st = mt_of(inst)->translate(inst->self, &ph->req, ph->text, d->from, d->to);
        if (st == TOLK_PENDING) return;
        if (st == TOLK_OK) {
            if (ph->req.active) {
                /* OK without mt_done: a plugin bug; do not wait forever. */
                ph->req.active = 0;
                d->mt_busy = NULL;
                phrase_lost(ph, "mt", inst, TOLK_E_INVAL);
            }
            continue;
        }
        ph->req.active = 0;
        d->mt_busy = NULL;
        phrase_lost(ph, "mt", inst, st);
    }
    schedule_finish(d->ch);
}

static void pump_tts(direction *d) {
    core *c = d->ch->core;
    while (!d->tts_busy && d->tts_q.head && !d->ch->ending) {
        phrase *ph = fifo_pop(&d->tts_q);
        queue_depth(c, Q_TTS, -1);
        double now = mono_now();
        metrics_observe(c->m.qwait[Q_TTS], (now - ph->t_enq) * 1000.0);
        tolk_instance *inst = d->tts->prov[0];
        ph->tts_inst = inst;
        ph->t_tts_start = now;
        ph->req = (tolk_request){.ph = ph, .inst = inst, .active = 1};
        d->tts_busy = ph;
        tolk_status st =
            tts_of(inst)->speak(inst->self, &ph->req, ph->translation, d->to, d->voice);
        if (st == TOLK_PENDING) return;
        if (st == TOLK_OK) {
            if (ph->req.active) {
                ph->req.active = 0;
                d->tts_busy = NULL;
                if (!ph->has_audio) phrase_lost(ph, "tts", inst, TOLK_E_INVAL);
            }
            continue;
        }
        ph->req.active = 0;
        d->tts_busy = NULL;
        if (ph->has_audio) {
            /* some audio was queued: it plays; the phrase is freed when its
             * first frame goes out */
            ph->t_tts_done = mono_now();
            continue;
        }
        phrase_lost(ph, "tts", inst, st);
    }
    schedule_finish(d->ch);
}

/* ---- playback ---- */

static direction *dir_to(tolk_channel *ch, tolk_leg leg) { return &ch->dir[leg == TOLK_LEG_A]; }

void channel_play_frame(tolk_channel *ch, tolk_leg leg) {
    core *c = ch->core;
    outbuf *ob = &ch->out[leg];
    int16_t frame[TOLK_FRAME_SAMPLES];
    outbuf_pop(ob, frame);
    metrics_add(c->m.qdepth[Q_PLAYBACK], -1);
    ch->frames_out[leg]++;
    if (!ch->closed)
        transport_of(ch->transport)->play(ch->transport->self, ch->tstate, leg, frame,
                                          TOLK_FRAME_SAMPLES);
    direction *d = dir_to(ch, leg);
    double now = mono_now();
    while (d->marks_head && d->marks_head->out_pos < ob->played) {
        phrase *ph = d->marks_head;
        d->marks_head = ph->mark_next;
        if (!d->marks_head) d->marks_tail = NULL;
        ph->mark_next = NULL;
        ph->t_first_out = now;
        metrics_observe(c->m.qwait[Q_PLAYBACK], (now - ph->t_tts_first) * 1000.0);
        observe_stage(d, "total", now - ph->t_speech_end);
        metrics_add(c->m.translations_s, 1);
        phrase_report_emit(ph, 1);
        /* the TTS request may still be streaming the rest of the phrase */
        if (d->tts_busy != ph) phrase_free(ph);
    }
}

static void deliver_now(tolk_channel *ch, tolk_leg leg) {
    if (ch->paced) {
        playback_schedule(ch->core, &ch->out[leg]);
        return;
    }
    while (ch->out[leg].len >= TOLK_FRAME_SAMPLES) channel_play_frame(ch, leg);
}

/* A paced leg ran out of audio: the end of the call may be near. */
void channel_leg_idle(tolk_channel *ch) { schedule_finish(ch); }

/* ---- input ---- */

static void stream_close(direction *d) {
    tolk_stream *s = &d->stream;
    if (!s->open) return;
    s->open = 0;
    stt_of(s->inst)->close(s->state);
    s->state = NULL;
}

static void frame_in(direction *d, const int16_t *frame) {
    tolk_channel *ch = d->ch;
    core *c = ch->core;
    uint64_t k = d->samples_in / TOLK_FRAME_SAMPLES;
    d->arrival[k % ARRIVAL_RING] = mono_now();
    d->samples_in += TOLK_FRAME_SAMPLES;
    ch->frames_in[d->src]++;
    metrics_add(c->m.frames_s, 1);
    metrics_add(c->m.audio_bytes_s, TOLK_FRAME_BYTES);
    if (d->translate && d->stream.open) {
        tolk_status st = stt_of(d->stream.inst)->feed(d->stream.state, frame, TOLK_FRAME_SAMPLES);
        if (st < 0) stream_failed(&d->stream, st, TOLK_SEV_HIGH, "feed failed");
        return;
    }
    if (!d->translate) {
        outbuf_push(c, &ch->out[d->dst], frame, TOLK_FRAME_SAMPLES);
        deliver_now(ch, d->dst);
    }
}

tolk_status channel_audio(tolk_channel *ch, tolk_leg leg, const int16_t *pcm, size_t n) {
    if (!ch || ch->closed || ch->ending || (leg != TOLK_LEG_A && leg != TOLK_LEG_B))
        return TOLK_E_INVAL;
    direction *d = &ch->dir[leg];
    if (d->input_ended) return TOLK_E_INVAL;
    d->spoke = 1;
    while (n > 0) {
        size_t take = TOLK_FRAME_SAMPLES - d->nin;
        if (take > n) take = n;
        memcpy(d->inbuf + d->nin, pcm, take * sizeof(int16_t));
        d->nin += take;
        pcm += take;
        n -= take;
        if (d->nin == TOLK_FRAME_SAMPLES) {
            d->nin = 0;
            frame_in(d, d->inbuf);
            if (ch->closed || ch->ending) break;
        }
    }
    return TOLK_OK;
}

/* ---- results from plugins ---- */

void stream_result(tolk_stream *s, const tolk_transcript *t) {
    if (!s || !s->open || !t) {
        log_msg(TOLK_LOG_DBG, "channel", "result for a closed stream ignored");
        return;
    }
    direction *d = s->dir;
    core *c = d->ch->core;
    if (!t->is_final) {
        if (log_enabled(TOLK_LOG_DBG)) {
            char *txt = utf8_clean(t->text, 512);
            log_msg(TOLK_LOG_DBG, "channel", "%s: partial: %s", d->ch->id, txt);
            free(txt);
        }
        return;
    }
    char *text = utf8_clean(t->text, 4096);
    if (!*text) {
        free(text);
        return;
    }
    phrase *ph = xcalloc(1, sizeof *ph);
    ph->dir = d;
    ph->seq = ++d->next_seq;
    ph->text = text;
    ph->start_sample = t->start_sample;
    ph->end_sample = t->end_sample > t->start_sample ? t->end_sample : d->samples_in;
    ph->t_speech_end = arrival_time(d, ph->end_sample);
    ph->t_stt_final = mono_now();
    ph->stt_inst = s->inst;
    observe_stage(d, "stt", ph->t_stt_final - ph->t_speech_end);
    observe_component(c, s->inst, "recognize", ph->t_stt_final - ph->t_speech_end);
    metrics_observe(c->m.qwait[Q_STT], (ph->t_stt_final - ph->t_speech_end) * 1000.0);
    metrics_add(c->m.words_s, (double)count_words(text));
    ph->t_enq = ph->t_stt_final;
    fifo_push(&d->mt_q, ph);
    queue_depth(c, Q_MT, 1);
    if (!d->mt_busy) pump_mt(d);
}

void stream_failed(tolk_stream *s, tolk_status st, tolk_severity sev, const char *why) {
    if (!s || !s->open) return;
    direction *d = s->dir;
    core *c = d->ch->core;
    log_msg(TOLK_LOG_ERR, s->inst->who, "%s: stream failed (%d): %s; direction %s->%s goes on "
            "untranslated", d->ch->id, (int)st, why ? why : "", d->from, d->to);
    count_error(c, s->inst->name, "stream_failed", sev);
    stream_close(d);
    /* Until recovery can move the stream to a backup, the caller is at least
     * heard: the direction falls back to passthrough rather than silence. */
    d->translate = 0;
    schedule_finish(d->ch);
}

void stream_flushed(tolk_stream *s) {
    if (!s || !s->open) return;
    s->flushing = 0;
    s->flushed = 1;
    schedule_finish(s->dir->ch);
}

void request_mt_done(tolk_request *r, tolk_status st, const char *text) {
    if (!r || !r->active) {
        log_msg(TOLK_LOG_WARN, "channel", "mt_done for a finished or cancelled request ignored");
        return;
    }
    phrase *ph = r->ph;
    direction *d = ph->dir;
    core *c = d->ch->core;
    r->active = 0;
    d->mt_busy = NULL;
    ph->t_mt_done = mono_now();
    observe_component(c, r->inst, "translate", ph->t_mt_done - ph->t_mt_start);
    char *clean = st == TOLK_OK && text ? utf8_clean(text, 8192) : NULL;
    if (!clean || !*clean) {
        free(clean);
        phrase_lost(ph, "mt", r->inst, st == TOLK_OK ? TOLK_E_BACKEND : st);
    } else {
        ph->translation = clean;
        observe_stage(d, "mt", ph->t_mt_done - ph->t_mt_start);
        ph->t_enq = ph->t_mt_done;
        fifo_push(&d->tts_q, ph);
        queue_depth(c, Q_TTS, 1);
        if (!d->tts_busy) pump_tts(d);
    }
    pump_mt(d);
}

void request_tts_audio(tolk_request *r, const int16_t *pcm, size_t n) {
    if (!r || !r->active || !pcm || n == 0) return;
    phrase *ph = r->ph;
    direction *d = ph->dir;
    tolk_channel *ch = d->ch;
    if (!ph->has_audio) {
        ph->has_audio = 1;
        ph->t_tts_first = mono_now();
        observe_stage(d, "tts_first", ph->t_tts_first - ph->t_tts_start);
        observe_component(ch->core, r->inst, "synthesize_first", ph->t_tts_first - ph->t_tts_start);
        ph->out_pos = ch->out[d->dst].written;
        ph->mark_next = NULL;
        if (d->marks_tail)
            d->marks_tail->mark_next = ph;
        else
            d->marks_head = ph;
        d->marks_tail = ph;
    }
    outbuf_push(ch->core, &ch->out[d->dst], pcm, n);
    deliver_now(ch, d->dst);
}

static int phrase_marked(direction *d, phrase *ph) {
    for (phrase *m = d->marks_head; m; m = m->mark_next)
        if (m == ph) return 1;
    return 0;
}

void request_tts_done(tolk_request *r, tolk_status st) {
    if (!r || !r->active) {
        log_msg(TOLK_LOG_WARN, "channel", "tts_done for a finished or cancelled request ignored");
        return;
    }
    phrase *ph = r->ph;
    direction *d = ph->dir;
    tolk_channel *ch = d->ch;
    r->active = 0;
    d->tts_busy = NULL;
    ph->t_tts_done = mono_now();
    observe_component(ch->core, r->inst, "synthesize", ph->t_tts_done - ph->t_tts_start);
    outbuf_pad(ch->core, &ch->out[d->dst]);
    if (st != TOLK_OK) {
        count_error(ch->core, r->inst->name, "request_failed", TOLK_SEV_MEDIUM);
        log_msg(TOLK_LOG_WARN, r->inst->who, "%s: synthesis of phrase %u failed (%d)%s", ch->id,
                ph->seq, (int)st, ph->has_audio ? "; the audio received plays" : "");
    }
    if (!ph->has_audio) {
        phrase_lost(ph, "tts", r->inst, st == TOLK_OK ? TOLK_E_BACKEND : st);
    } else {
        deliver_now(ch, d->dst);
        /* already played its first frame (unpaced): nothing waits for it */
        if (ph->t_first_out > 0 && !phrase_marked(d, ph)) phrase_free(ph);
    }
    pump_tts(d);
}

/* ---- open / end ---- */

static const conf_endpoint *find_endpoint(const conf_set *cs, const char *name) {
    for (size_t i = 0; name && i < cs->endpoints.n; i++) {
        const conf_endpoint *ep = cs->endpoints.v[i];
        if (!strcmp(ep->name, name)) return ep;
    }
    return NULL;
}

static void setup_direction(tolk_channel *ch, direction *d, int translate) {
    generation *g = ch->gen;
    d->translate = translate && strcmp(d->from, d->to) != 0;
    if (!d->translate) return;
    d->stt = generation_route(g, TOLK_KIND_STT, d->from, d->to);
    d->mt = generation_route(g, TOLK_KIND_MT, d->from, d->to);
    d->tts = generation_route(g, TOLK_KIND_TTS, d->from, d->to);
    if (!d->stt || !d->mt || !d->tts) {
        log_msg(TOLK_LOG_WARN, "channel",
                "%s: no %s chain serves %s->%s: that direction is heard untranslated", ch->id,
                !d->stt ? "stt" : !d->mt ? "mt" : "tts", d->from, d->to);
        d->translate = 0;
        return;
    }
    tolk_stream *s = &d->stream;
    s->dir = d;
    s->inst = d->stt->prov[0];
    tolk_stt_params p = {.size = sizeof p, .language = d->from, .sample_rate = TOLK_SAMPLE_RATE};
    tolk_status st = stt_of(s->inst)->open(s->inst->self, s, &p, &s->state);
    if (st != TOLK_OK) {
        log_msg(TOLK_LOG_ERR, s->inst->who, "%s: cannot open a stream (%d): %s->%s heard untranslated",
                ch->id, (int)st, d->from, d->to);
        count_error(ch->core, s->inst->name, "open_failed", TOLK_SEV_HIGH);
        d->translate = 0;
        return;
    }
    s->open = 1;
}

static void on_finish(struct ev_loop *loop, ev_timer *w, int revents);
static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents);

tolk_channel *channel_open(core *c, tolk_instance *transport, const tolk_channel_info *info,
                           void *tstate, tolk_status *why) {
    tolk_status dummy;
    if (!why) why = &dummy;
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
    ch->paced = info && info->paced;
    ch->t_open = mono_now();
    ch->history[ch->nhistory++] = CH_IDLE;
    ev_init(&ch->finish, on_finish);
    ev_init(&ch->drain_deadline, on_drain_deadline);
    set_state(ch, CH_RINGING);

    const conf_set *cs = g->conf;
    ch->mode = info && info->mode ? info->mode : cs->defaults.mode;
    const char *deflang[2] = {cs->defaults.caller_language, cs->defaults.callee_language};
    const char *lang[2], *voice[2];
    for (int leg = 0; leg < 2; leg++) {
        const char *epname = info && TOLK_HAS(info, tolk_channel_info, endpoint) ? info->endpoint[leg] : NULL;
        const conf_endpoint *ep = find_endpoint(cs, epname);
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
    }
    ch->prev = NULL;
    ch->next = c->channels;
    if (c->channels) c->channels->prev = ch;
    c->channels = ch;
    c->active++;
    c->total_channels++;
    metrics_set(c->m.active_s, (double)c->active);
    metrics_add(c->m.channels_total_s, 1);
    set_state(ch, CH_CONNECTED);
    int tr_a = ch->mode == TOLK_MODE_BIDIRECTIONAL || ch->mode == TOLK_MODE_UNIDIRECTIONAL;
    int tr_b = ch->mode == TOLK_MODE_BIDIRECTIONAL;
    setup_direction(ch, &ch->dir[TOLK_LEG_A], tr_a);
    setup_direction(ch, &ch->dir[TOLK_LEG_B], tr_b);
    if (ch->dir[0].translate || ch->dir[1].translate) set_state(ch, CH_TRANSLATING);
    log_msg(TOLK_LOG_INFO, "channel", "%s: open via %s, %s, %s<->%s%s (generation %u, %zu active)",
            ch->id, transport->name, conf_mode_name(ch->mode), lang[0], lang[1],
            ch->paced ? ", paced" : "", g->id, c->active);
    return ch;
}

static void free_phrases(tolk_channel *ch) {
    for (int i = 0; i < 2; i++) {
        direction *d = &ch->dir[i];
        core *c = ch->core;
        phrase *ph;
        while ((ph = fifo_pop(&d->mt_q))) {
            queue_depth(c, Q_MT, -1);
            phrase_free(ph);
        }
        while ((ph = fifo_pop(&d->tts_q))) {
            queue_depth(c, Q_TTS, -1);
            phrase_free(ph);
        }
        if (d->mt_busy) phrase_free(d->mt_busy);
        d->mt_busy = NULL;
        phrase *tb = d->tts_busy;
        d->tts_busy = NULL;
        int tb_marked = 0;
        while ((ph = d->marks_head)) {
            d->marks_head = ph->mark_next;
            if (ph == tb) tb_marked = 1;
            phrase_free(ph);
        }
        d->marks_tail = NULL;
        if (tb && !tb_marked) phrase_free(tb);
    }
}

/* Stops everything plugins are doing for this channel; after it, no
 * plugin callback can reach the channel. */
static void cancel_all(tolk_channel *ch) {
    for (int i = 0; i < 2; i++) {
        direction *d = &ch->dir[i];
        stream_close(d);
        if (d->mt_busy && d->mt_busy->req.active) {
            d->mt_busy->req.active = 0;
            tolk_instance *inst = d->mt_busy->req.inst;
            mt_of(inst)->cancel(inst->self, &d->mt_busy->req);
        }
        if (d->tts_busy && d->tts_busy->req.active) {
            d->tts_busy->req.active = 0;
            tolk_instance *inst = d->tts_busy->req.inst;
            tts_of(inst)->cancel(inst->self, &d->tts_busy->req);
        }
    }
    free_phrases(ch);
}

static void channel_destroy(tolk_channel *ch) {
    core *c = ch->core;
    ev_timer_stop(c->loop, &ch->finish);
    ev_timer_stop(c->loop, &ch->drain_deadline);
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        c->channels = ch->next;
    if (ch->next) ch->next->prev = ch->prev;
    c->active--;
    metrics_set(c->m.active_s, (double)c->active);
    metrics_observe(c->m.duration_s, mono_now() - ch->t_open);
    set_state(ch, CH_DISCONNECTED);
    log_msg(TOLK_LOG_INFO, "channel", "%s: ended after %.1f s: frames in A=%llu B=%llu, out A=%llu B=%llu",
            ch->id, mono_now() - ch->t_open, (unsigned long long)ch->frames_in[0],
            (unsigned long long)ch->frames_in[1], (unsigned long long)ch->frames_out[0],
            (unsigned long long)ch->frames_out[1]);
    if (c->obs.channel_end) c->obs.channel_end(c->obs.ud, ch);
    for (int i = 0; i < 2; i++) {
        c->out_frames_dropped += ch->out[i].len / TOLK_FRAME_SAMPLES;
        outbuf_free(c, &ch->out[i]);
        free(ch->dir[i].from);
        free(ch->dir[i].to);
        free(ch->dir[i].voice);
    }
    generation_unref(ch->gen);
    free(ch->id);
    free(ch);
}

static int direction_drained(direction *d) {
    if (d->spoke && !d->input_ended) return 0;
    if (d->stream.open && d->input_ended && !d->stream.flushed) return 0;
    if (d->mt_q.head || d->mt_busy || d->tts_q.head || d->tts_busy || d->marks_head) return 0;
    return 1;
}

static int channel_drained(tolk_channel *ch) {
    if (!ch->dir[0].input_ended && !ch->dir[1].input_ended) return 0;
    if (ch->out[0].len || ch->out[1].len) return 0;
    return direction_drained(&ch->dir[0]) && direction_drained(&ch->dir[1]);
}

static void schedule_finish(tolk_channel *ch) {
    if (!ev_is_active(&ch->finish)) {
        ev_timer_set(&ch->finish, 0., 0.);
        ev_timer_start(ch->core->loop, &ch->finish);
    }
}

static void on_finish(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, finish);
    if (ch->closed || ch->ending) {
        channel_destroy(ch);
        return;
    }
    if (channel_drained(ch)) channel_end(ch, "finished");
}

static void on_drain_deadline(struct ev_loop *loop, ev_timer *w, int revents) {
    tolk_channel *ch = CONTAINER_OF(w, tolk_channel, drain_deadline);
    channel_end(ch, "drain timeout: pending work dropped");
}

void channel_input_end(tolk_channel *ch, tolk_leg leg) {
    if (!ch || ch->closed || ch->ending || (leg != TOLK_LEG_A && leg != TOLK_LEG_B)) return;
    direction *d = &ch->dir[leg];
    if (d->input_ended) return;
    if (d->nin) {
        memset(d->inbuf + d->nin, 0, (TOLK_FRAME_SAMPLES - d->nin) * sizeof(int16_t));
        d->nin = 0;
        frame_in(d, d->inbuf);
    }
    d->input_ended = 1;
    if (d->stream.open) {
        const tolk_stt *stt = stt_of(d->stream.inst);
        tolk_status st = DESC_FN(&stt->base, tolk_stt, flush)
                             ? stt->flush(d->stream.state)
                             : TOLK_OK;
        if (st == TOLK_PENDING)
            d->stream.flushing = 1;
        else
            d->stream.flushed = 1;
    }
    double dt = ch->gen->conf->core.drain_timeout;
    if (dt > 0 && !ev_is_active(&ch->drain_deadline)) {
        ev_timer_set(&ch->drain_deadline, dt, 0.);
        ev_timer_start(ch->core->loop, &ch->drain_deadline);
    }
    schedule_finish(ch);
}

void channel_close(tolk_channel *ch) {
    if (!ch || ch->closed) return;
    ch->closed = 1;
    set_state(ch, CH_DISCONNECTING);
    cancel_all(ch);
    schedule_finish(ch);
}

void channel_end(tolk_channel *ch, const char *why) {
    if (!ch || ch->ending) return;
    ch->ending = 1;
    log_msg(TOLK_LOG_VERB, "channel", "%s: ending: %s", ch->id, why);
    if (!ch->closed) set_state(ch, CH_DISCONNECTING);
    cancel_all(ch);
    if (!ch->closed) {
        ch->closed = 1;
        transport_of(ch->transport)->hangup(ch->transport->self, ch->tstate);
    }
    schedule_finish(ch);
}
