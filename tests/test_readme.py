"""The README stays true: its usage snippet runs, its two commands are the ones CI and users run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_usage_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_two_commands_present_and_ci_uses_the_test_command():
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert re.search(re.escape(marker) + r"\n```bash\n.+\n```", README), marker
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci and "eval" in ci
    main = re.search(r"<!-- main-command -->\n```bash\n(.+)\n```", README).group(1)
    assert "benchmarks/bench_new_features.py" in main


def test_every_switch_the_code_reads_is_in_the_readme():
    """A user finds every environment variable from the README alone."""
    names = set()
    for pkg in ("natten_mps", "sage_mps"):
        for path in (ROOT / pkg).rglob("*.py"):
            names |= set(re.findall(r"NATTEN_MPS_[A-Z0-9_]*[A-Z0-9]_?|NATTEN_BACKEND", path.read_text()))
    assert "NATTEN_MPS_BACKEND" in names and "NATTEN_MPS_METAL_WALK" in names
    missing = sorted(n for n in names if n not in README)
    assert not missing, f"switches read by the code but not described in README.md: {missing}"


def test_relative_links_resolve():
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README) if "://" not in t]
    assert "docs/api.md" in targets and "docs/performance.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing


def test_api_anchors_exist():
    api = (ROOT / "docs" / "api.md").read_text()
    anchors = re.findall(r"\(docs/api\.md#([a-z0-9]+)\)", README)
    assert anchors
    missing = [a for a in anchors if f'<a id="{a}"></a>' not in api]
    assert not missing, missing
