"""One CPU for each runscp worker process (`runscp --cpu-affinity`).

A worker is Python under one GIL: its association threads hand every
received instance to the process's index writer thread and wait for the
commit (`archive.index.IndexWriter`), and the writer hands the result back.
While the two threads may run on different CPUs, each hand-off wakes the
other CPU.  On the 2-vCPU machines of this project a hand-off round trip
(`queue.SimpleQueue` + `threading.Event`) took 51-61 µs across CPUs and
18-19 µs with both threads on one CPU.  A GIL-bound process gains nothing
from a second CPU, so each worker is given one of its own: with 2 workers,
`bench/ingest.py --pacs-no-fsync` took small instances 10 % faster over one
association and 26 % faster over four (846 -> 934 and 1371 -> 1732 inst/s;
large ones alike within the noise).

The CPUs are those runscp itself may use (`taskset` or a cgroup's cpuset
narrow them): the worker in slot k (`dispatch.Dispatcher`: a worker started
in place of one that ended takes its slot) gets the k-th of them, wrapping
when there are more workers than CPUs.  With one CPU, nothing is chosen.
"""

import logging
import os

logger = logging.getLogger("dicomnodes.runscp")

MODES = ("auto", "off")
ENV = "PACS_SCP_CPU_AFFINITY"


def mode_from_env(environ=os.environ) -> str:
    """The mode PACS_SCP_CPU_AFFINITY asks for ("auto" when unset); a
    ValueError naming the variable for anything else."""
    raw = environ.get(ENV, "").strip().lower() or "auto"
    if raw not in MODES:
        raise ValueError(f"{ENV}={environ.get(ENV)!r}: use one of {', '.join(MODES)}")
    return raw


def cpu_for(slot: int, allowed) -> int | None:
    """The CPU of the worker in `slot` among the CPUs `allowed`; None when
    there is nothing to choose (one CPU)."""
    cpus = sorted(allowed)
    if len(cpus) < 2:
        return None
    return cpus[slot % len(cpus)]


def pin_this_process(slot: int) -> int | None:
    """Keep this process (its calling thread, and every thread it starts
    afterwards: call it before starting any) on the CPU of `slot`; the CPU,
    or None where nothing was done (one CPU, or no sched_setaffinity on this
    platform)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = cpu_for(slot, os.sched_getaffinity(0))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return cpu


def pin_worker(slot: int) -> int | None:
    """pin_this_process() for runscp's worker in `slot`, with a log line
    either way; a refusal (a sandbox may forbid it) is logged, and the
    worker runs on, free to move."""
    try:
        cpu = pin_this_process(slot)
    except OSError as exc:
        logger.warning("runscp worker %d cannot keep to one CPU: %s", os.getpid(), exc)
        return None
    if cpu is not None:
        logger.info("runscp worker %d (slot %d) runs on CPU %d", os.getpid(), slot, cpu)
    return cpu
