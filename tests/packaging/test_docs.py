"""The operator's READMEs, the examples and the documentation's links.

- README.md (English) and README_CN.md (Chinese) have the same content: the same
  sections, the same code blocks and the same links, each at most about 300 lines, with
  the two commands for people who build the plugin at the top.
- Every WasmPlugin in examples/ validates against spec.yaml, and each WasmPlugin snippet
  of the READMEs is one of them.
- Every relative link in the Markdown files resolves, anchors included.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "README_CN.md"]
MARKDOWN = [*READMES, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SPEC = yaml.safe_load((ROOT / "spec.yaml").read_text())["spec"]
CONFIG_SCHEMA = SPEC["configSchema"]["openAPIV3Schema"]
ROUTE_SCHEMA = SPEC["routeConfigSchema"]["openAPIV3Schema"]

FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_blocks(text: str) -> list:
    return [(lang, body) for lang, body in FENCE.findall(text)]


def headings(text: str) -> list:
    text = FENCE.sub("", text)
    return re.findall(r"^(#{1,6}) (.+)$", text, re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", READMES, ids=[p.name for p in READMES])
def test_each_readme_is_short_and_starts_with_the_two_commands(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 300, len(text.splitlines())
    top = "\n".join(text.splitlines()[:40])
    assert "make demo" in top and "make test" in top


def test_both_readmes_have_the_same_sections_code_and_links():
    english, chinese = (p.read_text() for p in READMES)
    assert [level for level, _ in headings(english)] == [level for level, _ in headings(chinese)]
    assert code_blocks(english) == code_blocks(chinese), "the code blocks are the same in both"
    links = [sorted(set(LINK.findall(t)) - {"README.md", "README_CN.md"}) for t in (english, chinese)]
    assert links[0] == links[1]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates_against_the_schema(path):
    plugin = yaml.safe_load(path.read_text())
    assert plugin["kind"] == "WasmPlugin"
    spec = plugin["spec"]
    version = (ROOT / "VERSION").read_text().strip()
    assert spec["url"].endswith(f":{version}"), spec["url"]
    main = yaml.safe_load((ROOT / "plugin.yaml").read_text())["spec"]
    assert {k: spec[k] for k in ("phase", "priority", "failStrategy")} == {
        k: main[k] for k in ("phase", "priority", "failStrategy")
    }
    errors = [e.message for e in jsonschema.Draft4Validator(CONFIG_SCHEMA).iter_errors(spec["defaultConfig"])]
    for rule in spec.get("matchRules", []):
        errors += [e.message for e in jsonschema.Draft4Validator(ROUTE_SCHEMA).iter_errors(rule["config"])]
    assert not errors, errors


def test_each_readme_snippet_is_an_example():
    examples = [yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES]
    for path in READMES:
        snippets = [yaml.safe_load(body) for lang, body in code_blocks(path.read_text()) if lang == "yaml"]
        snippets = [s for s in snippets if isinstance(s, dict) and "defaultConfig" in s]
        assert len(snippets) == 3, path.name
        for snippet in snippets:
            assert any(all(example.get(k) == v for k, v in snippet.items()) for example in examples), snippet


def test_every_relative_link_resolves():
    broken = []
    for path in MARKDOWN:
        for target in LINK.findall(FENCE.sub("", path.read_text())):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and resolved.suffix == ".md":
                anchors = {slug(text) for _, text in headings(resolved.read_text())}
                if anchor not in anchors:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, broken
