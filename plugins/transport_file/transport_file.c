/*
 * transport_file -- one call read from a WAV file, its translation written to
 * another WAV file. This is the transport behind `tolk-translate IN.wav OUT.wav`.
 *
 * start() opens a single call. Party A "speaks" the input file; whatever the
 * core plays to party B (the translation) is appended to the output. At the end
 * of the input the transport calls channel_input_end(A); the core ends the call
 * once everything pending has been played, and hangup() completes the output's
 * header. The input is streamed in 20 ms blocks, never loaded whole, so memory
 * stays flat for any length of file.
 *
 * With realtime = true the output keeps the call's timeline: it is written
 * with silence wherever nothing was played to B, so IN.wav and OUT.wav line
 * up and the delay of the translation can be heard. Before a played frame
 * is written, zero frames are appended until the output reaches the number
 * of 20 ms ticks since the channel opened (never backwards: frames that come
 * faster than real time are just appended); at hangup the output is padded
 * to at least the input's length. Fast mode writes the phrases back to back.
 *
 * Settings (group `settings` of the instance):
 *   input         string, required  WAV to read: 16-bit PCM (WAVE_FORMAT_PCM or
 *                                    WAVE_FORMAT_EXTENSIBLE/PCM), mono or stereo
 *                                    (stereo is downmixed), at 8000, 16000, 22050,
 *                                    44100 or 48000 Hz
 *   output        string, required  WAV to write: 16 kHz mono 16-bit PCM
 *   from          string, "en"      language spoken in the input (leg A)
 *   to            string, "es"      language of the output (leg B)
 *   voice         string, unset     voice profile for the synthesized speech
 *   realtime      bool,   false     feed one frame per 20 ms and have the core
 *                                    pace playback, like a live call; the
 *                                    output keeps the call's timeline
 *   batch_frames  int,    50        frames fed per loop turn when not realtime
 *
 * Health detail: {"frames_in","frames_out","frames_silence","input_rate",
 * "input_seconds","state","error"}; see README.md.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>
#include <tolk/plugin.h>

#define PLUGIN_NAME "transport_file"
#define MAX_IN_RATE 48000
#define MAX_IN_CHANNELS 2
/* One 20 ms block of the fastest supported input. */
#define IN_BLOCK_MAX (MAX_IN_RATE / 50)
/* Holds a partial frame (< 320) plus the resampler output of one input block
 * and of the flush block, with room to spare. */
#define PEND_CAP 2048
/* A stalled loop is caught up at most this many frames per tick, so a long
 * stall cannot turn into one long burst. */
#define CATCHUP_MAX 10
#define WAV_HEADER_BYTES 44
/* RIFF sizes are 32-bit; the RIFF size field is data + 36. */
#define WAV_DATA_MAX (UINT32_MAX - 36u)
/* realtime: a frame played to B less than this after the previous one
 * continues the same run of playback (the core's clock plays one frame per
 * tick, or several at once when it catches up) and is appended as is. Only
 * the first frame after a pause is placed by the clock, so jitter of the
 * playback clock against the 20 ms grid cannot cut 20 ms holes into speech. */
#define RUN_GAP_SECONDS (1.5 * TOLK_FRAME_SECONDS)

static const int16_t zero_frame[TOLK_FRAME_SAMPLES];

static const unsigned supported_rates[] = {8000, 16000, 22050, 44100, 48000};

typedef struct wav_info {
    unsigned rate, channels, block_align;
    uint64_t data_offset;    /* of the first sample */
    uint64_t data_bytes;     /* readable bytes, a multiple of block_align */
    uint64_t declared_bytes; /* what the data chunk header claims */
    int truncated;           /* declared > what the file holds */
} wav_info;

typedef enum call_state {
    CALL_IDLE = 0, /* before start() */
    CALL_FEEDING,  /* input being fed */
    CALL_DRAINING, /* input ended; waiting for the core to hang up */
    CALL_ENDED
} call_state;

static const char *const state_names[] = {"idle", "feeding", "draining", "ended"};

typedef struct file_transport {
    const tolk_host *host;
    tolk_instance *inst;

    char *input, *output, *from, *to, *voice;
    int realtime;
    int64_t batch_frames;

    call_state state;
    tolk_channel *ch;
    /* channel_open() may call back (play, even hangup) before it returns. */
    int opening, hungup_while_opening;
    char id[256];

    FILE *in;
    wav_info wav;
    uint64_t in_bytes_left;
    int in_eof;
    tolk_resampler *rs;

    FILE *out;
    int out_seekable;
    uint64_t out_bytes;
    int out_full_logged;
    /* realtime: the output's timeline. call_t0 is host->now() when the
     * channel opened; last_play_b when the last frame was played to B
     * (< 0: none yet). */
    double call_t0, last_play_b;
    uint64_t silence_samples; /* zeros written to keep the timeline */

    tolk_timer *timer;
    int timer_repeating;
    int waiting; /* the core refused a frame (TOLK_E_AGAIN): until input_ready() */
    double feed_t0; /* realtime: when frame 0 was due; < 0 before the first tick */

    uint64_t frames_in, frames_out;
    char error[256]; /* first write error, reported in health */

    int16_t pend[PEND_CAP]; /* 16 kHz samples not yet fed */
    size_t npend;
    /* 16 kHz samples the input amounts to, and how many were produced: the
     * resampler's flush is cut there so the call is as long as the file. */
    uint64_t samples_expected, samples_made;
    uint8_t raw[IN_BLOCK_MAX * MAX_IN_CHANNELS * 2];
    int16_t mono[IN_BLOCK_MAX];
} file_transport;

/* ------------------------------------------------------------------ */
/* Little-endian helpers: WAV is little-endian whatever the host is.  */

static unsigned le16(const uint8_t *p) { return (unsigned)p[0] | ((unsigned)p[1] << 8); }

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void put16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)((v >> 8) & 0xff);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)((v >> 8) & 0xff);
    p[2] = (uint8_t)((v >> 16) & 0xff);
    p[3] = (uint8_t)((v >> 24) & 0xff);
}

/* ------------------------------------------------------------------ */
/* WAV reader                                                          */

static int wav_fail(char *err, size_t errsz, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int wav_fail(char *err, size_t errsz, const char *path, const char *fmt, ...) {
    int n = snprintf(err, errsz, "%s: ", path);
    if (n < 0 || (size_t)n >= errsz) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errsz - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int read_at(FILE *f, uint64_t off, void *buf, size_t n) {
    if (off > (uint64_t)INT64_MAX || fseeko(f, (off_t)off, SEEK_SET) != 0) return -1;
    return fread(buf, 1, n, f) == n ? 0 : -1;
}

/* Chunk ids are four printable ASCII characters; used to tell whether a writer
 * padded an odd-sized chunk as the spec says or forgot to. */
static int plausible_id(const uint8_t *id) {
    for (int i = 0; i < 4; i++)
        if (id[i] < 0x20 || id[i] > 0x7e) return 0;
    return 1;
}

static const uint8_t ksdataformat_tail[14] = {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80,
                                              0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71};

static int wav_check_fmt(const uint8_t *b, uint32_t len, const char *path, wav_info *w,
                         char *err, size_t errsz) {
    unsigned tag = le16(b), channels = le16(b + 2), bits = le16(b + 14);
    uint32_t rate = le32(b + 4);
    unsigned align = le16(b + 12);

    if (tag == 0xFFFE) {
        if (len < 40 || le16(b + 16) < 22)
            return wav_fail(err, errsz, path,
                            "WAVE_FORMAT_EXTENSIBLE fmt chunk too short (%u bytes)",
                            (unsigned)len);
        if (memcmp(b + 26, ksdataformat_tail, sizeof ksdataformat_tail) != 0)
            return wav_fail(err, errsz, path,
                            "WAVE_FORMAT_EXTENSIBLE with an unknown subformat; tolk reads "
                            "16-bit PCM WAV");
        tag = le16(b + 24);
    }
    switch (tag) {
    case 1:
        break;
    case 3:
        return wav_fail(err, errsz, path, "%u-bit float samples; tolk reads 16-bit PCM WAV",
                        bits);
    case 6:
        return wav_fail(err, errsz, path, "A-law samples; tolk reads 16-bit PCM WAV");
    case 7:
        return wav_fail(err, errsz, path, "mu-law samples; tolk reads 16-bit PCM WAV");
    case 2:
    case 0x11:
        return wav_fail(err, errsz, path, "ADPCM samples; tolk reads 16-bit PCM WAV");
    case 0x55:
        return wav_fail(err, errsz, path, "MP3 data; tolk reads 16-bit PCM WAV");
    default:
        return wav_fail(err, errsz, path, "audio format 0x%04x; tolk reads 16-bit PCM WAV",
                        tag);
    }
    if (bits != 16)
        return wav_fail(err, errsz, path, "%u-bit samples; tolk reads 16-bit PCM WAV", bits);
    if (channels < 1 || channels > 2)
        return wav_fail(err, errsz, path, "%u channels; tolk reads mono or stereo", channels);
    int rate_ok = 0;
    for (size_t i = 0; i < sizeof supported_rates / sizeof supported_rates[0]; i++)
        if (rate == supported_rates[i]) rate_ok = 1;
    if (!rate_ok)
        return wav_fail(err, errsz, path,
                        "sample rate %lu Hz not supported (8000, 16000, 22050, 44100, 48000)",
                        (unsigned long)rate);
    if (align != channels * 2)
        return wav_fail(err, errsz, path,
                        "block align %u does not match %u channel(s) of 16-bit samples", align,
                        channels);
    w->rate = rate;
    w->channels = channels;
    w->block_align = align;
    return 0;
}

/* Walks the chunks of an open WAV. On success fills *w and returns 0; else
 * writes "PATH: what is wrong" into err and returns -1. The position of f is
 * unspecified afterwards. */
static int wav_parse(FILE *f, const char *path, wav_info *w, char *err, size_t errsz) {
    struct stat st;
    uint8_t hdr[12];

    memset(w, 0, sizeof *w);
    if (fstat(fileno(f), &st) != 0)
        return wav_fail(err, errsz, path, "%s", strerror(errno));
    if (S_ISDIR(st.st_mode)) return wav_fail(err, errsz, path, "is a directory");
    if (!S_ISREG(st.st_mode)) return wav_fail(err, errsz, path, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) return wav_fail(err, errsz, path, "file is empty");
    if (size < 12 || read_at(f, 0, hdr, 12) != 0)
        return wav_fail(err, errsz, path, "not a RIFF/WAVE file (too short)");
    if (memcmp(hdr, "RF64", 4) == 0)
        return wav_fail(err, errsz, path, "RF64 files are not supported; tolk reads RIFF/WAVE");
    if (memcmp(hdr, "RIFX", 4) == 0)
        return wav_fail(err, errsz, path,
                        "big-endian RIFX files are not supported; tolk reads RIFF/WAVE");
    if (memcmp(hdr, "RIFF", 4) != 0 || memcmp(hdr + 8, "WAVE", 4) != 0)
        return wav_fail(err, errsz, path, "not a RIFF/WAVE file");

    /* The RIFF size field is ignored: writers that stream often leave it wrong.
     * The file size is what bounds the walk. */
    int have_fmt = 0, have_data = 0;
    uint64_t pos = 12;
    while (pos + 8 <= size) {
        uint8_t ch[8];
        if (read_at(f, pos, ch, 8) != 0) return wav_fail(err, errsz, path, "read error");
        uint32_t csz = le32(ch + 4);
        uint64_t body = pos + 8;

        if (memcmp(ch, "fmt ", 4) == 0 && !have_fmt) {
            uint8_t fb[40];
            if (csz < 16)
                return wav_fail(err, errsz, path, "fmt chunk too short (%lu bytes)",
                                (unsigned long)csz);
            uint32_t n = csz < sizeof fb ? csz : (uint32_t)sizeof fb;
            if (body + n > size || read_at(f, body, fb, n) != 0)
                return wav_fail(err, errsz, path, "truncated fmt chunk");
            if (wav_check_fmt(fb, n, path, w, err, errsz) != 0) return -1;
            have_fmt = 1;
        } else if (memcmp(ch, "data", 4) == 0 && !have_data) {
            have_data = 1;
            w->data_offset = body;
            w->declared_bytes = csz;
            uint64_t avail = size - body;
            if (csz > avail) {
                w->truncated = 1;
                w->data_bytes = avail;
            } else {
                w->data_bytes = csz;
            }
            /* Past a truncated data chunk there is nothing to walk to. */
            if (have_fmt || w->truncated) break;
        }
        if (have_fmt && have_data) break;

        uint64_t next = body + csz;
        if (csz & 1u) {
            /* The spec pads odd chunks to even length, but some writers forget;
             * follow whichever offset holds something that looks like a chunk. */
            uint8_t id[4];
            if (next + 1 + 8 <= size && read_at(f, next + 1, id, 4) == 0 && plausible_id(id))
                next += 1;
            else if (!(next + 8 <= size && read_at(f, next, id, 4) == 0 && plausible_id(id)))
                next += 1;
        }
        pos = next;
    }
    if (!have_fmt) return wav_fail(err, errsz, path, "no fmt chunk");
    if (!have_data) return wav_fail(err, errsz, path, "no data chunk");
    w->data_bytes -= w->data_bytes % w->block_align;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Settings                                                            */

static const tolk_option options[] = {
    {"input", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0,
     "WAV to translate: 16-bit PCM, mono or stereo, 8000/16000/22050/44100/48000 Hz"},
    {"output", TOLK_OPT_STRING, TOLK_OPT_REQUIRED, NULL, 0, 0,
     "WAV to write the translation to (16 kHz mono 16-bit); overwritten"},
    {"from", TOLK_OPT_STRING, 0, "en", 0, 0, "language spoken in the input"},
    {"to", TOLK_OPT_STRING, 0, "es", 0, 0, "language to translate into"},
    {"voice", TOLK_OPT_STRING, 0, NULL, 0, 0, "voice profile for the translated speech"},
    {"realtime", TOLK_OPT_BOOL, 0, "false", 0, 0,
     "feed 20 ms per 20 ms and pace playback like a live call"},
    {"batch_frames", TOLK_OPT_INT, 0, "50", 1, 100000,
     "20 ms frames fed per loop turn when not realtime"},
    {NULL, 0, 0, NULL, 0, 0, NULL}};

static const char *json_str(const json_t *cfg, const char *key) {
    return json_string_value(json_object_get(cfg, key));
}

/* Can `path` be created or overwritten? Fills err and returns -1 if not. */
static int check_output(const char *path, const char *input, char *err, size_t errsz) {
    struct stat st, ist;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return wav_fail(err, errsz, path, "is a directory");
        if (input && stat(input, &ist) == 0 && st.st_dev == ist.st_dev &&
            st.st_ino == ist.st_ino)
            return wav_fail(err, errsz, path, "output is the input file");
        if (access(path, W_OK) != 0)
            return wav_fail(err, errsz, path, "not writable: %s", strerror(errno));
        return 0;
    }
    size_t len = strlen(path);
    if (len == 0) return wav_fail(err, errsz, "output", "empty path");
    if (path[len - 1] == '/') return wav_fail(err, errsz, path, "names a directory");
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t dl = (size_t)(slash - path);
        if (dl >= sizeof dir) return wav_fail(err, errsz, path, "path too long");
        memcpy(dir, path, dl);
        dir[dl] = '\0';
    }
    if (stat(dir, &st) != 0)
        return wav_fail(err, errsz, path, "directory %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return wav_fail(err, errsz, path, "%s is not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0)
        return wav_fail(err, errsz, path, "directory %s is not writable", dir);
    return 0;
}

static tolk_status ft_check_config(const json_t *cfg, tolk_config_error *err) {
    const char *input = json_str(cfg, "input"), *output = json_str(cfg, "output");
    if (!input || !*input) {
        err->key = "input";
        snprintf(err->message, sizeof err->message, "a WAV file path is required");
        return TOLK_E_INVAL;
    }
    if (!output || !*output) {
        err->key = "output";
        snprintf(err->message, sizeof err->message, "a WAV file path is required");
        return TOLK_E_INVAL;
    }
    FILE *f = fopen(input, "rb");
    if (!f) {
        err->key = "input";
        wav_fail(err->message, sizeof err->message, input, "%s", strerror(errno));
        return TOLK_E_INVAL;
    }
    wav_info w;
    int rc = wav_parse(f, input, &w, err->message, sizeof err->message);
    fclose(f);
    if (rc != 0) {
        err->key = "input";
        return TOLK_E_INVAL;
    }
    if (check_output(output, input, err->message, sizeof err->message) != 0) {
        err->key = "output";
        return TOLK_E_INVAL;
    }
    return TOLK_OK;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

static int out_write_header(file_transport *s) {
    uint8_t h[WAV_HEADER_BYTES];
    /* A stream cannot be fixed up later; 0xFFFFFFFF is the usual "unknown". */
    uint32_t data = s->out_seekable ? (uint32_t)s->out_bytes : UINT32_MAX;
    uint32_t riff = s->out_seekable ? data + 36 : UINT32_MAX;
    memcpy(h, "RIFF", 4);
    put32(h + 4, riff);
    memcpy(h + 8, "WAVEfmt ", 8);
    put32(h + 16, 16);
    put16(h + 20, 1);
    put16(h + 22, 1);
    put32(h + 24, TOLK_SAMPLE_RATE);
    put32(h + 28, TOLK_SAMPLE_RATE * 2);
    put16(h + 32, 2);
    put16(h + 34, 16);
    memcpy(h + 36, "data", 4);
    put32(h + 40, data);
    return fwrite(h, 1, sizeof h, s->out) == sizeof h ? 0 : -1;
}

static void note_write_error(file_transport *s, const char *what) {
    if (s->error[0]) return;
    snprintf(s->error, sizeof s->error, "%s: %s: %s", s->output, what, strerror(errno));
    TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s", s->error);
    s->host->report(s->inst, TOLK_E_BACKEND, TOLK_SEV_HIGH, s->error);
}

/* Rewrites the header for the data written so far and carries on. */
static void out_sync(file_transport *s) {
    if (!s->out || !s->out_seekable || s->error[0]) return;
    off_t end;
    if (fflush(s->out) != 0 || (end = ftello(s->out)) < 0 || fseeko(s->out, 0, SEEK_SET) != 0 ||
        out_write_header(s) != 0 || fseeko(s->out, end, SEEK_SET) != 0)
        note_write_error(s, "cannot update the WAV header");
}

static void out_finish(file_transport *s) {
    if (!s->out) return;
    if (s->out_seekable) {
        if (fflush(s->out) != 0 || fseeko(s->out, 0, SEEK_SET) != 0 || out_write_header(s) != 0)
            note_write_error(s, "cannot complete the WAV header");
    }
    if (fclose(s->out) != 0) note_write_error(s, "close");
    s->out = NULL;
    TOLK_LOG(s->host, s->inst, TOLK_LOG_INFO, "wrote %s: %.2f s of audio", s->output,
             (double)s->out_bytes / (2.0 * TOLK_SAMPLE_RATE));
}

/* ------------------------------------------------------------------ */
/* Call lifecycle                                                      */

/* Everything hangup() owes: idempotent, so stop(), destroy() and hangup() can
 * arrive in any order. Never calls the core: the channel is over or untouchable. */
static void call_finish(file_transport *s) {
    if (s->timer) {
        s->host->timer_stop(s->timer);
        s->timer = NULL;
    }
    if (s->rs) {
        s->host->resampler_free(s->rs);
        s->rs = NULL;
    }
    if (s->in) {
        fclose(s->in);
        s->in = NULL;
    }
    out_finish(s);
    s->ch = NULL;
    if (s->state != CALL_IDLE) s->state = CALL_ENDED;
}

/* Reads one 20 ms block of input and appends it, at 16 kHz, to pend. At the
 * end of the data it pushes the resampler's tail out and sets in_eof. */
static void append(file_transport *s, size_t n) {
    uint64_t room = s->samples_expected - s->samples_made;
    if (n > room) n = (size_t)room;
    s->npend += n;
    s->samples_made += n;
}

static void refill(file_transport *s) {
    size_t frames = 0;
    if (!s->in_eof && s->in) {
        size_t align = s->wav.block_align;
        uint64_t want = (uint64_t)(s->wav.rate / 50) * align;
        if (want > s->in_bytes_left) want = s->in_bytes_left;
        size_t got = want ? fread(s->raw, 1, (size_t)want, s->in) : 0;
        if (got < want) {
            if (ferror(s->in))
                TOLK_LOG(s->host, s->inst, TOLK_LOG_WARN, "%s: read error: %s; ending input",
                         s->input, strerror(errno));
            s->in_bytes_left = 0; /* the file shrank or failed: use what came */
        } else {
            s->in_bytes_left -= got;
        }
        frames = got / align;
        for (size_t i = 0; i < frames; i++) {
            const uint8_t *p = s->raw + i * align;
            int v = (int16_t)le16(p);
            if (s->wav.channels == 2) v = (v + (int16_t)le16(p + 2)) / 2;
            s->mono[i] = (int16_t)v;
        }
    }
    if (frames == 0) {
        if (!s->in_eof && s->rs && s->wav.data_bytes > 0) {
            /* The resampler holds back its filter delay (a few ms at quality
             * 5); 20 ms of silence pushes it out. */
            size_t n = s->wav.rate / 50;
            memset(s->mono, 0, n * sizeof s->mono[0]);
            append(s, s->host->resample(s->rs, s->mono, n, s->pend + s->npend,
                                        PEND_CAP - s->npend));
        }
        s->in_eof = 1;
        return;
    }
    if (s->rs) {
        append(s, s->host->resample(s->rs, s->mono, frames, s->pend + s->npend,
                                    PEND_CAP - s->npend));
    } else {
        memcpy(s->pend + s->npend, s->mono, frames * sizeof s->mono[0]);
        append(s, frames);
    }
}

static void end_input(file_transport *s) {
    s->state = CALL_DRAINING;
    if (s->timer) {
        s->host->timer_stop(s->timer);
        s->timer = NULL;
    }
    /* Release the input now rather than at hangup: draining can take a while. */
    if (s->rs) {
        s->host->resampler_free(s->rs);
        s->rs = NULL;
    }
    if (s->in) {
        fclose(s->in);
        s->in = NULL;
    }
    TOLK_LOG(s->host, s->inst, TOLK_LOG_VERB, "%s: end of input after %llu frames", s->input,
             (unsigned long long)s->frames_in);
    /* May hang up before returning. */
    s->host->channel_input_end(s->ch, TOLK_LEG_A);
}

static void feed_tick(void *ud) {
    file_transport *s = ud;
    if (!s->timer_repeating) s->timer = NULL; /* a one-shot frees itself */
    if (!s->ch || s->state != CALL_FEEDING) return;

    int64_t budget;
    if (s->realtime) {
        double now = s->host->now();
        if (s->feed_t0 < 0) s->feed_t0 = now;
        /* Count frames against the clock rather than ticks, so a late tick
         * is made up for and the schedule does not drift. */
        int64_t due = (int64_t)floor((now - s->feed_t0) / TOLK_FRAME_SECONDS + 0.5) + 1;
        budget = due - (int64_t)s->frames_in;
        if (budget > CATCHUP_MAX) budget = CATCHUP_MAX;
    } else {
        budget = s->batch_frames;
    }

    while (budget > 0 && s->ch && s->state == CALL_FEEDING) {
        while (s->npend < TOLK_FRAME_SAMPLES && !s->in_eof) refill(s);
        if (s->npend == 0) {
            end_input(s);
            return;
        }
        if (s->npend < TOLK_FRAME_SAMPLES) {
            memset(s->pend + s->npend, 0, (TOLK_FRAME_SAMPLES - s->npend) * sizeof s->pend[0]);
            s->npend = TOLK_FRAME_SAMPLES;
        }
        tolk_status st = s->host->channel_audio(s->ch, TOLK_LEG_A, s->pend, TOLK_FRAME_SAMPLES);
        if (st == TOLK_E_AGAIN && !s->realtime) {
            /* The call holds as much as it may: the frame stays in pend
             * and the core's input_ready() resumes the feeding. */
            s->waiting = 1;
            return;
        }
        s->frames_in++;
        s->npend -= TOLK_FRAME_SAMPLES;
        memmove(s->pend, s->pend + TOLK_FRAME_SAMPLES, s->npend * sizeof s->pend[0]);
        budget--;
        if (st != TOLK_OK && s->ch && s->state == CALL_FEEDING) {
            /* The channel has ended on the core's side; its hangup follows. */
            TOLK_LOG(s->host, s->inst, TOLK_LOG_WARN,
                     "%s: the core refused audio (status %d); input stopped", s->input, (int)st);
            s->state = CALL_DRAINING;
            if (s->timer) {
                s->host->timer_stop(s->timer);
                s->timer = NULL;
            }
            return;
        }
    }
    if (s->ch && s->state == CALL_FEEDING && !s->timer) {
        s->timer = s->host->timer_start(s->inst, 0, 0, feed_tick, s);
        if (!s->timer) {
            TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "cannot start a timer; ending the input");
            end_input(s);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Plugin functions                                                    */

static char *dup_or_null(const char *v) { return v ? strdup(v) : NULL; }

static void ft_destroy(void *self) {
    file_transport *s = self;
    if (!s) return;
    if (s->ch)
        TOLK_LOG(s->host, s->inst, TOLK_LOG_WARN,
                 "destroyed while its call was open; output completed anyway");
    call_finish(s);
    free(s->input);
    free(s->output);
    free(s->from);
    free(s->to);
    free(s->voice);
    free(s);
}

static tolk_status ft_create(const tolk_host *host, tolk_instance *inst, const json_t *cfg,
                             void **self) {
    file_transport *s = calloc(1, sizeof *s);
    if (!s) return TOLK_E_NOMEM;
    s->host = host;
    s->inst = inst;
    s->input = dup_or_null(host->cfg_string(cfg, "input"));
    s->output = dup_or_null(host->cfg_string(cfg, "output"));
    s->from = dup_or_null(host->cfg_string(cfg, "from"));
    s->to = dup_or_null(host->cfg_string(cfg, "to"));
    s->voice = dup_or_null(host->cfg_string(cfg, "voice"));
    s->realtime = host->cfg_bool(cfg, "realtime");
    s->batch_frames = host->cfg_int(cfg, "batch_frames");
    if (s->batch_frames < 1) s->batch_frames = 1;
    if (!host->cfg_string(cfg, "input") || !host->cfg_string(cfg, "output")) {
        ft_destroy(s);
        return TOLK_E_INVAL;
    }
    if (!s->input || !s->output || !s->from || !s->to ||
        (host->cfg_string(cfg, "voice") && !s->voice)) {
        ft_destroy(s);
        return TOLK_E_NOMEM;
    }
    *self = s;
    return TOLK_OK;
}

static tolk_status ft_start(void *self) {
    file_transport *s = self;
    char err[320];

    if (s->state == CALL_FEEDING || s->state == CALL_DRAINING) return TOLK_OK;
    /* A second start() after the call ended plays the file again. */
    s->state = CALL_IDLE;
    s->frames_in = s->frames_out = s->out_bytes = 0;
    s->silence_samples = 0;
    s->last_play_b = -1;
    s->npend = 0;
    s->in_eof = 0;
    s->feed_t0 = -1;
    s->waiting = 0;
    s->error[0] = '\0';
    s->out_full_logged = 0;
    s->hungup_while_opening = 0;

    s->in = fopen(s->input, "rb");
    if (!s->in) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: %s", s->input, strerror(errno));
        return TOLK_E_INVAL;
    }
    if (wav_parse(s->in, s->input, &s->wav, err, sizeof err) != 0) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s", err);
        call_finish(s);
        return TOLK_E_INVAL;
    }
    if (s->wav.truncated)
        TOLK_LOG(s->host, s->inst, TOLK_LOG_WARN,
                 "%s: data chunk says %llu bytes but the file holds %llu; reading those",
                 s->input, (unsigned long long)s->wav.declared_bytes,
                 (unsigned long long)s->wav.data_bytes);
    if (fseeko(s->in, (off_t)s->wav.data_offset, SEEK_SET) != 0) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: seek: %s", s->input, strerror(errno));
        call_finish(s);
        return TOLK_E_INVAL;
    }
    s->in_bytes_left = s->wav.data_bytes;
    uint64_t in_samples = s->wav.data_bytes / s->wav.block_align;
    s->samples_expected =
        (in_samples * TOLK_SAMPLE_RATE + s->wav.rate - 1) / s->wav.rate;
    s->samples_made = 0;

    if (s->wav.rate != TOLK_SAMPLE_RATE) {
        s->rs = s->host->resampler_new(s->wav.rate, TOLK_SAMPLE_RATE, 5);
        if (!s->rs) {
            call_finish(s);
            return TOLK_E_NOMEM;
        }
    }

    s->out = fopen(s->output, "wb");
    if (!s->out) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: %s", s->output, strerror(errno));
        call_finish(s);
        return TOLK_E_INVAL;
    }
    struct stat st;
    s->out_seekable = fstat(fileno(s->out), &st) == 0 && S_ISREG(st.st_mode);
    if (out_write_header(s) != 0) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: %s", s->output, strerror(errno));
        call_finish(s);
        return TOLK_E_INVAL;
    }

    const char *base = strrchr(s->input, '/');
    base = (base && base[1]) ? base + 1 : s->input;
    snprintf(s->id, sizeof s->id, "%s", base);

    tolk_channel_info info;
    memset(&info, 0, sizeof info);
    info.size = sizeof info;
    info.id = s->id;
    info.language[TOLK_LEG_A] = s->from;
    info.language[TOLK_LEG_B] = s->to;
    info.voice[TOLK_LEG_A] = s->voice;
    info.voice[TOLK_LEG_B] = NULL;
    info.mode = TOLK_MODE_UNIDIRECTIONAL;
    info.paced = s->realtime ? 1 : 0;
    /* A file can wait: fed as fast as the engines finish it, not faster. */
    info.flags = s->realtime ? 0 : TOLK_CHAN_PULL;

    s->state = CALL_FEEDING;
    s->opening = 1;
    /* Before channel_open(): it may already call play(). */
    s->call_t0 = s->host->now();
    tolk_status why = TOLK_E_BACKEND;
    tolk_channel *ch = s->host->channel_open(s->inst, &info, s, &why);
    s->opening = 0;
    if (!ch) {
        if (why >= 0) why = TOLK_E_BACKEND;
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: the core refused the call (status %d)",
                 s->input, (int)why);
        call_finish(s);
        s->state = CALL_IDLE;
        return why;
    }
    if (s->hungup_while_opening) {
        call_finish(s);
        return TOLK_OK;
    }
    s->ch = ch;
    TOLK_LOG(s->host, s->inst, TOLK_LOG_INFO,
             "%s: %u Hz %s, %.2f s, %s -> %s%s", s->input, s->wav.rate,
             s->wav.channels == 2 ? "stereo" : "mono",
             (double)s->wav.data_bytes / ((double)s->wav.block_align * s->wav.rate), s->from,
             s->to, s->realtime ? ", realtime" : "");

    s->timer_repeating = s->realtime;
    s->timer = s->host->timer_start(s->inst, 0, s->realtime ? TOLK_FRAME_SECONDS : 0,
                                    feed_tick, s);
    if (!s->timer) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "cannot start a timer");
        s->ch = NULL;
        s->host->channel_close(ch);
        call_finish(s);
        return TOLK_E_NOMEM;
    }
    return TOLK_OK;
}

/* The core calls stop() before it drains running calls (shutdown, reload),
 * so the call is not cut off here: the caller just stops talking. What was
 * fed is still translated and written, and the core's hangup() (at the
 * latest when the drain times out) completes the file. */
static void ft_stop(void *self) {
    file_transport *s = self;
    /* Make the file valid as it stands, in case the process dies first. */
    out_sync(s);
    if (s->ch && s->state == CALL_FEEDING) {
        TOLK_LOG(s->host, s->inst, TOLK_LOG_INFO, "%s: stopped; input ends after %llu frames",
                 s->input, (unsigned long long)s->frames_in);
        end_input(s);
    }
}

/* Appends n samples to the output. Returns 0, or -1 when nothing more can
 * be written (write error, 4 GiB limit); both are logged once. */
static int out_write(file_transport *s, const int16_t *pcm, size_t n) {
    if (s->error[0]) return -1;
    if (s->out_bytes + 2 * (uint64_t)n > WAV_DATA_MAX) {
        if (!s->out_full_logged)
            TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "%s: 4 GiB WAV limit reached; dropping",
                     s->output);
        s->out_full_logged = 1;
        return -1;
    }
    uint8_t buf[TOLK_FRAME_BYTES];
    size_t done = 0;
    while (done < n) {
        size_t k = n - done;
        if (k > TOLK_FRAME_SAMPLES) k = TOLK_FRAME_SAMPLES;
        for (size_t i = 0; i < k; i++) put16(buf + 2 * i, (uint16_t)pcm[done + i]);
        if (fwrite(buf, 2, k, s->out) != k) {
            note_write_error(s, "write");
            return -1;
        }
        s->out_bytes += 2 * k;
        done += k;
    }
    return 0;
}

/* Appends silence until the output holds `samples` samples; never shortens. */
static void out_pad_to(file_transport *s, uint64_t samples) {
    while (s->out_bytes / 2 < samples) {
        uint64_t k = samples - s->out_bytes / 2;
        if (k > TOLK_FRAME_SAMPLES) k = TOLK_FRAME_SAMPLES;
        if (out_write(s, zero_frame, (size_t)k) != 0) return;
        s->silence_samples += k;
    }
}

static tolk_status ft_play(void *self, void *chan_state, tolk_leg leg, const int16_t *pcm,
                           size_t n) {
    file_transport *s = self;
    if (chan_state != s || !s->out) return TOLK_E_INVAL;
    if (leg != TOLK_LEG_B) return TOLK_OK; /* party A hears nothing in a file */
    s->frames_out++;
    if (!pcm || n == 0 || s->error[0]) return TOLK_OK;
    if (s->realtime) {
        /* Keep the call's timeline: the first frame after a pause goes where
         * the clock says, i.e. after as many frames as 20 ms ticks have
         * passed since the call opened. A frame is never put in the past:
         * if the output is already further (frames came faster than real
         * time), it is appended. */
        double now = s->host->now();
        int same_run = s->last_play_b >= 0 && now - s->last_play_b < RUN_GAP_SECONDS;
        s->last_play_b = now;
        if (!same_run && now > s->call_t0) {
            uint64_t tick = (uint64_t)floor((now - s->call_t0) / TOLK_FRAME_SECONDS);
            out_pad_to(s, tick * TOLK_FRAME_SAMPLES);
        }
    }
    out_write(s, pcm, n);
    return TOLK_OK;
}

static void ft_input_ready(void *self, void *chan_state, tolk_leg leg) {
    file_transport *s = self;
    if (chan_state != s || leg != TOLK_LEG_A || !s->waiting) return;
    s->waiting = 0;
    if (s->ch && s->state == CALL_FEEDING && !s->timer) {
        s->timer_repeating = 0;
        s->timer = s->host->timer_start(s->inst, 0, 0, feed_tick, s);
        if (!s->timer) {
            TOLK_LOG(s->host, s->inst, TOLK_LOG_ERR, "cannot start a timer; ending the input");
            end_input(s);
        }
    }
}

static void ft_hangup(void *self, void *chan_state) {
    file_transport *s = self;
    if (chan_state != s) return;
    if (s->opening) {
        s->hungup_while_opening = 1;
        return;
    }
    if (!s->ch) return;
    /* realtime: the output lasts at least as long as the call's input, so
     * IN.wav and OUT.wav can be played side by side to the end. */
    if (s->realtime && s->out) out_pad_to(s, s->frames_in * TOLK_FRAME_SAMPLES);
    TOLK_LOG(s->host, s->inst, TOLK_LOG_VERB,
             "%s: call ended: %llu frames in, %llu out, %llu of silence", s->input,
             (unsigned long long)s->frames_in, (unsigned long long)s->frames_out,
             (unsigned long long)(s->silence_samples / TOLK_FRAME_SAMPLES));
    call_finish(s);
}

static tolk_health ft_health(void *self, json_t **detail_new) {
    file_transport *s = self;
    if (detail_new) {
        double secs = 0;
        if (s->wav.rate && s->wav.block_align)
            secs = (double)s->wav.data_bytes / ((double)s->wav.block_align * s->wav.rate);
        *detail_new = json_pack("{s:I,s:I,s:I,s:i,s:f,s:s,s:s?}", "frames_in",
                                (json_int_t)s->frames_in, "frames_out",
                                (json_int_t)s->frames_out, "frames_silence",
                                (json_int_t)(s->silence_samples / TOLK_FRAME_SAMPLES),
                                "input_rate", (int)s->wav.rate,
                                "input_seconds", secs, "state", state_names[s->state], "error",
                                s->error[0] ? s->error : NULL);
    }
    return s->error[0] ? TOLK_UNHEALTHY : TOLK_HEALTHY;
}

static const tolk_transport desc = {
    .base = {TOLK_PLUGIN_INIT(tolk_transport, TOLK_KIND_TRANSPORT),
             .name = PLUGIN_NAME,
             .version = "1.0.0",
             .description = "one call from a WAV file, translation written to a WAV file",
             .options = options,
             .check_config = ft_check_config,
             .create = ft_create,
             .destroy = ft_destroy,
             .health = ft_health},
    .start = ft_start,
    .stop = ft_stop,
    .play = ft_play,
    .hangup = ft_hangup,
    .input_ready = ft_input_ready,
};

TOLK_PLUGIN_DEFINE(desc)
