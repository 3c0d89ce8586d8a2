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
