"""The one exception tree of Amber.

Every error a user can hit is an :class:`AmberError` subclass with a stable exit
code and an operator hint (what to do about it). Decoders in :mod:`amber.protocol`
raise nothing but these on bad input. ``docs/ERRORS.md`` lists the codes; a test
keeps it in step with this module.
"""

from __future__ import annotations


class AmberError(Exception):
    """Root of every Amber error.

    ``exit_code`` is stable: scripts may depend on it. ``hint`` tells the operator
    what to do next.
    """

    exit_code: int = 1
    default_hint: str = "see the log for details"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """The message and hint as shown to an operator."""
        return f"error: {self.message}\nhint: {self.hint}"


class UsageError(AmberError):
    """A command was called with arguments that do not fit."""

    exit_code = 2
    default_hint = "run the command with --help"


class ConfigError(AmberError):
    """A configuration file or option is missing or invalid."""

    exit_code = 3
    default_hint = "fix the configuration file named in the message"


class FormatError(AmberError):
    """Bytes that do not decode as the format they claim to be."""

    exit_code = 10
    default_hint = "the data is damaged or not an Amber file; restore it from another copy"


class UnknownVersionError(FormatError):
    """A format version this build does not know."""

    exit_code = 11
    default_hint = "upgrade Amber to a release that reads this format version"


class IntegrityError(FormatError):
    """Authenticated data failed its check: corrupted, truncated or under another key."""

    exit_code = 12
    default_hint = (
        "the data is corrupted or was encrypted under a different vault key; "
        "check the vault key, then fetch the object again from another copy"
    )


class SignatureError(IntegrityError):
    """A signature does not verify, or the signer is not trusted."""

    exit_code = 13
    default_hint = "do not trust this data; check which node or hub key signed it"


class ChainError(IntegrityError):
    """A checkpoint does not continue its node's hash chain."""

    exit_code = 14
    default_hint = "history was altered or a checkpoint is missing; run verify and audit the node"


class WrongTargetError(AmberError):
    """Data addressed to another vault or node than the one reading it."""

    exit_code = 15
    default_hint = "check which vault and node it is for ('bundle inspect FILE') and use it there"


class KeyFileError(AmberError):
    """A key file is missing, unreadable, has loose permissions or the wrong passphrase."""

    exit_code = 20
    default_hint = "check the key file path, its permissions (0600) and the passphrase"


class WrongKeyError(KeyFileError):
    """Data was encrypted under a different vault key than the one configured."""

    exit_code = 21
    default_hint = "configure the vault key this data was written with (compare fingerprints)"


class SourceError(AmberError):
    """A source to protect cannot be read."""

    exit_code = 30
    default_hint = "check that the source path exists and is readable by the agent's user"


class SourceBusyError(SourceError):
    """A source stayed locked by a writer longer than the configured timeout."""

    exit_code = 31
    default_hint = "the writer held its lock too long; retry, or raise busy_timeout in agent.toml"


class JournalError(AmberError):
    """The local journal cannot be opened, read or written."""

    exit_code = 40
    default_hint = "run 'amber-agent verify'; restore the journal from the hub if it is damaged"


class JournalFullError(JournalError):
    """The journal reached its configured size bound."""

    exit_code = 41
    default_hint = (
        "sync to the hub so acknowledged chunks can be evicted, or raise "
        "journal.max_bytes in agent.toml"
    )


class DiskFullError(AmberError):
    """The disk filled up; nothing was committed."""

    exit_code = 42
    default_hint = "free space on the filesystem named in the message, then retry"


class QuotaExceededError(AmberError):
    """The hub refused a node's uploads: the node is over a quota the hub set for it."""

    exit_code = 43
    default_hint = (
        "ask the hub operator to raise the node's quota ([limits] in hub.toml) or wait for "
        "the next UTC day; the checkpoints stay in the journal and sync when allowed"
    )


class NotFoundError(AmberError):
    """A named checkpoint, source, node or object does not exist."""

    exit_code = 44
    default_hint = "list what exists (e.g. 'amber-agent checkpoints') and use one of those ids"


class HubUnavailableError(AmberError):
    """The hub (NATS or HTTP) could not be reached in time."""

    exit_code = 50
    default_hint = "check the link to the hub; work continues offline and syncs later"


class ProtocolError(AmberError):
    """A peer sent a message that breaks the wire protocol."""

    exit_code = 51
    default_hint = "check that agent and hub run compatible Amber versions"


class StoreError(AmberError):
    """The object store failed an operation (after retries)."""

    exit_code = 52
    default_hint = "check the object store (disk, S3 endpoint, credentials) and retry"


class ObjectLockedError(StoreError):
    """An object is under retention (Object Lock or legal hold) and cannot be deleted."""

    exit_code = 53
    default_hint = "the object is immutable until its retention date; nothing was deleted"


class PermissionDeniedError(AmberError):
    """The caller is not allowed to do this."""

    exit_code = 60
    default_hint = "use credentials with the needed role or ask an admin"


class RestoreError(AmberError):
    """A restore failed; the target was left on its previous state."""

    exit_code = 70
    default_hint = "read the reason, fix it, and run the restore again"


class OrderReplayError(RestoreError):
    """A restore order this node has already seen was presented again; it never runs twice."""

    exit_code = 71
    default_hint = (
        "nothing was changed; for another restore, export a new bundle with a fresh order "
        "('amber-hub bundle export --restore-order')"
    )


class OrderRefusedError(RestoreError):
    """A restore order carries a command line or names a check this node does not define."""

    exit_code = 72
    default_hint = (
        "nothing was changed; re-plan naming checks this node defines in the [checks] "
        "table of its agent.toml ('amber-hub restore plan ... --check NAME')"
    )


class CheckFailedError(RestoreError):
    """A check named by a restore order failed or timed out; the node rolled the restore back."""

    exit_code = 73
    default_hint = (
        "the check's output is in the node's log (journalctl -u amber-agent); fix the "
        "restored data or the check, then plan again"
    )


ALL_ERRORS: tuple[type[AmberError], ...] = (
    AmberError,
    UsageError,
    ConfigError,
    FormatError,
    UnknownVersionError,
    IntegrityError,
    SignatureError,
    ChainError,
    WrongTargetError,
    KeyFileError,
    WrongKeyError,
    SourceError,
    SourceBusyError,
    JournalError,
    JournalFullError,
    DiskFullError,
    QuotaExceededError,
    NotFoundError,
    HubUnavailableError,
    ProtocolError,
    StoreError,
    ObjectLockedError,
    PermissionDeniedError,
    RestoreError,
    OrderReplayError,
    OrderRefusedError,
    CheckFailedError,
)
