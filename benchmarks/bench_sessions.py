"""Session store speed: load time of a 10,000-node session and the cost of one fsynced append.

Baselines in the same run: json.loads of the same file's lines (parsing alone), and an
unsynced append (what the fsync costs). Issue targets: load <= 1 s, append <= 5 ms.

    python benchmarks/bench_sessions.py [--nodes 10000] [--appends 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from simlab.session.journal import load_tree
from simlab.session.store import SessionStore
from simlab.session.tree import Node, new_id


def reply_fields(k: int) -> dict:
    tokens = 24  # a typical short reply with its per-token logprobs and top-5 alternatives
    return {
        "token_ids": tuple(range(k, k + tokens)),
        "logprobs": tuple(-0.5 for _ in range(tokens)),
        "top": tuple(tuple((j, f"tok{j}", -1.0) for j in range(5)) for _ in range(tokens)),
        "params": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 128, "stop": ["\nUser:"]},
        "seed": k,
        "finish_reason": "stop",
        "model": "embedded",
        "model_revision": "a5fd3b62230a",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="simlab-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, folder: Path) -> None:
    store = SessionStore(folder)
    with store.create("big") as session:
        parent = session.add_child(None, "frame", "A transcript.\n").id
        for k in range(args.nodes - 1):
            if k % 2 == 0:
                node = session.add_child(parent, "user", f"user turn {k} " * 5, speaker="User")
            else:  # replies branch: every fourth one is a sibling of the previous
                node = session.add_child(
                    parent, "model", f"reply {k} " * 12, speaker="Bot", origin="sampled", **reply_fields(k)
                )
            parent = node.id if k % 4 != 3 else parent
    path = store.path("big")
    size = path.stat().st_size

    loads, parses = [], []
    for _ in range(5):
        started = time.perf_counter()
        tree, problems = load_tree(path)
        loads.append(time.perf_counter() - started)
        started = time.perf_counter()
        for line in path.read_bytes().split(b"\n"):
            if line:
                json.loads(line)
        parses.append(time.perf_counter() - started)
    assert len(tree.nodes) == args.nodes and not problems

    session = store.open("big")
    synced = []
    parent = tree.cursor
    for k in range(args.appends):
        node = Node(
            id=new_id(),
            parent=parent,
            role="model",
            text="a reply " * 12,
            speaker="Bot",
            origin="sampled",
            **reply_fields(k),
        )
        started = time.perf_counter()
        session.add(node)
        synced.append(time.perf_counter() - started)
        parent = node.id
    session.close()
    unsynced = []
    with open(folder / "plain.jsonl", "ab") as handle:
        for k in range(args.appends):
            line = (
                json.dumps(
                    {
                        "type": "node",
                        "node": Node(
                            id=new_id(), parent=None, role="model", text="a reply", **reply_fields(k)
                        ).to_record(),
                    }
                )
                + "\n"
            )
            started = time.perf_counter()
            handle.write(line.encode())
            handle.flush()
            unsynced.append(time.perf_counter() - started)

    load, parse = statistics.median(loads), statistics.median(parses)
    append, plain = statistics.median(synced), statistics.median(unsynced)
    p95 = sorted(synced)[int(0.95 * len(synced))]
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"session: {args.nodes} nodes (replies with 24 tokens, top-5 alternatives each), {size / 1e6:.1f} MB"
    )
    print(
        f"load:   {load * 1000:7.1f} ms (median of 5)   json.loads of the lines alone {parse * 1000:.1f} ms "
        f"-> {load / parse:.2f}x parsing   target <= 1000 ms"
    )
    print(
        f"append: {append * 1000:7.2f} ms median, {p95 * 1000:.2f} ms p95 (fsynced)   unsynced write "
        f"{plain * 1000:.3f} ms -> fsync is {append / plain:.0f}x   target <= 5 ms"
    )


if __name__ == "__main__":
    main()
