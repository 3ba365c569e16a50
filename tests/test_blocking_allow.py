"""``no_blocking``: the allowlist, its unused entries, bad input, and the raise option."""

from __future__ import annotations

import json
import textwrap

import pytest

from test_blocking import line_of, no_internal_errors

HELPERS = """
import os, time

def block():
    time.sleep(0.01)  # L:block

def other():
    os.stat(".")  # L:other

class Cache:
    def load(self):
        time.sleep(0.01)  # L:load
"""

def setup_suite(suite, source: str, ini: str = "", conftest: str = ""):
    suite.pytester.makepyfile(helpers=textwrap.dedent(HELPERS))
    suite.conftest(conftest)
    suite.ini(mode="auto", extra=ini)
    suite.write(source=textwrap.dedent(source))


def test_allow_functions_prefixes_and_callers(suite):
    setup_suite(
        suite,
        """
        import os, socket, time, pytest
        import helpers

        @pytest.mark.no_blocking(allow=["time.sleep"])
        async def test_function_allowed():
            time.sleep(0.01)

        @pytest.mark.no_blocking(allow="time.sleep")
        async def test_others_still_caught():
            time.sleep(0.01)
            os.stat(".")  # L:stat

        @pytest.mark.no_blocking(allow=["socket"])
        async def test_prefix():
            socket.getaddrinfo("localhost", 80)
            socket.gethostbyname("localhost")

        @pytest.mark.no_blocking(allow=["helpers"])
        async def test_caller_module():
            helpers.block()
            helpers.other()
            helpers.Cache().load()

        @pytest.mark.no_blocking(allow=["helpers:block", "helpers:Cache.load"])
        async def test_caller_function():
            helpers.block()
            helpers.Cache().load()
            helpers.other()  # L:calls_other

        @pytest.mark.no_blocking(allow=["open", "io.FileIO.read"])
        async def test_alias(tmp_path):
            with open(__file__) as f:
                f.read()

        @pytest.mark.no_blocking(allow=["shutil.copy"])
        async def test_allowed_call_is_not_also_caught_inside(tmp_path):
            import shutil
            (tmp_path / "a").write_text("x")  # L:write_text
            shutil.copy(tmp_path / "a", tmp_path / "b")
        """,
    )
    result = suite.run()
    no_internal_errors(result)
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_others_still_caught _*",
            "no_blocking failed: 1 blocking call on the event loop (call)",
            f"*culprit: test_suite.py:{line_of(suite, 'stat')} in test_others_still_caught (in os.stat)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_caller_function _*",
            "no_blocking failed: 1 blocking call on the event loop (call)",
            f"*culprit: helpers.py:{line_of(suite, 'other', 'helpers.py')} in other (in os.stat)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_allowed_call_is_not_also_caught_inside _*",
            "no_blocking failed: 1 blocking call on the event loop (call)",
            "*pathlib.Path.write_text called once*",
        ]
    )


def test_ini_allowlist_and_markers_on_classes_and_modules(suite):
    setup_suite(
        suite,
        """
        import os, time, pytest

        pytestmark = pytest.mark.no_blocking(allow=["os.listdir"])

        async def test_module_marker_and_ini():
            os.listdir(".")  # module marker
            time.sleep(0.01)  # ini

        @pytest.mark.no_blocking(allow=["os.stat"])
        class TestClass:
            async def test_class_marker(self):
                os.stat(".")
                time.sleep(0.01)

            async def test_not_allowed(self):
                os.listdir(".")  # L:listdir
        """,
        ini="asyncbudget_no_blocking = true\nasyncbudget_blocking_allow =\n    time.sleep\n    subprocess.run\n",
    )
    result = suite.run()
    no_internal_errors(result)
    result.assert_outcomes(passed=2, failed=1)
    # the class's marker is the closest one: the module's allow=["os.listdir"] does not apply
    listdir = line_of(suite, "listdir")
    result.stdout.fnmatch_lines(
        ["*_ TestClass.test_not_allowed _*", f"*culprit: test_suite.py:{listdir} in test_not_allowed (in os.listdir)"]
    )
    # subprocess.run, from the ini file, matched nothing in any test
    result.stdout.fnmatch_lines(
        [
            "no_blocking: allowlist entries that never matched:",
            "  'subprocess.run' (asyncbudget_blocking_allow, in 3 tests)",
        ]
    )


def test_unused_entries_are_reported(suite, tmp_path):
    setup_suite(
        suite,
        """
        import time, pytest

        @pytest.mark.no_blocking(allow=["time.sleep", "os.stat", "helpers"])
        async def test_partly_used():
            time.sleep(0.01)

        @pytest.mark.no_blocking(allow=["os.stat"])
        async def test_all_used():
            import os
            os.stat(".")

        @pytest.mark.skip(reason="never ran: cannot have used anything")
        @pytest.mark.no_blocking(allow=["os.stat"])
        async def test_skipped():
            pass
        """,
    )
    report = tmp_path / "report.json"
    result = suite.run(f"--asyncbudget-report={report}")
    no_internal_errors(result)
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "no_blocking: allowlist entries that never matched:",
            "  test_suite.py::test_partly_used: 'os.stat', 'helpers' (marker)",
        ]
    )
    assert "test_all_used: " not in result.stdout.str() and "test_skipped: " not in result.stdout.str()
    # the JSON report keeps every phase's headline; the teardown one names the unused entries
    data = json.loads(report.read_text())
    tests = {t["id"]: t for t in data["tests"]}
    phases = tests["test_suite.py::test_partly_used"]["budgets"]["no_blocking"]["phases"]
    assert phases["teardown"]["headline"].endswith("matched nothing in this test: 'os.stat', 'helpers'")
    assert "matched nothing" not in phases["call"]["headline"]
    assert "matched nothing" not in tests["test_suite.py::test_all_used"]["budgets"]["no_blocking"]["phases"]["teardown"]["headline"]


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("no_blocking(alow=['time.sleep'])", "*unexpected keyword argument 'alow'*"),
        ("no_blocking(allow=['time.slep'])", "*'time.slep' names neither a blocking function*did you mean 'time.sleep'?*"),
        ("no_blocking(allow=['nosuchmodule_xyz'])", "*'nosuchmodule_xyz' names neither a blocking function*"),
        ("no_blocking(allow=['helpers:nope'])", "*'helpers:nope': module 'helpers' has no function 'nope'*"),
        ("no_blocking(allow=['nosuchmodule_xyz:f'])", "*'nosuchmodule_xyz:f': no module 'nosuchmodule_xyz' can be found*"),
        ("no_blocking(allow=['a b'])", "*'a b' names nothing*"),
        ("no_blocking(allow=[''])", "*an empty allow entry names nothing*"),
        ("no_blocking(allow=[3])", "*allow entries must be strings, got int 3*"),
        ("no_blocking(allow=3)", "*allow must be a list of strings, got int 3*"),
        ("no_blocking('yes')", "*enabled must be True or False, got str 'yes'*"),
        ("no_blocking(False, allow=['time.sleep'])", "*allow= has no effect with no_blocking(False)*"),
    ],
)
def test_bad_marker_is_a_usage_error(suite, marker, message):
    setup_suite(
        suite,
        f"""
        import pytest
        import helpers

        @pytest.mark.{marker}
        async def test_x():
            pass
        """,
    )
    result = suite.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_suite.py::test_x: @pytest.mark.no_blocking(*{message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("asyncbudget_no_blocking = maybe", "*asyncbudget_no_blocking='maybe': expected true or false*"),
        ("asyncbudget_blocking_allow = os.stats", "*asyncbudget_blocking_allow: 'os.stats' names neither*did you mean 'os.stat'?*"),
        ("asyncbudget_blocking_allow = nosuchmodule_xyz:f", "*asyncbudget_blocking_allow: 'nosuchmodule_xyz:f': no module*"),
    ],
)
def test_bad_ini_is_a_usage_error(suite, ini, message):
    setup_suite(suite, "async def test_x():\n    pass\n", ini=ini + "\n")
    result = suite.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_ini_caller_entry_found_beside_the_ini_file(suite):
    """A caller module of the project is found even before the tests' folders are on sys.path."""
    suite.pytester.mkpydir("myproject")
    (suite.pytester.path / "myproject" / "io_helpers.py").write_text("import time\ndef nap():\n    time.sleep(0.01)\n")
    setup_suite(
        suite,
        """
        from myproject import io_helpers

        async def test_allowed_by_ini():
            io_helpers.nap()
        """,
        ini="asyncbudget_no_blocking = true\nasyncbudget_blocking_allow = myproject.io_helpers:nap\n",
    )
    result = suite.run()
    no_internal_errors(result)
    result.assert_outcomes(passed=1)


def test_raise_at_the_call(suite):
    setup_suite(
        suite,
        """
        import time, pytest

        @pytest.mark.no_blocking
        async def test_swallowed():
            try:
                time.sleep(0.01)  # L:swallowed
            except Exception as exc:
                print("swallowed", type(exc).__name__)

        @pytest.mark.no_blocking
        async def test_raised():
            time.sleep(0.01)  # L:raised
        """,
        conftest="",
    )
    result = suite.run("--asyncbudget-blocking-raise", "-s")
    no_internal_errors(result)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*swallowed BlockingCallError*"])
    swallowed = line_of(suite, "swallowed")
    result.stdout.fnmatch_lines(
        [
            "*_ test_swallowed _*",
            "no_blocking failed: 1 blocking call on the event loop (call)",
            f"*culprit: test_suite.py:{swallowed} in test_swallowed (in time.sleep)",
        ]
    )
    raised = line_of(suite, "raised")
    result.stdout.fnmatch_lines(
        [
            "*_ test_raised _*",
            "*time.sleep(0.01)  # L:raised",
            f"E*BlockingCallError: time.sleep called on the event loop thread at test_suite.py:{raised} in test_raised*",
        ]
    )
    # the plugin's own frames are hidden from the traceback
    assert "patches.py" not in result.stdout.str()


def test_measured_only_when_the_report_measures_everything(suite, tmp_path):
    """With the JSON report on and no_blocking off, blocking calls are recorded, never judged."""
    setup_suite(
        suite,
        """
        import time

        async def test_blocks():
            time.sleep(0.01)
        """,
        conftest="",
    )
    report = tmp_path / "r.json"
    result = suite.run(f"--asyncbudget-report={report}")
    no_internal_errors(result)
    result.assert_outcomes(passed=1)
    entry = json.loads(report.read_text())["tests"][0]["budgets"]["no_blocking"]
    assert entry["verdict"] == "measured"
    assert entry["phases"]["call"]["findings"][0]["data"]["function"] == "time.sleep"
