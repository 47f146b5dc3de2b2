/* mkwav: writes test WAV files: tone bursts ("phrases") separated by
 * silence, at any rate, channel count and sample size, so the CLI tests can
 * check what tolk-translate accepts and refuses.
 *   mkwav OUT.wav [rate] [channels] [bits] [bursts] [speech_ms] [gap_ms] [format] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void le16(FILE *f, unsigned v) {
    fputc((int)(v & 0xff), f);
    fputc((int)((v >> 8) & 0xff), f);
}
static void le32(FILE *f, unsigned long v) {
    le16(f, (unsigned)(v & 0xffff));
    le16(f, (unsigned)((v >> 16) & 0xffff));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: mkwav OUT.wav [rate] [channels] [bits] [bursts] [speech_ms] [gap_ms] [format]\n");
        return 2;
    }
    unsigned rate = argc > 2 ? (unsigned)atoi(argv[2]) : 16000;
    unsigned ch = argc > 3 ? (unsigned)atoi(argv[3]) : 1;
    unsigned bits = argc > 4 ? (unsigned)atoi(argv[4]) : 16;
    unsigned bursts = argc > 5 ? (unsigned)atoi(argv[5]) : 3;
    unsigned speech_ms = argc > 6 ? (unsigned)atoi(argv[6]) : 1000;
    unsigned gap_ms = argc > 7 ? (unsigned)atoi(argv[7]) : 800;
    unsigned format = argc > 8 ? (unsigned)atoi(argv[8]) : 1;
    unsigned long frames = (unsigned long)rate * (gap_ms + bursts * (speech_ms + gap_ms)) / 1000;
    unsigned bps = bits / 8;
    FILE *f = fopen(argv[1], "wb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    unsigned long data = frames * ch * bps;
    fwrite("RIFF", 1, 4, f);
    le32(f, 36 + data);
    fwrite("WAVEfmt ", 1, 8, f);
    le32(f, 16);
    le16(f, format);
    le16(f, ch);
    le32(f, rate);
    le32(f, rate * ch * bps);
    le16(f, ch * bps);
    le16(f, bits);
    fwrite("data", 1, 4, f);
    le32(f, data);
    unsigned long period = (unsigned long)rate * (speech_ms + gap_ms) / 1000;
    unsigned long lead = (unsigned long)rate * gap_ms / 1000;
    for (unsigned long i = 0; i < frames; i++) {
        double v = 0;
        if (i >= lead) {
            unsigned long k = (i - lead) % period, n = (i - lead) / period;
            if (n < bursts && k < (unsigned long)rate * speech_ms / 1000) {
                double t = (double)k / rate;
                v = 9000 * sin(2 * M_PI * (300 + 40 * n) * t) * (0.6 + 0.4 * sin(2 * M_PI * 4 * t));
            }
        }
        for (unsigned c = 0; c < ch; c++) {
            long s = lround(v);
            if (bits == 16)
                le16(f, (unsigned)(uint16_t)(int16_t)s);
            else if (bits == 24) {
                long s24 = s * 256;
                fputc((int)(s24 & 0xff), f);
                fputc((int)((s24 >> 8) & 0xff), f);
                fputc((int)((s24 >> 16) & 0xff), f);
            } else if (bits == 8)
                fputc((int)(128 + s / 256), f);
            else
                le32(f, (unsigned long)(s * 65536));
        }
    }
    return fclose(f) ? 1 : 0;
}
