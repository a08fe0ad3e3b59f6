"""Issue 23, item 4: server-held sequences across replicas and workers, sharing Redis.

Three real ``lstm-serve`` replicas (one of them with two workers) behind a real nginx
(round robin), their sequence state in a real ``redis-server``. Every request goes on a
new connection, so consecutive chunks of a sequence land on different replicas.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from tests.conftest import reference
from tests.scaleout.client import (
    MODEL,
    PREDICT,
    Failure,
    Sequence,
    Streamer,
    chunk_body,
    post,
    probabilities,
)
from tests.scaleout.cluster import Cluster
from tests.scaleout.conftest import REQUEST_TIMEOUT_S

FEATURES = 3
SEQUENCES = 100
CHUNKS = 5
THREADS = 4
PACE_S = 0.05
STREAM_DEADLINE_S = 40.0


def make_sequence(rng: np.random.Generator, chunks: int, low: int = 8, high: int = 12) -> Sequence:
    lengths = rng.integers(low, high + 1, size=chunks)
    return Sequence(
        f"seq-{uuid.uuid4().hex[:12]}",
        [rng.normal(size=(int(n), FEATURES)).astype(np.float32) for n in lengths],
    )


def whole(repository: Path, sequences: list[Sequence]) -> list[dict[str, np.ndarray]]:
    """Each whole sequence's outputs from onnxruntime in-process (one padded call)."""
    lengths = np.array([len(s.x) for s in sequences])
    x = np.zeros((len(sequences), lengths.max(), FEATURES), np.float32)
    for i, s in enumerate(sequences):
        x[i, : lengths[i]] = s.x
    outputs = reference(repository / MODEL / "1", x, lengths)
    return [
        {
            "sequence": outputs["sequence_output"][i, : lengths[i]],
            "final": outputs["final_output"][i],
        }
        for i in range(len(sequences))
    ]


def check_against_whole(repository: Path, sequences: list[Sequence]) -> None:
    """Chunked answers equal the whole sequence's; ``sequence_steps`` never skips ahead."""
    for sequence, want in zip(sequences, whole(repository, sequences), strict=True):
        assert not sequence.problems, (sequence.sequence_id, sequence.problems)
        consumed = np.cumsum([len(c) for c in sequence.chunks]).tolist()
        assert sequence.steps == consumed, (sequence.sequence_id, "double or lost step")
        got = np.concatenate(sequence.outputs)
        np.testing.assert_allclose(got, want["sequence"], atol=1e-5, err_msg=sequence.sequence_id)
        np.testing.assert_allclose(got[-1], want["final"], atol=1e-5)


def test_sequences_stream_through_a_killed_and_a_rolled_replica(
    cluster: Cluster, scaleout_repository: Path
) -> None:
    rng = np.random.default_rng(23)
    sequences = [make_sequence(rng, CHUNKS) for _ in range(SEQUENCES)]
    total_chunks = SEQUENCES * CHUNKS
    started = time.monotonic()
    # Paced (at most THREADS / PACE_S chunks a second), so that the stream outlasts the
    # roll and the rolled replica serves again before it ends.
    streamer = Streamer(
        cluster.url, retries=20, pace_s=PACE_S, deadline=started + STREAM_DEADLINE_S
    )
    pending = list(sequences)
    take = threading.Lock()

    def client() -> None:
        while True:
            with take:
                if not pending:
                    return
                sequence = pending.pop()
            streamer.stream(sequence)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()

    def reached(answered: int) -> bool:
        """Wait until ``answered`` chunks are; False if the clients stopped short of it."""
        while streamer.answered < answered:
            if not any(t.is_alive() for t in threads) or time.monotonic() > streamer.deadline:
                return False
            time.sleep(0.01)
        return True

    def problems() -> str:
        found = [(s.sequence_id, s.problems) for s in sequences if s.problems]
        return f"{len(found)} sequences failed, the first: {found[:3]}\n{cluster.logs()}"

    killed, rolled = cluster.replicas[0], cluster.replicas[2]  # replicas[1] has two workers
    assert reached(total_chunks // 5), problems()
    kill_at = time.monotonic()
    killed.kill()
    assert reached(2 * total_chunks // 5), problems()
    roll_at = time.monotonic()
    rolled.roll()
    rolled_at, rolled_wall = time.monotonic(), time.time()
    answered_at_roll = streamer.answered
    for thread in threads:
        thread.join(timeout=max(0.0, streamer.deadline - time.monotonic()) + 5)
    assert not any(t.is_alive() for t in threads), "clients still running past the deadline"
    print(
        f"{total_chunks} chunks in {time.monotonic() - started:.1f} s; "
        f"{len(streamer.failures)} failed attempts; roll took {rolled_at - roll_at:.1f} s"
    )

    assert streamer.answered == total_chunks, problems()
    assert answered_at_roll < total_chunks, "the stream ended before the roll: nothing tested"
    check_against_whole(scaleout_repository, sequences)

    # Lost answers only where a replica went away: a SIGKILL, or a SIGTERM's closing sockets.
    def around(failure: Failure) -> bool:
        return (kill_at - 0.1 <= failure.at <= kill_at + 3) or (
            roll_at - 0.1 <= failure.at <= rolled_at + 3
        )

    first_failures = {(f.sequence_id, f.chunk) for f in streamer.failures}
    assert all(around(f) for f in streamer.failures), streamer.failures
    assert len(first_failures) <= THREADS + 2, streamer.failures

    served = cluster.nginx.upstream_counts(f"POST {PREDICT}")
    assert set(served) == {r.port for r in cluster.replicas}, served
    assert cluster.nginx.upstream_counts(f"POST {PREDICT}", since=rolled_wall)[rolled.port] > 0


def test_a_resent_chunk_is_answered_again_and_a_wrong_offset_is_refused(
    cluster: Cluster, scaleout_repository: Path
) -> None:
    sequence = make_sequence(np.random.default_rng(4), 3, 5, 7)
    first, second, last = sequence.chunks
    sid = sequence.sequence_id
    answers = []
    for body in (
        chunk_body(sid, first, 0, start=True, end=False),
        chunk_body(sid, second, len(first), start=False, end=False),
    ):
        # Three sends of each (round robin: three replicas); the state steps once.
        replies = [post(cluster.url, PREDICT, body) for _ in range(3)]
        assert [r.status for r in replies] == [200] * 3, [r.body for r in replies]
        for reply in replies:
            assert reply.body["sequence_steps"] == body["sequence_offset"] + len(
                body["instances"][0]
            )
            np.testing.assert_allclose(probabilities(reply), probabilities(replies[0]), atol=1e-6)
        answers.append(probabilities(replies[0]))

    # Behind (offset 0: not the last applied chunk) and ahead: refused, nothing stepped.
    consumed = len(first) + len(second)
    for offset in (0, consumed + 1):
        refused = post(cluster.url, PREDICT, chunk_body(sid, last, offset, start=False, end=False))
        assert refused.status == 409, refused.body
        assert f"has consumed {consumed} timesteps" in refused.body["error"]

    end = chunk_body(sid, last, consumed, start=False, end=True)
    replies = [post(cluster.url, PREDICT, end) for _ in range(3)]  # the final chunk resent
    assert [r.status for r in replies] == [200] * 3, [r.body for r in replies]
    answers.append(probabilities(replies[0]))
    for reply in replies[1:]:
        np.testing.assert_allclose(probabilities(reply), answers[-1], atol=1e-6)
    (want,) = whole(scaleout_repository, [sequence])
    np.testing.assert_allclose(np.concatenate(answers), want["sequence"], atol=1e-5)


def worker_pids(pid: int) -> set[str]:
    """A replica's child processes: unchanged if no worker died (and was replaced)."""
    return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_without_redis_stateless_answers_stateful_waits_and_nothing_crashes(
    cluster: Cluster, scaleout_repository: Path
) -> None:
    rng = np.random.default_rng(5)
    before, after = make_sequence(rng, 4, 6, 6), make_sequence(rng, 3, 5, 9)
    streamer = Streamer(cluster.url, retries=0)
    for index in (0, 1):  # sequence `before` is half consumed when Redis goes away
        reply = streamer.send_chunk(before, index)
        assert reply is not None and reply.status == 200, (reply, cluster.logs())
        before.outputs.append(probabilities(reply))
        before.steps.append(reply.body["sequence_steps"])
    processes = {r.index: (r.pid, worker_pids(r.pid)) for r in cluster.replicas}

    cluster.redis.stop(signal.SIGKILL)
    try:
        stateless = {"instances": [before.x.tolist()], "return_sequences": True}
        statuses = [post(cluster.url, PREDICT, stateless).status for _ in range(6)]
        assert statuses == [200] * 6

        offset = len(before.chunks[0]) + len(before.chunks[1])
        third = chunk_body(before.sequence_id, before.chunks[2], offset, start=False, end=False)
        new = chunk_body(after.sequence_id, after.chunks[0], 0, start=True, end=False)
        for body in (third, third, third, new):  # round robin: every replica once or more
            sent = time.monotonic()
            reply = post(cluster.url, PREDICT, body, timeout=REQUEST_TIMEOUT_S + 10)
            took = time.monotonic() - sent
            assert reply.status == 503, reply
            assert "retry-after" in reply.headers, reply.headers
            assert took <= REQUEST_TIMEOUT_S + 1.5, f"503 after {took:.1f} s"

        for replica in cluster.replicas:
            assert replica.alive, replica.log()
            assert (replica.pid, worker_pids(replica.pid)) == processes[replica.index]
            ready = status_of(f"{replica.url}/v2/health/ready")
            assert ready == 200, (replica.index, ready)
    finally:
        cluster.redis.start()  # same port and directory: the append-only file kept the keys

    # Redis back: the half-consumed sequence goes on; a new one works. Bounded retries
    # cover a replica still reconnecting.
    streamer = Streamer(cluster.url, retries=40, retry_sleep_s=0.25)
    for index in (2, 3):
        reply = streamer.send_chunk(before, index)
        assert reply is not None and reply.status == 200, (reply, cluster.logs())
        before.outputs.append(probabilities(reply))
        before.steps.append(reply.body["sequence_steps"])
    streamer.stream(after)
    check_against_whole(scaleout_repository, [before, after])
