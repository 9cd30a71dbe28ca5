"""Real compiled LangGraph graphs the invariant tests prune: each shape stresses one rule."""

import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.messages import HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from langgraph_retention.demo import build_agent

__all__ = [
    "build_agent",
    "build_delta_graph",
    "build_interrupt_graph",
    "build_subgraph_graph",
    "config",
    "user_turn",
]


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def user_turn(i: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(f"turn {i}")]}


# -- a parent graph calling a subgraph node (checkpoints in a "child:<task id>" namespace)
class ParentState(TypedDict):
    log: Annotated[list[str], operator.add]


class ChildState(TypedDict):
    log: Annotated[list[str], operator.add]


def build_subgraph_graph(checkpointer: Any, *, persistent_child: bool = False) -> Any:
    """parent: prepare -> child(subgraph: step_a -> step_b) -> finish.

    With `persistent_child`, the subgraph is compiled with `checkpointer=True`, so its
    namespace is plain "child" and its state outlives each call.
    """
    child = StateGraph(ChildState)
    child.add_node("step_a", lambda s: {"log": ["a"]})
    child.add_node("step_b", lambda s: {"log": ["b"]})
    child.add_edge(START, "step_a")
    child.add_edge("step_a", "step_b")
    child.add_edge("step_b", END)
    compiled_child = child.compile(checkpointer=True if persistent_child else None)

    parent = StateGraph(ParentState)
    parent.add_node("prepare", lambda s: {"log": ["prepare"]})
    parent.add_node("child", compiled_child)
    parent.add_node("finish", lambda s: {"log": ["finish"]})
    parent.add_edge(START, "prepare")
    parent.add_edge("prepare", "child")
    parent.add_edge("child", "finish")
    parent.add_edge("finish", END)
    return parent.compile(checkpointer=checkpointer)


def build_subgraph_interrupt_graph(checkpointer: Any) -> Any:
    """A parent whose subgraph pauses at `interrupt()` (resume goes through the child ns)."""

    def ask(state: ChildState) -> dict[str, list[str]]:
        answer = interrupt("approve?")
        return {"log": [f"approved:{answer}"]}

    child = StateGraph(ChildState)
    child.add_node("work", lambda s: {"log": ["work"]})
    child.add_node("ask", ask)
    child.add_edge(START, "work")
    child.add_edge("work", "ask")
    child.add_edge("ask", END)

    parent = StateGraph(ParentState)
    parent.add_node("prepare", lambda s: {"log": ["prepare"]})
    parent.add_node("child", child.compile())
    parent.add_edge(START, "prepare")
    parent.add_edge("prepare", "child")
    parent.add_edge("child", END)
    return parent.compile(checkpointer=checkpointer)


# -- a graph paused at interrupt() ---------------------------------------------------------
class ApprovalState(TypedDict):
    log: Annotated[list[str], operator.add]


def build_interrupt_graph(checkpointer: Any) -> Any:
    """draft -> review (interrupt) -> publish; each run pauses at review."""

    def review(state: ApprovalState) -> dict[str, list[str]]:
        decision = interrupt({"question": "publish?", "draft": state["log"][-1]})
        return {"log": [f"review:{decision}"]}

    g = StateGraph(ApprovalState)
    g.add_node("draft", lambda s: {"log": [f"draft{len(s['log'])}"]})
    g.add_node("review", review)
    g.add_node("publish", lambda s: {"log": ["published"]})
    g.add_edge(START, "draft")
    g.add_edge("draft", "review")
    g.add_edge("review", "publish")
    g.add_edge("publish", END)
    return g.compile(checkpointer=checkpointer)


def resume(value: Any) -> Command:
    return Command(resume=value)


# -- a state with a DeltaChannel --------------------------------------------------------------
def _extend(state: list[str], writes: Sequence[list[str]]) -> list[str]:
    out = list(state)
    for w in writes:
        out.extend(w)
    return out


def build_delta_graph(checkpointer: Any, *, snapshot_frequency: int = 7) -> Any:
    """Each invoke appends two items over two supersteps; `items` is a DeltaChannel, so
    most checkpoints store no value for it and rebuild it from ancestors' writes."""

    class State(TypedDict):
        items: Annotated[list[str], DeltaChannel(_extend, snapshot_frequency=snapshot_frequency)]
        rounds: int

    g = StateGraph(State)
    g.add_node("first", lambda s: {"items": [f"x{s.get('rounds', 0)}"]})
    g.add_node("second", lambda s: {"items": ["y"], "rounds": s.get("rounds", 0) + 1})
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    g.add_edge("second", END)
    return g.compile(checkpointer=checkpointer)


def broken_delta_store(path: Any, thread_id: str) -> Any:
    """A SQLite store (its open connection) holding one DeltaChannel thread whose history a
    naive cleanup broke: the newest checkpoint's parent, which its `items` value is rebuilt
    through, is gone. Every prune must refuse that thread."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(path), check_same_thread=False)
    graph = build_delta_graph(SqliteSaver(conn), snapshot_frequency=100)
    for i in range(3):
        graph.invoke({"items": [f"i{i}"]}, config(thread_id))
    (parent,) = conn.execute(
        "SELECT parent_checkpoint_id FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1"
    ).fetchone()
    conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", (parent,))
    conn.commit()
    return conn
