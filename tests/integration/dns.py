"""A private DNS responder on loopback UDP for the tests (dnspython): TXT records from a
table, so the gateway's DKIM lookups meet a real resolver exchange with no network."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class TxtServer:
    """Answers TXT queries from ``records`` (name without the final dot -> strings);
    unknown names get NXDOMAIN; ``silent`` makes it drop every query (a timeout)."""

    def __init__(self) -> None:
        self.records: dict[str, list[bytes]] = {}
        self.silent = False
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> TxtServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sock.close()

    def add(self, name: str, text: bytes) -> None:
        """One TXT record, split into 255-byte strings as a zone would hold it."""
        self.records[name.rstrip(".").lower()] = [
            text[i : i + 255] for i in range(0, len(text), 255)
        ]

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            if self.silent:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            strings = self.records.get(name)
            if strings is None or question.rdtype != dns.rdatatype.TXT:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                text = " ".join('"' + s.decode("ascii") + '"' for s in strings)
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", text))
            self.sock.sendto(response.to_wire(), peer)
