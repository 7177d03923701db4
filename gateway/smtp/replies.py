"""Every SMTP reply the gateway gives, as named constants (code + enhanced status).

Tests import these instead of copying strings, and a refusal always carries the
rule that refused it in its text (``[rule]``), so the sender and the event log
tell the same story.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str  # RFC 3463 enhanced status, e.g. "5.7.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_rule(self, rule: str, detail: str = "") -> Reply:
        """Same reply naming the rule that produced it (and why)."""
        extra = f": {detail}" if detail else ""
        return Reply(self.code, self.status, f"{self.text} [{rule}]{extra}")

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.status, text)


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "OK queued as")
MAILDIR_DELIVERED = Reply(250, "2.0.0", "Delivered to Maildir")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TRANSACTION_TIMEOUT = Reply(421, "4.4.2", "Transaction took too long, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
NEXT_HOP_UNAVAILABLE = Reply(451, "4.4.1", "Next hop temporarily unavailable, try again later")
SPOOL_UNAVAILABLE = Reply(451, "4.3.0", "Could not store the message, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_FAILED = Reply(454, "4.7.0", "TLS handshake failed")
# MIC 7.2.c: a login past its hourly sending limit (filters/rate_limit.py).
RATE_LIMITED = Reply(451, "4.7.1", "Sending rate limit exceeded, try again later")

LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_LINE_ENDING = Reply(
    550, "5.6.11", "Bare LF or bare CR in message data is not allowed (RFC 5321 2.3.8)"
)
TOO_MANY_HEADERS = Reply(552, "5.6.0", "Too many header lines")
HEADERS_TOO_BIG = Reply(552, "5.6.0", "Header section too large")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
ATTACHMENTS_TOO_BIG = Reply(552, "5.3.4", "Attachments exceed the size allowed per message")
MALFORMED_HEADERS = Reply(550, "5.6.0", "Malformed header section")
# Never a 4xx: a message that cannot be read now will not be readable on a retry either.
CANNOT_INSPECT = Reply(554, "5.6.0", "Cannot inspect the message content")
# MOST 16.2: a signature the policy asks for is never skipped (gateway/signing/stage.py).
SIGNING_UNAVAILABLE = Reply(451, "4.3.0", "Signing temporarily unavailable, try again later")
CANNOT_SIGN = Reply(554, "5.7.1", "Cannot sign the message")
ENCRYPTION_REFUSED = Reply(
    550, "5.7.1", "Encryption requested but not possible for every recipient"
)

AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
NO_SUCH_USER = Reply(550, "5.1.1", "Recipient address rejected: user unknown")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
BAD_MAILBOX_NAME = Reply(550, "5.1.3", "Mailbox name not allowed")
SENDING_LOCKED = Reply(550, "5.7.1", "Sending is locked for this mailbox")
GROUP_POST_REFUSED = Reply(550, "5.7.1", "Group does not accept mail from this sender")
GROUP_EMPTY = Reply(550, "5.2.1", "Group has no deliverable member")
GROUP_TOO_BIG = Reply(550, "5.5.3", "Group expands to too many recipients")
SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "Sender address not allowed for this login")
# MIC 4.1, MOST 17.1: the reason names the level and where, never the content.
CLASSIFIED = Reply(550, "5.7.1", "Classified content may not be sent by e-mail")
# MOST 16.1: no official mail to or through free webmail (filters/freemail.py).
FREEMAIL_REFUSED = Reply(550, "5.7.1", "Official mail may not be sent to free webmail")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed logins, try again later")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# Only ever given to someone who proved the password: the lock itself is no secret to them.
AUTH_MAILBOX_LOCKED = Reply(535, "5.7.8", "Mailbox locked, contact the operator")
# MOST 15.2, MIC 7.3.c with auth.refuse_must_change: the detail names the password page.
AUTH_MUST_CHANGE = Reply(535, "5.7.8", "Your password must be changed before you can send")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
DIRECTORY_UNAVAILABLE = Reply(451, "4.3.0", "Directory temporarily unavailable")
ALL_RECIPIENTS_FAILED = Reply(554, "5.0.0", "Delivery failed for every recipient")
NO_DELIVERABLE_RECIPIENT = Reply(550, "5.1.0", "No deliverable recipient")
# What an outside sender is told when the next hop refuses: its text, which may name
# internal hosts, stays in the event log.
REFUSED_BY_NEXT_HOP = Reply(550, "5.0.0", "Refused by the mail store")
# MOST 15.3, 18.5, MIC 10.2: executables and scripts, by name or content (reason names the file).
BLOCKED_ATTACHMENT = Reply(550, "5.7.1", "Attachment type not allowed")
# filters/clamav.py: the reason names the signature and the part.
VIRUS_FOUND = Reply(554, "5.7.1", "Virus found")
# clamd down, slow, over its size limit or in error: never a silent pass.
SCANNER_UNAVAILABLE = Reply(451, "4.7.1", "Virus scanner unavailable, try again later")
