"""What every page shares: report.html is written atomically and never replaces a file
spectune did not write, a page embeds no file from outside its folder, and each page
renders in a browser."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spectune.errors import SpectuneError
from spectune.report.pages.comparison import render_comparison, write_comparison_report
from spectune.report.pages.run import render_run, write_run_report
from spectune.report.pages.spectra import write_spectra_report

from .test_comparison import make_comparison
from .test_run import RUN_PLOTS, files, make_run, save_png
from .test_watch import planted_collapse

#: a page an earlier spectune wrote (its generator tag): a report replaces it
OLD_PAGE = '<!doctype html>\n<meta name="generator" content="spectune 0.1">\nold\n'


def test_write_run_report_is_atomic_and_writes_only_the_report(tmp_path):
    folder = make_run(tmp_path / "run")
    before = files(folder)
    (folder / "report.html").write_text(OLD_PAGE)
    path = write_run_report(folder)
    assert path == folder / "report.html"
    assert files(folder) == before | {"report.html"}  # no temporary file left behind
    assert path.read_text(encoding="utf-8") == render_run(folder)
    assert render_run(folder) == path.read_text(encoding="utf-8")  # rendering again: the same


def test_failed_write_keeps_the_old_report(tmp_path, monkeypatch):
    folder = make_run(tmp_path / "run", full=False)
    (folder / "report.html").write_text(OLD_PAGE)
    before = files(folder)

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        write_run_report(folder)
    monkeypatch.undo()
    assert files(folder) == before
    assert (folder / "report.html").read_text() == OLD_PAGE


def test_a_report_html_spectune_did_not_write_is_never_replaced(tmp_path, capsys):
    """The rule for every file spectune writes: report.html is replaced only when it is a
    page spectune wrote; the user's page (or a link) is refused, one line, exit 2."""
    from spectune.cli.main import main

    folder = make_run(tmp_path / "run", full=False)
    outside = tmp_path / "mine.html"
    outside.write_text("<p>my notes</p>")
    for setup in ("file", "link"):
        if setup == "file":
            (folder / "report.html").write_text("<p>my own report</p>")
        else:
            (folder / "report.html").unlink()
            (folder / "report.html").symlink_to(outside)
        before = files(folder)
        with pytest.raises(SpectuneError, match="report.html"):
            write_run_report(folder)
        assert main(["report", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(folder / "report.html") in err, err
        assert ("was not written by spectune" if setup == "file" else "is a symbolic link") in err
        assert files(folder) == before
    assert outside.read_text() == "<p>my notes</p>"


def test_a_report_embeds_no_file_a_link_points_outside_the_folder(tmp_path, capsys):
    """Issue 20, case 7: images and files that links inside a results folder point to
    outside it were embedded. They are left out (and listed); a page's required file that
    links outside is refused."""
    from spectune.cli.main import main

    secret = tmp_path / "secret"
    secret.mkdir()
    save_png(secret / "private.png", "#123456")
    (secret / "notes.jsonl").write_text('{"instruction": "SECRET-TEXT", "correct_after": true}\n')
    folder = make_run(tmp_path / "run", plots=RUN_PLOTS[:1])
    (folder / "plots" / "stolen.png").symlink_to(secret / "private.png")
    (folder / "predictions.jsonl").unlink()
    (folder / "predictions.jsonl").symlink_to(secret / "notes.jsonl")
    inside = folder / "plots" / "again.png"
    inside.symlink_to(folder / "plots" / f"{RUN_PLOTS[0]}")  # a link inside the folder: fine
    assert main(["report", str(folder)]) == 0
    text = (folder / "report.html").read_text(encoding="utf-8")
    secret_png = base64.b64encode((secret / "private.png").read_bytes()).decode("ascii")
    assert secret_png not in text and "SECRET-TEXT" not in text
    assert "plots/stolen.png: a link to a file outside the folder; left out" in text
    assert "predictions.jsonl: a link to a file outside the folder; left out" in text
    assert text.count("data:image/png;base64,") == 2  # the run's plot and its link inside
    # a comparison: a run folder linked in from elsewhere is left out too
    sweep = make_comparison(tmp_path / "sweep")
    n_images = render_comparison(sweep).count("data:image/png;base64,")
    elsewhere = make_run(tmp_path / "elsewhere", plots=RUN_PLOTS[:1])
    (sweep / "runs" / "r2").symlink_to(elsewhere, target_is_directory=True)
    page = render_comparison(sweep)
    assert "runs/r2/metrics.json: a link to a file outside the folder; left out" in page
    assert "runs/r2/plots/loss_curve.png: a link to a file outside the folder" in page
    assert page.count("data:image/png;base64,") == n_images
    # the run page's metrics.json itself linking outside: refused
    (folder / "metrics.json").rename(secret / "metrics.json")
    (folder / "metrics.json").symlink_to(secret / "metrics.json")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json is a link to a file outside the folder" in err


# --------------------------------------------------------------------------- in a browser


PROBE = """<script>
window.addEventListener('load', function () {
  var n = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) n++;
  }
  document.body.setAttribute('data-images-ok', String(n));
  document.body.setAttribute('data-images-total', String(document.images.length));
});
</script>
"""


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("SPECTUNE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not on PATH but SPECTUNE_REQUIRE_CHROMIUM=1: "
                        "install it with `apt-get install chromium chromium-driver`")  # fmt: skip
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    return exe


def browse(exe: str, page: Path, tmp: Path, *extra: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra,
           page.resolve().as_uri()]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["run", "comparison", "spectra"])
def test_pages_render_in_chromium(tmp_path, kind):
    from PIL import Image

    exe = chromium()
    if kind == "run":
        folder, n_images = make_run(tmp_path / "run"), len(RUN_PLOTS)
        write_run_report(folder)
        expected = ["What happened", "held-out accuracy", "50.0% (12/24)", "What is 0 + 0?"]
    elif kind == "spectra":
        folder, n_images = planted_collapse(tmp_path / "cmp"), 2
        write_spectra_report(folder)
        expected = ["Scale collapse: tuned against base", "10 matrices compared; 1 collapsed.",
                    "spectral, frobenius", "Correlation flow"]  # fmt: skip
    else:
        folder, n_images = make_comparison(tmp_path / "sweep"), 5
        write_comparison_report(folder)
        expected = ["Sweep over r", "accuracy after", "62.5%", "failed: out of memory"]
    text = (folder / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    dom = browse(exe, probe, tmp_path, "--dump-dom")
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert ok and total, "the load handler did not run:\n" + dom[:500]
    assert int(total.group(1)) == n_images
    assert int(ok.group(1)) == n_images  # every embedded PNG decoded
    for snippet in expected:
        assert snippet in dom

    shot = tmp_path / "shot.png"
    browse(exe, probe, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000",
           "--hide-scrollbars")  # fmt: skip
    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "the screenshot is (nearly) one flat colour"
    assert not list(tmp_path.glob("**/.report.html.*.tmp"))
