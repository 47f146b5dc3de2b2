/* The per-direction pipeline of a call (pipeline.c), for channel.c and
 * backlog.c above it. */
#ifndef TOLK_CORE_PIPELINE_H
#define TOLK_CORE_PIPELINE_H

#include "core.h"
#include "phrase.h"

/* pipeline.c */
/* Routes the direction's stages and opens its STT stream. */
void pipeline_setup(direction *d);
/* A frame of a translating direction: kept for replay, fed to STT. */
void pipeline_frame(direction *d, const int16_t *frame, double now);
void pipeline_input_end(direction *d);
/* Stops every request and timer of the direction and frees its phrases. */
void pipeline_cancel(direction *d);
int pipeline_drained(direction *d);
/* Frees what the direction's pipeline kept for the call (context, voice sample). */
void pipeline_free(direction *d);
/* A recogniser that hears speech and says nothing for stt_timeout is
 * recovered (checked on every frame, and by backlog.c while input waits). */
void pipeline_check_stall(direction *d, double now);
/* Lets go of the oldest frames of the replay buffer (counted if voiced). */
void pipeline_replay_drop(direction *d, size_t frames);

#endif
