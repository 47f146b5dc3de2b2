/* A queue of 20 ms frames in fixed-size blocks: append at the back, drop
 * from the front, read in order. Blocks of one size are reused exactly by
 * malloc, so thousands of calls growing and shrinking their buffers phrase
 * after phrase do not fragment the heap the way one growing array each
 * would. Loop thread only. */
#ifndef TOLK_CORE_FRAMEBUF_H
#define TOLK_CORE_FRAMEBUF_H

#include <stddef.h>
#include <stdint.h>
#include <tolk/plugin.h>

#define FRAMEBUF_BLOCK 10 /* frames per block: 200 ms, 6.4 KB */

typedef struct framebuf_block {
    struct framebuf_block *next;
    int16_t pcm[FRAMEBUF_BLOCK][TOLK_FRAME_SAMPLES];
} framebuf_block;

typedef struct framebuf {
    framebuf_block *head, *tail;
    size_t first; /* index of the oldest frame in head */
    size_t frames;
} framebuf;

void framebuf_push(framebuf *fb, const int16_t *frame);
/* Forget the n oldest frames (all of them if there are fewer). */
void framebuf_drop(framebuf *fb, size_t n);
void framebuf_clear(framebuf *fb);

/* The i-th oldest frame, or NULL. Valid until the next push or drop. */
const int16_t *framebuf_at(const framebuf *fb, size_t i);

#endif
