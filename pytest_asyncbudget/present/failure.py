"""The failure text of a test that broke a budget."""

from __future__ import annotations

from collections.abc import Iterable

from ..budgets.base import Finding, Verdict

__all__ = ["failure_text"]


def _finding_lines(finding: Finding) -> list[str]:
    lines = [f"  {finding.title}"]
    culprit = finding.culprit
    if culprit is not None:
        calling = f" (in {culprit.calling})" if culprit.calling else ""
        lines.append(f"    culprit: {culprit.describe()}{calling}")
        source = culprit.source()
        if source:
            lines.append(f"        {source}")
        if len(culprit.stack) > 1:
            lines.append("    stack (user frames, innermost last):")
            lines.extend(f"      {line}" for line in culprit.stack_lines())
    lines.extend(f"    {detail}" for detail in finding.details)
    return lines


def failure_text(verdicts: Iterable[Verdict]) -> str:
    """One block per broken budget: its headline, then its findings, worst first."""
    blocks = []
    for verdict in verdicts:
        lines = [verdict.headline]
        for finding in verdict.findings:
            lines.extend(_finding_lines(finding))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
