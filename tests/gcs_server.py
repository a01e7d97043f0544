"""A real GCS-compatible server on loopback for tests: the `gcp-storage-emulator` PyPI package.

    with GcsServer(buckets=["megadoc-test"]) as server:   # sets the env, stops the server
        fs.write_text("gs://megadoc-test/x.txt", "hi")

Or the session fixture, which conftest.py provides to every test module (one server per
pytest process, started on first use):

    def test_x(gcs_server):
        root = gcs_server.fresh_path()   # gs://megadoc-test/<unique>, empty

The server runs as a subprocess bound to 127.0.0.1 on a free port. Every wait is bounded, and
the process is stopped at exit even when a test fails. `STORAGE_EMULATOR_HOST` points the
google-cloud-storage client (and gcsfs, hence orbax/etils) at it, `TENSORSTORE_GCS_HTTP_URL`
points tensorstore, and `GOOGLE_AUTH_TOKEN_FOR_TESTING` spares tensorstore the credential
lookup (no metadata server, no gcloud). The previous environment is restored by close().
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

BUCKET = "megadoc-test"
_names = itertools.count()
START_TIMEOUT_S = 30.0

ENV_KEYS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
            "GOOGLE_CLOUD_PROJECT", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA")

# Seven fidelity fixes to the emulator, applied in its own process before it builds its routes
# (plus a watchdog that ends the server when the test process dies without cleaning up):
# - real GCS answers a media download with `x-goog-generation`; tensorstore reads the object's
#   generation from it (OCDBT, hence orbax, fails with "Malformed StorageGeneration" without it);
# - real GCS lists only names in [startOffset, endOffset); the emulator ignores both, so
#   tensorstore's DeleteRange (zarr `delete_existing`) listed, and deleted, the whole bucket;
# - an object's `mediaLink` (where the client downloads ranges from) names the host that asked
#   for the metadata, not the one that uploaded the object (a FaultProxy gone by then);
# - a disk-backed server writes its files atomically (temp + rename): stopped mid-write, it
#   tore its index of every object (.meta) and could not start again;
# - SIGTERM waits for an object write in progress (content and metadata are two files; real
#   GCS publishes an object whole), so a stopped server never serves a torn object;
# - its HTTPServer serves one request at a time with a listen backlog of 5, so a burst of
#   parallel connections (tensorstore, orbax) has SYNs dropped and waits out TCP's 1 s
#   retransmit; a deeper backlog keeps the burst queued instead;
# - a compose honours ifGenerationMatch on its destination (gcs.append_bytes relies on it to
#   never append twice);
# - real GCS refuses an upload whose `ifGenerationMatch` precondition fails (412; 0: "no object
#   yet"), which exclusive creation and the workdir lock's takeover rely on; the emulator
#   ignored it. It serves one request at a time, so the check and the write are atomic.
_SERVE = """
import http.server, json, os, sys
from gcp_storage_emulator.handlers import objects

_download = objects.download

def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]

objects.download = download
_ls = objects.ls

def ls(request, response, storage, *args, **kwargs):
    _ls(request, response, storage, *args, **kwargs)
    start = (request.query.get("startOffset") or [""])[0]
    end = (request.query.get("endOffset") or [""])[0]
    if (start or end) and response.status.value == 200:
        def inside(name):
            return name >= start and (not end or name < end)
        body = json.loads(response._content)
        body["items"] = [o for o in body.get("items") or [] if inside(o["name"])]
        body["prefixes"] = [p for p in body.get("prefixes") or [] if inside(p)]
        response.json(body)

objects.ls = ls
_compose = objects.compose

def compose(request, response, storage, *args, **kwargs):
    wanted = (request.query.get("ifGenerationMatch") or [None])[0]
    if wanted is not None:
        try:
            current = storage.get_file_obj(request.params["bucket_name"],
                                           request.params["object_id"])["generation"]
        except Exception:
            current = "0"
        if str(current) != str(wanted):
            response.status = objects.HTTPStatus.PRECONDITION_FAILED
            return
    _compose(request, response, storage, *args, **kwargs)

objects.compose = compose

_insert = objects.insert
from http import HTTPStatus

def insert(request, response, storage, *args, **kwargs):
    want = (request.query.get("ifGenerationMatch") or [None])[0]
    if want is not None:
        name = (request.query.get("name") or [None])[0]
        if name is None and isinstance(request.data, dict):
            name = (request.data.get("meta") or {}).get("name")
        try:
            have = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
        except Exception:  # NotFound: no object, generation 0
            have = "0"
        if str(have) != str(want):
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet", "errors": [
                {"reason": "conditionNotMet", "message": "Precondition Failed"}]}})
            return
    return _insert(request, response, storage, *args, **kwargs)

objects.insert = insert

from gcp_storage_emulator import server

_json = server.Response.json

def rebase_media_links(obj, base):
    if isinstance(obj, list):
        return [rebase_media_links(o, base) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: rebase_media_links(v, base) for k, v in obj.items()}
    if isinstance(out.get("mediaLink"), str) and "/download/" in out["mediaLink"]:
        out["mediaLink"] = base + "/download/" + out["mediaLink"].split("/download/", 1)[1]
    return out

def json_with_media_links(self, obj):
    host = self._handler.headers.get("Host")
    _json(self, rebase_media_links(obj, "http://" + host) if host else obj)

server.Response.json = json_with_media_links

from gcp_storage_emulator import storage

_write_bytes = storage._FileStore.write_bytes

def write_bytes_atomically(self, rel, content):
    if self._use_memory:
        return _write_bytes(self, rel, content)
    partial = rel + ".~partial"
    _write_bytes(self, partial, content)
    os.replace(self._disk_path(self._norm(partial)), self._disk_path(self._norm(rel)))

storage._FileStore.write_bytes = write_bytes_atomically

import signal

_busy, _stopping = [0], [False]

def exit_between_writes(signum, frame):
    if _busy[0]:
        _stopping[0] = True
    else:
        os._exit(0)

def finish_before_exit(method):
    def wrapped(*args, **kwargs):
        _busy[0] += 1
        try:
            return method(*args, **kwargs)
        finally:
            _busy[0] -= 1
            if _stopping[0] and not _busy[0]:
                os._exit(0)
    return wrapped

for _name in ("create_file", "delete_file", "patch_object", "add_to_resumable_upload"):
    setattr(storage.Storage, _name, finish_before_exit(getattr(storage.Storage, _name)))
signal.signal(signal.SIGTERM, exit_between_writes)
http.server.HTTPServer.request_queue_size = 256

import threading, time

def exit_with_parent(parent=os.getppid()):  # the test process was killed: no orphan server
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)

threading.Thread(target=exit_with_parent, daemon=True).start()
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


class _PortTaken(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    """One emulator process. `data_dir=None` keeps objects in memory (fast); with a directory
    they survive `stop()` + `start()`, which tests use to take the server down mid-job."""

    def __init__(self, buckets=(BUCKET,), *, port: int | None = None, data_dir: str | None = None):
        self.buckets = tuple(buckets)
        self.port = port or free_port()
        self._port_fixed = port is not None
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="gcs-emulator-", suffix=".log", delete=False)
        self._saved_env: dict[str, str | None] | None = None
        self._atexit = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "GcsServer":
        if self._proc is not None:
            return self
        for attempt in range(3):
            try:
                self._launch()
                break
            except _PortTaken:
                if self._port_fixed or attempt == 2:
                    raise
                self.port = free_port()  # another process took it between probe and bind
                self.url = f"http://127.0.0.1:{self.port}"
        self._port_fixed = True  # a restart must come back where clients expect it
        self._set_env()
        return self

    def _launch(self) -> None:
        self._log.seek(0)
        self._log.truncate()  # the log of this process only
        cmd = [sys.executable, "-c", _SERVE]
        if self.data_dir:
            cmd += ["--data-dir", os.path.abspath(self.data_dir)]
        cmd += ["start", "--host", "127.0.0.1", "--port", str(self.port), "--quiet"]
        if not self.data_dir:
            cmd.append("--in-memory")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self._wait_until_up()
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the process (terminate, then kill after 5 s); the env stays set until close()."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        self._restore_env()
        with contextlib.suppress(OSError):
            os.remove(self._log.name)

    def __enter__(self) -> "GcsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            log = self.log()
            if "Address already in use" in log:  # its server thread died; the process lingers
                raise _PortTaken(log)
            if self._proc.poll() is not None:
                raise RuntimeError(f"gcs emulator exited with {self._proc.returncode}: {log}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gcs emulator on {self.url} not up after {START_TIMEOUT_S}s: "
                                   f"{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()[-2000:]

    # -- environment -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a subprocess needs to talk to this server (merge into os.environ)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GOOGLE_CLOUD_PROJECT": "megadoc",
            # gcsfs (orbax's route to gs://) would ask the Storage Control API for each bucket's
            # layout, which the emulator lacks; it falls back anyway, with a warning per call.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # google-cloud-storage fetches bucket metadata in a background thread, for telemetry
            # only; its stray requests would make FaultProxy's fault order nondeterministic.
            "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA": "true",
        }

    def _set_env(self) -> None:
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
        os.environ.update(self.env())

    def _restore_env(self) -> None:
        if self._saved_env is None:
            return
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = None

    # -- admin -----------------------------------------------------------------------------
    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            self.url + "/storage/v1/b?project=megadoc", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists (a restarted disk-backed server)
                raise

    def fresh_path(self, bucket: str = BUCKET) -> str:
        """A gs:// prefix no other test of this process has used, on any server (so no cache
        keyed by path, e.g. gcsfs's, can mix up two servers)."""
        return f"gs://{bucket}/t{os.getpid()}-{next(_names)}"


_session_server: GcsServer | None = None


@pytest.fixture(scope="session")
def gcs_server():
    """The session's in-memory emulator with bucket `megadoc-test`; env set while it lives.
    A test module that also imports this fixture gets its own fixture definition from pytest,
    so the server is a module-level singleton: one process per session all the same."""
    global _session_server
    if _session_server is None:
        _session_server = GcsServer().start()
    yield _session_server
    _session_server.close()


class FaultProxy:
    """A loopback HTTP proxy in front of a GcsServer that injects the failures GCS really
    produces, then forwards everything else untouched:

        with FaultProxy(server) as proxy:      # the clients now talk to the proxy
            proxy.inject(503, 503, "reset")    # the next three requests fail, in this order
            fs.write_text(...)                 # ... and megadoc retries through them

    A fault is an HTTP status (answered with GCS's JSON error body), "reset" (the connection is
    closed with a TCP RST before the request reaches the server) or "lost" (the server handles
    the request, then the connection is reset before its answer reaches the client). `read_only = True` answers every write with
    403, as GCS does for a principal without storage.objects.create/delete: the emulator has no
    IAM, so this is how tests see a read-only bucket.
    """

    _WRITES = ("POST", "PUT", "PATCH", "DELETE")
    # Both are read per request (google-cloud-storage, gcsfs) or per open (tensorstore).
    _ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")

    def __init__(self, server: GcsServer):
        import http.server
        import threading

        self.server = server
        self.read_only = False
        # "METHOD path[ name=object]" of every request seen, faulted or not
        self.requests: list[str] = []
        self.uploaded_bytes = 0  # request bodies of every POST, PUT and PATCH
        self._faults: list = []
        self._lock = threading.Lock()
        self._saved: dict[str, str | None] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_any(self):
                body = self._body()
                line = f"{self.command} {self.path}"
                if "uploadType=multipart" in self.path:  # the object's name is in the body
                    name = re.search(rb'"name": ?"([^"]*)"', body)
                    line += f" name={name.group(1).decode()}" if name else ""
                with proxy._lock:
                    proxy.requests.append(line)
                    if self.command in ("POST", "PUT", "PATCH"):
                        proxy.uploaded_bytes += len(body)
                    fault = proxy._faults.pop(0) if proxy._faults else None
                if fault is None and proxy.read_only and self.command in proxy._WRITES:
                    fault = 403
                if fault == "lost":  # the server does the work, the answer never arrives
                    self._forward(body, reply=False)
                if fault in ("reset", "lost"):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    return
                if fault is not None:
                    return self._error(int(fault))
                self._forward(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_any

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _error(self, code: int) -> None:
                reason = {403: "forbidden", 429: "rateLimitExceeded"}.get(code, "backendError")
                message = ("Caller does not have storage.objects.create access (read-only "
                           "bucket)." if code == 403 else "Injected failure.")
                payload = json.dumps({"error": {"code": code, "message": message, "errors": [
                    {"message": message, "domain": "global", "reason": reason}]}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes, reply: bool = True) -> None:
                import http.client

                conn = http.client.HTTPConnection("127.0.0.1", proxy.server.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive", "transfer-encoding")}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:  # the server itself is down: the client sees a reset
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                if not reply:
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                         "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client hung up: its own business
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def inject(self, *faults) -> None:
        with self._lock:
            self._faults.extend(faults)

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        self._saved = {k: os.environ.get(k) for k in self._ENV}
        os.environ.update({k: self.url for k in self._ENV})
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
