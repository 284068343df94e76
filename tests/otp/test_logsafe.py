"""bounded_repr: a log line's view of a value is small, however big or deep the value."""

from __future__ import annotations

from waraft.otp.logsafe import REPR_CHARS, bounded_repr


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_big_and_deep_values_are_cut_and_small_ones_are_shown_whole() -> None:
    assert bounded_repr(("status", 1, b"ab", None)) == "('status', 1, b'ab', None)"
    huge = bounded_repr(b"\x00" * (4 << 20))  # bytes are cut before their repr is made
    assert len(huge) <= REPR_CHARS and huge.endswith("(4194304 bytes)")
    deep: object = ()
    for _ in range(1000):
        deep = (deep,)
    assert bounded_repr(deep) == "((((...),),),)"  # three levels shown
    for value in ("x" * 10**6, list(range(10**5)), {i: str(i) * 100 for i in range(100)}):
        assert len(bounded_repr(value)) <= REPR_CHARS
    assert bounded_repr(10**5000) == "<int>"  # past Python's digit limit: repr raises
    assert bounded_repr(BrokenRepr()).startswith("<BrokenRepr instance")
