"""A local stand-in for the Hugging Face hub: serves files on 127.0.0.1 the way the hub does.

``hf_hub_download`` asks ``HEAD /<repo>/resolve/<revision>/<file>`` for the commit, ETag and size,
then ``GET``s the same path; that is all this server answers. Every request is recorded, so a
test can assert that none was made.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "a" * 40


class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        """``files`` maps ``"<repo>/<file>"`` (e.g. ``timm/resnet10t.c3_in1k/model.safetensors``) to
        bytes."""
        self.files = {
            f"/{k.rsplit('/', 1)[0]}/resolve/main/{k.rsplit('/', 1)[1]}": v
            for k, v in files.items()
        }
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, with_body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path))
                data = hub.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
