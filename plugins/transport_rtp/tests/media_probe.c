/* media_probe: a test-only transport that drives one ExternalMedia
 * encapsulation (media_audiosocket.c or media_websocket.c) through the real
 * core, the way transport_rtp's call control does, without the rest of ARI.
 *
 * At start() it opens `links` links of the encapsulation named by `media`,
 * asks each for its externalMedia parameters and POSTs them to
 * ARI_URL/ari/channels/externalMedia?app=ARI_APP&channelId=PREFIX-N&... (a
 * real Asterisk or a test's fake), hands the reply to attach(), and opens a
 * core channel per link: what Asterisk sends is the speech of leg A, the
 * translation for leg B is sent back into the same link (so the party hears
 * the translation of its own words), DTMF is leg A's, and played-out
 * feedback is leg B's.
 *
 * health() shows what a test checks, per link: the query parameters, the
 * reply's channel id, the link's counters, the level of the audio received,
 * the DTMF digits, the played-out count, and why the link ended.
 *
 * Settings: media (required), links, ari_app, channel_prefix, the ARI keys
 * and the encapsulations' own (media_options.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <tolk/plugin.h>

#include "../media.h"
#include "../media_options.h"

#define MAX_LINKS 8

typedef struct probe probe;

typedef struct plink {
    probe *p;
    int idx;
    tr_media *m;
    tolk_channel *ch;
    tolk_http *http;
    char params[1024];
    char channel_id[128];
    char digits[64];
    char why[300];
    int http_status;
    int attached, ended, in_hangup;
    tr_media_stats last;
    uint64_t played;
    uint64_t rx_samples, rx_loud_frames;
    /* the timeline of what reached the core: first and last captured_at,
     * and the largest jump beyond the previous delivery's length */
    double rx_first_at, rx_end_at, rx_max_gap;
    double rx_sumsq, rx_peak;
    double frame_sumsq;
    size_t frame_n;
    uint64_t tx_loud_frames;
} plink;

struct probe {
    const tolk_host *host;
    tolk_instance *inst;
    const tr_media_ops *ops;
    tr_media_hub *hub;
    char *ari_url, *ari_user, *ari_password, *ari_app, *prefix;
    int nlinks;
    double end_after;
    tolk_timer *end_timer;
    plink links[MAX_LINKS];
};

static const tolk_option options[] = {
    {"media", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0, "\"audiosocket\" or \"websocket\""},
    {"links", TOLK_OPT_INT, 0, "1", 1, MAX_LINKS, "links (calls) opened at start"},
    {"ari_app", TOLK_OPT_STRING, 0, NULL, 0, 0,
     "Stasis app for the externalMedia request (none: links are opened but not requested)"},
    {"channel_prefix", TOLK_OPT_STRING, 0, "probe", 0, 0, "channelId of link N is PREFIX-N"},
    {"end_after_ms", TOLK_OPT_INT, 0, "0", 0, 3600000,
     "> 0: this long after start, leg A's input ends, so the core ends the calls itself "
     "(drained, then hangup(): tolk hangs up)"},
    TR_MEDIA_ARI_OPTIONS TR_MEDIA_AUDIOSOCKET_OPTIONS TR_MEDIA_WEBSOCKET_OPTIONS{NULL, 0, 0, NULL,
                                                                                 0, 0, NULL}};

static const tr_media_ops *ops_by_name(const char *n) {
    if (n && strcmp(n, "audiosocket") == 0) return &tr_media_audiosocket;
    if (n && strcmp(n, "websocket") == 0) return &tr_media_websocket;
    return NULL;
}

static tolk_status pr_check(const json_t *cfg, tolk_config_error *err) {
    const char *m = json_string_value(json_object_get(cfg, "media"));
    if (!ops_by_name(m)) {
        err->key = "media";
        snprintf(err->message, sizeof err->message, "media \"%s\": audiosocket or websocket",
                 m ? m : "");
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void pr_destroy(void *self);

static tolk_status pr_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    probe *p = calloc(1, sizeof *p);
    if (!p) return TOLK_E_NOMEM;
    p->host = host;
    p->inst = inst;
    p->ops = ops_by_name(host->cfg_string(cfg, "media"));
    p->nlinks = (int)host->cfg_int(cfg, "links");
    if (p->nlinks < 1) p->nlinks = 1;
    if (p->nlinks > MAX_LINKS) p->nlinks = MAX_LINKS;
    p->ari_url = dup_or_null(host->cfg_string(cfg, "ari_url"));
    p->ari_user = dup_or_null(host->cfg_string(cfg, "ari_user"));
    p->ari_password = dup_or_null(host->cfg_string(cfg, "ari_password"));
    p->ari_app = dup_or_null(host->cfg_string(cfg, "ari_app"));
    p->prefix = dup_or_null(host->cfg_string(cfg, "channel_prefix"));
    p->end_after = (double)host->cfg_int(cfg, "end_after_ms") / 1000.0;
    char err[256] = "";
    if (!p->ops || p->ops->hub_create(host, inst, cfg, &p->hub, err, sizeof err) != TOLK_OK) {
        TOLK_LOG(host, inst, TOLK_LOG_ERR, "media hub: %s", err);
        pr_destroy(p);
        return TOLK_E_INVAL;
    }
    *self = p;
    return TOLK_OK;
}

/* ---- link events ---- */

static void ev_audio(void *ud, const int16_t *pcm, size_t n, double at) {
    plink *l = ud;
    for (size_t i = 0; i < n; i++) {
        double s = pcm[i];
        l->rx_sumsq += s * s;
        l->frame_sumsq += s * s;
        if (fabs(s) > l->rx_peak) l->rx_peak = fabs(s);
        if (++l->frame_n == TOLK_FRAME_SAMPLES) {
            if (sqrt(l->frame_sumsq / TOLK_FRAME_SAMPLES) > 300) l->rx_loud_frames++;
            l->frame_sumsq = 0;
            l->frame_n = 0;
        }
    }
    double len = (double)n / (TOLK_FRAME_SAMPLES / TOLK_FRAME_SECONDS);
    if (l->rx_samples == 0) {
        l->rx_first_at = at;
    } else if (at - l->rx_end_at > l->rx_max_gap) {
        l->rx_max_gap = at - l->rx_end_at;
    }
    l->rx_end_at = at + len;
    l->rx_samples += n;
    if (l->ch) l->p->host->channel_audio_at(l->ch, TOLK_LEG_A, pcm, n, at);
}

static void ev_dtmf(void *ud, char digit, unsigned duration_ms) {
    plink *l = ud;
    size_t k = strlen(l->digits);
    if (k + 1 < sizeof l->digits) l->digits[k] = digit, l->digits[k + 1] = '\0';
    if (l->ch) l->p->host->channel_dtmf(l->ch, TOLK_LEG_A, digit, duration_ms);
}

static void ev_played(void *ud, uint64_t frames) {
    plink *l = ud;
    l->played = frames;
    if (l->ch) l->p->host->channel_played(l->ch, TOLK_LEG_B, frames);
}

static void ev_closed(void *ud, const char *why) {
    plink *l = ud;
    probe *p = l->p;
    snprintf(l->why, sizeof l->why, "%s", why ? why : "");
    TOLK_LOG(p->host, p->inst, TOLK_LOG_INFO, "link %d ended: %s", l->idx, l->why);
    p->ops->stats(l->m, &l->last);
    /* As call control does: the call ends with the link, and the link is
     * closed from inside its own event (the encapsulation must allow it). */
    l->ended = 1;
    tr_media *m = l->m;
    l->m = NULL;
    p->ops->close(m);
    if (l->ch) {
        tolk_channel *ch = l->ch;
        l->ch = NULL;
        p->host->channel_close(ch);
    }
}

/* ---- externalMedia ---- */

static void on_reply(void *ud, tolk_http *h, const tolk_http_result *res) {
    plink *l = ud;
    probe *p = l->p;
    (void)h;
    l->http = NULL;
    l->http_status = res->http_status;
    json_t *j = res->status == TOLK_OK && res->body ? json_loads(res->body, 0, NULL) : NULL;
    if (res->status != TOLK_OK || res->http_status != 200 || !j) {
        snprintf(l->why, sizeof l->why, "externalMedia failed: %s HTTP %d %.200s",
                 res->error ? res->error : "", res->http_status, res->body ? res->body : "");
        TOLK_LOG(p->host, p->inst, TOLK_LOG_ERR, "link %d: %s", l->idx, l->why);
        json_decref(j);
        return;
    }
    const char *id = json_string_value(json_object_get(j, "id"));
    snprintf(l->channel_id, sizeof l->channel_id, "%s", id ? id : "");
    if (l->m && p->ops->attach(l->m, j) == TOLK_OK)
        l->attached = 1;
    else if (l->m)
        snprintf(l->why, sizeof l->why, "attach() refused the reply");
    json_decref(j);
}

static void request(plink *l) {
    probe *p = l->p;
    char url[2048];
    snprintf(url, sizeof url, "%s/ari/channels/externalMedia?app=%s&channelId=%s-%d&%s",
             p->ari_url ? p->ari_url : "http://127.0.0.1:8088", p->ari_app,
             p->prefix ? p->prefix : "probe", l->idx, l->params);
    /* api_key in the query is ARI's other way to authenticate, and needs no
     * base64 here. */
    if (p->ari_user) {
        size_t n = strlen(url);
        snprintf(url + n, sizeof url - n, "&api_key=%s:%s", p->ari_user,
                 p->ari_password ? p->ari_password : "");
    }
    tolk_http_request r = {.size = sizeof r,
                           .method = "POST",
                           .url = url,
                           .total_timeout = 10,
                           .on_done = on_reply,
                           .ud = l};
    l->http = p->host->http_request(p->inst, &r);
    if (!l->http) snprintf(l->why, sizeof l->why, "externalMedia request refused at once");
}

static void end_cb(void *ud) {
    probe *p = ud;
    p->end_timer = NULL; /* a one-shot frees itself */
    for (int i = 0; i < p->nlinks; i++)
        if (p->links[i].ch) p->host->channel_input_end(p->links[i].ch, TOLK_LEG_A);
}

static tolk_status pr_start(void *self) {
    probe *p = self;
    for (int i = 0; i < p->nlinks; i++) {
        plink *l = &p->links[i];
        if (l->m || l->ended) continue;
        l->p = p;
        l->idx = i;
        tr_media_events ev = {
            .ud = l, .audio = ev_audio, .dtmf = ev_dtmf, .played = ev_played, .closed = ev_closed};
        char err[256] = "";
        l->m = p->ops->open(p->hub, &ev, err, sizeof err);
        if (!l->m) {
            snprintf(l->why, sizeof l->why, "open: %s", err);
            continue;
        }
        if (p->ops->ari_params(l->m, l->params, sizeof l->params) < 0) {
            snprintf(l->why, sizeof l->why, "ari_params did not fit");
            continue;
        }
        char id[64];
        snprintf(id, sizeof id, "%s-%d", p->prefix ? p->prefix : "probe", i);
        tolk_channel_info info = {.size = sizeof info,
                                  .id = id,
                                  .mode = TOLK_MODE_UNIDIRECTIONAL,
                                  .paced = 1,
                                  .flags = p->ops->chan_flags};
        tolk_status why = TOLK_OK;
        l->ch = p->host->channel_open(p->inst, &info, l, &why);
        if (!l->ch) {
            snprintf(l->why, sizeof l->why, "channel_open refused (%d)", (int)why);
            continue;
        }
        if (p->ari_app) request(l);
    }
    if (p->end_after > 0 && !p->end_timer)
        p->end_timer = p->host->timer_start(p->inst, p->end_after, 0, end_cb, p);
    return TOLK_OK;
}

static void pr_stop(void *self) { (void)self; }

static tolk_status pr_play_ex(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                              size_t n, unsigned flags) {
    probe *p = self;
    plink *l = chan_state;
    if (leg != TOLK_LEG_B) return TOLK_OK; /* leg B never speaks: nothing for A */
    if (!l->m) return TOLK_E_INVAL;
    double sq = 0;
    for (size_t i = 0; i < n; i++) sq += (double)pcm[i] * pcm[i];
    if (n && sqrt(sq / (double)n) > 300) l->tx_loud_frames++;
    return p->ops->send(l->m, pcm, n, flags);
}

static tolk_status pr_play(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                           size_t n) {
    return pr_play_ex(self, chan_state, leg, pcm, n, 0);
}

static void pr_hangup(void *self, void *chan_state) {
    probe *p = self;
    plink *l = chan_state;
    l->ch = NULL;
    if (l->m) {
        p->ops->stats(l->m, &l->last);
        snprintf(l->why, sizeof l->why, "the core ended the call");
        p->ops->close(l->m);
        l->m = NULL;
        l->ended = 1;
    }
}

static json_t *stats_json(const tr_media_stats *s) {
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "rx_frames", (json_int_t)s->rx_frames,
                     "rx_lost", (json_int_t)s->rx_lost, "rx_late", (json_int_t)s->rx_late,
                     "rx_duplicate", (json_int_t)s->rx_duplicate, "rx_foreign",
                     (json_int_t)s->rx_foreign, "rx_malformed", (json_int_t)s->rx_malformed,
                     "tx_frames", (json_int_t)s->tx_frames, "tx_dropped",
                     (json_int_t)s->tx_dropped);
}

static tolk_health pr_health(void *self, json_t **detail_new) {
    probe *p = self;
    if (!detail_new) return TOLK_HEALTHY;
    json_t *links = json_array();
    int ended = 0;
    for (int i = 0; i < p->nlinks; i++) {
        plink *l = &p->links[i];
        tr_media_stats st = l->last;
        if (l->m) p->ops->stats(l->m, &st);
        double rms = l->rx_samples ? sqrt(l->rx_sumsq / (double)l->rx_samples) : 0;
        ended += l->ended;
        json_array_append_new(
            links, json_pack("{s:s,s:s,s:i,s:b,s:b,s:o,s:s,s:I,s:I,s:I,s:f,s:f,s:s,s:I}", "params",
                             l->params, "channel_id", l->channel_id, "http_status", l->http_status,
                             "attached", l->attached, "ended", l->ended, "stats", stats_json(&st),
                             "digits", l->digits, "played", (json_int_t)l->played, "rx_samples",
                             (json_int_t)l->rx_samples, "rx_loud_frames",
                             (json_int_t)l->rx_loud_frames, "rx_rms", rms, "rx_peak", l->rx_peak,
                             "why", l->why, "tx_loud_frames", (json_int_t)l->tx_loud_frames));
        json_t *lo = json_array_get(links, json_array_size(links) - 1);
        json_object_set_new(lo, "rx_span",
                            json_real(l->rx_samples ? l->rx_end_at - l->rx_first_at : 0));
        json_object_set_new(lo, "rx_max_gap", json_real(l->rx_max_gap));
    }
    *detail_new = json_pack("{s:s,s:i,s:i,s:o}", "media", p->ops->name, "links_ended", ended,
                            "nlinks", p->nlinks, "links", links);
    return TOLK_HEALTHY;
}

static void pr_destroy(void *self) {
    probe *p = self;
    if (p->end_timer) p->host->timer_stop(p->end_timer);
    for (int i = 0; i < p->nlinks; i++) {
        plink *l = &p->links[i];
        if (l->http) p->host->http_cancel(l->http);
        if (l->m) p->ops->close(l->m);
    }
    if (p->hub) p->ops->hub_destroy(p->hub);
    free(p->ari_url);
    free(p->ari_user);
    free(p->ari_password);
    free(p->ari_app);
    free(p->prefix);
    free(p);
}

static const tolk_transport desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT), .name = "media_probe",
             .version = "1.0.0",
             .description = "test probe: ExternalMedia links of one encapsulation as calls",
             .options = options, .check_config = pr_check, .create = pr_create,
             .destroy = pr_destroy, .health = pr_health},
    .start = pr_start,
    .stop = pr_stop,
    .play = pr_play,
    .hangup = pr_hangup,
    .play_ex = pr_play_ex,
};

TOLK_PLUGIN_DEFINE(desc)
