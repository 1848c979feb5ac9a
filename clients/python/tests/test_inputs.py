"""A Python agent asks its user and waits (PROTOCOL §2.1)."""

import asyncio
import threading
import time
import uuid

import httpx
import pytest

from agentwire import AsyncPublisher, Publisher, RunEnded

from conftest import history

KEY = "dev-publish-key"


def fresh_thread() -> str:
    return f"thread_pyask{uuid.uuid4().hex[:10]}"


def token(base: str, user: str) -> str:
    return httpx.get(f"{base}/dev/token", params={"user": user}).json()["token"]


def answer_when_asked(base: str, thread: str, user: str, answer: dict) -> threading.Thread:
    """The user, in another thread: waits for the request to show, then answers it."""

    def work() -> None:
        headers = {"authorization": f"Bearer {token(base, user)}"}
        for _ in range(400):
            asked = [e for e in history(base, thread, user) if e["event"] == "input_requested"]
            answered = {e["data"]["request_id"] for e in history(base, thread, user) if e["event"] == "input_received"}
            pending = [e for e in asked if e["data"]["request_id"] not in answered]
            if pending:
                request = pending[0]
                body = {**answer, "run_id": request["run_id"]}
                resp = httpx.post(f"{base}/v1/threads/{thread}/inputs/{request['data']['request_id']}", json=body, headers=headers)
                assert resp.status_code == 200, resp.text
                return
            time.sleep(0.025)
        raise AssertionError("never asked")

    t = threading.Thread(target=work)
    t.start()
    return t


def test_a_run_asks_for_approval_and_goes_on_as_told(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        with pub.run(thread, "alice", "mailer") as run:
            user = answer_when_asked(server, thread, "alice", {"approved": True})
            approved = run.approve("send_email", {"to": "bob@example.com"})
            user.join()
            assert approved
            user = answer_when_asked(server, thread, "alice", {"text": "Lyon"})
            answer = run.ask("Which city?")
            user.join()
            assert (answer.text, answer.timed_out, answer.user_id) == ("Lyon", False, "alice")
            run.result = {"sent": approved, "city": answer.text}
    events = history(server, thread, "alice")
    asked = [e["data"] for e in events if e["event"] == "input_requested"]
    assert asked[0]["kind"] == "approval" and asked[0]["tool_name"] == "send_email"
    assert asked[0]["arguments"] == {"to": "bob@example.com"}
    assert [e["event"] for e in events][-1] == "agent_completed"


def test_an_unanswered_choice_takes_its_default_and_async_runs_ask_too(server):
    thread = fresh_thread()

    async def main() -> None:
        async with AsyncPublisher(server, KEY) as pub:
            async with pub.run(thread, "bob", "picker") as run:
                answer = await run.ask("Tea or coffee?", options=["tea", "coffee"], default="tea", timeout=0.3)
                assert (answer.choice, answer.timed_out, answer.user_id) == ("tea", True, None)
                denied = await run.approve("delete_everything", {}, timeout=0.3)
                assert denied is False, "a lapsed approval is a denial"
                run.result = answer.choice

    asyncio.run(main())
    sources = [e["data"]["source"] for e in history(server, thread, "bob") if e["event"] == "input_received"]
    assert sources == ["timeout", "timeout"]


def test_a_run_cancelled_while_it_waits_raises(server):
    thread = fresh_thread()
    with Publisher(server, KEY) as pub:
        with pytest.raises(RunEnded):
            with pub.run(thread, "carol", "waiter") as run:
                threading.Timer(0.3, lambda: pub.cancel(run.run_id)).start()
                run.ask("Anything?")
