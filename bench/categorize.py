"""Groups `perf script -F comm,ip,sym` samples of cmqhook by what they were doing.

Each sample counts once, under the first category (in the order below) that a frame of its
stack matches. Used by bench/profile.sh.
"""
import collections
import re
import sys

CATEGORIES = [
    ("journal writer thread", lambda comm, stack: comm.startswith("cmqhook-journal")),
    ("journal look-up", "last_run"),
    ("log lines (tracing)", "tracing_core::event::Event::dispatch"),
    ("posix_spawn: clone3 (vfork)", "clone3"),
    ("posix_spawn: munmap of its stack", "munmap"),
    ("std spawn: environment, pipes, file actions", "Command>::spawn"),
    ("tokio child registration (pidfd, epoll)", "build_child"),
    ("stdin pipe", "stdin_pipe"),
    ("output: drain tasks and reads", "runner::"),
    ("closing descriptors", "__close"),
    ("metrics", "prometheus"),
    ("dispatch, ledger, journal records", "dispatch::"),
    ("HTTP: actix parsing and writing", "actix_http"),
    ("HTTP: send", "sendto"),
    ("malloc and free", re.compile(r"^(_int_|malloc|cfree|free|realloc|unlink_chunk)")),
    ("runtime: epoll and parking", "park"),
]


def samples(lines):
    comm, stack = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("\t") or line.startswith(" " * 8):
            stack.append(re.sub(r"^\s*[0-9a-f]+ ", "", line).strip())
        else:
            if comm is not None:
                yield comm, stack
            comm, stack = line.strip(), []
    if comm is not None:
        yield comm, stack


def category(comm, stack):
    for name, test in CATEGORIES:
        if callable(test):
            if test(comm, stack):
                return name
        elif isinstance(test, re.Pattern):
            if any(test.search(frame) for frame in stack[:1]):
                return name
        elif any(test in frame for frame in stack):
            return name
    return "other"


counts = collections.Counter(category(comm, stack) for comm, stack in samples(sys.stdin))
total = sum(counts.values()) or 1
for name, count in counts.most_common():
    print(f"{100 * count / total:5.1f} %  {name}")
print(f"({total} samples)")
