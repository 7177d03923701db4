"""Signing, encryption and verification (MOST 16.2), the last steps before delivery.

``keys``: the key store under data_dir and ``mailgate keys``; ``dkim``: DKIM signatures
(dkimpy's canonicalisation, cryptography's RSA/Ed25519) and their verification;
``results``: the one Authentication-Results header (RFC 8601); ``stage``: what the relay
calls after the filters: verification stamps on inbound mail, signatures on outbound.
"""
