"""The backend port is typed: no untyped job dict crosses a ``Backend`` or capability Protocol.

Every Protocol and dataclass of ``backends/base.py`` and ``backends/capabilities.py`` is read with
``ast``. A mapping whose values are ``Any`` or ``object`` (``dict[str, Any]``, ``Mapping[str, Any]``,
``MutableMapping[str, object]``, ...) or ``RawJob`` fails wherever it is named: in a Protocol
method's parameters or return, a Protocol attribute, any field of a port dataclass (private ones too:
a reply must not carry the stored dict along), or a port dataclass method's signature. The few
methods that are the stored form's codec are listed in ``CODEC`` with the reason each may name one.
"""

from __future__ import annotations

import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[2] / "asyncmq_otel" / "backends"
PORT_MODULES = (BACKENDS / "base.py", BACKENDS / "capabilities.py")
MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}
LOOSE_VALUES = {"Any", "object"}
# A port dataclass holds no untyped mapping (its fields are checked), so a method can name one only
# to decode the stored form into typed fields, or to hand out a dict it builds from them.
CODEC = {
    "ClaimedJob.from_fields": "the adapters' decode of the stored form (a claim's reply) into typed fields",
    "StoredJob.from_fields": "the adapters' decode of the stored form into typed fields",
    "StoredJob.to_dict": "the dict Queue.get_job returns, built from the typed fields",
    "WorkerInfo.from_dict": "the registry's stored JSON, decoded inside the adapters",
    "WorkerInfo.to_dict": "the registry's stored JSON, encoded inside the adapters",
}


def _is_protocol(node: ast.ClassDef) -> bool:
    return any(ast.unparse(base).split(".")[-1] == "Protocol" for base in node.bases)


def _is_dataclass(node: ast.ClassDef) -> bool:
    decorators = (d.func if isinstance(d, ast.Call) else d for d in node.decorator_list)
    return any(ast.unparse(d).split(".")[-1] == "dataclass" for d in decorators)


def _name(node: ast.expr) -> str:
    """The last dotted part of a name (``typing.Any`` -> ``Any``), or ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _untyped(annotation: ast.expr | None) -> bool:
    """Whether the annotation names ``RawJob`` or a mapping with ``Any``/``object`` in its values."""
    if annotation is None:
        return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
            try:
                quoted = ast.parse(node.value, mode="eval").body
            except SyntaxError:  # a Literal's text, not an annotation
                continue
            if _untyped(quoted):
                return True
        elif _name(node) == "RawJob" or (
            isinstance(node, ast.Subscript)
            and _name(node.value) in MAPPINGS
            and isinstance(node.slice, ast.Tuple)
            and len(node.slice.elts) == 2
            and any(_name(part) in LOOSE_VALUES for part in ast.walk(node.slice.elts[1]))
        ):
            return True
    return False


def _signature_untyped(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    arguments = function.args
    annotated = [
        *arguments.posonlyargs,
        *arguments.args,
        *arguments.kwonlyargs,
        *(a for a in (arguments.vararg, arguments.kwarg) if a is not None),
    ]
    return any(_untyped(a.annotation) for a in annotated) or _untyped(function.returns)


def offenders(source: str, module: str) -> list[str]:
    """``Class.member`` for each annotation of a port Protocol or dataclass that names an untyped dict."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        protocol, record = _is_protocol(node), _is_dataclass(node)
        if not (protocol or record):
            continue
        for member in node.body:
            if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{node.name}.{member.name}"
                if (protocol or name not in CODEC) and _signature_untyped(member):
                    found.append(f"{module}: {name}")
            elif isinstance(member, ast.AnnAssign) and _untyped(member.annotation):
                found.append(f"{module}: {node.name}.{ast.unparse(member.target)}")
    return found


def test_no_port_protocol_or_record_names_an_untyped_dict():
    found = [hit for path in PORT_MODULES for hit in offenders(path.read_text(encoding="utf-8"), path.name)]
    assert found == []


def test_the_check_finds_untyped_signatures_fields_and_methods():
    source = """
class Port(Protocol):
    async def get_job(self, queue: str) -> RawJob | None: ...
    async def put(self, job: "dict[str, Any]") -> None: ...
    async def retry(self, error: Mapping[str, Any] | None = None) -> None: ...
    async def nested(self, jobs: list[typing.MutableMapping[str, list[object]]]) -> None: ...
    async def fine(self, queue: str, leases: Mapping[str, str]) -> dict[str, int]: ...
    async def fine_too(self, queue: str) -> StoredJob: ...
@dataclass(frozen=True, slots=True)
class SettleReply:
    job: dict[str, Any] | None = None
    _stored: Mapping[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    def raw(self) -> dict[str, Any]: ...
    @classmethod
    def load(cls, fields: Mapping[str, Any]) -> SettleReply: ...
    def to_dict(self) -> dict[str, str]: ...
@dataclass
class StoredJob:
    def to_dict(self) -> dict[str, Any]: ...
class Other:
    _stored: dict[str, Any]
    def to_dict(self) -> dict[str, Any]: ...
"""
    assert offenders(source, "m") == [
        "m: Port.get_job",
        "m: Port.put",
        "m: Port.retry",
        "m: Port.nested",
        "m: SettleReply.job",
        "m: SettleReply._stored",
        "m: SettleReply.raw",
        "m: SettleReply.load",
    ]


def test_the_codec_methods_listed_exist():
    """An entry left behind by a rename would let a new method of that name through unchecked."""
    defined = {
        f"{node.name}.{member.name}"
        for path in PORT_MODULES
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
        for member in node.body
        if isinstance(member, ast.FunctionDef)
    }
    assert set(CODEC) <= defined


def test_the_port_modules_define_the_protocols_and_replies_checked():
    """A rename that moved a Protocol or a reply out of these modules must not take it out of the check."""
    classes = [
        node
        for path in PORT_MODULES
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
    ]
    assert {
        "Backend",
        "ScheduleStore",
        "LeaseRenewer",
        "EventPublisher",
        "SamplerLock",
        "ConsumerCounter",
    } <= {node.name for node in classes if _is_protocol(node)}
    assert {
        "ClaimedJob",
        "StoredJob",
        "ErrorInfo",
        "ClaimReply",
        "SettleReply",
        "ReapReply",
        "EnqueueItem",
        "EnqueueReply",
        "FireReply",
    } <= {node.name for node in classes if _is_dataclass(node)}
