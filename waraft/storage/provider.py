"""The pluggable replicated state machine (WARaft's ``wa_raft_storage`` provider, digest §5.1).

A storage provider holds the state machine of one partition: the applied data plus the Raft
metadata that must change together with it — the position of the last applied entry, the
newest applied config (with its position), the last label and the "incomplete" mark of a
witness. It is driven by the partition's storage actor, from that actor's thread only: providers
need not be thread-safe.

Command semantics shared by the providers here (WARaft's ``wa_raft_storage_ets``):

=====================================  ====================  ===============================
command                                 ``apply`` result      ``read`` result
=====================================  ====================  ===============================
``"noop"``                              ``"ok"``              ``"ok"``
``"noop_omitted"`` (witness stub)       ``"ok"``, marks the   —
                                        storage incomplete
``("write", table, key, value)``        ``"ok"``              —
``("delete", table, key)``              ``"ok"``              —
``("read", table, key)``                —                     ``("ok", value)`` / ``"not_found"``
=====================================  ====================  ===============================

The table element is ignored (one key space per partition, as in WARaft). Two keys name the
same row exactly when their msgpack encodings are equal (``key_identity``): a tuple and a list
of the same items are one key, while ``True``, ``1`` and ``1.0`` are three. Any other command
raises ``UnknownCommandError``, which the storage actor answers with ``("error",
("unknown_command", why))`` on every replica (WARaft crashes here); the entry changes nothing.
``apply`` always advances ``position()`` to the entry's position.

What a provider of one's own must know:

- A command it refuses for what the command *is* (bad arguments, a rule of its data) must be
  refused the same way on every replica: raise ``UnknownCommandError`` (answered, as above) or
  return ``("error", reason)``. Any other exception is taken for a fault of this replica (a
  disk, a bug): the storage actor crashes, the partition restarts and applies the same
  committed entry again, so an exception the entry always raises restarts it for ever.
- An ``apply_batch`` or ``apply_many`` that refuses a command says which
  (``UnknownCommandError.index``, ``refused_at``): the storage actor then applies the others
  in one transaction, as without the refusal. One that does not say costs a transaction per
  entry, and a ``$batch`` entry holding a refused command is refused whole.
- Results and read answers go to clients on other nodes as msgpack: a value msgpack cannot
  carry (a set, a datetime) is answered ``("error", "unencodable_result")`` instead (see
  ``results_encode``).
- The storage actor turns ``incr``/``append`` into writes from the value an earlier write or
  delete of the same apply batch left at the key, told apart by ``key_identity``: a provider
  whose rows are keyed otherwise than by the key's msgpack encoding overrides it, or the same
  log would leave different data on replicas that grouped its entries differently.
- Exactly-once sessions store their table through the provider as ordinary
  ``("write", "$waraft", key, row)`` and ``("delete", "$waraft", key)`` commands and read it
  back with ``("read", "$waraft", key)``: a provider used with ``Client(sessions=True)`` must
  implement those three for such keys.
- Bootstrap creates the first state through ``make_empty_snapshot``, which the base class
  answers ``("error", "not_supported")``: a provider that can be bootstrapped implements it.

Errors: recoverable failures are returned as ``("error", reason)`` (snapshot I/O, a snapshot at
the wrong position: ``("error", "bad_position")``); they leave the provider unchanged. Broken
invariants raise (``InvalidIncompleteReplica``, I/O errors in the middle of an apply).
"""

from __future__ import annotations

import contextlib
import errno
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

from waraft.core.rpc import clipped_repr
from waraft.core.types import Config, Identity, LogPos, is_config_command
from waraft.services.codec import CodecError, packb, unpackb

OK: Final = "ok"
NOT_FOUND: Final = "not_found"
BAD_POSITION: Final = ("error", "bad_position")
NOT_SUPPORTED: Final = ("error", "not_supported")
METADATA_FILE: Final = "metadata"
CHECKSUM_FILE: Final = "checksum"
"""A snapshot's file holding the size and CRC-32 of its data file (``write_snapshot_checksum``)."""
_CHECKSUM_CHUNK: Final = 4 << 20

ApplyItem = tuple[Any, LogPos, Any]
"""``(command, position, label)`` for ``apply_batch``; ``label`` is ``None`` when unlabelled."""


class StorageError(Exception):
    """Base class of storage provider errors."""


class StorageCorruptionError(StorageError):
    """Stored data failed its check (a value's checksum, a damaged page): the provider never
    returns it; the storage actor answers the read with an error and crashes, and the provider
    quarantines the partition when it opens again (``waraft.storage.node_lmdb``)."""


class UnknownCommandError(StorageError, ValueError):
    """A command (or read) the provider does not understand.

    Raised by ``apply_batch`` or ``apply_many``, ``index`` says which item (command) of that
    call was refused, counted from 0; None when the provider does not say. The storage actor
    then applies the call's items again, as one transaction, with the refused command replaced
    by a ``noop`` and answered (and recorded, in a session) with the error: each entry, and
    with it the exactly-once record of its result, stays all or nothing. A provider that does
    not say which command it refused costs the actor a transaction per entry, and a ``$batch``
    entry holding the command is refused whole (``StorageServer._apply_session_items``). The
    default loop and the providers here say."""

    index: int | None = None


def refused_at(exc: UnknownCommandError, index: int) -> UnknownCommandError:
    """``exc`` saying that item ``index`` of the failing ``apply_batch``/``apply_many`` call
    is the refused one (see ``UnknownCommandError``)."""
    exc.index = index
    return exc


class PartialApplyError(UnknownCommandError):
    """An ``apply_batch`` that is not one transaction (the default loop) met a command it does
    not understand after applying the items before it: ``applied`` holds their results, and
    ``index`` (their count) is the refused item.

    The storage actor does not apply the earlier items a second time (a provider's own
    non-idempotent command would otherwise be applied twice, and its session record would
    hold the second result): it records their results and goes on from the refused one."""

    def __init__(self, applied: list[Any], cause: UnknownCommandError) -> None:
        super().__init__(str(cause))
        self.applied = applied
        self.index = len(applied)


def batch_refusal(results: list[Any], exc: UnknownCommandError) -> UnknownCommandError:
    """What a looping ``apply_batch`` raises when ``exc`` refuses its item ``len(results)``:
    a ``PartialApplyError`` with the results of the items applied before it, or ``exc``
    saying that the first item is refused."""
    if not results:
        return refused_at(exc, 0)
    partial = PartialApplyError(results, exc)
    partial.__cause__ = exc
    return partial


def applied_before(exc: UnknownCommandError) -> list[Any]:
    """The results of the items an ``apply_batch`` applied before it raised ``exc``."""
    return list(exc.applied) if isinstance(exc, PartialApplyError) else []


class SessionStoreError(RuntimeError):
    """The provider refused the commands that store the exactly-once session table (a
    generic ``write``/``delete`` of a reserved key) after applying the entries whose results
    they record. No restart changes that: the storage actor disables its replica."""

    def __init__(self, provider: str, cause: Exception) -> None:
        super().__init__(
            f"{provider} cannot store exactly-once sessions: it refuses the generic write, "
            f"delete or read of the reserved ('$waraft', ...) keys ({cause})"
        )


class SessionResultsError(SessionStoreError):
    """A ``TransactionalStorage`` whose ``apply_batch`` answered other than ``"ok"`` for a
    command: the session rows committed with it recorded ``"ok"`` (see
    ``TransactionalStorage.answers_ok``). The storage actor disables its replica, which has
    stored wrong results for retried requests: the provider must be fixed."""

    def __init__(self, provider: str, results: Sequence[Any]) -> None:
        wrong = next(result for result in results if result != OK)
        RuntimeError.__init__(
            self,
            f"{provider}.apply_batch answered {clipped_repr(wrong)}, not 'ok', for a command "
            "whose result the exactly-once session table recorded as 'ok' in the same "
            f"transaction: {provider} declares answers_ok but must override apply_batch_then",
        )


class InvalidIncompleteReplica(StorageError):
    """The storage lacks data (a witness's) but the config makes this replica a data replica.

    WARaft raises ``invalid_incomplete_replica``: applying such a config must not go on.
    """

    reason: Final = "invalid_incomplete_replica"

    def __init__(self, identity: Identity, detail: str = "holds incomplete data") -> None:
        super().__init__(f"invalid_incomplete_replica: {identity} {detail}")
        self.identity = identity


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """What a provider learns about its partition (a subset of WARaft's ``#raft_options{}``).

    The runtime may pass any object with these attributes.
    """

    table: str
    partition: int
    identity: Identity  # this replica (WARaft's ``self``)
    name: str = ""  # the storage actor's registered name
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific settings


def is_data_replica(identity: Identity, config: Config) -> bool:
    """WARaft's ``is_data_replica``: a participant that is not a witness."""
    return identity in config.participants and identity not in config.witness


class StorageProvider(ABC):
    """One partition's state machine (see the module docstring for the contracts)."""

    blocking_io: ClassVar[bool] = True
    """True if the provider's calls block on I/O (LMDB/SQLite transactions, fsync): the storage
    server then runs on a thread of its own rather than on a scheduler thread shared with other
    partitions. Only a provider that never blocks (the memory storage) sets False."""

    results_encode: ClassVar[bool] = False
    """True if every result of ``apply``/``apply_batch``/``read`` is a value msgpack encodes
    (the providers here: their values were decoded from msgpack). Otherwise the storage actor
    encodes each batch's results once to check, and answers one that does not encode with
    ``("error", "unencodable_result")`` (it was applied all the same)."""

    options: StorageOptions

    @staticmethod
    def key_identity(key: Any) -> Any:
        """A hashable value equal for two keys exactly when they name the same row. Default:
        the key's msgpack encoding, the bytes the built-in durable providers store a row
        under. Raises ``UnknownCommandError`` for a key that cannot name a row (msgpack
        cannot encode it): every write, delete and read of it must be refused as well."""
        try:
            return packb(key)
        except CodecError as exc:
            raise UnknownCommandError(f"a key msgpack cannot encode: {exc}"[:500]) from None

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def open(cls, options: StorageOptions, path: str | os.PathLike[str]) -> Self:
        """Open the storage of the partition whose data directory is ``path``;
        ``position()`` is valid right after."""

    @abstractmethod
    def close(self) -> None: ...

    # -- metadata -----------------------------------------------------------------------------
    # Every provider caches these four; durable ones update them only after a commit.

    _position: LogPos
    _config: tuple[LogPos, Config] | None
    _label: Any
    _incomplete: bool

    def _set_metadata(
        self, position: LogPos, config: tuple[LogPos, Config] | None, label: Any, incomplete: bool
    ) -> None:
        self._position = position
        self._config = config
        self._label = label
        self._incomplete = incomplete

    def position(self) -> LogPos:
        """The position of the last applied entry (``LogPos(0, 0)`` when nothing was)."""
        return self._position

    def durable_position(self) -> LogPos:
        """The applied position that survives power loss; the log is never trimmed above it
        (``waraft.log.LogServer``), so what storage may lose is applied again from the log.
        A provider that flushes every commit before it returns has nothing to lose:
        ``position()``. One that syncs lazily (``NodeLmdbStorage``) returns its position as
        of its last flush."""
        return self.position()

    def write_back_due(self) -> float | None:
        """Seconds until the provider wants ``write_back()`` called for applied rows it holds
        in a write-back buffer (0 or less: now), or None when it holds none: the bound for a
        partition that stops applying (a provider may write its buffer out sooner, from its
        applies). The storage actor asks after every apply message and arms a timer when none
        is armed. Default: None (nothing is ever buffered)."""
        return None

    def write_back(self) -> None:
        """Write the write-back buffer out (``write_back_due``); nothing by default."""
        return None

    # A provider whose writes are asynchronous (``NodeLmdbStorage``'s write-back flushes) never
    # waits for one inside an apply: on a full disk that wait lasted as long as the disk stayed
    # full, and every read queued behind the apply with it. The three calls below are how the
    # storage actor holds its applies instead, and keeps serving reads meanwhile.

    def applies_held(self) -> bool:
        """True when an apply now would have to wait for the provider's earlier writes (its
        write-back buffer is at its bound while its last write is not done): the storage
        actor then holds its apply messages, in order, until ``wake_when_written`` wakes it.
        Default: False (never)."""
        return False

    def write_stalled(self) -> str | None:
        """Why the provider's applied data waits for room to be written (a full disk), else
        None. Meanwhile the storage actor has new commits refused (``commit_stalled``): what
        is already committed is still applied and answered. Default: None."""
        return None

    def wake_when_written(self, wake: Callable[[], None]) -> bool:
        """Arrange for ``wake`` to be called once, from any thread, when the write the
        provider has in progress is done, if something waits for it (``applies_held``,
        ``write_stalled``, a buffer due to be written); False when nothing does, or it is
        done already (then nothing is arranged). Default: False."""
        return False

    def config(self) -> tuple[LogPos, Config] | None:
        """The newest applied config with the position it was applied at."""
        return self._config

    def label(self) -> Any:
        """The label of the last labelled entry applied (``None`` if none)."""
        return self._label

    def incomplete(self) -> bool:
        """True once a ``noop_omitted`` was applied: this replica's data is partial."""
        return self._incomplete

    def status(self) -> dict[str, Any]:
        """Provider facts for the partition's status output."""
        config = self.config()
        return {
            "provider": type(self).__name__,
            "position": self.position(),
            "config_position": None if config is None else config[0],
            "incomplete": self.incomplete(),
        }

    # -- applying -----------------------------------------------------------------------------

    @abstractmethod
    def apply(self, command: Any, position: LogPos, label: Any = None) -> Any:
        """Apply ``command`` at ``position``; store ``label`` too unless it is ``None``.

        A ``("config", Config)`` command is handed to ``apply_config``."""

    @abstractmethod
    def apply_config(self, config: Config, position: LogPos) -> Any:
        """Store ``config`` as applied at ``position`` (which becomes ``position()``).

        Returns ``"ok"`` or ``("error", reason)``; raises ``InvalidIncompleteReplica`` when the
        storage is incomplete and ``config`` makes this replica a data replica.
        """

    def apply_batch(self, items: Sequence[ApplyItem]) -> list[Any]:
        """Apply ``(command, position, label)`` items in order; one result per item.

        A ``("config", Config)`` command goes to ``apply_config`` (its result is that of
        ``apply_config``; the storage actor turns ``"ok"`` into ``("ok", position)``). Durable
        providers apply the whole batch in one transaction: if an item raises, none of the
        batch is applied. This default simply loops; an ``UnknownCommandError`` after some
        items were applied becomes a ``PartialApplyError`` that says which (a provider that
        overrides this with a loop of its own must do the same); one before anything was
        applied says that the first item is refused (``UnknownCommandError.index``).
        """
        results: list[Any] = []
        for command, position, label in items:
            try:
                if is_config_command(command):
                    results.append(self.apply_config(command[1], position))
                else:
                    results.append(self.apply(command, position, label))
            except UnknownCommandError as exc:
                raise batch_refusal(results, exc)  # noqa: B904 (its own cause, if another)
        return results

    def apply_batch_then(
        self, items: Sequence[ApplyItem], finalize: Callable[[list[Any]], Sequence[Any]]
    ) -> list[Any]:
        """``apply_batch(items)``, then the commands ``finalize(results)`` returns, applied at
        the last item's position; their results are not returned.

        This is how the storage actor stores the exactly-once session table (a ``write`` of
        a reserved key) with the results it records. A durable provider must make the two one
        transaction, or a crash between them loses recorded results while the position says
        the entries were applied. This default is two steps: enough for a provider whose state
        is lost on a crash anyway (memory); the built-in durable providers override it.

        ``finalize`` may run before ``items`` are applied (``TransactionalStorage`` knows the
        results beforehand): a call that raises has applied none of ``items`` (but those a
        ``PartialApplyError`` names), so its caller takes back whatever ``finalize`` recorded.
        """
        results = self.apply_batch(items)
        extra = finalize(results)
        if extra and items:
            _, position, _ = items[-1]
            try:
                self.apply_batch([(command, position, None) for command in extra])
            except UnknownCommandError as exc:
                # ``items`` are applied: this must not look like an unknown command among
                # them, or the caller would apply them again one by one.
                raise SessionStoreError(type(self).__qualname__, exc) from exc
        return results

    def apply_many(self, commands: Sequence[Any], position: LogPos, label: Any = None) -> list[Any]:
        """Apply the commands of one ``$batch`` log entry, all at ``position``, atomically like
        ``apply_batch`` (which this default calls); one result per command."""
        return self.apply_batch([(command, position, label) for command in commands])

    @abstractmethod
    def read(self, command: Any, position: LogPos) -> Any:
        """Answer a read at the current state; no side effects."""

    def check_config(self, config: Config) -> None:
        """WARaft's ``storage_check_config``: raise ``InvalidIncompleteReplica`` if needed."""
        if self.incomplete() and is_data_replica(self.options.identity, config):
            raise InvalidIncompleteReplica(self.options.identity)

    # -- snapshots ----------------------------------------------------------------------------

    @abstractmethod
    def create_snapshot(self, path: str | os.PathLike[str]) -> Any:
        """Write a directory that ``open_snapshot`` reloads at ``position()``:
        ``"ok"`` or ``("error", reason)``."""

    @abstractmethod
    def open_snapshot(self, path: str | os.PathLike[str], expected: LogPos) -> Any:
        """Replace the state by the snapshot in ``path`` if it sits at ``expected``.

        ``"ok"``, or ``("error", "bad_position")`` / ``("error", reason)`` with the state
        unchanged. Raises ``InvalidIncompleteReplica`` for an incomplete snapshot whose config
        makes this replica a data replica.
        """

    def create_witness_snapshot(self, path: str | os.PathLike[str]) -> Any:
        """A metadata-only snapshot (position and config, no data) for a witness."""
        config = self.config()
        if config is None:
            return ("error", "no_config")
        return self.make_empty_snapshot(
            self.options, path, self.position(), config[1], None, config_position=config[0]
        )

    @classmethod
    def make_empty_snapshot(
        cls,
        options: StorageOptions,
        path: str | os.PathLike[str],
        position: LogPos,
        config: Config,
        data: Any,
        *,
        config_position: LogPos | None = None,
    ) -> Any:
        """Write a snapshot holding only ``config`` at ``position`` (bootstrap / promote).

        ``data`` is what ``bootstrap`` was given; WARaft's ETS storage ignores it, the providers
        here seed their key space from it when it is a non-empty mapping.
        ``config_position`` defaults to ``position``. Returns ``"ok"`` or ``("error", r)``.
        """
        return NOT_SUPPORTED


class TransactionalStorage(StorageProvider):
    """A provider whose ``apply_batch`` is one transaction that answers ``"ok"`` to every
    command it applies (anything else raises before the transaction commits): the results of
    a batch are known before it runs, so ``apply_batch_then`` puts ``finalize``'s commands in
    the same transaction (the LMDB and SQLite providers).

    A subclass adding commands of its own overrides ``apply_batch`` (apply them inside the one
    transaction, hand the rest to ``super()``), not ``apply``: the storage actor applies every
    command through ``apply_batch`` or ``apply_many``, which never call ``apply`` here.
    Defining ``apply`` alone is refused when the class is made: every such command would be
    refused ``unknown_command`` at run time.

    The ``"ok"`` that ``apply_batch_then`` records for each command is a prediction, and a
    class that defines ``apply_batch`` must say whether it holds: either ``answers_ok = True``
    in the same class body (every command answers ``"ok"``: a wrapper that only checks, logs
    or raises, say) or an ``apply_batch_then`` other than this one, its own or a base's, that
    records the real results (``StorageProvider.apply_batch_then`` does, in two steps, for a
    provider that is not one transaction). A class that does neither is refused when it is
    made: it used to record ``"ok"`` for a retried request whose command had answered
    something else, without a word. What ``apply_batch`` returns is checked after the fact
    as well: an answer other than ``"ok"`` under ``answers_ok`` raises
    ``SessionResultsError`` (the storage actor disables the replica, whose session rows are
    then wrong).

    Why not have the real results inside the transaction instead: the transaction is the
    provider's ``apply_batch``, and a subclass's commands are applied by its own code before
    or around ``super().apply_batch``; knowing their results before the session rows are
    written would take a transaction spanning two ``apply_batch`` calls in every provider
    (and, in the node LMDB, a write-back buffer that must not flush between them). The
    declaration costs a subclass one line and cannot be forgotten."""

    answers_ok: ClassVar[bool] = False
    """Declared by a class that defines ``apply_batch`` (see the class docstring): every
    command its ``apply_batch`` applies answers ``"ok"``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        batch = cls.apply_batch
        if (
            "apply" in cls.__dict__
            and "apply_batch" not in cls.__dict__
            and batch is not StorageProvider.apply_batch
        ):
            raise TypeError(
                f"{cls.__qualname__} overrides apply() but not apply_batch(): "
                f"{batch.__qualname__} applies every command in one transaction without "
                "calling apply(), so its commands would be refused (unknown_command). "
                "Add them in apply_batch() (see TransactionalStorage)."
            )
        own = cls.__dict__
        if (
            ("apply_batch" in own or "answers_ok" in own)
            and own.get("answers_ok") is not True
            and cls.apply_batch_then is TransactionalStorage.apply_batch_then
        ):
            raise TypeError(
                f"{cls.__qualname__} defines apply_batch() (or answers_ok) without saying "
                "that every command answers 'ok': TransactionalStorage.apply_batch_then "
                "records 'ok' as each command's result in the exactly-once session table. "
                "Set answers_ok = True in the class if every command answers 'ok', else "
                "override apply_batch_then() to record the real results (see "
                "TransactionalStorage)."
            )

    def apply_batch_then(
        self, items: Sequence[ApplyItem], finalize: Callable[[list[Any]], Sequence[Any]]
    ) -> list[Any]:
        if not items:
            return []
        extra = finalize([OK] * len(items))
        _, position, _ = items[-1]
        try:
            results = self.apply_batch([*items, *((command, position, None) for command in extra)])
        except UnknownCommandError as exc:
            if exc.index is not None and exc.index >= len(items):
                # A refused session row, not one of ``items``: no retry without the command
                # it names changes that (as in the default above).
                raise SessionStoreError(type(self).__qualname__, exc) from exc
            raise
        if results.count(OK) != len(results):  # the prediction ``finalize`` recorded
            raise SessionResultsError(type(self).__qualname__, results)
        return [OK] * len(items)


# -- helpers shared by the providers ---------------------------------------------------------


def command_kind(command: Any) -> str:
    """The command's name, for dispatch (``UnknownCommandError`` if it has none)."""
    if type(command) is str:
        return command
    if isinstance(command, tuple | list) and command and type(command[0]) is str:
        return command[0]
    raise UnknownCommandError(f"unknown storage command {clipped_repr(command)}")


def write_metadata(
    path: str, provider: str, position: LogPos, config: tuple[LogPos, Config] | None
) -> None:
    """Write the snapshot's ``metadata`` file (position and config, readable without the data)."""
    body = packb(
        {
            "provider": provider,
            "position": tuple(position),
            "config": None if config is None else (tuple(config[0]), config[1]),
        }
    )
    write_file_durably(os.path.join(path, METADATA_FILE), body)


def read_metadata(path: str) -> dict[str, Any]:
    """The snapshot's ``metadata`` (``position`` as a ``LogPos``); raises ``OSError`` /
    ``CodecError`` on a missing or bad file."""
    with open(os.path.join(path, METADATA_FILE), "rb") as f:
        meta = unpackb(f.read())
    if not isinstance(meta, dict) or "position" not in meta:
        raise ValueError("snapshot metadata lacks a position")
    meta["position"] = LogPos(*meta["position"])
    return meta


def file_checksum(path: str) -> tuple[int, int]:
    """``(size, crc32)`` of the file ``path``."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHECKSUM_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def write_snapshot_checksum(directory: str, name: str) -> None:
    """Write snapshot ``directory``'s ``checksum`` file: the size and CRC-32 of its data file
    ``name``, so that a replica refuses the file damaged on disk or cut short in transit (the
    file transport only checks sizes, and a database engine opens many damaged files without
    a word: a flipped byte of a value is served as the value)."""
    size, crc = file_checksum(os.path.join(directory, name))
    write_file_durably(
        os.path.join(directory, CHECKSUM_FILE), packb({"file": name, "size": size, "crc32": crc})
    )


def check_snapshot_checksum(directory: str, name: str) -> int:
    """The size of snapshot ``directory``'s data file ``name`` once it matches the snapshot's
    ``checksum`` file. Raises ``ValueError`` if it does not or if there is no checksum file
    (a snapshot from a version that wrote none is refused), ``OSError`` if a file cannot be
    read, ``CodecError`` if the checksum file cannot be decoded."""
    try:
        with open(os.path.join(directory, CHECKSUM_FILE), "rb") as f:
            expected = unpackb(f.read())
    except FileNotFoundError:
        raise ValueError(
            f"snapshot {directory} has no {CHECKSUM_FILE} file (incomplete, or written by a "
            "version without one): refused"
        ) from None
    if not isinstance(expected, dict) or expected.get("file", name) != name:
        raise ValueError(f"snapshot checksum file in {directory} is not one for {name}")
    path = os.path.join(directory, name)
    size, crc = file_checksum(path)
    if size != expected.get("size") or crc != expected.get("crc32"):
        raise ValueError(f"{path} does not match its checksum (damaged or incomplete)")
    return size


DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Write errors that mean "no room now": retried once there is room, not a broken disk."""


class RenameNotDurableError(OSError):
    """``build_file_durably`` renamed the new file to its target, then the directory's fsync
    failed (``errno`` is that fsync's). This process reads the new file back (the page cache
    holds the rename), but after a power loss the directory may still name the old one: the
    new content must not be trusted as durable until a later complete build of the target."""


def build_file_durably(target: str, build: Callable[[str], None], temp: str | None = None) -> None:
    """Have ``build`` write a fresh temporary file (``temp``, by default ``target + ".tmp"``),
    then fsync it, rename it to ``target`` and fsync the directory: after a crash ``target``
    is either whole or as it was. Raises ``RenameNotDurableError`` when only the directory's
    fsync failed (the rename is visible, not durable), the failing call's ``OSError`` else."""
    temp = target + ".tmp" if temp is None else temp
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    build(temp)
    fsync_path(temp)
    os.replace(temp, target)
    directory = os.path.dirname(target) or "."
    try:
        fsync_directory(directory)
    except OSError as exc:
        raise RenameNotDurableError(
            exc.errno,
            f"{target} was renamed into place but the fsync of {directory} failed "
            f"({exc.strerror or exc}): the rename may not be durable",
        ) from exc


def write_file_durably(target: str, data: bytes, temp: str | None = None) -> None:
    """``build_file_durably`` for a file holding ``data``."""

    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)

    build_file_durably(target, write, temp)


def fsync_path(path: str) -> None:
    """fsync the file or directory ``path``; for a directory this makes renames and new files
    in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_directory = fsync_path  # the name that says why at the call sites that sync a directory


__all__ = [
    "BAD_POSITION",
    "CHECKSUM_FILE",
    "DISK_FULL_ERRNOS",
    "METADATA_FILE",
    "NOT_FOUND",
    "NOT_SUPPORTED",
    "OK",
    "ApplyItem",
    "InvalidIncompleteReplica",
    "RenameNotDurableError",
    "SessionResultsError",
    "StorageCorruptionError",
    "StorageError",
    "StorageOptions",
    "StorageProvider",
    "TransactionalStorage",
    "UnknownCommandError",
    "batch_refusal",
    "build_file_durably",
    "check_snapshot_checksum",
    "command_kind",
    "file_checksum",
    "fsync_directory",
    "fsync_path",
    "is_data_replica",
    "read_metadata",
    "refused_at",
    "write_file_durably",
    "write_metadata",
    "write_snapshot_checksum",
]
