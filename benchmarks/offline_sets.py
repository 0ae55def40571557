"""More held-out genres for benchmarks/classifier_quality.py, built from packages this machine can
fetch (Debian's archive and npm; no data set download). Writes ``label<TAB>text`` files (with a
header) into OUT; the benchmark reads them with ``--tsv NAME=OUT/NAME.tsv`` (stratified 80/20):

- ``debian``: Debian bookworm package short descriptions -> their section (12 sections, at most
  1,200 descriptions each, duplicates dropped; from the apt lists, ``apt-get update`` first).
- ``fortunes``: quotations of the ``fortunes`` and ``fortunes-min`` packages -> the file they come
  from (21 files of at least 150 quotations of 3-120 words).
- ``wordnet``: WordNet 3.0 noun glosses (``wordnet-base``) -> their lexicographer file (15 classes
  of at least 1,500 synsets, 800 each).
- ``manpages``: the Linux man-pages project's pages (``manpages``, ``manpages-dev``; links and
  ``.so`` redirects skipped, roff requests and escapes stripped) -> their section: system calls (2),
  library functions (3), files and devices (4, 5), overviews (7). Long documents: 1,080 pages,
  median 443 words, 99th percentile about 6,800.
- ``uci``: the UCI "Sentiment Labelled Sentences" (Kotzias et al. 2015; Amazon, IMDb and Yelp, 3,000
  sentences, CC BY 4.0) as the ``sentiment`` npm package ships them in its test fixtures.

    python benchmarks/offline_sets.py OUT
    python benchmarks/classifier_quality.py --sets --tsv uci=OUT/uci.tsv debian=OUT/debian.tsv ...
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SECTIONS = ["games", "science", "sound", "graphics", "net", "admin", "text", "web", "math", "electronics", "mail",
            "video"]
SKIPPED_FORTUNES = {"fortunes", "miscellaneous", "ascii-art", "cookie", "debian", "linuxcookie", "knghtbrd", "zippy",
                    "startrek"}
WORDNET_LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
                    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
                    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
                    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time").split()


def write(path, rows):
    random.Random(0).shuffle(rows)
    with open(path, "w", encoding="utf-8") as f:
        f.write("label\ttext\n")
        f.writelines(f"{label}\t{' '.join(text.split())}\n" for text, label in rows)
    print(f"{path}: {len(rows)} texts, {len({label for _, label in rows})} labels")


def debian(out):
    listing = sorted(glob.glob("/var/lib/apt/lists/*debian_dists_bookworm_main_binary-amd64_Packages*"))[0]
    text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", listing], capture_output=True, text=True,
                          check=True).stdout
    by, seen = collections.defaultdict(list), set()
    for record in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in record.splitlines() if ": " in line and line[0] != " ")
        description, section = fields.get("Description", ""), fields.get("Section", "").split("/")[-1]
        if description and description.lower() not in seen:
            seen.add(description.lower())
            by[section].append(description)
    rng, rows = random.Random(0), []
    for section in SECTIONS:
        texts = by[section][:]
        rng.shuffle(texts)
        rows += [(t, section) for t in texts[:1200]]
    write(out / "debian.tsv", rows)


def fortunes(root, out):
    rows = []
    for path in sorted((root / "usr/share/games/fortunes").iterdir()):
        if "." in path.name or path.name in SKIPPED_FORTUNES or not path.is_file():
            continue
        items = [re.sub(r"\s+", " ", x).strip() for x in path.read_text("utf-8", "replace").split("\n%\n")]
        items = [x for x in items if 3 <= len(x.split()) <= 120]
        if len(items) >= 150:
            rows += [(x, path.name) for x in items]
    write(out / "fortunes.tsv", rows)


def wordnet(root, out):
    by = collections.defaultdict(list)
    for line in open(root / "usr/share/wordnet/data.noun", encoding="latin-1"):
        if not line.startswith("  "):
            head, gloss = line.split(" | ", 1)
            by[WORDNET_LEXNAMES[int(head.split()[1])]].append(gloss.strip())
    rng, rows = random.Random(0), []
    for name, glosses in by.items():
        if len(glosses) >= 1500:
            rng.shuffle(glosses)
            rows += [(t, name) for t in glosses[:800]]
    write(out / "wordnet.tsv", rows)


def roff_text(source):
    """A manual page's words without its roff requests, comments, font changes and escapes."""
    lines = []
    for line in source.splitlines():
        if line.startswith((".\\\"", "'\\\"", ".TH", ".so")):  # comments; the title line names the section
            continue
        if line.startswith((".", "'")):  # a request: keep its arguments (.SH NAME, .B word)
            line = (line[1:].split(None, 1) + ["", ""])[1]
        line = re.sub(r"\\[f*](\[[^\]]*\]|\(..|.)", "", line)  # fonts, strings
        line = re.sub(r"\\(\(..|\[[^\]]*\])", " ", line)  # special characters
        line = re.sub(r"\\s[-+]?\d|\\[&|^%:c]", "", line)
        lines.append(line.replace("\\-", "-").replace("\\e", "\\").replace('"', " "))
    return " ".join(lines)


def manpages(root, out):
    rows = []
    for section, label in [("2", "syscalls"), ("3", "library"), ("4", "files"), ("5", "files"), ("7", "overview")]:
        for path in sorted((root / f"usr/share/man/man{section}").glob("*.gz")):
            source = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
            if not path.is_symlink() and not source.lstrip().startswith(".so") and len(source) >= 200:
                rows.append((roff_text(source), label))
    write(out / "manpages.tsv", rows)


def uci(root, out):
    rows = []
    for source in ("amazon", "imdb", "yelp"):
        for item in json.loads((root / f"package/test/fixtures/{source}.json").read_text()):
            if item.get("class") is not None:
                rows.append((item["text"], "pos" if int(item["class"]) == 1 else "neg"))
    write(out / "uci.tsv", rows)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "offline_sets")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run(["apt-get", "download", "fortunes", "fortunes-min", "wordnet-base", "manpages",
                        "manpages-dev"], cwd=tmp, check=True)
        for deb in root.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        subprocess.run(["npm", "pack", "sentiment@5.0.2"], cwd=tmp, check=True, capture_output=True)
        subprocess.run(["tar", "xzf", next(root.glob("sentiment-*.tgz")).name], cwd=tmp, check=True)
        debian(out)
        fortunes(root, out)
        wordnet(root, out)
        manpages(root, out)
        uci(root, out)
    os.chmod(out, 0o755)


if __name__ == "__main__":
    main()
