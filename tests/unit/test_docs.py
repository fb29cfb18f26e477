"""The project's math document: every "ALGORITHMS §N[.M]" citation in the repository resolves to a heading of
docs/ALGORITHMS.md, and no file points outside the repository to the shared workspace's docs."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ALGORITHMS.md"

# The doc's name, optionally ".md" and a closing backtick, then one section number or a list of them joined by ",",
# "and", "or", "/" or a dash; each list item carries its own "§" (see test_checker_reports_missing_sections).
CITATION = re.compile(r"ALGORITHMS(?:\.md)?`?\s*(§\s*\d+(?:\.\d+)?(?:\s*(?:,|and|or|/|–|-)\s*§\s*\d+(?:\.\d+)?)*)")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} §(\d+(?:\.\d+)?)\s", re.MULTILINE)
CITING_SUFFIXES = (".py", ".md", ".yaml", ".yml")
# Built from parts so that this file does not match its own search.
OUTSIDE_REFS = ("../" + "shared", "shared" + "/docs")


def repo_files(tracked_only: bool) -> list[Path]:
    """Files of the repository: git's tracked files (plus untracked, not ignored ones unless `tracked_only`); a walk
    that skips .git when this is not a git checkout."""
    args = ["git", "-C", str(REPO), "ls-files", "-z", "--cached"]
    if not tracked_only:
        args += ["--others", "--exclude-standard"]
    try:
        out = subprocess.run(args, check=True, capture_output=True).stdout.decode()
        paths = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in REPO.rglob("*") if ".git" not in p.relative_to(REPO).parts]
    return sorted(p for p in paths if p.is_file())


def headings(doc: Path) -> set[str]:
    """Section numbers of the `## §N ...` / `### §N.M ...` headings of `doc`."""
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def unresolved_citations(files, sections: set[str]) -> list[str]:
    """`file:line: §N` for every ALGORITHMS citation in `files` whose section is not in `sections`."""
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                for number in SECTION.findall(m.group(1)):
                    if number not in sections:
                        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                        bad.append(f"{rel}:{lineno}: §{number}")
    return bad


def test_algorithms_doc_has_the_cited_sections():
    assert DOC.is_file(), f"{DOC} is missing"
    sections = headings(DOC)
    assert {str(n) for n in range(1, 11)} <= sections, f"sections §1..§10 expected, found {sorted(sections)}"
    files = [p for p in repo_files(tracked_only=False) if p.suffix in CITING_SUFFIXES]
    bad = unresolved_citations(files, sections)
    assert not bad, "citations without a section in docs/ALGORITHMS.md:\n" + "\n".join(bad)


def test_checker_reports_missing_sections(tmp_path):
    doc = tmp_path / "ALGORITHMS.md"
    doc.write_text("# t\n\n## §1 One\n\n### §1.2 Sub\n\n## §3 Three\n§4 in text is not a heading\n")
    assert headings(doc) == {"1", "1.2", "3"}
    src = tmp_path / "a.py"
    name = "ALGORITHMS"  # not spelled out with a section here, or this file would cite missing sections itself
    src.write_text(f'"""{name} §1, §2 and §1.2."""\n# docs/{name}.md §3.1\n# `docs/{name}.md` §4; §9 alone\n')
    assert unresolved_citations([src], headings(doc)) == [
        f"{src}:1: §2",
        f"{src}:2: §3.1",
        f"{src}:3: §4",
    ]


def test_no_reference_outside_the_repository():
    hits = []
    for path in repo_files(tracked_only=True):
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (images)
            continue
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if any(ref in line for ref in OUTSIDE_REFS):
                hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()[:120]}")
    assert not hits, "files referring to the shared workspace (cite docs/ALGORITHMS.md instead):\n" + "\n".join(hits)


# ---- README: the paper's benchmarks (`dvr1 data import` formats and the three commands) ---------------------------

README = REPO / "README.md"


def formats_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The README's supported-formats table (the one whose header starts ``| format | kind |``): its header cells and
    ``{format name: cells}`` per row, in order."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| format | kind |"))
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = split(line)
        rows[cells[0].strip("`")] = cells
    return split(lines[start]), rows


def _reader_splits(mod) -> tuple[str, ...] | None:
    splits = getattr(mod, "SPLITS", None)
    return None if splits is None else tuple(splits)


def test_readme_formats_table_lists_every_registered_format():
    """Every `dvr1 data import` format of the registry has a README row, in the registry's order, with its kind and,
    where the reader declares them, exactly its splits, the default first."""
    from dvr1.importing import all_formats, get_format

    header, rows = formats_table(README.read_text(encoding="utf-8"))
    assert header[:4] == ["format", "kind", "files (`--annotations`; videos)", "splits"]
    assert list(rows) == all_formats()
    for name, cells in rows.items():
        mod = get_format(name)
        assert cells[1] == mod.KIND, name
        listed = tuple(s.strip() for s in cells[3].split(","))
        if _reader_splits(mod) is not None:
            assert sorted(listed) == sorted(_reader_splits(mod)), name
        if getattr(mod, "DEFAULT_SPLIT", None) is not None:
            assert listed[0] == mod.DEFAULT_SPLIT, name
        assert all(cells), name


def test_readme_benchmark_commands_parse():
    """The README's import / train / eval commands parse with the real argument parsers; each import names a
    registered format and a split its reader has."""
    import shlex

    from dvr1.cli import _parser as cli_parser
    from dvr1.importing import _parser as import_parser
    from dvr1.importing import get_format

    text = README.read_text(encoding="utf-8")
    lines = [m.group(1) for m in re.finditer(r"^(?:#\s*)?(dvr1 (?:data import|train|eval) .*?)\)?$", text,
                                             re.MULTILINE)]
    imports = [shlex.split(x)[3:] for x in lines if x.startswith("dvr1 data import ")]
    assert len(imports) >= 7
    formats = set()
    for argv in imports:
        a = import_parser().parse_args(argv)
        mod = get_format(a.format)
        formats.add(a.format)
        if a.split is not None and _reader_splits(mod) is not None:
            assert a.split in _reader_splits(mod), argv
    assert {"seed-bench-r1", "nextgqa", "video-r1"} <= formats
    others = [shlex.split(x)[1:] for x in lines if not x.startswith("dvr1 data import ")]
    assert {"train", "eval"} <= {argv[0] for argv in others}
    for argv in others:
        cli_parser().parse_args(argv)
