"""Shared helpers for the benchmark scripts (not a benchmark itself).

* writing a throw-away pytest project (``pytest.ini`` + a ``conftest.py`` that times the
  session and, for uvloop, selects the loop through pytest-asyncio's
  ``pytest_asyncio_loop_factories`` hook);
* finding the plugin's budget options in ``pytest --help`` and picking a large value
  for each, so every budget is on and nothing fails;
* running one pytest session in a subprocess and timing it three ways;
* small statistics helpers.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
PLAIN_ARGS = ["-p", "no:asyncbudget"]
COMMON_ARGS = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist", "-p", "no:hypothesispytest", "-W", "ignore"]

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

#: Conftest that times the pytest session from inside (collection + run, no interpreter
#: start-up, no plugin import) and, when the plugin is active, records which budgets were
#: planned for how many tests, so a benchmark can show what was really on.
TIMING_CONFTEST = '''\
import json
import os
import time

import pytest

_T = {}
_DURATIONS = {}
_PROTOCOLS = {}
#: Seconds spent in garbage collections, by the test they fell in ("" outside tests).
_GC = {}
_NOW = [""]

if os.environ.get("ASYNCBUDGET_BENCH_DURATIONS"):
    import gc

    def _gc_timer(phase, info, _start=[0.0]):
        if phase == "start":
            _start[0] = time.perf_counter()
        else:
            _GC[_NOW[0]] = _GC.get(_NOW[0], 0.0) + time.perf_counter() - _start[0]

    gc.callbacks.append(_gc_timer)

    def pytest_runtest_logreport(report):
        if report.when == "call":
            _DURATIONS[report.nodeid] = report.duration

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(item, nextitem):
        # The whole test, from outside every other wrapper: setup, call, teardown, the
        # reports, and the plugin's own per-test work between them.
        _NOW[0] = item.nodeid
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            _PROTOCOLS[item.nodeid] = time.perf_counter() - start
            _NOW[0] = ""


if os.environ.get("ASYNCBUDGET_BENCH_ONLY"):
    # Attribution runs: keep only the listed budgets in each test's plan (the plugin
    # turns every budget on as soon as one default is set, so the CLI cannot).

    def pytest_collection_finish(session):
        from pytest_asyncbudget.record import PLAN

        keep = set(os.environ["ASYNCBUDGET_BENCH_ONLY"].split(","))
        for item in session.items:
            plan = item.stash.get(PLAN, None)
            if plan is not None:
                for name in list(plan.budgets):
                    if name not in keep:
                        del plan.budgets[name]
                if not plan.budgets:
                    del item.stash[PLAN]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _T["start"] = time.perf_counter()
    _T["cpu"] = time.process_time()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    elapsed = time.perf_counter() - _T.get("start", time.perf_counter())
    cpu = time.process_time() - _T.get("cpu", time.process_time())
    out = os.environ.get("ASYNCBUDGET_BENCH_OUT")
    if not out:
        return
    planned = {}
    if session.config.pluginmanager.has_plugin("asyncbudget-manager"):
        try:
            from pytest_asyncbudget.record import PLAN
        except ImportError:  # pragma: no cover
            PLAN = None
        if PLAN is not None:
            for item in session.items:
                plan = item.stash.get(PLAN, None)
                if plan is not None:
                    for name in plan.budgets:
                        planned[name] = planned.get(name, 0) + 1
    with open(out, "w") as f:
        json.dump(
            {
                "session_s": elapsed,
                "session_cpu_s": cpu,
                "items": len(session.items),
                "failed": session.testsfailed,
                "exitstatus": int(exitstatus),
                "planned_budgets": planned,
                "durations": _DURATIONS,
                "protocols": _PROTOCOLS,
                "gc": _GC,
            },
            f,
        )
'''

UVLOOP_CONFTEST = '''\


import uvloop


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
'''


def write_project(root: Path, loop: str, tests: dict[str, str], extra_conftest: str = "") -> Path:
    """Write a pytest project for *loop* ("asyncio" or "uvloop") into *root*."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(INI)
    conftest = TIMING_CONFTEST
    if loop == "uvloop":
        conftest += UVLOOP_CONFTEST
    elif loop != "asyncio":
        raise ValueError(f"unknown loop {loop!r}")
    conftest += textwrap.dedent(extra_conftest)
    (root / "conftest.py").write_text(conftest)
    for name, source in tests.items():
        (root / name).write_text(textwrap.dedent(source))
    return root


def build_shared(where: Path, name: str, source: str) -> tuple[str, str]:
    """Compile C *source* into ``where/name.so`` for ctypes (``$CC``, else ``cc``).

    Returns ``(path, "")``, or ``("", why)`` when there is no compiler or it fails.
    """
    src, so = where / f"{name}.c", where / f"{name}.so"
    src.write_text(source)
    try:
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-pthread", "-o", str(so), str(src)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return "", str(exc)
    return str(so), ""


def precompile_plugin() -> str:
    """Compile the plugin's modules to bytecode, as installing it from a wheel does.

    The dependencies (pytest, pytest-asyncio, psutil, uvloop) are installed, so their
    bytecode is on disk. The plugin under test is usually an editable install: with
    ``PYTHONDONTWRITEBYTECODE`` set, or a read-only checkout, every timed process would
    compile its ~5,000 lines again (about 50 ms of each process's wall time), which an
    installed plugin never does. Returns the package directory.
    """
    import compileall

    import pytest_asyncbudget

    where = Path(pytest_asyncbudget.__file__).parent
    compileall.compile_dir(str(where), quiet=1)
    return str(where)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONBREAKPOINT")}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.update(extra)
    return env


# -- running one session -------------------------------------------------------------
_PYTEST_TIME = re.compile(r"\bin ([0-9]+(?:\.[0-9]+)?)s\b")


@dataclass
class Run:
    wall_s: float
    session_s: float | None
    pytest_s: float | None
    rc: int
    #: user+sys CPU seconds of the whole process (all threads), from rusage.
    cpu_s: float | None = None
    #: user+sys CPU seconds of the process during the session (``time.process_time``).
    session_cpu_s: float | None = None
    items: int = 0
    failed: int = 0
    planned_budgets: dict[str, int] = field(default_factory=dict)
    tail: str = ""
    durations: dict[str, float] = field(default_factory=dict)
    #: Each test's whole protocol (setup to teardown report), in the order they ran.
    protocols: dict[str, float] = field(default_factory=dict)
    #: Seconds of garbage collection, by test ("" for the time outside the tests).
    gc: dict[str, float] = field(default_factory=dict)


def run_pytest(
    root: Path,
    args: list[str],
    timeout: float = 900.0,
    python: str = PYTHON,
    durations: bool = False,
    env: dict[str, str] | None = None,
) -> Run:
    """Run pytest once in *root* in a fresh interpreter; time it three ways."""
    out = Path(tempfile.mkstemp(prefix="asyncbudget-bench-", suffix=".json")[1])
    try:
        run_env = clean_env(ASYNCBUDGET_BENCH_OUT=str(out), **(env or {}))
        if durations:
            run_env["ASYNCBUDGET_BENCH_DURATIONS"] = "1"
        cmd = [python, "-m", "pytest", *COMMON_ARGS, *args]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=run_env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        data = {}
        try:
            text = out.read_text()
            if text:
                data = json.loads(text)
        except (OSError, ValueError):
            pass
        found = _PYTEST_TIME.findall(proc.stdout.splitlines()[-1] if proc.stdout.strip() else "")
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return Run(
            wall_s=wall,
            session_s=data.get("session_s"),
            pytest_s=float(found[-1]) if found else None,
            rc=proc.returncode,
            cpu_s=cpu,
            session_cpu_s=data.get("session_cpu_s"),
            items=data.get("items", 0),
            failed=data.get("failed", 0),
            planned_budgets=data.get("planned_budgets", {}),
            tail=tail,
            durations=data.get("durations", {}),
            protocols=data.get("protocols", {}),
            gc=data.get("gc", {}),
        )
    finally:
        out.unlink(missing_ok=True)


def crashed(run: Run) -> bool:
    """True when the interpreter died of a signal (e.g. SIGSEGV: rc -11)."""
    return run.rc < 0 or run.rc >= 128


def run_pytest_retry(root: Path, args: list[str], attempts: int = 8, **kw: object) -> tuple[Run, int]:
    """Like :func:`run_pytest`, but a run that crashed is retried (up to *attempts* runs).

    Returns the last run and how many crashed before it. A crashed run's timing is
    discarded; the caller reports the crash count.
    """
    crashes = 0
    for _ in range(attempts):
        run = run_pytest(root, args, **kw)  # type: ignore[arg-type]
        if not crashed(run):
            return run, crashes
        crashes += 1
    return run, crashes


# -- the plugin's budget options -----------------------------------------------------
@dataclass
class Option:
    flag: str  # e.g. "--asyncbudget-max-loop-lag"
    metavar: str  # e.g. "DURATION", "" for a flag
    help: str


_GROUP_HEADER = re.compile(r"^\S.*\(pytest-asyncbudget\):\s*$")
_OPT_LINE = re.compile(r"^  (?:-\w, )?(?P<flag>--asyncbudget-[\w-]+)(?:[= ](?P<meta>\S+))?(?:\s{2,}(?P<help>.*))?$")

#: Budgets are named max_* / min_* / no_* (max_loop_lag, max_rss, no_blocking,
#: no_leaked_tasks); the plugin's other options (summary, report, mode, baseline, loops,
#: debugging switches) are not budgets.
_BUDGET_NAME = re.compile(r"^(max|min|no)-")
_NOT_A_BUDGET = ("report", "json", "output", "file", "path", "summary", "baseline", "debug", "raise")


def plugin_options(python: str = PYTHON) -> list[Option]:
    """Every ``--asyncbudget-*`` option that ``pytest --help`` lists, with its help text."""
    with tempfile.TemporaryDirectory(prefix="asyncbudget-help-") as tmp:
        Path(tmp, "pytest.ini").write_text(INI)
        proc = subprocess.run(
            [python, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
            cwd=tmp, env=clean_env(COLUMNS="200"), capture_output=True, text=True, timeout=120,
        )
    options: list[Option] = []
    current: Option | None = None
    for line in proc.stdout.splitlines():
        m = _OPT_LINE.match(line)
        if m:
            current = Option(m["flag"], (m["meta"] or "").strip(), (m["help"] or "").strip())
            options.append(current)
        elif current is not None and line.startswith(" " * 10) and line.strip():
            current.help = (current.help + " " + line.strip()).strip()
        else:
            current = None
    return options


def budget_value(opt: Option) -> list[str] | None:
    """CLI arguments turning *opt* on with a budget so large nothing fails, or None if
    *opt* does not look like a budget (or its value cannot be guessed)."""
    name = opt.flag[len("--asyncbudget-"):]
    if not _BUDGET_NAME.match(name) or any(word in name for word in _NOT_A_BUDGET):
        return None
    meta = opt.metavar.upper()
    words = f"{name} {opt.help}".lower()
    if not meta:
        return [opt.flag]  # an on/off budget switch
    if meta.startswith("{"):
        choices = [c.strip() for c in meta.strip("{}").lower().split(",")]
        for preferred in ("fail", "error", "on", "true", "yes", "strict", "warn"):
            if preferred in choices:
                return [f"{opt.flag}={preferred}"]
        return None
    if "DURATION" in meta or "TIME" in meta or "SECOND" in meta or "lag" in name:
        return [f"{opt.flag}=10s"]
    if any(w in meta for w in ("SIZE", "BYTES", "MEM")) or "rss" in name or "memory" in words:
        return [f"{opt.flag}=64GiB"]
    if any(w in meta for w in ("COUNT", "INT", "NUM")) or meta == "N":
        return [f"{opt.flag}=1000000"]
    if "ms" in words or "duration" in words:
        return [f"{opt.flag}=10s"]
    return None


def budget_args(python: str = PYTHON, extra: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(args turning every detectable budget on, flags used, flags skipped)."""
    args: list[str] = []
    used: list[str] = []
    skipped: list[str] = []
    overridden = {e.split("=", 1)[0] for e in (extra or [])}
    for opt in plugin_options(python):
        if opt.flag in overridden:
            continue
        value = budget_value(opt)
        if value is None:
            skipped.append(opt.flag + (f"={opt.metavar}" if opt.metavar else ""))
        else:
            args += value
            used += value
    for e in extra or []:
        args.append(e)
        used.append(e)
    return args, used, skipped


# -- statistics ----------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of *xs*.

    The order statistics ``x(k)`` and ``x(n+1-k)``, with the largest ``k`` for which the
    binomial(n, 1/2) chance of fewer than ``k`` values below the median is at most
    ``(1 - level) / 2``: no assumption about the noise's shape, which on a shared machine
    is skewed (noise only adds time). Needs 6 or more values for 95%; (nan, nan) if fewer.
    """
    n = len(xs)
    s = sorted(xs)
    tail = (1.0 - level) / 2
    k = 0  # 1-based rank of the lower bound; 0: none reaches the level
    below = 0.0
    for j in range(n // 2 + 1):
        below += math.comb(n, j) / 2**n  # P(at most j values below the median)
        if below > tail:
            break
        k = j + 1
    if k == 0:
        return float("nan"), float("nan")
    return s[k - 1], s[n - k]


def pin_to(cpus: str) -> list[int]:
    """Run this process, and so every pytest it starts, on the CPUs listed ("1", "0,1").

    On this 2-core VM CPU 0 takes most device interrupts and the kernel's
    memory-monitoring thread. Pinning to CPU 1 looked steadier over 8 runs, but not over
    a 24-round benchmark (benchmarks/README.md, session 11); kept for other machines.
    """
    chosen = {int(x) for x in cpus.split(",") if x.strip()}
    os.sched_setaffinity(0, chosen)
    return sorted(os.sched_getaffinity(0))


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "platform": sys.platform,
    }
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import importlib.metadata as md

        for pkg in ("pytest", "pytest-asyncio", "uvloop", "pytest-asyncbudget"):
            try:
                info[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                info[pkg] = None
    except ImportError:  # pragma: no cover
        pass
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pytest_asyncbudget"], cwd=Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=10,
        ).stdout.split("\n")
        info["plugin_uncommitted"] = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    # Whether the lag probe's compiled select wrapper is in use (ASYNCBUDGET_PURE_PYTHON
    # and a missing C compiler turn it off).
    try:
        from pytest_asyncbudget.probes.lag import _compiled_timer

        info["compiled_select_wrapper"] = _compiled_timer() is not None
    except ImportError:  # pragma: no cover
        info["compiled_select_wrapper"] = None
    return info


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def runs_data(runs: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts of lists of :class:`Run` as plain data, without each run's output tail."""
    return {k: runs_data(v) if isinstance(v, dict) else [vars(r) | {"tail": None} for r in v] for k, v in runs.items()}


def write_json(path: str, benchmark: str, **fields: Any) -> None:
    """Write one benchmark's results to *path* as ``{"benchmark": ..., **fields}``."""
    Path(path).write_text(json.dumps({"benchmark": benchmark, **fields}, indent=2))
    print(f"wrote {path}")
