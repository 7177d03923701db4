"""What a submitted password form comes to, without any HTTP: the page's one job.

The current password is checked by the one authenticator, exactly as an SMTP AUTH or
IMAP login (same throttle, same effective state: a locked or revoked mailbox cannot
change its password, MIC 7.1; same ``auth_success``/``auth_failure`` events). The new one
must pass the MOST 17.4 policy; each refusal is tied to the field it concerns, in
Vietnamese and English. Cheap checks come first, so a mistyped confirmation costs no
argon2 verification. Passwords never leave this module except as the argon2 hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.auth import Authenticator, loggable_user
from gateway.directory.passwords import policy_breach
from gateway.smtp import replies

Emit = Callable[..., object]
MAX_ADDRESS = 320  # RFC 5321's path limit
MAX_PASSWORD = 1024  # no argon2 over megabytes


@dataclass(frozen=True, slots=True)
class Message:
    """A message for a person, in both languages the page speaks."""

    vi: str
    en: str


REQUIRED = {
    "address": Message("Hãy nhập địa chỉ thư.", "Enter your email address."),
    "current": Message("Hãy nhập mật khẩu hiện tại.", "Enter your current password."),
    "new": Message("Hãy nhập mật khẩu mới.", "Enter a new password."),
    "confirm": Message("Hãy nhập lại mật khẩu mới.", "Enter the new password again."),
}
TOO_LONG = Message("Quá dài.", "Too long.")
MISMATCH = Message("Hai mật khẩu mới không giống nhau.", "The two new passwords differ.")
SAME_AS_CURRENT = Message(
    "Mật khẩu mới phải khác mật khẩu hiện tại.",
    "The new password must differ from the current one.",
)
WRONG = Message(
    "Địa chỉ thư hoặc mật khẩu hiện tại không đúng.", "Wrong address or current password."
)
LOCKED = Message(
    "Hộp thư đang bị khóa: hãy liên hệ bộ phận quản trị (Điều 7.1).",
    "This mailbox is locked: contact the mail operator (MIC 7.1).",
)
THROTTLED = Message(
    "Quá nhiều lần nhập sai: hãy thử lại sau ít phút.",
    "Too many failed attempts: try again in a few minutes.",
)
CHANGED_MEANWHILE = Message(
    "Mật khẩu vừa được thay đổi ở nơi khác: hãy thử lại.",
    "The password was changed elsewhere meanwhile: try again.",
)


@dataclass(frozen=True, slots=True)
class Submission:
    address: str
    current: str
    new: str
    confirm: str

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> Submission:
        return cls(
            address=form.get("address", "").strip().lower(),
            current=form.get("current", ""),
            new=form.get("new", ""),
            confirm=form.get("confirm", ""),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    address: str  # shown again in the form; never a password
    errors: dict[str, Message] = field(default_factory=dict)  # field name -> why


def _local_errors(form: Submission) -> dict[str, Message]:
    """What can be said without looking anything up."""
    errors: dict[str, Message] = {}
    values = {"address": form.address, "current": form.current, "new": form.new}
    values["confirm"] = form.confirm
    for name, value in values.items():
        if not value:
            errors[name] = REQUIRED[name]
        elif len(value) > (MAX_ADDRESS if name == "address" else MAX_PASSWORD):
            errors[name] = TOO_LONG
    if "new" not in errors:
        breach = policy_breach(form.new, form.address)
        if breach is not None:
            errors["new"] = Message(
                f"Quy tắc mật khẩu: {breach.vi}.", f"Password rule: {breach.en}."
            )
        elif form.new == form.current:
            errors["new"] = SAME_AS_CURRENT
    if "confirm" not in errors and "new" not in errors and form.confirm != form.new:
        errors["confirm"] = MISMATCH
    return errors


def _login_error(reply: replies.Reply) -> Message:
    if reply.text.startswith(replies.AUTH_MAILBOX_LOCKED.text):
        return LOCKED
    if reply.text.startswith(replies.AUTH_THROTTLED.text):
        return THROTTLED
    return WRONG


async def change_password(
    authenticator: Authenticator, form: Submission, client: str, emit: Emit
) -> Outcome:
    """Check ``form`` and, if everything holds, store the new password."""
    errors = _local_errors(form)
    if errors:
        rules = ", ".join(f"{name}: {errors[name].en}" for name in errors)
        emit("password_change_refused", user=loggable_user(form.address, False),
             reason=f"[password_policy] {rules}")  # fmt: skip
        return Outcome(False, form.address, errors)
    result = await authenticator.login(form.address, form.current, client, emit)
    if result.mailbox is None:
        assert result.reply is not None
        return Outcome(False, form.address, {"current": _login_error(result.reply)})
    if not await authenticator.change_password(result, form.new):
        emit("password_change_refused", user=result.mailbox.address,
             reason="[password_page] the password changed meanwhile")  # fmt: skip
        return Outcome(False, form.address, {"current": CHANGED_MEANWHILE})
    emit("password_changed", user=result.mailbox.address, actor="user",
         reason="changed by its owner on the password page"
         + (", must-change cleared" if result.mailbox.must_change else ""))  # fmt: skip
    return Outcome(True, result.mailbox.address)
