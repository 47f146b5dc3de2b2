/* Phrase bookkeeping and the measurements every stage shares (phrase.c). */
#ifndef TOLK_CORE_PHRASE_H
#define TOLK_CORE_PHRASE_H

#include "core.h"

void queue_depth(core *c, int q, double delta);
void observe_stage(direction *d, const char *stage, double seconds);
void observe_component(core *c, tolk_instance *inst, const char *op, double seconds);
void fifo_push(phrase_fifo_head *f, phrase *p);
phrase *fifo_pop(phrase_fifo_head *f);
/* Takes p out of f wherever it is; 0 if it was not there. */
int fifo_remove(phrase_fifo_head *f, phrase *p);
void phrase_free(phrase *ph);
void phrase_report_emit(phrase *ph, int ok);
void phrase_lost(phrase *ph, const char *stage, tolk_instance *inst, tolk_status st);
/* Wall-clock (monotonic) time the audio up to dir_sample arrived. */
double arrival_time(direction *d, uint64_t dir_sample);
/* ph waits in the direction's list for its first frame to be played. */
int phrase_marked(direction *d, phrase *ph);

#endif
