#!/usr/bin/env python
"""The plugin on real async projects' own test suites: does it harm them, and what does it find?

For each project in ``PROJECTS`` (pinned releases from PyPI, tests taken from the
sdist), the script runs the project's suite twice in a venv of its own:

* **plain**: pytest with the plugin disabled (``-p no:asyncbudget``);
* **plugin**: every budget on for every async test, in observe mode (so no budget can
  fail a test), with a JSON report.

and compares the two test by test (JUnit XML): a test whose outcome differs is the
plugin harming the suite, unless the difference is one the suite has without the plugin
too (see "Known differences" in ``benchmarks/README.md``). It also prints the plugin's
own errors (the report's ``plugin_errors``, which must be empty), how many tests each
budget flagged, the worst culprits, and the two wall times (one run each: a sanity
check, not a measurement of overhead; ``overhead.py`` and ``paired.py`` do that).

Needs the network to PyPI (sdists and the projects' test dependencies). The venv and the
sources go under ``--work`` and are reused by later runs.

Usage::

    /work/venv/bin/python benchmarks/real_suites.py --work /tmp/asyncbudget-real
    /work/venv/bin/python benchmarks/real_suites.py --only anyio,starlette --json real.json
    /work/venv/bin/python benchmarks/real_suites.py --slow   # adds pytest-asyncio's own suite
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Project:
    name: str
    #: ``pip download`` requirement of the sdist (pinned).
    sdist: str
    #: Extra packages its tests need.
    deps: tuple[str, ...] = ()
    #: Extra pytest arguments for both runs (deselections of tests that need a server).
    args: tuple[str, ...] = ()
    #: Run only with ``--slow`` (minutes per run).
    slow: bool = False
    #: ``pip install`` arguments used instead of the unpacked sdist, for a project whose
    #: sdist cannot be built outside its own repository (a uv workspace with versions
    #: from git): the same release from PyPI. ``./`` is the unpacked sdist.
    install: tuple[str, ...] = ()
    #: Further ``pip install`` runs after that, e.g. an example package the tests import.
    then: tuple[tuple[str, ...], ...] = ()


#: Projects whose tests run on pytest-asyncio (strict, auto, session-scoped loops, a
#: custom time-travel loop) or on anyio's plugin (marked tests and auto mode, trio too).
PROJECTS = (
    Project("aiofiles", "aiofiles==25.1.0"),
    Project("aiolimiter", "aiolimiter==1.3.0", deps=("dunamai",)),
    Project("aiostream", "aiostream==0.8.1"),
    Project("asgiref", "asgiref==3.13.0"),
    Project("async-lru", "async-lru==2.4.0", args=("-o", "asyncio_default_fixture_loop_scope=function")),
    Project("janus", "janus==2.0.0", args=("--ignore", "tests/test_benchmarks.py")),
    Project("tenacity", "tenacity==9.2.1", deps=("tornado", "typeguard")),
    Project(
        "aiocache",
        "aiocache==0.12.3",
        deps=("redis", "aiomcache", "marshmallow"),
        args=("-m", "not redis and not memcached", "--ignore", "tests/performance",
              "-o", "asyncio_default_fixture_loop_scope=function"),
    ),
    Project(
        "python-socketio",
        "python-socketio==5.18.1",
        deps=("aiohttp", "msgpack", "redis", "valkey", "uvicorn", "websocket-client", "simple-websocket"),
        args=("--ignore", "tests/async/test_admin.py", "--ignore", "tests/common/test_admin.py"),
    ),
    Project(
        "starlette",
        "starlette[full]==1.10.0",
        deps=("trio", "blockbuster", "httpx2", "opentelemetry-sdk", "pytest-codspeed"),
        args=("-p", "no:asyncio"),
    ),
    # pytest-asyncio's own suite: nested in-process pytest sessions (pytester), each
    # loading the plugin again, some with custom loops. About 8 minutes a run here.
    Project("pytest-asyncio", "pytest-asyncio==1.5.0", args=("-p", "pytester"), slow=True),
    Project(
        "anyio",
        "anyio[trio]==4.16.0",
        deps=("blockbuster", "hypothesis", "psutil", "pytest-mock", "trustme", "truststore", "uvloop"),
        args=("-p", "no:asyncio"),
    ),
    # Added in session 15: servers on loopback (uvicorn, hypercorn, aiosmtplib), HTTP
    # clients on anyio (httpx, httpcore, trio too), the MCP SDK's large anyio suite
    # (memory streams, stdio subprocess servers, blockbuster), event emitters.
    Project("aiohappyeyeballs", "aiohappyeyeballs==2.7.1"),
    Project("pyee", "pyee==13.0.1", deps=("pytest-trio", "trio", "twisted"),
            args=("-o", "asyncio_default_fixture_loop_scope=function")),
    Project("aiosmtplib", "aiosmtplib==5.1.3", deps=("aiosmtpd", "trustme", "hypothesis")),
    Project("hypercorn", "hypercorn[h3,trio,uvloop]==0.18.0", deps=("httpx", "mock", "pytest-trio", "trio")),
    Project("asyncer", "asyncer==0.0.18", deps=("typer", "fastapi"), args=("-p", "no:asyncio")),
    Project(
        "httpcore",
        "httpcore[http2,socks,trio,asyncio]==1.0.9",
        deps=("trustme", "trio"),
        args=("-p", "no:asyncio"),
    ),
    Project(
        "httpx",
        "httpx[http2,socks,brotli,zstd,cli]==0.28.1",
        deps=("uvicorn", "trustme", "chardet", "trio"),
        args=("-p", "no:asyncio"),
    ),
    Project(
        "uvicorn",
        "uvicorn[standard]==0.54.0",
        deps=("pytest-mock", "trustme", "cryptography", "httpx2", "a2wsgi", "wsproto"),
        args=("-p", "no:asyncio"),
    ),
    Project(
        "mcp",
        "mcp==2.3.0",
        install=("mcp[cli]==2.3.0",),
        then=(("--no-deps", "-e", "./examples"),),
        deps=("trio", "pytest-examples", "inline-snapshot", "dirty-equals", "pillow", "opentelemetry-sdk",
              "blockbuster", "pytest-pretty", "logfire>=3.0.0", "pydantic-settings"),
        # tests/docs needs the docs toolchain (griffe, zensical).
        args=("-p", "anyio", "-p", "examples", "-p", "no:asyncio", "--ignore", "tests/docs"),
    ),
)

COMMON = ("-o", "addopts=", "-p", "no:cacheprovider", "-q", "--timeout", "120")
PLUGIN = (
    "--asyncbudget-max-loop-lag=100ms",
    "--asyncbudget-no-blocking",
    "--asyncbudget-max-rss=64GiB",
    "--asyncbudget-no-leaked-tasks",
    "--asyncbudget-mode=observe",
)


@dataclass
class Result:
    project: str
    tests: int = 0
    plain_s: float = 0.0
    plugin_s: float = 0.0
    plain_tail: str = ""
    plugin_tail: str = ""
    differ: list[tuple[str, str, str]] = field(default_factory=list)
    plugin_errors: list[object] = field(default_factory=list)
    flagged: dict[str, int] = field(default_factory=dict)
    culprits: dict[str, list[str]] = field(default_factory=dict)


def sh(args: list[str], **kw: object) -> None:
    subprocess.run(args, check=True, **kw)  # type: ignore[call-overload]


def prepare(work: Path, projects: list[Project]) -> Path:
    """The venv (plugin, pytest-asyncio, pytest-timeout, each project and its deps) and the sources."""
    venv = work / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    sh([str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[test]", "pytest-timeout", "pytest-cov"])
    sdists = work / "sdists"
    for project in projects:
        src = work / "src" / project.name
        if not src.exists():
            requirement = re.sub(r"\[.*\]", "", project.sdist)
            target = sdists / project.name
            sh([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", requirement, "-d", str(target)])
            (archive,) = target.glob("*.tar.gz")
            with tarfile.open(archive) as tar:
                top = tar.getnames()[0].split("/")[0]
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(work / "src", **safe)  # a PyPI sdist
            (work / "src" / top).rename(src)
        extras = project.sdist.partition("[")[2].partition("]")[0]
        spec = [f"{src}[{extras}]" if extras else str(src)]
        sh([str(python), "-m", "pip", "install", "-q", *(project.install or spec), *project.deps], cwd=src)
        for step in project.then:
            sh([str(python), "-m", "pip", "install", "-q", *step], cwd=src)
    return python


def outcomes(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = sorted({child.tag for child in case if child.tag in ("failure", "error", "skipped")})
        found[name] = "+".join(kinds) or "passed"
    return found


def run_suite(python: Path, src: Path, project: Project, out: Path, plugin: bool) -> tuple[float, str]:
    tag = "plugin" if plugin else "plain"
    args = [str(python), "-m", "pytest", *COMMON, f"--junitxml={out / f'{project.name}.{tag}.xml'}", *project.args]
    args += [*PLUGIN, f"--asyncbudget-report={out / f'{project.name}.report.json'}"] if plugin else ["-p", "no:asyncbudget"]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=src, capture_output=True, text=True, timeout=1800, env=c.clean_env(), check=False)
    took = time.perf_counter() - start
    (out / f"{project.name}.{tag}.log").write_text(proc.stdout + proc.stderr)
    tail = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), "")
    return took, tail


def check(python: Path, work: Path, project: Project) -> Result:
    src, out = work / "src" / project.name, work / "out"
    out.mkdir(exist_ok=True)
    result = Result(project.name)
    result.plain_s, result.plain_tail = run_suite(python, src, project, out, plugin=False)
    result.plugin_s, result.plugin_tail = run_suite(python, src, project, out, plugin=True)
    plain, plugin = outcomes(out / f"{project.name}.plain.xml"), outcomes(out / f"{project.name}.plugin.xml")
    result.tests = len(plain)
    result.differ = [(k, plain.get(k, "-"), plugin.get(k, "-")) for k in sorted(set(plain) | set(plugin)) if plain.get(k) != plugin.get(k)]
    report = json.loads((out / f"{project.name}.report.json").read_text())
    result.plugin_errors = report.get("plugin_errors", [])
    for test in report["tests"]:
        for budget, entry in test["budgets"].items():
            if entry.get("verdict") not in ("passed", "measured"):
                result.flagged[budget] = result.flagged.get(budget, 0) + 1
                culprit = entry.get("culprit") or {}
                where = culprit.get("location") if isinstance(culprit, dict) else None
                result.culprits.setdefault(budget, []).append(f"{test['id']}: {where or 'no culprit'}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/asyncbudget-real", help="venv, sources and logs (reused)")
    ap.add_argument("--only", help="comma-separated project names")
    ap.add_argument("--slow", action="store_true", help="also the slow suites (pytest-asyncio's own)")
    ap.add_argument("--json", metavar="PATH")
    opts = ap.parse_args(argv)
    if opts.only:
        projects = [p for p in PROJECTS if p.name in opts.only.split(",")]
    else:
        projects = [p for p in PROJECTS if opts.slow or not p.slow]
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    python = prepare(work, projects)
    results = []
    for project in projects:
        r = check(python, work, project)
        results.append(r)
        print(f"\n== {r.project}: {r.tests} tests, {len(r.differ)} outcomes differ, {len(r.plugin_errors)} plugin errors")
        print(f"   plain  {r.plain_s:6.1f}s  {r.plain_tail}")
        print(f"   plugin {r.plugin_s:6.1f}s  {r.plugin_tail}")
        for name, before, after in r.differ[:10]:
            print(f"   differs: {name}: {before} -> {after}")
        for budget, count in sorted(r.flagged.items()):
            print(f"   {budget}: {count} tests flagged, e.g. {r.culprits[budget][:3]}")
    print("\nproject          tests  differ  plugin errors  flagged (lag/blocking/leaks/rss)  plugin/plain wall")
    for r in results:
        flags = "/".join(str(r.flagged.get(b, 0)) for b in ("max_loop_lag", "no_blocking", "no_leaked_tasks", "max_rss"))
        print(f"{r.project:16} {r.tests:6} {len(r.differ):7} {len(r.plugin_errors):14}  {flags:32}  {r.plugin_s / r.plain_s:.2f}")
    if opts.json:
        c.write_json(opts.json, "real_suites", machine=c.machine_info(), results=[vars(r) for r in results])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
