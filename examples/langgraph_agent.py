"""A LangGraph ReAct agent published to agentwire by one callback handler.
It runs on langchain-core's fake chat model, so it needs no API key.

    pip install './clients/python[langchain]' langgraph && python examples/langgraph_agent.py
"""

import json
import os

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agentwire import Publisher
from agentwire.langchain import AgentwireCallbackHandler


class ScriptedModel(GenericFakeChatModel):
    """The fake model, taught to stream tool calls (a real one does this itself)."""

    def bind_tools(self, tools, **kwargs):
        return self

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        message = next(self.messages)
        chunks = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": 0} for c in message.tool_calls]
        if chunks:
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=chunks))
        for word in str(message.content).split():
            if run_manager:
                run_manager.on_llm_new_token(word + " ")
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


@tool
def clock(tz: str) -> str:
    """The time in a zone."""
    return f"10:00 {tz}"


model = ScriptedModel(messages=iter([
    AIMessage(content="", tool_calls=[{"name": "clock", "args": {"tz": "UTC"}, "id": "call_1", "type": "tool_call"}]),
    AIMessage(content="It is 10:00 in UTC."),
]))
graph = StateGraph(MessagesState)
graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
graph.add_node("tools", ToolNode([clock]))
graph.add_edge(START, "agent")
graph.add_conditional_edges("agent", tools_condition)
graph.add_edge("tools", "agent")

with Publisher(os.environ.get("AGENTWIRE_URL", "http://127.0.0.1:8080"), os.environ.get("AGENTWIRE_PUBLISH_KEY", "dev-publish-key")) as agentwire:
    handler = AgentwireCallbackHandler(agentwire, thread_id=os.environ.get("AGENTWIRE_THREAD", "thread_demo"), user_id="alice", agent_name="langgraph-example")
    for _ in graph.compile().stream({"messages": [("user", "what time is it?")]}, config={"callbacks": [handler]}, stream_mode="messages"):
        pass
