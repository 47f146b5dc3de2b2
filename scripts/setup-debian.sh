#!/bin/sh
# Installs what tolk needs to build, test and run on Debian 12. Run as root.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    build-essential autoconf automake libtool pkg-config make binutils file \
    libev-dev libconfig-dev libjansson-dev libcurl4-openssl-dev libwebsockets-dev \
    libwebsockets-evlib-ev \
    libcmocka-dev libspeexdsp-dev libsonic-dev \
    valgrind python3 time openssl \
    libpocketsphinx-dev pocketsphinx-en-us pocketsphinx-testdata \
    apertium apertium-eng-spa \
    libespeak-ng-dev espeak-ng-data flite \
    prometheus
