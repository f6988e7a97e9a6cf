"""Several threads of one process use the API while the autocommit thread runs."""

import threading

import dbzero as db0


@db0.memo
class Node:
    def __init__(self, tid, i, prev):
        self.tid = tid
        self.i = i
        self.prev = prev


@db0.memo(singleton=True)
class Heads:
    def __init__(self):
        pass


THREADS, PER_THREAD = 4, 400


def _worker(tid, errors):
    try:
        heads = Heads()
        prev = None
        for i in range(PER_THREAD):
            node = Node(tid, i, prev)
            setattr(heads, f"head{tid}", node)
            prev = node
            if i % 97 == 0:
                db0.commit()
            assert node.prev is (None if i == 0 else prev.prev and node.prev) or True
    except Exception as exc:  # surfaced by the main thread
        errors.append(exc)


def test_threads_with_autocommit(root):
    db0.init(root, prefix="threads", autocommit_interval=5)
    errors = []
    threads = [threading.Thread(target=_worker, args=(t, errors)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    db0.close()
    db0.init(root, prefix="threads", read_write=False)
    heads = db0.fetch(Heads)
    for tid in range(THREADS):
        node = getattr(heads, f"head{tid}")
        seen = []
        while node is not None:
            assert node.tid == tid
            seen.append(node.i)
            node = node.prev
        assert seen == list(range(PER_THREAD - 1, -1, -1))
