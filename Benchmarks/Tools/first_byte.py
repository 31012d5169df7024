#!/usr/bin/env python3
"""first_byte.py CMD...: runs CMD with one end of a socketpair on descriptor 3 (LPM_CHANNEL_FD=3,
as a supervisor starts a worker), waits for the first byte it sends (a worker's ready frame),
then closes the other end, so that the worker sees end-of-file and exits by itself, and waits
for it. Used by callgrind.sh to count a worker's start-up instructions: a process killed by a
signal would leave no count behind. Exits 0 once a byte arrived, whatever CMD's exit code."""
import os
import socket
import subprocess
import sys

if len(sys.argv) < 2:
    sys.exit(__doc__)
ours, theirs = socket.socketpair()
while ours.fileno() <= 3:  # keep descriptor 3 free for the child's end
    ours = ours.dup()
os.dup2(theirs.fileno(), 3, inheritable=True)
theirs.close()
child = subprocess.Popen(sys.argv[1:], pass_fds=(3,), env=dict(os.environ, LPM_CHANNEL_FD="3"))
os.close(3)
first = ours.recv(1)
ours.close()
child.wait()
sys.exit(0 if first else "first_byte.py: the child closed its channel without sending anything")
