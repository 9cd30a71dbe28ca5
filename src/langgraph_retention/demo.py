"""A real ReAct-style LangGraph agent for the demo, the tests and the benchmarks.

The LLM is `FakeMessagesListChatModel` from langchain-core: every user turn it asks for
the `lookup_order` tool, then answers with the tool's result, so each turn writes five
checkpoints (input, then one per super-step) the way a production agent does.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition

__all__ = [
    "SEED_THREAD_ID",
    "AgentState",
    "build_agent",
    "chat",
    "populate",
    "run_demo",
]

#: The thread from the seed document (note the ':' inside the id).
SEED_THREAD_ID = "wang1:20250729235038043"


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@tool
def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order."""
    return f"order {order_id}: shipped, arrives in {len(order_id) % 5 + 1} days"


def _scripted_model() -> FakeMessagesListChatModel:
    """A fake chat model that alternates a tool call and an answer, forever."""
    return FakeMessagesListChatModel(
        responses=[
            AIMessage(
                content="",
                tool_calls=[{"name": "lookup_order", "args": {"order_id": "A-1042"}, "id": "call"}],
            ),
            AIMessage(content="Your order A-1042 has shipped."),
        ]
    )


def build_agent(checkpointer: Any) -> Any:
    """Compile the ReAct agent (agent -> tools -> agent) with the given checkpointer."""
    model = _scripted_model()

    def agent(state: AgentState) -> dict[str, list[AnyMessage]]:
        scripted = model.invoke(state["messages"])
        # A new message per reply (with a fresh call id), as a real model returns.
        calls = [{**c, "id": f"call_{uuid.uuid4().hex[:8]}"} for c in scripted.tool_calls]
        return {"messages": [AIMessage(content=scripted.content, tool_calls=calls)]}

    builder = StateGraph(AgentState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([lookup_order]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


def chat(graph: Any, thread_id: str, turns: int) -> None:
    """Run `turns` user turns on a thread (5 checkpoints each)."""
    config = {"configurable": {"thread_id": thread_id}}
    for i in range(turns):
        graph.invoke({"messages": [HumanMessage(f"where is my order? ({i})")]}, config)


def populate(graph: Any, threads: Iterable[tuple[str, int]]) -> None:
    """Run each (thread id, turns) conversation."""
    for thread_id, turns in threads:
        chat(graph, thread_id, turns)


DEMO_THREADS: tuple[tuple[str, int], ...] = (
    (SEED_THREAD_ID, 8),  # 40 checkpoints, like the seed's 36
    ("wang2:20250730101500000", 6),
    ("客服/会话 7", 4),
    ("short thread", 1),
)


def run_demo(db_path: Path, keep_last: int = 5, echo: Callable[[str], None] = print) -> bool:
    """Build a SQLite store from the agent, prune it, and check nothing current changed.

    Returns True when every thread's current state is exactly what it was.
    """
    from langgraph_retention import RetentionPolicy, stats, sweep

    if db_path.exists():
        db_path.unlink()
    conn = sqlite3.connect(str(db_path), check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        graph = build_agent(saver)
        echo(f"building {db_path} from a real LangGraph ReAct agent ...")
        populate(graph, DEMO_THREADS)
        before = {
            tid: graph.get_state({"configurable": {"thread_id": tid}}) for tid, _ in DEMO_THREADS
        }
        _print_stats(stats(saver), "before", echo)
        report = sweep(saver, RetentionPolicy(keep_last=keep_last))
        echo(
            f"pruned to keep {keep_last}: deleted {report.deleted_checkpoints} checkpoints, "
            f"{report.deleted_writes} writes, {report.bytes_freed} bytes "
            f"in {report.elapsed_seconds * 1000:.1f} ms"
        )
        _print_stats(stats(saver), "after", echo)
        same = True
        for tid, _ in DEMO_THREADS:
            after = graph.get_state({"configurable": {"thread_id": tid}})
            ok = after == before[tid]
            same = same and ok
            echo(f"  {tid!r}: current state {'unchanged' if ok else 'CHANGED'}")
        chat(graph, SEED_THREAD_ID, 1)
        echo(f"  {SEED_THREAD_ID!r} keeps running after the prune: one more turn answered")
        return same and report.ok
    finally:
        conn.close()


def _print_stats(s: Any, label: str, echo: Callable[[str], None]) -> None:
    echo(
        f"{label}: {s.total_threads} threads, {s.total_checkpoints} checkpoints, "
        f"{s.total_bytes} bytes"
    )
    for tid, ts in s.threads.items():
        echo(f"  {tid!r}: {ts.checkpoints} checkpoints, {ts.writes} writes, {ts.bytes} bytes")
