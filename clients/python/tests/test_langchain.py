"""The LangChain / LangGraph handler against a real agentwire: a ReAct-style graph
with two tools, driven by langchain-core's fake chat model (taught to stream tool
calls), streamed with ``stream_mode="messages"``, sync and async."""

import asyncio
import json
import uuid
from typing import Any, Iterator, List, Optional

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agentwire import AsyncPublisher, Publisher
from agentwire.langchain import AgentwireCallbackHandler, AsyncAgentwireCallbackHandler

from conftest import by_call, history, thoughts

KEY = "dev-publish-key"


class ScriptedChatModel(GenericFakeChatModel):
    """langchain-core's fake chat model, streaming tool calls as tool-call chunks too."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChatModel":
        return self

    def _stream(
        self,
        messages: List[BaseMessage],
        stop: Optional[List[str]] = None,
        run_manager: Optional[CallbackManagerForLLMRun] = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = next(self.messages)
        assert isinstance(message, AIMessage)
        if message.tool_calls:
            chunks = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(message.tool_calls)
            ]
            yield ChatGenerationChunk(message=AIMessageChunk(content="", id=message.id, tool_call_chunks=chunks))
            return
        for key, value in message.additional_kwargs.items():
            yield ChatGenerationChunk(message=AIMessageChunk(content="", id=message.id, additional_kwargs={key: value}))
        for token in str(message.content).split(" "):
            token = token + " "
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token, id=message.id))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk


@tool
def clock(tz: str) -> str:
    """The time in a zone."""
    return f"10:00 {tz}"


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    if city == "Atlantis":
        raise ValueError("no such city")
    return f"sunny in {city}"


def react_graph(model: ScriptedChatModel):
    """The ReAct loop: the model, then its tools, until it answers without calling one."""
    tools = [clock, weather]
    bound = model.bind_tools(tools)

    def agent(state: MessagesState):
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def scripted() -> ScriptedChatModel:
    calls = [
        {"name": "clock", "args": {"tz": "UTC"}, "id": "call_clock", "type": "tool_call"},
        {"name": "weather", "args": {"city": "Atlantis"}, "id": "call_weather", "type": "tool_call"},
    ]
    answer = AIMessage(content="It is 10:00 and Atlantis is not a city.", additional_kwargs={"reasoning_content": "The clock worked; the weather tool did not."})
    return ScriptedChatModel(messages=iter([AIMessage(content="", tool_calls=calls), answer]))


def check(events: list) -> None:
    kinds = [e["event"] for e in events]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_completed"
    assert kinds.count("tool_executing") == 2 and kinds.count("tool_completed") == 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    started = by_call(events, "tool_executing")
    assert started["call_clock"]["tool_name"] == "clock" and started["call_clock"]["args"] == {"tz": "UTC"}
    done = by_call(events, "tool_completed")
    assert done["call_clock"]["result"] == "10:00 UTC"
    assert "no such city" in done["call_weather"]["error"]
    assert thoughts(events) == ["The clock worked; the weather tool did not."]
    deltas = [e["data"] for e in events if e["event"] == "agent_message"]
    assert "".join(d["delta"] for d in deltas) == "It is 10:00 and Atlantis is not a city. "
    assert len({d["message_id"] for d in deltas}) == 1
    assert kinds.index("tool_completed") < kinds.index("agent_message")
    assert events[-1]["data"]["result"] == "It is 10:00 and Atlantis is not a city. "
    assert events[0]["data"]["input"]["messages"][0] == ["user", "time and weather?"]


def test_a_langgraph_run_streamed_with_messages_mode_is_published(server):
    thread = f"thread_lc{uuid.uuid4().hex[:12]}"
    with Publisher(server, KEY) as publisher:
        handler = AgentwireCallbackHandler(publisher, thread_id=thread, user_id="ada", agent_name="langgraph-agent")
        graph = react_graph(scripted())
        streamed = list(graph.stream({"messages": [("user", "time and weather?")]}, config={"callbacks": [handler]}, stream_mode="messages"))
        publisher.flush()
    assert streamed, "the graph streamed its messages"
    check(history(server, thread, "ada"))


def test_an_async_langgraph_run_is_published_and_a_failing_graph_ends_with_agent_error(server):
    thread = f"thread_lc{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        async with AsyncPublisher(server, KEY) as publisher:
            handler = AsyncAgentwireCallbackHandler(publisher, thread_id=thread, user_id="ada", agent_name="langgraph-agent")
            graph = react_graph(scripted())
            config = {"callbacks": [handler]}
            async for _ in graph.astream({"messages": [("user", "time and weather?")]}, config=config, stream_mode="messages"):
                pass
            # A second invocation with the model out of answers: a run of its own, ended by agent_error.
            with pytest.raises((StopIteration, RuntimeError)):
                await graph.ainvoke({"messages": [("user", "again?")]}, config=config)
            await publisher.flush()

    asyncio.run(main())
    events = history(server, thread, "ada")
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    assert len(runs) == 2
    check([e for e in events if e["run_id"] == runs[0]])
    second = [e["event"] for e in events if e["run_id"] == runs[1]]
    assert second == ["agent_started", "agent_error"]


def test_a_run_that_could_not_be_registered_does_not_stop_the_next_one(server):
    thread = f"thread_lc{uuid.uuid4().hex[:12]}"
    with Publisher(server, KEY) as publisher:
        # The first invocation names a thread that is not a thread id: its registration is refused,
        # LangChain logs that, and the graph runs on.
        refused = AgentwireCallbackHandler(publisher, thread_id="not a thread", user_id="ada", agent_name="langgraph-agent")
        graph = react_graph(scripted())
        graph.invoke({"messages": [("user", "time and weather?")]}, config={"callbacks": [refused]})
        assert refused.run_id == ""
        refused._m.thread_id = thread
        graph = react_graph(scripted())
        list(graph.stream({"messages": [("user", "time and weather?")]}, config={"callbacks": [refused]}, stream_mode="messages"))
        publisher.flush()
    check(history(server, thread, "ada"))
