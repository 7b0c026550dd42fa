"""No acknowledged write is lost when the server is killed (SIGKILL) while
writes are in flight and batches are committing: after a restart on the same
store every Put that was answered WRITTEN is there with its value and
revision. Driven through the Python client, on both backends."""

from __future__ import annotations

import signal
import threading

import roadie

from conftest import Roadie, wait_until


def test_acknowledged_writes_survive_a_kill_between_batches(server: Roadie) -> None:
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with roadie.Client(server.address, retries=0, timeout=5) as client:
            i = 0
            while not stop.is_set():
                key = f"durable/{n}/{i}"
                try:
                    result = client.put(key, key.encode())
                except roadie.RoadieError:
                    return  # the server is gone: what was answered is what counts
                if result.written:
                    with lock:
                        acknowledged[key] = result.revision
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 2000, "2000 writes acknowledged")
    assert server.server is not None
    server.server.popen.send_signal(signal.SIGKILL)
    server.server.popen.wait()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    server.server = None
    server.start_server()

    with roadie.Client(server.address) as client:
        keys = sorted(acknowledged)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, lookup in zip(chunk, client.batch_get(chunk)):
                assert lookup.entry is not None, f"acknowledged {key} lost"
                assert lookup.entry.value == key.encode()
                assert lookup.entry.revision == acknowledged[key]
        # Revisions stayed gapless through the kill: the change log holds
        # every revision up to the last committed one, each acknowledged
        # write's among them.
        last = max(acknowledged.values())
        after = client.put("durable/after", b"v").revision
        assert after > last
        seen = []
        watcher = client.watch(after_revision=0)
        for change in watcher:
            seen.append(change.revision)
            if change.revision >= after:
                break
        watcher.close()
        assert seen == list(range(1, after + 1))
