"""Every event name the gateway writes, in one place.

``mailgate logs search --event`` uses it to tell a typo from "nothing happened": a search
for a name nobody emits would otherwise print nothing and succeed. A module that emits a
new event adds its name here (tests/unit/test_events_names.py checks the code against it).
"""

from __future__ import annotations

KNOWN_EVENTS: tuple[str, ...] = (
    # process life
    "gateway_start",
    "gateway_stop",
    "config_reloaded",
    "config_rejected",
    # SMTP sessions
    "session_start",
    "session_end",
    "connection_refused",
    "tls_failed",
    "command_rejected",
    "auth_success",
    "auth_failure",
    "password_rehashed",
    "mail_rejected",
    "rcpt_rejected",
    "protocol_error",
    # the IMAP proxy (also session_*, auth_*, tls_failed, connection_refused, protocol_error)
    "upstream_unavailable",
    "login_refused",
    # messages
    "message_accepted",
    "message_rejected",
    "message_tempfailed",
    "message_transformed",
    "group_expanded",
    "relay_cancelled",
    "client_gone",
    "delivered",
    "deferred",
    "delivery_failed",
    "bounced",
    "bounce_suppressed",
    "retry_scheduled",
    "dequeued",
    "spool_corrupt",
    "spool_error",
    # the directory (CLI and maintenance)
    "mailbox_added",
    "mailbox_state",
    "password_changed",
    "password_change_refused",
    "mailbox_retirement",
    "delegation_changed",
    "group_member_added",
    "group_member_removed",
    "group_policy_changed",
    "unit_added",
    "directory_imported",
    # keys (mailgate keys)
    "key_generated",
    "key_imported",
    "key_removed",
    # log retention
    "log_purged",
    "log_compressed",
    "log_anchored",
    "log_anchor_failed",
    "log_verified",
    "log_exported",
    # bugs and broken resources: the type and place, never the message
    "internal_error",
)
