"""A local RFC 3161 time-stamping authority for tests: ``openssl ts -reply`` behind a
tiny HTTP server on 127.0.0.1 (no internet), with its own CA."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_TSA_CONFIG = """
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {root}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class LocalTSA:
    """Start with :meth:`start`; ``url`` takes queries, ``ca_file`` checks the tokens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests = 0
        self.fail = False  # answer 503, as an authority that is down
        root.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                 "-subj", "/CN=mailgate test TSA CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)  # fmt: skip
        _openssl("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr",
                 "-subj", "/CN=mailgate test TSA", cwd=root)  # fmt: skip
        (root / "ext.cnf").write_text(
            "extendedKeyUsage=critical,timeStamping\nkeyUsage=critical,digitalSignature\n"
        )
        _openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "tsa.pem", "-days", "2",
                 "-extfile", "ext.cnf", cwd=root)  # fmt: skip
        (root / "serial").write_text("01\n")
        (root / "tsa.cnf").write_text(_TSA_CONFIG.format(root=root))
        self.ca_file = root / "ca.pem"
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def reply(self, query: bytes) -> bytes:
        with self._lock, tempfile.TemporaryDirectory(dir=self.root) as tmp:
            request, response = Path(tmp, "q.tsq"), Path(tmp, "r.tsr")
            request.write_bytes(query)
            _openssl("ts", "-reply", "-config", "tsa.cnf", "-queryfile", str(request),
                     "-out", str(response), cwd=self.root)  # fmt: skip
            self.requests += 1
            return response.read_bytes()

    def start(self) -> LocalTSA:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if tsa.fail:
                    self.send_error(503)
                    return
                answer = tsa.reply(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/tsa"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
