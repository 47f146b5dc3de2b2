/* Private to channel.c and pipeline.c: the per-direction pipeline of a call. */
#ifndef TOLK_CORE_PIPELINE_H
#define TOLK_CORE_PIPELINE_H

#include "core.h"

/* channel.c */
void phrase_free(phrase *ph);
void phrase_report_emit(phrase *ph, int ok);
void phrase_lost(phrase *ph, const char *stage, tolk_instance *inst, tolk_status st);
double arrival_time(direction *d, uint64_t dir_sample);
void schedule_finish(tolk_channel *ch);
void deliver_now(tolk_channel *ch, tolk_leg leg);
void observe_stage(direction *d, const char *stage, double seconds);
void observe_component(core *c, tolk_instance *inst, const char *op, double seconds);
void fifo_push(phrase_fifo_head *f, phrase *p);
phrase *fifo_pop(phrase_fifo_head *f);
void queue_depth(core *c, int q, double delta);
int phrase_marked(direction *d, phrase *ph);
/* Tells the transport the direction's new mode (direction_mode); when it
 * bridges an untranslated direction itself, the core stops playing it. */
void channel_direction_mode(direction *d, tolk_mode mode);

/* pipeline.c */
/* Routes the direction's stages and opens its STT stream. */
void pipeline_setup(direction *d);
/* A frame of a translating direction: kept for replay, fed to STT. */
void pipeline_frame(direction *d, const int16_t *frame);
void pipeline_input_end(direction *d);
/* Stops every request and timer of the direction and frees its phrases. */
void pipeline_cancel(direction *d);
int pipeline_drained(direction *d);
/* Frees what the direction's pipeline kept for the call (context, voice sample). */
void pipeline_free(direction *d);
/* A recogniser that hears speech and says nothing for stt_timeout is
 * recovered (checked on every frame, and by backlog.c while input waits). */
void pipeline_check_stall(direction *d);
/* Lets go of the oldest frames of the replay buffer (counted if voiced). */
void pipeline_replay_drop(direction *d, size_t frames);

#endif
