#!/usr/bin/env python3
"""Static server for the web demo, bound to 127.0.0.1 only.

    serve.py --static web/static --pkg DIR --model DIR [--port 8765]

URL layout (the page fetches nothing but these):
  /                     web/static/index.html, main.js, worker.js, style.css
  /pkg/...              wasm-bindgen output (e2llm_web.js, e2llm_web_bg.wasm)
  /model/manifest.json  generated: {"files": [...]} -- which of config.json,
                        model.safetensors, tokenizer.json the model directory holds, so the page
                        never requests a missing file (a 404 would be a console error)
  /model/<file>         those three files

Sends `Cache-Control: no-store` (a rebuilt .wasm is always picked up) and the right MIME type
for .wasm and ES modules. Prints "serving http://127.0.0.1:PORT/" once listening.
"""

import argparse
import http.server
import json
import os
import sys

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".safetensors": "application/octet-stream",
    ".png": "image/png",
    ".ts": "text/plain; charset=utf-8",
}


def make_handler(static, pkg, model):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet unless asked
            if os.environ.get("E2LLM_WEB_LOG"):
                sys.stderr.write("[serve] " + fmt % args + "\n")

        def send_bytes(self, body, ctype, head=False):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def resolve(self, path):
            path = path.split("?", 1)[0].split("#", 1)[0]
            if path == "/":
                path = "/index.html"
            if path == "/model/manifest.json":
                files = [f for f in MODEL_FILES if os.path.isfile(os.path.join(model, f))]
                return json.dumps({"files": files}).encode(), "application/json"
            for prefix, root in (("/pkg/", pkg), ("/model/", model), ("/", static)):
                if path.startswith(prefix):
                    rel = path[len(prefix):]
                    if prefix == "/model/" and rel not in MODEL_FILES:
                        return None
                    full = os.path.realpath(os.path.join(root, rel))
                    if not full.startswith(os.path.realpath(root) + os.sep):
                        return None
                    if os.path.isfile(full):
                        with open(full, "rb") as f:
                            body = f.read()
                        ext = os.path.splitext(full)[1]
                        return body, TYPES.get(ext, "application/octet-stream")
                    return None
            return None

        def handle_get(self, head):
            found = self.resolve(self.path)
            if found is None:
                self.send_error(404, "not found")
                return
            self.send_bytes(found[0], found[1], head)

        def do_GET(self):  # noqa: N802
            self.handle_get(False)

        def do_HEAD(self):  # noqa: N802
            self.handle_get(True)

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--static", required=True)
    ap.add_argument("--pkg", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    handler = make_handler(a.static, a.pkg, a.model)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), handler)
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (model dir {a.model})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
