"""The policy filters, one module each; importing this package registers them all.

``DEFAULT_ORDER`` is the run order when ``[filters] order`` does not set one. Filters
registered ``always`` (the sender identity rule) run first whatever the config says.
The content rules read the one MIME parse (``MessageContext.inspection``); group
expansion runs last, so mail a rule refuses is never expanded (and signing, after the
filters, sees the final recipients).
"""

from gateway.filters import (
    attachment_cap,
    attachment_type,
    clamav,
    classification,
    freemail,
    groups,
    rate_limit,
    sender_identity,
)

DEFAULT_ORDER = (
    "attachment_cap",
    "attachment_type",
    "classification",
    "freemail",
    "rate_limit",
    "clamav",
    "groups",
)

__all__ = [
    "DEFAULT_ORDER",
    "attachment_cap",
    "attachment_type",
    "clamav",
    "classification",
    "freemail",
    "groups",
    "rate_limit",
    "sender_identity",
]
