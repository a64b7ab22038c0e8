#!/bin/sh
# PID 2 of the image (tini is PID 1): seed numba's cache, then become image-worker (exec: the
# signals tini forwards reach the worker itself).
# rembg imports pymatting, whose ~50 numba functions compile at import (~45 s on 2 cores) unless
# numba finds them in its cache, and numba uses a cache directory only if it can write to it. The
# root filesystem is read-only, so the cache compiled at build time (/opt/numba-cache, for
# NUMBA_CPU_NAME=generic so that it fits any x86-64 CPU) is copied to the tmpfs (2.7 MB).
if [ -n "${NUMBA_CACHE_DIR:-}" ] && [ ! -e "$NUMBA_CACHE_DIR" ] && [ -d /opt/numba-cache ]; then
  cp -R /opt/numba-cache "$NUMBA_CACHE_DIR" 2>/dev/null || echo "numba cache not seeded" >&2
fi
exec image-worker "$@"
