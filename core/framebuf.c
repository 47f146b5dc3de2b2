#include "framebuf.h"

#include <string.h>

#include "util.h"

void framebuf_push(framebuf *fb, const int16_t *frame) {
    size_t end = (fb->first + fb->frames) % FRAMEBUF_BLOCK;
    if (!fb->tail || (end == 0 && fb->frames > 0)) {
        framebuf_block *b = xmalloc(sizeof *b);
        b->next = NULL;
        if (fb->tail)
            fb->tail->next = b;
        else
            fb->head = b, fb->first = 0, end = 0;
        fb->tail = b;
    }
    memcpy(fb->tail->pcm[end], frame, sizeof fb->tail->pcm[end]);
    fb->frames++;
}

void framebuf_drop(framebuf *fb, size_t n) {
    if (n >= fb->frames) {
        framebuf_clear(fb);
        return;
    }
    fb->frames -= n;
    fb->first += n;
    while (fb->first >= FRAMEBUF_BLOCK) {
        framebuf_block *b = fb->head;
        fb->head = b->next;
        free(b);
        fb->first -= FRAMEBUF_BLOCK;
    }
}

void framebuf_clear(framebuf *fb) {
    for (framebuf_block *b = fb->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    fb->head = fb->tail = NULL;
    fb->first = fb->frames = 0;
}

const int16_t *framebuf_at(const framebuf *fb, size_t i) {
    if (i >= fb->frames) return NULL;
    i += fb->first;
    const framebuf_block *b = fb->head;
    for (; i >= FRAMEBUF_BLOCK; i -= FRAMEBUF_BLOCK) b = b->next;
    return b->pcm[i];
}
