/*
 * g722dec -- decodes a headerless G.722 file (64 kbit/s, as the Asterisk
 * prompt packages ship them) to a 16 kHz mono 16-bit WAV with spandsp.
 * Used by `make latency` only (bench/latency.py); built there when
 * spandsp is installed.
 *
 *   g722dec IN.g722 OUT.wav
 */
#include <spandsp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: g722dec IN.g722 OUT.wav\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        fclose(in);
        return 1;
    }
    g722_decode_state_t *st = g722_decode_init(NULL, 64000, 0);
    if (!st) {
        fprintf(stderr, "g722_decode_init failed\n");
        return 1;
    }
    unsigned char hdr[44] = {0};
    fwrite(hdr, 1, sizeof hdr, out);
    uint8_t buf[4096];
    int16_t pcm[2 * 4096];
    uint32_t bytes = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        int k = g722_decode(st, pcm, buf, (int)n);
        for (int i = 0; i < k; i++) {
            unsigned char s[2];
            le16(s, (uint16_t)pcm[i]);
            fwrite(s, 1, 2, out);
        }
        bytes += (uint32_t)k * 2;
    }
    g722_decode_free(st);
    memcpy(hdr, "RIFF", 4);
    le32(hdr + 4, 36 + bytes);
    memcpy(hdr + 8, "WAVEfmt ", 8);
    le32(hdr + 16, 16);
    le16(hdr + 20, 1);         /* PCM */
    le16(hdr + 22, 1);         /* mono */
    le32(hdr + 24, 16000);     /* rate */
    le32(hdr + 28, 16000 * 2); /* bytes per second */
    le16(hdr + 32, 2);
    le16(hdr + 34, 16);
    memcpy(hdr + 36, "data", 4);
    le32(hdr + 40, bytes);
    fclose(in);
    if (fseek(out, 0, SEEK_SET) != 0 || fwrite(hdr, 1, sizeof hdr, out) != sizeof hdr ||
        fclose(out) != 0) {
        perror(argv[2]);
        return 1;
    }
    return 0;
}
