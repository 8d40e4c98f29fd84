"""The backend port is typed: no untyped job dict crosses a ``Backend`` or capability Protocol.

Every Protocol of ``backends/base.py`` and ``backends/capabilities.py`` is read with ``ast``; a
method's parameter or return annotation, or a Protocol attribute, that names ``RawJob`` or
``dict[str, Any]`` fails. So does a public field of a reply dataclass defined there (the worker
reads typed fields, never marker keys in a dict).
"""

from __future__ import annotations

import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[2] / "asyncmq_otel" / "backends"
PORT_MODULES = (BACKENDS / "base.py", BACKENDS / "capabilities.py")
UNTYPED = ("RawJob", "dict[str, Any]", "Dict[str, Any]")
# Reply types whose fields cross the port (WorkerInfo.to_dict is the registry's JSON form, not a reply).
REPLIES = {"ClaimedJob", "StoredJob", "ClaimReply", "SettleReply", "ReapReply", "EnqueueReply", "FireReply"}


def _is_protocol(node: ast.ClassDef) -> bool:
    return any(ast.unparse(base).split(".")[-1] == "Protocol" for base in node.bases)


def _untyped(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    text = ast.unparse(annotation).replace("'", "").replace('"', "")
    return any(name in text for name in UNTYPED)


def offenders(source: str, module: str) -> list[str]:
    """``Class.member`` for each annotation of a port Protocol or reply type that names an untyped job."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        protocol, reply = _is_protocol(node), node.name in REPLIES
        for member in node.body:
            if protocol and isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = member.args
                annotated = [
                    *arguments.posonlyargs,
                    *arguments.args,
                    *arguments.kwonlyargs,
                    *(a for a in (arguments.vararg, arguments.kwarg) if a is not None),
                ]
                if any(_untyped(a.annotation) for a in annotated) or _untyped(member.returns):
                    found.append(f"{module}: {node.name}.{member.name}")
            elif (
                (protocol or reply)
                and isinstance(member, ast.AnnAssign)
                and isinstance(member.target, ast.Name)
                and not member.target.id.startswith("_")
                and _untyped(member.annotation)
            ):
                found.append(f"{module}: {node.name}.{member.target.id}")
    return found


def test_no_port_protocol_or_reply_names_an_untyped_job_dict():
    found = [hit for path in PORT_MODULES for hit in offenders(path.read_text(encoding="utf-8"), path.name)]
    assert found == []


def test_the_check_finds_an_untyped_signature_a_field_and_a_return():
    source = """
class Port(Protocol):
    async def get_job(self, queue: str) -> RawJob | None: ...
    async def put(self, job: "dict[str, Any]") -> None: ...
    async def fine(self, queue: str) -> StoredJob: ...
class SettleReply:
    job: dict[str, Any] | None = None
    _stored: dict[str, Any]
class Other:
    def to_dict(self) -> dict[str, Any]: ...
"""
    assert offenders(source, "m") == ["m: Port.get_job", "m: Port.put", "m: SettleReply.job"]


def test_the_port_modules_define_the_protocols_checked():
    """A rename that moved a Protocol out of these modules must not take it out of the check."""
    names = {
        node.name
        for path in PORT_MODULES
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef) and _is_protocol(node)
    }
    assert {
        "Backend",
        "ScheduleStore",
        "LeaseRenewer",
        "EventPublisher",
        "SamplerLock",
        "ConsumerCounter",
    } <= names
