/* plugins/transport_rtp/media_options.h: the settings the AudioSocket and
 * WebSocket encapsulations read from the transport instance's settings
 * object, as rows for a tolk_option table. The transport's options table
 * (and the test probe's) splices them in, so the keys are declared once:
 *
 *     static const tolk_option options[] = {
 *         ...the transport's own keys (ari_url, ari_user, ari_password, ...)...,
 *         TR_MEDIA_AUDIOSOCKET_OPTIONS
 *         TR_MEDIA_WEBSOCKET_OPTIONS
 *         {NULL, 0, 0, NULL, 0, 0, NULL}};
 *
 * The WebSocket encapsulation also reads ari_url, ari_user and ari_password,
 * which belong to call control's table (TR_MEDIA_ARI_OPTIONS below has the
 * same rows for a table that has no call control, such as the probe). */
#ifndef TOLK_TRANSPORT_RTP_MEDIA_OPTIONS_H
#define TOLK_TRANSPORT_RTP_MEDIA_OPTIONS_H

#include <tolk/plugin.h>

#define TR_MEDIA_AUDIOSOCKET_OPTIONS                                                          \
    {"audiosocket_bind", TOLK_OPT_STRING, 0, "127.0.0.1", 0, 0,                                \
     "AudioSocket: address the listener binds (Asterisk connects to it)"},                    \
        {"audiosocket_port", TOLK_OPT_INT, 0, "0", 0, 65535,                                   \
         "AudioSocket: TCP port of the listener (0: an ephemeral port)"},                     \
        {"audiosocket_host", TOLK_OPT_STRING, 0, NULL, 0, 0,                                   \
         "AudioSocket: host Asterisk is told to connect to (default: audiosocket_bind)"},     \
        {"media_connect_timeout_ms", TOLK_OPT_INT, 0, "5000", 100, 60000,                       \
         "AudioSocket/WebSocket: a media connection not up this long after the REST call "    \
         "ends the link"},                                                                     \
        {"media_tx_buffer_ms", TOLK_OPT_INT, 0, "1000", 40, 60000,                              \
         "AudioSocket/WebSocket: audio held for Asterisk when it cannot take it (socket "     \
         "full, MEDIA_XOFF); beyond it frames are dropped and counted"},

#define TR_MEDIA_WEBSOCKET_OPTIONS                                                            \
    {"websocket_mark_ms", TOLK_OPT_INT, 0, "500", 20, 60000,                                   \
     "WebSocket: MARK_MEDIA at least this often while audio is sent (and at each "           \
     "talkspurt end), for played-out feedback"},                                              \
        {"websocket_control_format", TOLK_OPT_STRING, 0, NULL, 0, 0,                           \
         "WebSocket: \"json\" or \"plain-text\" control messages (transport_data f(), "       \
         "Asterisk 22.8+); unset: Asterisk's chan_websocket.conf (plain-text)"},

#define TR_MEDIA_ARI_OPTIONS                                                                  \
    {"ari_url", TOLK_OPT_STRING, 0, "http://127.0.0.1:8088", 0, 0,                             \
     "Asterisk's HTTP server (ARI at /ari, chan_websocket at /media)"},                       \
        {"ari_user", TOLK_OPT_STRING, 0, NULL, 0, 0, "ARI user"},                              \
        {"ari_password", TOLK_OPT_STRING, TOLK_OPT_SECRET, NULL, 0, 0, "ARI password"},

#endif
