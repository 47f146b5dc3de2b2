#!/bin/sh
# Installs what tolk needs to build, test and run on Debian 12:
#   sh scripts/setup-debian.sh
# As root (a container, a CI runner: no sudo there) it runs apt-get itself;
# as another user it goes through sudo.
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo env DEBIAN_FRONTEND=noninteractive "$@"; }
else
    echo "setup-debian.sh: run it as root, or install sudo: apt-get needs root" >&2
    exit 1
fi
as_root apt-get update
as_root apt-get install -y --no-install-recommends \
    build-essential autoconf automake libtool pkg-config make binutils file \
    libev-dev libconfig-dev libjansson-dev libcurl4-openssl-dev libwebsockets-dev \
    libwebsockets-evlib-ev \
    libcmocka-dev libspeexdsp-dev libsonic-dev \
    valgrind python3 time openssl \
    libpocketsphinx-dev pocketsphinx-en-us pocketsphinx-testdata \
    apertium apertium-eng-spa \
    libespeak-ng-dev espeak-ng-data flite \
    prometheus \
    libedit-dev libxml2-dev libsqlite3-dev uuid-dev libssl-dev sox curl
# The last line: what ../shared/asterisk/build.sh needs to build the local
# test Asterisk, which scripts/check.sh builds when that kit is there.
