"""The IMAP proxy in front of the store's IMAP server (Dovecot): it speaks IMAP itself
until login (``session.py``, ``syntax.py``), checks the password and the mailbox's state
against the directory, logs in upstream as the master user (``upstream.py``), then
copies bytes; ``server.py`` holds the listeners and ends sessions of locked mailboxes."""
