"""The self-service password page (MOST 15.2, 17.4; MIC 7.3.c): users change their own
password, so "must change" is something they can act on rather than a flag nobody clears.

``form``: what a submitted form comes to (no HTTP); ``csrf``: the form tokens;
``rate``: posts per client; ``page``: the HTML and CSS; ``server``: aiohttp on the
gateway's own event loop, behind HTTPS with the certificate SIGHUP renews.
"""
