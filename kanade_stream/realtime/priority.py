"""Scheduling for the threads that must not wait: the audio I/O threads and the model worker.

On a busy machine an ordinary thread can wait tens of milliseconds for a core, longer than the whole
compute allowance. `raise_priority` asks, for the calling thread only, for real-time scheduling
(SCHED_FIFO, the way sound servers run their own threads), else a better nice value, else leaves it;
it never fails. The audio threads get a higher real-time priority than the worker, so a long model chunk
never holds up the copying of samples. Linux keeps real-time threads from taking a whole core (they get
95 % of each second at most), and the worker computes for only part of each chunk.
"""

from __future__ import annotations

import os

AUDIO_PRIORITY = 12  # SCHED_FIFO priorities: above ordinary threads, below a sound server's own (often 20+)
WORKER_PRIORITY = 10
NICE = -10

def raise_priority(role: str, enabled: bool = True) -> str:
    """Raise the calling thread's scheduling for `role` ("audio" or "worker"); returns what it got:
    "SCHED_FIFO <priority>", "nice <value>" or "normal"."""
    got = "normal"
    if enabled:
        priority = AUDIO_PRIORITY if role == "audio" else WORKER_PRIORITY
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread (Linux)
            got = f"SCHED_FIFO {priority}"
        except (AttributeError, OSError):
            try:
                # Linux: per thread as well; a lower value only with CAP_SYS_NICE or RLIMIT_NICE
                os.setpriority(os.PRIO_PROCESS, 0, NICE)
                got = f"nice {NICE}"
            except (AttributeError, OSError):
                pass
    return got
