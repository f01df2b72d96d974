"""The pickle machine builds data and never runs anything a pickle names, whatever the opcode."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bncheck.errors import ModelReadError
from bncheck.readers.pytorch import pickle_vm
from bncheck.readers.pytorch.pickle_vm import GlobalRef, PickledObject, PickleRefused, StateDict
from tests.hardening import canary_module


def load(data: bytes) -> tuple[object, pickle_vm.PickleLog]:
    root, log, end = pickle_vm.load(data, lambda pid: ("storage", pid))
    assert end == len(data)
    return root, log


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "canary"
    monkeypatch.setenv("BNCHECK_CANARY", str(path))
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_no_protocol_makes_it_run_code(canary: Path, protocol: int) -> None:
    data = pickle.dumps(
        {"object": canary_module.Touches(), "function": canary_module.touch}, protocol=protocol
    )
    canary.unlink()  # making the object above touched it; reading must not
    root, log = load(data)
    assert not canary.exists()
    assert isinstance(root, dict)
    assert root["function"] == GlobalRef("tests.hardening.canary_module", "touch")
    made = root["object"]
    assert isinstance(made, PickledObject) and made.kind == "call"
    assert made.state == {"state": 1}  # what __setstate__ would have been given
    [call] = log.calls
    assert call.target == "tests.hardening.canary_module.Touches"
    assert call.arguments == "'reduce'"


def test_a_payload_popped_before_the_data_is_still_logged(canary: Path) -> None:
    # posix.system("...") then POP, then the real object: torch.load would have run it.
    data = (
        b"\x80\x02cposix\nsystem\nX\x07\x00\x00\x00touch x\x85R0"
        + pickle.dumps({"a": 1}, protocol=2)[2:]
    )
    root, log = load(data)
    assert root == {"a": 1}
    [call] = log.calls
    assert (call.target, call.arguments, call.position) == ("posix.system", "'touch x'", 29)


def test_a_foreign_function_inside_the_tensor_subclass_rebuilder_is_named() -> None:
    rebuilder = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n"
    data = rebuilder + b"(cposix\nsystem\nNX\x01\x00\x00\x00x\x85NtR."
    root, log = load(data)
    assert isinstance(root, PickledObject)
    assert [(call.target, call.arguments) for call in log.calls] == [("posix.system", "'x'")]


def test_calling_the_result_of_a_call_is_named(canary: Path) -> None:
    # getattr(builtins, "eval")("...") is how pickles reach functions by attribute.
    data = (
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\nobject\nX\x04\x00\x00\x00eval\x86R"
        b"X\x03\x00\x00\x001+1\x85R."
    )
    _, log = load(data)
    assert [call.target for call in log.calls] == [
        "builtins.getattr",
        "the result of builtins.getattr(...)",
    ]


def test_instances_are_recorded_with_their_state_not_built() -> None:
    # Touches.__reduce__ makes a call; an instance as torch.save(model) writes it is NEWOBJ, BUILD.
    data = b"\x80\x02ctests.hardening.canary_module\nTouches\n)\x81}X\x01\x00\x00\x00aK\x01sb."
    root, log = load(data)
    assert isinstance(root, PickledObject) and root.kind == "instance"
    assert root.class_ref == GlobalRef("tests.hardening.canary_module", "Touches")
    assert root.state == {"a": 1}
    assert log.classes == ["tests.hardening.canary_module.Touches"] and log.calls == []


def test_ordered_dicts_keep_their_metadata() -> None:
    from collections import OrderedDict

    state = OrderedDict(bn=1)
    state._metadata = {"bn": {"version": 2}}  # type: ignore[attr-defined]
    root, log = load(pickle.dumps(state, protocol=2))
    assert isinstance(root, StateDict) and dict(root) == {"bn": 1}
    assert root.attributes == {"_metadata": {"bn": {"version": 2}}}
    assert log.calls == []


def test_python2_names_are_read_as_python3_names() -> None:
    root, log = load(b"\x80\x02c__builtin__\nset\n]\x85R.")
    assert isinstance(root, PickledObject)
    assert root.target == GlobalRef("builtins", "set")
    assert log.calls == []  # a set is data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x02\x82\x01.", "EXT1 is not supported"),
        (b"\x80\x02h\x05.", "memo entry 5 before writing it"),
        (b"\x80\x02K\x01", "before seeing STOP"),
        (b"\x80\x02\xff.", "malformed pickle"),
        (b"\x80\x02.", "empty stack"),
        (b"\x80\x02K\x01)R.", "not callable"),
        (b"\x80\x02}K\x01b.", "sets the state of a dict"),
        (b"\x80\x02K\x01K\x02a.", "not a list"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x00K\x00))tR.", "not a storage"),
        (b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(NNNtR.", "with arguments"),
    ],
)
def test_malformed_or_foreign_pickles_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(PickleRefused, match=reason):
        load(data)
    assert issubclass(PickleRefused, ModelReadError)


def test_dictionary_keys_that_would_hash_for_ever_are_refused() -> None:
    # Nested tuples sharing one inner tuple: hashing the key would visit 2**60 leaves.
    key = b"K\x01"
    for _ in range(60):
        key = key + b"q\x00h\x00\x86"
    data = b"\x80\x02}" + key + b"K\x00s."
    with pytest.raises(PickleRefused, match="is not a plain value"):
        load(data)


@pytest.mark.parametrize("key", ["int", "tuple"])
def test_dictionary_keys_built_to_collide_do_not_share_a_hash(key: str) -> None:
    from tests.hardening.hostile.torch_onnx import hash_collision_flood

    root, _ = load(hash_collision_flood(20_000, key))
    assert isinstance(root, dict) and len(root) == 20_000
    # In CPython every one of these keys hashes to 0: a dict of them fills in quadratic time.
    assert len({hash(stored) for stored in root}) == 20_000
    first = next(iter(root))
    assert isinstance(first, pickle_vm.SaltedKey)
    value = 2**61 - 1
    assert first.value == (value if key == "int" else (value,))
    assert pickle_vm.short(first) == (str(value) if key == "int" else f"({value})")


def test_ordinary_dictionary_keys_are_kept_as_they_are() -> None:
    data = pickle.dumps({"a": 1, 3: 2, -1: 3, 2.0: 4, True: 5, None: 6, b"b": 7}, protocol=2)
    root, _ = load(data)
    assert root == {"a": 1, 3: 2, -1: 3, 2.0: 4, True: 5, None: 6, b"b": 7}
    odd, _ = load(pickle.dumps({0.5: 1, (1, "x"): 2, 2**70: 3}, protocol=2))
    assert isinstance(odd, dict)
    assert {key.value for key in odd} == {0.5, (1, "x"), 2**70}
    assert pickle_vm.SaltedKey((1, "x")) in odd and pickle_vm.SaltedKey((1.0, "x")) not in odd


def test_deep_nesting_is_built_without_recursion() -> None:
    data = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    root, _ = load(data)
    depth = 0
    while isinstance(root, list) and root:
        root, depth = root[0], depth + 1
    assert depth == 199_999


def test_calls_are_counted_and_each_function_listed_once() -> None:
    data = b"\x80\x02cposix\nsystem\nq\x00)" + b"h\x00)R0" * 200_000 + b"N."
    _, log = load(data)
    assert log.call_count == 200_000
    assert [(call.target, call.position) for call in log.calls] == [("posix.system", 22)]


def test_the_functions_listed_are_capped() -> None:
    calls = b"".join(b"cm\nf%d\n)R0" % index for index in range(pickle_vm.MAX_LISTED_CALLS + 50))
    _, log = load(b"\x80\x02" + calls + b"N.")
    assert log.call_count == pickle_vm.MAX_LISTED_CALLS + 50
    assert len(log.calls) == pickle_vm.MAX_LISTED_CALLS and log.calls[-1].target == "m.f99"
