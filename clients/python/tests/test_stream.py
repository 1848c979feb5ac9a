"""Events over the publisher WebSocket (PROTOCOL §3.1), against a real server."""

import asyncio
import uuid

import pytest

import agentwire.stream
from agentwire import AgentwireError, AsyncPublisher, Event, Publisher

from conftest import history

KEY = "dev-publish-key"


def fresh_thread() -> str:
    return f"thread_ws{uuid.uuid4().hex[:10]}"


def deltas(events):
    return [e["data"]["delta"] for e in events if e["event"] == "agent_message"]


def test_token_deltas_stream_without_waiting_and_arrive_in_order(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        with pub.run(thread, "alice", "streamer") as run:
            for n in range(300):
                run.message(f"t{n} ")
            run.result = "done"
    events = history(server, thread, "alice")
    assert deltas(events) == [f"t{n} " for n in range(300)]
    assert [e["seq"] for e in events] == list(range(1, 303))
    assert events[-1]["event"] == "agent_completed"


def test_async_token_deltas_stream_and_answers_come_in_order(server):
    async def main():
        thread = fresh_thread()
        async with AsyncPublisher(server, KEY) as pub:
            async with pub.run(thread, "bob", "streamer") as run:
                for n in range(300):
                    await run.message(f"t{n} ")
                seqs = await run.emit(Event("agent_thinking", {"thought": "after the deltas"}))
                assert seqs == [302], "an awaited event answers after every delta before it"
        return thread

    thread = asyncio.run(main())
    events = history(server, thread, "bob")
    assert deltas(events) == [f"t{n} " for n in range(300)]
    assert [e["event"] for e in events][-2:] == ["agent_thinking", "agent_completed"]


def test_a_refused_delta_is_raised_by_the_next_event_that_waits(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        run_id = pub.create_run(thread, "carol", "streamer")
        pub.publish(run_id, [Event("agent_started", {"agent_name": "streamer"})])
        pub.publish(run_id, [Event("agent_completed", {})])
        # After the end: refused, but the publisher does not wait to hear it.
        assert pub.publish(run_id, [Event("agent_message", {"message_id": "m", "delta": "late"})], wait=False) == []
        with pytest.raises(AgentwireError) as refused:
            pub.flush()
    assert refused.value.status == 409 and refused.value.code == "lifecycle_violation"
    assert [e["event"] for e in history(server, thread, "carol")] == ["agent_started", "agent_completed"]


def test_a_retried_frame_is_stored_once(server):
    async def main():
        thread = fresh_thread()
        async with AsyncPublisher(server, KEY) as pub:
            run_id = await pub.create_run(thread, "dave", "streamer")
            start = Event("agent_started", {"agent_name": "streamer"})
            assert await pub.publish(run_id, [start]) == [1]
            assert await pub.publish(run_id, [start]) == [1]
        return thread

    thread = asyncio.run(main())
    assert len(history(server, thread, "dave")) == 1


def test_a_bad_key_is_refused_at_the_handshake(server):
    with Publisher(server, "not-a-key", retries=0) as pub:
        with pytest.raises(AgentwireError) as refused:
            pub.publish("run_thread_x1_1", [Event("agent_started", {"agent_name": "a"})])
    assert refused.value.status == 401


def test_a_refusal_is_raised_once_and_the_stream_goes_on(server):
    async def main():
        async with AsyncPublisher(server, KEY) as pub:
            run_id = await pub.create_run(fresh_thread(), "erin", "streamer")
            with pytest.raises(AgentwireError) as refused:
                await pub.publish(run_id, [Event("agent_thinking", {"thought": "before the start"})])
            assert refused.value.code == "lifecycle_violation"
            assert await pub.publish(run_id, [Event("agent_started", {"agent_name": "streamer"})]) == [1]

    asyncio.run(main())


@pytest.mark.parametrize("stream", [True, False])
def test_a_registration_sent_again_is_answered_as_the_first_and_registers_one_run(server, stream):
    thread = fresh_thread()
    with Publisher(server, KEY, stream=stream) as pub:
        run_id = pub.create_run(thread, "frank", "streamer")
        assert run_id.startswith(f"run_{thread}_") and len(run_id) == len(f"run_{thread}_") + 16, run_id
        # What a retried request or a frame resent after a dropped connection
        # is: the same registration, with the run id the publisher chose.
        assert pub.create_run(thread, "frank", "streamer", run_id=run_id) == run_id
        with pytest.raises(AgentwireError) as taken:
            pub.create_run(fresh_thread(), "frank", "streamer", run_id=run_id)
        assert taken.value.code == "conflict", "the same id in another thread is still taken"
        assert pub.publish(run_id, [Event("agent_started", {"agent_name": "streamer"})]) == [1]
    assert [e["run_id"] for e in history(server, thread, "frank")] == [run_id]


def test_at_most_so_many_frames_wait_for_their_answers(server, monkeypatch):
    monkeypatch.setattr(agentwire.stream, "MOST_UNANSWERED", 4)
    thread = fresh_thread()
    most = 0
    with Publisher(server, KEY) as pub:
        run_id = pub.create_run(thread, "gina", "streamer")
        pub.publish(run_id, [Event("agent_started", {"agent_name": "streamer"})])
        for n in range(200):
            pub.publish(run_id, [Event("agent_message", {"message_id": "m", "delta": f"t{n} "})], wait=False)
            most = max(most, len(pub._stream._pending))
        pub.flush()
    assert most <= 4
    assert deltas(history(server, thread, "gina")) == [f"t{n} " for n in range(200)]


def test_async_frames_wait_for_room_and_a_flush_raises_the_last_ones_refusal(server, monkeypatch):
    monkeypatch.setattr(agentwire.stream, "MOST_UNANSWERED", 4)

    async def main():
        thread = fresh_thread()
        most = 0
        async with AsyncPublisher(server, KEY) as pub:
            run_id = await pub.create_run(thread, "hana", "streamer")
            await pub.publish(run_id, [Event("agent_started", {"agent_name": "streamer"})])
            for n in range(200):
                delta = Event("agent_message", {"message_id": "m", "delta": f"t{n} "})
                await pub.publish(run_id, [delta], wait=False)
                most = max(most, len(pub._stream._pending))
            await pub.publish(run_id, [Event("agent_completed", {})], wait=False)
            # After the end: refused; nobody waited for it but the flush.
            await pub.publish(run_id, [Event("agent_message", {"message_id": "m", "delta": "late"})], wait=False)
            with pytest.raises(AgentwireError) as refused:
                await pub.flush()
            assert refused.value.code == "lifecycle_violation"
        return thread, most

    thread, most = asyncio.run(main())
    assert most <= 4
    assert deltas(history(server, thread, "hana")) == [f"t{n} " for n in range(200)]
