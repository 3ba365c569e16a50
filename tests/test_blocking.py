"""End-to-end tests of ``no_blocking``: every family is caught and named, on both loops.

Each suite holds several tests that must all fail, one per blocking call; every failure
is checked for the reported function and the exact culprit line (tagged ``# L:<tag>`` in
the suite's source). The clean cases are in ``test_blocking_clean.py``; the allowlist,
usage errors and raise mode in ``test_blocking_allow.py``.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

try:
    import requests  # noqa: F401

    HAVE_REQUESTS = True
except ImportError:  # pragma: no cover - requests is optional
    HAVE_REQUESTS = False


def line_of(suite, tag: str, name: str = "test_suite.py") -> int:
    """The line number of the line ending with ``# L:<tag>`` in the written file."""
    for number, text in enumerate((suite.pytester.path / name).read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# L:{tag}"):
            return number
    raise AssertionError(f"no line tagged {tag!r} in {name}")


def expect(result, suite, test: str, function: str, tag: str, *, file: str = "test_suite.py", func: str | None = None):
    """The failure of *test* names *function* and the culprit line tagged *tag*."""
    line = line_of(suite, tag, file)
    result.stdout.fnmatch_lines(
        [f"*_ {test} _*", f"*culprit: {file}:{line} in {func or test} (in {function})"]
    )


def write(suite, source: str, check: bool = False) -> None:
    """Write the suite; *check* appends a last sync test asserting every patch is gone."""
    suite.write(source=textwrap.dedent(source) + (CHECK_RESTORED if check else ""))


def no_internal_errors(result):
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text
    assert "internal error" not in text


def run(suite, *args: str):
    suite.ini(mode="auto", extra="asyncbudget_no_blocking = true\n")
    result = suite.run("-p", "no:randomly", *args)
    no_internal_errors(result)
    return result


CHECK_RESTORED = """

def test_zz_everything_restored():
    import _thread, io, os, socket, ssl, threading, time, queue, subprocess, pathlib
    assert not hasattr(time.sleep, "__wrapped__")
    assert open is io.open and type(open).__name__ == "builtin_function_or_method"
    assert threading.Lock in (_thread.allocate_lock, getattr(_thread, "lock", None))  # type from 3.13 on
    assert type(threading.Lock).__name__ != "_LockTypeStandIn"
    assert not hasattr(threading.RLock, "__wrapped__")
    for name in ("recv", "send", "connect", "recv_into", "sendall"):
        assert name not in socket.socket.__dict__, name
    assert not hasattr(socket.socket.accept, "__wrapped__")
    assert not hasattr(ssl.SSLSocket.read, "__wrapped__")
    assert not hasattr(os.stat, "__wrapped__") and not hasattr(socket.getaddrinfo, "__wrapped__")
    assert not hasattr(queue.Queue.get, "__wrapped__") and not hasattr(threading.Event.wait, "__wrapped__")
    assert not hasattr(subprocess.run, "__wrapped__") and not hasattr(pathlib.Path.read_text, "__wrapped__")
    from pytest_asyncbudget import patches
    assert patches.installed() == [] and patches._probe is None
"""


def test_sleeping(suite):
    write(
        suite,
        source="""
        import time
        from time import sleep

        async def test_time_sleep():
            time.sleep(0.05)  # L:sleep

        async def test_imported_by_name():
            sleep(0.05)  # L:from
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*no_blocking failed: 1 blocking call on the event loop (call)", "*time.sleep called once, * ms in total (call)"])
    expect(result, suite, "test_time_sleep", "time.sleep", "sleep")
    expect(result, suite, "test_imported_by_name", "time.sleep", "from")


def test_files(suite):
    write(
        suite,
        source="""
        import os, pytest

        @pytest.fixture
        def reading(tmp_path):
            path = tmp_path / "data.txt"
            path.write_text("x" * 100000)
            f = open(path)  # opened in a sync fixture, outside the loop
            yield f
            f.close()

        @pytest.fixture
        def writing(tmp_path):
            with open(tmp_path / "out.bin", "wb") as f:
                yield f

        async def test_open(tmp_path):
            f = open(tmp_path / "a.txt", "w")  # L:open
            f.close()

        async def test_read(reading):
            reading.read()  # L:read

        async def test_write_and_flush(writing):
            writing.write(b"x")
            writing.flush()  # L:flush

        async def test_os_read_write():
            r, w = os.pipe()
            os.write(w, b"hi")  # L:os_write
            os.read(r, 2)  # L:os_read
            os.close(r)
            os.close(w)

        async def test_pathlib(tmp_path):
            path = tmp_path / "b.txt"
            path.write_bytes(b"x")  # L:write_bytes
            path.read_text()  # L:read_text
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=5, passed=1)
    expect(result, suite, "test_open", "builtins.open", "open")
    expect(result, suite, "test_read", "io.FileIO.read", "read")
    expect(result, suite, "test_write_and_flush", "io.FileIO.write", "flush")
    expect(result, suite, "test_os_read_write", "os.write", "os_write")
    expect(result, suite, "test_os_read_write", "os.read", "os_read")
    expect(result, suite, "test_pathlib", "pathlib.Path.write_bytes", "write_bytes")
    expect(result, suite, "test_pathlib", "pathlib.Path.read_text", "read_text")
    # the write into the buffer is not a system call: only the flush is reported
    assert "io.FileIO.write called once" in result.stdout.str()


def test_filesystem_calls(suite):
    write(
        suite,
        source="""
        import os, shutil, tempfile, pytest

        @pytest.fixture
        def tree(tmp_path):
            (tmp_path / "f.txt").write_text("x")
            (tmp_path / "d").mkdir()
            (tmp_path / "d" / "g.txt").write_text("y")
            return tmp_path

        async def test_stat(tree):
            os.stat(tree)  # L:stat

        async def test_exists(tree):
            os.path.exists(tree / "f.txt")  # L:exists

        async def test_listdir(tree):
            os.listdir(tree)  # L:listdir

        async def test_scandir(tree):
            list(os.scandir(tree))  # L:scandir

        async def test_remove(tree):
            os.remove(tree / "f.txt")  # L:remove

        async def test_rename(tree):
            os.rename(tree / "f.txt", tree / "h.txt")  # L:rename

        async def test_mkdir(tree):
            (tree / "new").mkdir()  # L:mkdir

        async def test_shutil_copy(tree):
            shutil.copy(tree / "f.txt", tree / "copy.txt")  # L:copy

        async def test_shutil_rmtree(tree):
            shutil.rmtree(tree / "d")  # L:rmtree

        async def test_tempfile():
            shutil.rmtree(tempfile.mkdtemp())  # L:mkdtemp
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=10, passed=1)
    expect(result, suite, "test_stat", "os.stat", "stat")
    expect(result, suite, "test_exists", "os.stat", "exists")
    expect(result, suite, "test_listdir", "os.listdir", "listdir")
    expect(result, suite, "test_scandir", "os.scandir", "scandir")
    expect(result, suite, "test_remove", "os.remove", "remove")
    expect(result, suite, "test_rename", "os.rename", "rename")
    expect(result, suite, "test_mkdir", "os.mkdir", "mkdir")
    expect(result, suite, "test_shutil_copy", "shutil.copy", "copy")
    expect(result, suite, "test_shutil_rmtree", "shutil.rmtree", "rmtree")
    expect(result, suite, "test_tempfile", "tempfile.mkdtemp", "mkdtemp")
    # one blocking call for shutil.copy, not also the open/stat calls it makes inside
    result.stdout.fnmatch_lines(["*_ test_shutil_copy _*", "no_blocking failed: 1 blocking call on the event loop (call)"])


NET_HELPERS = """
import http.server, socket, socketserver, threading, pytest

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(1024)
            if not data:
                return
            self.request.sendall(data)

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):
        pass

def serve(server):
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

@pytest.fixture
def echo():
    server = serve(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo))
    yield server.server_address
    server.shutdown()
    server.server_close()

@pytest.fixture
def http_url():
    server = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello))
    host, port = server.server_address
    yield f"http://{host}:{port}/"
    server.shutdown()
    server.server_close()
"""


def test_sockets_and_http_clients(suite):
    suite.conftest(NET_HELPERS)
    write(
        suite,
        source="""
        import http.client, socket, urllib.parse, urllib.request, pytest
        try:
            import requests
        except ImportError:
            requests = None

        async def test_connect(echo):
            sock = socket.socket()
            sock.connect(echo)  # L:connect
            sock.close()

        async def test_send_recv(echo):
            sock = socket.create_connection(echo)  # L:create_connection
            sock.sendall(b"hi")  # L:sendall
            sock.recv(2)  # L:recv
            sock.close()

        async def test_makefile(echo):
            sock = socket.create_connection(echo)  # L:create2
            sock.sendall(b"line\\n")  # L:sendall2
            sock.makefile("rb").readline()  # L:readline
            sock.close()

        async def test_accept():
            server = socket.create_server(("127.0.0.1", 0))
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.getsockname())
            conn, _ = server.accept()  # L:accept
            for s in (conn, client, server):
                s.close()

        async def test_urlopen(http_url):
            urllib.request.urlopen(http_url).read()  # L:urlopen

        async def test_http_client(http_url):
            url = urllib.parse.urlsplit(http_url)
            conn = http.client.HTTPConnection(url.hostname, url.port)
            conn.request("GET", "/")  # L:request
            conn.getresponse().read()  # L:getresponse
            conn.close()

        @pytest.mark.skipif(requests is None, reason="requests not installed")
        async def test_requests(http_url):
            requests.get(http_url)  # L:requests
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=7 if HAVE_REQUESTS else 6, passed=1, skipped=0 if HAVE_REQUESTS else 1)
    expect(result, suite, "test_connect", "socket.socket.connect", "connect")
    expect(result, suite, "test_send_recv", "socket.create_connection", "create_connection")
    expect(result, suite, "test_send_recv", "socket.socket.sendall", "sendall")
    expect(result, suite, "test_send_recv", "socket.socket.recv", "recv")
    expect(result, suite, "test_makefile", "socket.socket.recv_into", "readline")
    expect(result, suite, "test_accept", "socket.socket.accept", "accept")
    expect(result, suite, "test_urlopen", "urllib.request.urlopen", "urlopen")
    expect(result, suite, "test_http_client", "http.client.HTTPConnection.request", "request")
    expect(result, suite, "test_http_client", "http.client.HTTPConnection.getresponse", "getresponse")
    if HAVE_REQUESTS:
        expect(result, suite, "test_requests", "requests.Session.request", "requests")


def test_dns(suite):
    write(
        suite,
        source="""
        import socket

        async def test_getaddrinfo():
            socket.getaddrinfo("localhost", 80)  # L:getaddrinfo

        async def test_gethostbyname():
            socket.gethostbyname("localhost")  # L:gethostbyname

        async def test_gethostbyaddr():
            try:
                socket.gethostbyaddr("127.0.0.1")  # L:gethostbyaddr
            except OSError:
                pass  # no reverse entry here: still a blocking lookup
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=3, passed=1)
    expect(result, suite, "test_getaddrinfo", "socket.getaddrinfo", "getaddrinfo")
    expect(result, suite, "test_gethostbyname", "socket.gethostbyname", "gethostbyname")
    expect(result, suite, "test_gethostbyaddr", "socket.gethostbyaddr", "gethostbyaddr")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(suite):
    suite.conftest(
        """
        import socket, ssl, subprocess, threading, pytest

        @pytest.fixture
        def tls_server(tmp_path):
            cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                 "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
                check=True, capture_output=True,
            )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            listener = socket.create_server(("127.0.0.1", 0))

            def serve():
                conn, _ = listener.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(tls.recv(4))

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            yield listener.getsockname(), str(cert)
            thread.join(5)
            listener.close()
        """
    )
    write(
        suite,
        source="""
        import socket, ssl

        async def test_tls(tls_server):
            address, cert = tls_server
            context = ssl.create_default_context(cafile=cert)
            raw = socket.create_connection(address)  # L:tcp
            tls = context.wrap_socket(raw, server_hostname="localhost")  # L:handshake
            tls.sendall(b"ping")  # L:tls_send
            tls.recv(4)  # L:tls_recv
            tls.close()
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=1, passed=1)
    expect(result, suite, "test_tls", "socket.create_connection", "tcp")
    expect(result, suite, "test_tls", "ssl.SSLSocket.do_handshake", "handshake")
    expect(result, suite, "test_tls", "ssl.SSLSocket.sendall", "tls_send")
    expect(result, suite, "test_tls", "ssl.SSLSocket.recv", "tls_recv")


def test_subprocesses(suite):
    write(
        suite,
        source="""
        import os, subprocess, sys

        CMD = [sys.executable, "-c", "print('hi')"]

        async def test_run():
            subprocess.run(CMD, capture_output=True)  # L:run

        async def test_call():
            subprocess.call(CMD, stdout=subprocess.DEVNULL)  # L:call

        async def test_check_output():
            subprocess.check_output(CMD)  # L:check_output

        async def test_popen_wait():
            process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
            process.wait()  # L:wait

        async def test_communicate():
            process = subprocess.Popen(CMD, stdout=subprocess.PIPE)
            process.communicate()  # L:communicate

        async def test_os_system():
            os.system("true")  # L:system
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=6, passed=1)
    expect(result, suite, "test_run", "subprocess.run", "run")
    expect(result, suite, "test_call", "subprocess.call", "call")
    expect(result, suite, "test_check_output", "subprocess.check_output", "check_output")
    expect(result, suite, "test_popen_wait", "subprocess.Popen.wait", "wait")
    expect(result, suite, "test_communicate", "subprocess.Popen.communicate", "communicate")
    expect(result, suite, "test_os_system", "os.system", "system")
    # starting a process is not itself reported (its pipes are opened by descriptor)
    result.stdout.fnmatch_lines(["*_ test_popen_wait _*", "no_blocking failed: 1 blocking call on the event loop (call)"])


def test_sqlite3(suite):
    write(
        suite,
        source="""
        import sqlite3, pytest

        @pytest.fixture
        def db():
            conn = sqlite3.connect(":memory:")  # made outside the loop, used on it
            conn.execute("create table t (x)")
            yield conn
            conn.close()

        async def test_connect():
            sqlite3.connect(":memory:").close()  # L:connect

        async def test_execute(db):
            db.execute("insert into t values (1)")  # L:execute

        async def test_commit(db):
            db.commit()  # L:commit

        async def test_cursor(db):
            cursor = db.cursor()
            cursor.execute("select x from t")  # L:cursor_execute
            cursor.fetchall()  # L:fetchall
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=4, passed=1)
    expect(result, suite, "test_connect", "sqlite3.connect", "connect")
    expect(result, suite, "test_execute", "sqlite3.Connection.execute", "execute")
    expect(result, suite, "test_commit", "sqlite3.Connection.commit", "commit")
    expect(result, suite, "test_cursor", "sqlite3.Cursor.execute", "cursor_execute")
    expect(result, suite, "test_cursor", "sqlite3.Cursor.fetchall", "fetchall")


def test_thread_waits(suite):
    suite.conftest(
        """
        import threading, time, pytest

        def later(action, delay=0.3):
            # runs *action* on another thread after *delay*; started outside the loop
            timer = threading.Timer(delay, action)
            timer.start()
            return timer

        @pytest.fixture
        def later_():
            timers = []
            yield lambda action, delay=0.3: timers.append(later(action, delay))
            for t in timers:
                t.join()

        def holding(lock):
            started = threading.Event()

            def hold():
                with lock:
                    started.set()
                    time.sleep(0.3)

            thread = threading.Thread(target=hold)
            thread.start()
            started.wait()
            return thread
        """
    )
    write(
        suite,
        source="""
        import concurrent.futures as cf, queue, threading, time, pytest
        from conftest import holding

        @pytest.fixture
        def lock():
            lock = threading.Lock()
            thread = holding(lock)
            yield lock
            thread.join()

        @pytest.fixture
        def rlock():
            lock = threading.RLock()
            thread = holding(lock)
            yield lock
            thread.join()

        async def test_lock(lock):
            with lock:  # L:lock
                pass

        async def test_rlock(rlock):
            rlock.acquire()  # L:rlock
            rlock.release()

        async def test_semaphore(later_):
            sem = threading.Semaphore(0)
            later_(sem.release)
            sem.acquire()  # L:semaphore

        async def test_condition(later_):
            cond = threading.Condition()
            def notify():
                with cond:
                    cond.notify_all()
            later_(notify)
            with cond:
                cond.wait(2)  # L:condition

        async def test_event(later_):
            event = threading.Event()
            later_(event.set)
            event.wait()  # L:event

        async def test_queue_get(later_):
            q = queue.Queue()
            later_(lambda: q.put(1))
            q.get()  # L:queue_get

        async def test_queue_put(later_):
            q = queue.Queue(1)
            q.put(1)
            later_(q.get)
            q.put(2)  # L:queue_put

        async def test_future_result():
            pool = cf.ThreadPoolExecutor(1)
            future = pool.submit(time.sleep, 0.2)
            future.result()  # L:result
            pool.shutdown(wait=False)

        async def test_futures_wait():
            pool = cf.ThreadPoolExecutor(1)
            future = pool.submit(time.sleep, 0.2)
            cf.wait(iter([future]))  # L:futures_wait
            pool.shutdown(wait=False)

        async def test_thread_join():
            thread = threading.Thread(target=time.sleep, args=(0.2,))
            thread.start()
            thread.join()  # L:join

        async def test_barrier(later_):
            barrier = threading.Barrier(2)
            later_(barrier.wait)
            barrier.wait()  # L:barrier
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=11, passed=1)
    expect(result, suite, "test_lock", "threading.Lock.acquire", "lock")
    expect(result, suite, "test_rlock", "threading.RLock.acquire", "rlock")
    expect(result, suite, "test_semaphore", "threading.Semaphore.acquire", "semaphore")
    expect(result, suite, "test_condition", "threading.Condition.wait", "condition")
    expect(result, suite, "test_event", "threading.Event.wait", "event")
    expect(result, suite, "test_queue_get", "queue.Queue.get", "queue_get")
    expect(result, suite, "test_queue_put", "queue.Queue.put", "queue_put")
    expect(result, suite, "test_future_result", "concurrent.futures.Future.result", "result")
    expect(result, suite, "test_futures_wait", "concurrent.futures.wait", "futures_wait")
    expect(result, suite, "test_thread_join", "threading.Thread.join", "join")
    expect(result, suite, "test_barrier", "threading.Barrier.wait", "barrier")
    # submitting to a pool starts a thread, which waits for it to start: not reported
    result.stdout.fnmatch_lines(["*_ test_future_result _*", "no_blocking failed: 1 blocking call on the event loop (call)"])


def test_console_input_even_when_the_error_is_swallowed(suite):
    write(
        suite,
        source="""
        async def test_input():
            try:
                input()  # L:input
            except Exception:
                pass  # pytest's captured stdin raises; the call was still made
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    expect(result, suite, "test_input", "builtins.input", "input")


def test_where_the_call_is_made(suite):
    """Spawned task, plain callback, protocol callback, helper module, async fixture."""
    suite.pytester.makepyfile(
        helpers="""
        import time

        def block():
            time.sleep(0.05)  # L:helper
        """
    )
    write(
        suite,
        source="""
        import asyncio, time, pytest
        import helpers

        async def worker():
            await asyncio.sleep(0)
            time.sleep(0.05)  # L:task

        async def test_spawned_task():
            await asyncio.create_task(worker())

        def callback():
            time.sleep(0.05)  # L:callback

        async def test_plain_callback():
            asyncio.get_running_loop().call_soon(callback)
            await asyncio.sleep(0.1)

        class Slow(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                time.sleep(0.05)  # L:protocol
                self.transport.write(data)

        async def test_protocol_callback():
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Slow, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(b"x")
            assert await reader.read(1) == b"x"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

        async def test_helper_module():
            helpers.block()  # L:calls_helper

        @pytest.fixture
        async def slow_setup():
            time.sleep(0.05)  # L:setup
            yield

        @pytest.fixture
        async def slow_teardown():
            yield
            time.sleep(0.05)  # L:teardown

        async def test_async_fixture_setup(slow_setup):
            pass

        async def test_async_fixture_teardown(slow_teardown):
            pass
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=4, passed=2, errors=2)
    expect(result, suite, "test_spawned_task", "time.sleep", "task", func="worker")
    expect(result, suite, "test_plain_callback", "time.sleep", "callback", func="callback")
    expect(result, suite, "test_protocol_callback", "time.sleep", "protocol", func="data_received")
    expect(result, suite, "test_helper_module", "time.sleep", "helper", file="helpers.py", func="block")
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_async_fixture_setup _*",
            "no_blocking failed: 1 blocking call on the event loop (setup)",
            "*time.sleep called once, * ms in total (setup)",
            f"*culprit: test_suite.py:{line_of(suite, 'setup')} in slow_setup (in time.sleep)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_async_fixture_teardown _*",
            "no_blocking failed: 1 blocking call on the event loop (teardown)",
            f"*culprit: test_suite.py:{line_of(suite, 'teardown')} in slow_teardown (in time.sleep)",
        ]
    )
    # the helper's culprit comes with the trimmed stack of the user's frames
    result.stdout.fnmatch_lines(
        [
            "*stack (user frames, innermost last):",
            f"*test_suite.py:{line_of(suite, 'calls_helper')} in test_helper_module",
            f"*helpers.py:{line_of(suite, 'helper', 'helpers.py')} in block",
        ]
    )


def test_counts_and_total_time_per_distinct_call(suite):
    write(
        suite,
        source="""
        import os, time

        async def test_loop():
            for _ in range(3):
                time.sleep(0.02)  # L:sleep
            for _ in range(5):
                os.stat(".")  # L:stat
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "no_blocking failed: 8 blocking calls on the event loop, 2 distinct (call)",
            "*time.sleep called 3 times, * ms in total (call)",
            f"*culprit: test_suite.py:{line_of(suite, 'sleep')} in test_loop (in time.sleep)",
            "*os.stat called 5 times, * in total (call)",
            f"*culprit: test_suite.py:{line_of(suite, 'stat')} in test_loop (in os.stat)",
            "*if meant to block: @pytest.mark.no_blocking(allow=?'time.sleep', 'os.stat'?)",
        ]
    )
    total = result.stdout.str().split("time.sleep called 3 times, ")[1].split(" in total")[0]
    value, unit = total.split()
    assert unit == "ms" and float(value) >= 55  # three sleeps of 20 ms, timed for real


def test_a_crashing_test_still_restores_everything(suite):
    write(
        suite,
        source="""
        import socket, time, pytest

        async def test_raises_inside_a_watched_call():
            socket.create_connection(("127.0.0.1", 1), timeout=1)  # L:refused

        @pytest.fixture
        async def broken():
            time.sleep(0.01)
            raise RuntimeError("fixture broke")
            yield

        async def test_fixture_error(broken):
            pass
        """,
        check=True,
    )
    result = run(suite)
    result.assert_outcomes(failed=1, errors=1, passed=1)
    result.stdout.fnmatch_lines(["*ConnectionRefusedError*"])
    result.stdout.fnmatch_lines(["*RuntimeError: fixture broke*"])
