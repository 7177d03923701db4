"""The policy filters, one module each; importing this package registers them all.

``DEFAULT_ORDER`` is the run order when ``[filters] order`` does not set one. Filters
registered ``always`` (the sender identity rule) run first whatever the config says.
The content rules read the one MIME parse (``MessageContext.inspection``).
"""

from gateway.filters import (
    attachment_cap,
    attachment_type,
    clamav,
    classification,
    freemail,
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
)

__all__ = [
    "DEFAULT_ORDER",
    "attachment_cap",
    "attachment_type",
    "clamav",
    "classification",
    "freemail",
    "rate_limit",
    "sender_identity",
]
