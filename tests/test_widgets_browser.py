"""The widgets in a real JupyterLab and headless Chromium: the app renders, a slider moves the live estimate,
Start trains in the background while the monitor's step advances, the explorer shows teacher vs student.

Skips without /usr/bin/chromium, node or labextension/node_modules/playwright-core. Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import CHROMIUM, LABEXT, REPO, browser_missing

pytestmark = pytest.mark.skipif(browser_missing(need_build=False) is not None,
                                reason=browser_missing(need_build=False) or "")

SCRIPT = r"""
const { launchChromium } = await import(process.env.LABEXT_DIR + "/ui-tests/browser.mjs");
const { URL_, TOKEN, ART } = process.env;
const seen = {};
const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(90000);
  await page.goto(`${URL_}lab/tree/widgets.ipynb?token=${TOKEN}`);
  await page.locator("#jupyterlab-splash").waitFor({ state: "detached" });
  const nb = page.locator(".jp-NotebookPanel:visible");
  await nb.locator(".jp-Notebook-cell").first().waitFor();
  await page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first().waitFor().catch(() => {});
  await page.waitForTimeout(1500);
  await nb.locator(".jp-Notebook-cell").first().click();
  await page.keyboard.press("Shift+Enter");
  const tabs = nb.locator(".jupyter-widget-tab, .widget-tab").first();
  await tabs.waitFor({ timeout: 240000 });  // a cold kernel imports transformers first: slow on a busy machine
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${ART}/widgets-teacher.png` });
  const tab = (name) => tabs.locator(".lm-TabBar-tab", { hasText: name }).first().click();
  await tab("Student");
  const est = nb.locator(".widget-html-content", { hasText: "speed-up" }).first();
  await est.waitFor();
  seen.estimateBefore = await est.innerText();
  const handle = nb.locator(".widget-slider .noUi-handle:visible").first();
  await handle.focus();
  await page.keyboard.press("ArrowLeft");
  await page.keyboard.press("ArrowLeft");
  await page.waitForTimeout(1000);
  seen.estimateAfter = await est.innerText();
  await page.screenshot({ path: `${ART}/widgets-student.png` });
  await tab("Train");
  seen.trainView = await nb.locator(".widget-dropdown", { hasText: "objective" }).first().innerText();
  // the first look at Train times a batch of each model: steps and minutes show before Start
  const estimate = nb.locator(".widget-html-content", { hasText: "Estimate:" }).first();
  await nb.locator(".widget-html-content", { hasText: "≈" }).first().waitFor();
  seen.estimate = await estimate.innerText();
  seen.columnsNote = await nb.locator(".widget-html-content", { hasText: "columns in" }).first().innerText();
  await tabs.screenshot({ path: `${ART}/widgets-train.png` });
  // a double-click on Start launches one run (the test counts run folders)
  await nb.locator("button.widget-button", { hasText: "Start" }).first().dblclick();
  const progress = nb.locator(".widget-html-content", { hasText: "elapsed" }).first();
  await progress.waitFor();
  const steps = [];
  for (let i = 0; i < 40 && new Set(steps.filter((s) => s > 0)).size < 3; i++) {
    await page.waitForTimeout(1000);
    const m = (await progress.innerText()).match(/step (\d+)\//);
    steps.push(m ? Number(m[1]) : -1);
  }
  seen.steps = steps;
  const header = nb.locator(".widget-html-content", { hasText: /^Run / }).first();
  seen.firstHeader = await header.innerText();
  await page.waitForTimeout(1500);
  await tabs.screenshot({ path: `${ART}/widgets-monitor.png` });
  await tab("Train");
  await nb.locator("button.widget-button", { hasText: "Stop" }).first().click();
  await tab("Monitor");
  await nb.locator(".widget-html-content", { hasText: "stopped" }).first().waitFor();
  // a second, short run from the same app (steps set in the Train tab): the Monitor shows only its own charts
  await tab("Train");
  const stepsBox = nb.locator(".widget-text", { hasText: "steps (0: epochs)" }).locator("input").first();
  await stepsBox.fill("40");
  await stepsBox.press("Enter");
  await page.waitForTimeout(1500);
  seen.previewSteps = await nb.locator("textarea").evaluateAll((els) => els.map((e) => e.value)
    .filter((v) => v.includes('"max_steps"')).map((v) => JSON.parse(v).max_steps)[0]);
  await nb.locator("button.widget-button", { hasText: "Start" }).first().click();
  await tab("Monitor");
  const firstId = seen.firstHeader.match(/Run (\S+)/)[1];
  await page.waitForFunction(([id]) => {
    const el = [...document.querySelectorAll(".widget-html-content")].find((e) => e.innerText.startsWith("Run "));
    return el && !el.innerText.includes(id);
  }, [firstId]);
  seen.secondHeader = await header.innerText();
  seen.secondLastEval = await nb.locator(".widget-html-content", { hasText: "last eval" }).count();
  seen.secondChart = await nb.locator(".widget-html-content svg", { hasText: "training loss" }).first()
    .evaluate((svg) => ({ lines: svg.querySelectorAll("polyline").length,
                          waiting: svg.textContent.includes("waiting for data") }));
  for (let i = 0; i < 60; i++) {
    const m = (await progress.innerText()).match(/step (\d+)\//);
    if (m && Number(m[1]) >= 2) break;
    await page.waitForTimeout(1000);
  }
  seen.secondProgress = await progress.innerText();
  seen.secondFirstStepShown = await nb.locator(".widget-html-content svg", { hasText: "training loss" }).first()
    .evaluate((svg) => [...svg.querySelectorAll("circle title")].map((t) => t.textContent)[0] || "");
  await nb.locator(".widget-html-content", { hasText: /^Run .* completed/ }).first().waitFor({ timeout: 240000 });
  seen.secondDone = await header.innerText();
  seen.secondLastEvalTable = await nb.locator(".widget-html-content", { hasText: "last eval" }).first().innerText();
  await tabs.screenshot({ path: `${ART}/widgets-monitor-second.png` });
  // second cell: explain a 40-word sentence with the completed run's student
  await nb.locator(".jp-Notebook-cell").nth(1).click();
  await page.keyboard.press("Shift+Enter");
  const teacher = nb.locator(".widget-html-content", { hasText: "teacher →" }).first();
  await teacher.waitFor({ timeout: 240000 }).catch(async (e) => {  // say why: the panel's error, if any
    const texts = await nb.locator(".widget-html-content").allInnerTexts();
    throw new Error(`${e.message}\n${texts.filter((t) => /Error|error/.test(t)).join("\n")}`);
  });
  seen.teacherView = await teacher.innerText();
  seen.studentView = await nb.locator(".widget-html-content", { hasText: "student →" }).first().innerText();
  seen.legend = await nb.locator(".widget-html-content", { hasText: "against" }).first().innerText();
  const boxes = await nb.locator(".widget-html", { hasText: /^(teacher|student) →/ }).evaluateAll(
    (els) => els.map((e) => { const r = e.getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; }));
  seen.stripBoxes = boxes;
  await page.setViewportSize({ width: 1400, height: 1700 });  // the whole Explain tab in one picture
  await page.waitForTimeout(800);
  await tabs.screenshot({ path: `${ART}/widgets-explorer.png` });
  await page.setViewportSize({ width: 1400, height: 1000 });
  // third cell: a run preparing its teacher (a faked status.json): the phase shows in the Monitor
  await nb.locator(".jp-Notebook-cell").nth(2).click();
  await page.keyboard.press("Shift+Enter");
  const prep = nb.locator(".widget-html-content", { hasText: "phase 2/7" }).first();
  await prep.waitFor();
  seen.prepProgress = await prep.innerText();
  await tabs.screenshot({ path: `${ART}/widgets-monitor-prep.png` });
  seen.trainAfterOpen = await (async () => { await tab("Train");
    return nb.locator(".widget-html-content", { hasText: "Estimate:" }).first().innerText(); })();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
"""


LONG = ("the movie was very good but the acting was awful and the story was boring , yet the music was wonderful "
        "and the actors really loved what they were doing in this city , which is not a bad thing at all for a "
        "film like this one")


def test_app_in_jupyterlab(lab, tmp_path, tiny_teacher, tiny_dataset, runs_root):
    import nbformat

    from distill_nb.config import DistillConfig
    from distill_nb.runs import create_run, write_status

    assert len(LONG.split()) >= 40
    # a run that is fine-tuning its teacher, as the worker reports it (phase fields in status.json)
    prep = create_run(DistillConfig(teacher=str(tiny_teacher), dataset=str(tiny_dataset), text_column="text",
                                    max_steps=300), runs_root, "fake-prep")
    write_status(prep, state="running", pid=os.getpid(), phase="preparing_teacher", phase_step=40, phase_total=300,
                 eta_s=80.0, message="preparing the teacher: fine-tuning step 40/300")

    cfg = (f"DistillConfig(teacher={str(tiny_teacher)!r}, dataset={str(tiny_dataset)!r}, text_column='text', "
           "max_steps=20000, batch_size=8, eval_every=200, checkpoint_every=100000, max_length=16, device='cpu', "
           "num_threads=1)")
    book = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"}})
    book.cells = [nbformat.v4.new_code_cell(f"import distill_nb\nfrom distill_nb import DistillConfig\n"
                                            f"app = distill_nb.app(config={cfg}, backend='subprocess')\napp"),
                  nbformat.v4.new_code_cell("app.explorer.set_run(app.monitor.run)\n"
                                            f"app.explorer.explain({LONG!r})\n"
                                            "app.tabs.selected_index = 4"),
                  nbformat.v4.new_code_cell("app.open_run('fake-prep')")]
    nbformat.write(book, lab["home"] / "widgets.ipynb")
    url, token = lab["url"], lab["token"]
    try:
        art = REPO / "artifacts"
        art.mkdir(exist_ok=True)
        (tmp_path / "drive.mjs").write_text(SCRIPT)
        out = subprocess.run(["node", str(tmp_path / "drive.mjs")], check=False, capture_output=True, text=True, timeout=400,
                             env={**os.environ, "URL_": url, "TOKEN": token, "ART": str(art),
                                  "CHROMIUM": CHROMIUM, "LABEXT_DIR": str(LABEXT)})
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr[-4000:]}\n{lab['log'].read_text()[-3000:]}"
        seen = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for run in runs_root.glob("*/status.json"):  # never leave a training worker behind
            (run.parent / "STOP").write_text("stop")
    assert seen["estimateBefore"] != seen["estimateAfter"], seen  # the slider moved the live estimate
    # the cost before Start: steps per phase and minutes measured on this machine
    assert "train: 20000 steps" in seen["estimate"].replace(",", "") and "≈" in seen["estimate"], seen["estimate"]
    assert "on CPU" in seen["estimate"] and "text" in seen["columnsNote"]
    runs = sorted(p.parent.name for p in runs_root.glob("*/config.json") if p.parent.parent == runs_root)
    assert len(runs) == 3, runs  # fake-prep + one per Start: the double-click launched one run
    advancing = [s for s in seen["steps"] if s > 0]
    assert len(set(advancing)) >= 3 and advancing == sorted(advancing), seen["steps"]  # live while training
    assert "objective" in seen["trainView"] and "classification" in seen["trainView"], seen["trainView"]
    # the second run's Monitor starts empty (no curve, no last-eval table of the first run), then draws its own
    assert seen["secondHeader"] != seen["firstHeader"] and seen["secondLastEval"] == 0
    assert seen["secondChart"]["waiting"] or seen["secondChart"]["lines"] == 0, seen["secondChart"]
    assert re.search(r"loss at step [12]:", seen["secondFirstStepShown"]), seen["secondFirstStepShown"]
    assert seen["previewSteps"] == 40 and "completed" in seen["secondDone"]
    assert "on 24 eval examples" in seen["secondLastEvalTable"], seen["secondLastEvalTable"]  # the subset size
    assert "teacher →" in seen["teacherView"] and "student →" in seen["studentView"]
    assert "good" in seen["teacherView"] and "good" in seen["studentView"]
    assert "against" in seen["legend"]
    (t_left, t_right, t_top, t_bottom), (s_left, s_right, s_top, s_bottom) = seen["stripBoxes"][:2]
    assert t_right <= s_left + 1 or t_bottom <= s_top + 1, seen["stripBoxes"]  # the strips never overlap
    assert "preparing the teacher 40/300 · phase 2/7" in seen["prepProgress"], seen["prepProgress"]
    assert "train: 300 steps" in seen["trainAfterOpen"], seen["trainAfterOpen"]  # the attached run's config
    for name in ("teacher", "student", "train", "monitor", "monitor-second", "explorer", "monitor-prep"):
        assert (art / f"widgets-{name}.png").stat().st_size > 10_000
