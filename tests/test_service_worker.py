"""The one start/stop of the service's background threads (edge_runtime/service/worker.py)."""

from __future__ import annotations

import queue
import threading

from edge_runtime.service.worker import Worker


def _drainer(q: queue.Queue[int | None], done: list[int], stuck_on: int | None = None) -> Worker:
    def run() -> None:
        while (item := q.get()) is not None:
            if worker.abort.is_set():
                continue  # the grace time is over: what is left is skipped
            if item == stuck_on:
                worker.abort.wait(30)  # a write that hangs until stop() gives up on it
            done.append(item)

    worker = Worker("drain", run)
    return worker


def test_stop_lets_a_queue_worker_finish_what_is_queued() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    done: list[int] = []
    worker = _drainer(q, done)
    worker.start()
    for i in range(50):
        q.put(i)
    worker.stop(grace_s=30, wake=q)
    assert done == list(range(50)) and not worker.alive and not worker.abort.is_set()


def test_past_the_grace_time_the_rest_is_skipped_and_the_thread_still_ends() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    done: list[int] = []
    worker = _drainer(q, done, stuck_on=1)
    worker.start()
    for i in range(5):
        q.put(i)
    worker.stop(grace_s=0.2, wake=q, then_s=None)
    assert worker.abort.is_set() and not worker.alive
    assert done == [0, 1]  # the part being handled is finished, 2..4 skipped


def test_periodic_worker_stops_between_rounds() -> None:
    rounds = threading.Semaphore(0)
    worker: Worker

    def run() -> None:
        while not worker.stopping.wait(0.01):
            rounds.release()

    worker = Worker("tick", run)
    worker.start()
    assert rounds.acquire(timeout=30) and worker.alive
    worker.stop(grace_s=30)
    assert not worker.alive and worker.stopping.is_set()


def test_stop_without_start_does_nothing() -> None:
    worker = Worker("idle", lambda: None)
    worker.stop(grace_s=0)
    assert not worker.alive and not worker.stopping.is_set()
