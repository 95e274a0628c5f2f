"""bench/proc_stat.py: what the benchmark scripts read from /proc — the processes of a session,
and the CPU ticks (user + system) of a process and of each of its threads."""

import os


def _fields(path):
    """The fields of a `stat` file after the command name, or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_pids(sid):
    """The processes of session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _fields(f"/proc/{entry}/stat")
            if fields and int(fields[3]) == sid:
                pids.append(int(entry))
    return pids


def process_ticks(pid):
    """(user + system ticks, command name) of a process; (0, "") once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]), text[text.index("(") + 1:text.rindex(")")]
    except (OSError, IndexError, ValueError):
        return 0, ""


def thread_ticks(pid):
    """{thread id: user + system ticks} of a process's threads."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    out = {}
    for tid in tids:
        fields = _fields(f"/proc/{pid}/task/{tid}/stat")
        if fields:
            out[tid] = int(fields[11]) + int(fields[12])
    return out


def busiest(before, after):
    """The most ticks one thread used between two `thread_ticks` readings."""
    return max((t - before.get(tid, 0) for tid, t in after.items()), default=0)
