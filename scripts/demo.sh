#!/usr/bin/env bash
# `make run`: start the daemon on the embedded SQLite store, then show a real transfer
# from a local HTTP server. The daemon is left running (stop it with `make stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$PWD/.run
BIN=$PWD/.venv/bin
mkdir -p "$RUN/www" "$RUN/downloads"
export OPENBITS_SOCKET=$RUN/openbits.sock

if [ -S "$OPENBITS_SOCKET" ] && "$BIN/openbits" get >/dev/null 2>&1; then
  echo "openbits daemon already running on $OPENBITS_SOCKET"
else
  "$BIN/openbits" serve --state-dir "$RUN/state" --socket "$OPENBITS_SOCKET" >>"$RUN/daemon.log" 2>&1 &
  echo $! >"$RUN/daemon.pid"
  for _ in $(seq 100); do
    "$BIN/openbits" get >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "openbits daemon started (pid $(cat "$RUN/daemon.pid")), state in $RUN/state, log in $RUN/daemon.log"
fi

if [ ! -f "$RUN/www/demo.bin" ]; then
  head -c $((256 * 1024 * 1024)) /dev/urandom >"$RUN/www/demo.bin"
fi
PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/python" scripts/demo_server.py "$RUN/www" "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

rm -f "$RUN/downloads/demo.bin"
echo
echo "\$ openbits transfer http://127.0.0.1:$PORT/demo.bin $RUN/downloads/demo.bin"
"$BIN/openbits" transfer "http://127.0.0.1:$PORT/demo.bin" "$RUN/downloads/demo.bin"
if cmp -s "$RUN/www/demo.bin" "$RUN/downloads/demo.bin"; then
  echo "Verified: the downloaded file is byte-identical to the source (256 MiB)."
else
  echo "The downloaded file differs from the source!" >&2
  exit 1
fi

cat <<MSG

The daemon keeps running. Try, in this shell:
  export OPENBITS_SOCKET=$OPENBITS_SOCKET
  $BIN/openbits create myjob                       # prints a JobId
  $BIN/openbits add myjob /etc/hostname /tmp/hostname.copy
  $BIN/openbits resume myjob && $BIN/openbits wait myjob && $BIN/openbits complete myjob
  $BIN/openbits get --json
Stop it with: make stop
MSG
