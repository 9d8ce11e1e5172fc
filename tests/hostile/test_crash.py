"""A writer killed at random moments (SIGKILL) never loses an append it returned from."""

import random
import signal
import subprocess
import sys
import textwrap
import time

WRITER = textwrap.dedent("""
    import sys
    from simlab.session.store import SessionStore
    store = SessionStore(sys.argv[1])
    s = store.open("crash") if store.exists("crash") else store.create("crash")
    parent = None
    for k in range(100000):
        node = s.add_child(parent, "frame" if parent is None else "user", "x" * (k % 300), speaker="U")
        print(node.id, flush=True)  # printed only after the append (and its fsync) returned
        parent = node.id if k % 3 else parent
""")


def test_sigkill_at_random_moments_loses_no_returned_append(store, tmp_path):
    rng = random.Random(1234)
    acknowledged = []
    for attempt in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.folder)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.3 + rng.random() * 0.4)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged += [line for line in out.split("\n") if len(line) == 32]
        s = store.open("crash", read_only=True)
        missing = [i for i in acknowledged if i not in s.tree.nodes]
        assert not missing, f"attempt {attempt}: {len(missing)} acknowledged nodes lost"
    assert len(acknowledged) > 100
