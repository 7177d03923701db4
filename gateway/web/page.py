"""The page's HTML and CSS: plain markup that works without JavaScript, with a keyboard
and with a screen reader (every input has a label; an error is tied to its field with
``aria-describedby`` and ``aria-invalid``, and listed in a summary that links to it).

Vietnamese first, English beside it (``lang`` marks each, so a screen reader switches
voice). Nothing a user typed as a password is ever written back into the page; the
address is, escaped.
"""

from __future__ import annotations

from html import escape

from gateway.directory.passwords import MIN_LENGTH
from gateway.web.csrf import FIELD_NAME
from gateway.web.form import Message, Outcome

CSS = """\
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 0; background: #f4f6f8;
  color: #1b1f24; line-height: 1.5; }
main { max-width: 34rem; margin: 2rem auto; background: #fff; padding: 1.5rem 2rem;
  border: 1px solid #d0d7de; border-radius: 6px; }
h1 { font-size: 1.4rem; margin-top: 0; }
.en { color: #57606a; font-size: 0.92em; }
label { display: block; font-weight: bold; margin-top: 1rem; }
input[type=email], input[type=password] { width: 100%; box-sizing: border-box;
  padding: 0.5rem; font-size: 1rem; border: 1px solid #8c959f; border-radius: 4px; }
input[aria-invalid=true] { border: 2px solid #cf222e; }
input:focus, button:focus, a:focus { outline: 3px solid #0969da; outline-offset: 2px; }
.hint { font-size: 0.9rem; color: #57606a; margin: 0.25rem 0 0; }
.error { color: #a40e26; font-weight: bold; margin: 0.25rem 0 0; }
.summary { border: 2px solid #cf222e; padding: 0.75rem 1rem; border-radius: 4px; }
.summary a { color: #a40e26; }
.done { border: 2px solid #1a7f37; padding: 0.75rem 1rem; border-radius: 4px; }
button { margin-top: 1.5rem; padding: 0.6rem 1.2rem; font-size: 1rem; background: #0969da;
  color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
"""

_FIELDS = (
    # name, type, autocomplete, Vietnamese label, English label
    ("address", "email", "username", "Địa chỉ thư", "Email address"),
    ("current", "password", "current-password", "Mật khẩu hiện tại", "Current password"),
    ("new", "password", "new-password", "Mật khẩu mới", "New password"),
    ("confirm", "password", "new-password", "Nhập lại mật khẩu mới", "New password again"),
)
RULES = Message(
    f"Ít nhất {MIN_LENGTH} ký tự, không chứa tên tài khoản, có ít nhất 3 trong 4 loại:"
    " chữ hoa, chữ thường, chữ số, ký tự đặc biệt (Điều 17.4).",
    f"At least {MIN_LENGTH} characters, not containing the account name, with 3 of: upper"
    " case, lower case, digit, special character (MOST 17.4).",
)


def _both(message: Message) -> str:
    return f'{escape(message.vi)} <span class="en" lang="en">{escape(message.en)}</span>'


def _field(name: str, kind: str, autocomplete: str, vi: str, en: str, outcome: Outcome) -> str:
    error = outcome.errors.get(name)
    described = [f"{name}-error"] if error else []
    hint = ""
    if name == "new":
        described.append("new-hint")
        hint = f'<p class="hint" id="new-hint">{_both(RULES)}</p>'
    value = f' value="{escape(outcome.address)}"' if name == "address" and outcome.address else ""
    attributes = [
        f'id="{name}"', f'name="{name}"', f'type="{kind}"', f'autocomplete="{autocomplete}"',
        'required', 'maxlength="1024"',
    ]  # fmt: skip
    if described:
        attributes.append(f'aria-describedby="{" ".join(described)}"')
    if error:
        attributes.append('aria-invalid="true"')
    message = f'<p class="error" id="{name}-error">{_both(error)}</p>' if error else ""
    return (
        f'<label for="{name}">{escape(vi)} <span class="en" lang="en">{escape(en)}</span>'
        f"</label>\n{hint}{message}<input {' '.join(attributes)}{value}>\n"
    )


def _summary(outcome: Outcome) -> str:
    if not outcome.errors:
        return ""
    labels = {name: (vi, en) for name, _, _, vi, en in _FIELDS}
    items = "".join(
        f'<li><a href="#{name}">{escape(labels[name][0])}: {_both(message)}</a></li>'
        for name, message in outcome.errors.items()
        if name in labels
    )
    return (
        '<div class="summary" role="alert" aria-labelledby="summary-title">'
        '<h2 id="summary-title">Chưa đổi được mật khẩu'
        ' <span class="en" lang="en">The password was not changed</span></h2>'
        f"<ul>{items}</ul></div>\n"
    )


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="vi">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        '<link rel="stylesheet" href="/password.css">\n</head>\n<body>\n<main>\n'
        f"{body}</main>\n</body>\n</html>\n"
    )


def render_form(outcome: Outcome, token: str, notice: Message | None = None) -> str:
    """The form, with ``outcome``'s errors next to their fields (or none: a fresh form)."""
    fields = "".join(_field(*spec, outcome) for spec in _FIELDS)
    extra = f'<p class="summary" role="alert">{_both(notice)}</p>\n' if notice else ""
    body = (
        '<h1>Đổi mật khẩu hộp thư <span class="en" lang="en">Change your mailbox password'
        "</span></h1>\n"
        f"{extra}{_summary(outcome)}"
        '<form method="post" action="/password" novalidate>\n'
        f'<input type="hidden" name="{FIELD_NAME}" value="{escape(token)}">\n'
        f"{fields}"
        '<button type="submit">Đổi mật khẩu <span lang="en">/ Change password</span>'
        "</button>\n</form>\n"
    )
    return _document("Đổi mật khẩu / Change password", body)


def render_done(address: str) -> str:
    body = (
        '<h1>Đã đổi mật khẩu <span class="en" lang="en">Password changed</span></h1>\n'
        '<div class="done" role="status">'
        f"<p>Mật khẩu của {escape(address)} đã được thay đổi. Hãy dùng mật khẩu mới trong"
        " chương trình thư (SMTP và IMAP).</p>"
        f'<p class="en" lang="en">The password of {escape(address)} has been changed. Use the'
        " new one in your mail program (SMTP and IMAP).</p></div>\n"
    )
    return _document("Đã đổi mật khẩu / Password changed", body)


def render_error(message: Message) -> str:
    """A whole-page refusal (forged or expired form, too many posts, too large)."""
    body = (
        '<h1>Không thực hiện được <span class="en" lang="en">Not done</span></h1>\n'
        f'<p role="alert">{_both(message)}</p>\n'
        '<p><a href="/password">Mở lại biểu mẫu <span lang="en">/ Open the form again</span>'
        "</a></p>\n"
    )
    return _document("Không thực hiện được / Not done", body)
