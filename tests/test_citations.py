"""Code, help texts and the README cite the paper (Sec. / Tab. / Fig. / App.) and upstream file paths, never the
numbered sections of notes that are not in the repository."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION_SIGN = "\u00a7"  # escapes and [] classes below so that this file passes its own check
FORBIDDEN = re.compile(rf"{SECTION_SIGN}\s*\d|reference\s*{SECTION_SIGN}|shared[/]spec|reference[.]md", re.IGNORECASE)


def test_no_citation_of_files_outside_the_repository():
    files = [ROOT / "README.md", *(p for d in ("jtaba", "experiments", "convert", "tests")
                                   for p in sorted((ROOT / d).rglob("*.py")))]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if FORBIDDEN.search(line)]
    assert not hits, "cite the paper's sections / tables / figures or upstream files instead:\n" + "\n".join(hits)
