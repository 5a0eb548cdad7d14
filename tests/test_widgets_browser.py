"""The widgets in a real JupyterLab and headless Chromium: the app renders, a slider moves the live estimate,
Start trains in the background while the monitor's step advances, the explorer shows teacher vs student.

Skips without /usr/bin/chromium, node or labextension/node_modules/playwright-core. Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import CHROMIUM, LABEXT, REPO, browser_missing

pytestmark = pytest.mark.skipif(browser_missing(need_build=False) is not None,
                                reason=browser_missing(need_build=False) or "")

SCRIPT = r"""
import { createRequire } from "module";
const require = createRequire(process.env.LABEXT_DIR + "/package.json");
const { chromium } = require("playwright-core");
const { URL_, TOKEN, ART } = process.env;
const seen = {};
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--headless", "--no-sandbox",
  "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"] });
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
  await tabs.waitFor();
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
  await page.screenshot({ path: `${ART}/widgets-train.png` });
  await nb.locator("button.widget-button", { hasText: "Start" }).first().click();
  const progress = nb.locator(".widget-html-content", { hasText: "ETA" }).first();
  await progress.waitFor();
  const steps = [];
  for (let i = 0; i < 40 && new Set(steps.filter((s) => s > 0)).size < 3; i++) {
    await page.waitForTimeout(1000);
    const m = (await progress.innerText()).match(/step (\d+)\//);
    steps.push(m ? Number(m[1]) : -1);
  }
  seen.steps = steps;
  await page.screenshot({ path: `${ART}/widgets-monitor.png` });
  await tab("Train");
  await nb.locator("button.widget-button", { hasText: "Stop" }).first().click();
  await tab("Monitor");
  await nb.locator(".widget-html-content", { hasText: "stopped" }).first().waitFor();
  // second cell: explain one sentence with the stopped run's checkpoint
  await nb.locator(".jp-Notebook-cell").nth(1).click();
  await page.keyboard.press("Shift+Enter");
  const teacher = nb.locator(".widget-html-content", { hasText: "teacher →" }).first();
  await teacher.waitFor();
  seen.teacherView = await teacher.innerText();
  seen.studentView = await nb.locator(".widget-html-content", { hasText: "student →" }).first().innerText();
  await page.waitForTimeout(800);
  await page.screenshot({ path: `${ART}/widgets-explorer.png` });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
"""


def test_app_in_jupyterlab(lab, tmp_path, tiny_teacher, tiny_dataset, runs_root):
    import nbformat

    cfg = (f"DistillConfig(teacher={str(tiny_teacher)!r}, dataset={str(tiny_dataset)!r}, text_column='text', "
           "max_steps=20000, batch_size=8, eval_every=200, checkpoint_every=100000, max_length=16, device='cpu', "
           "num_threads=1)")
    book = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"}})
    book.cells = [nbformat.v4.new_code_cell(f"import distill_nb\nfrom distill_nb import DistillConfig\n"
                                            f"app = distill_nb.app(config={cfg}, backend='subprocess')\napp"),
                  nbformat.v4.new_code_cell("app.explorer.set_run(app.monitor.run)\n"
                                            "app.explorer.explain('the movie was very good')\n"
                                            "app.tabs.selected_index = 4")]
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
    advancing = [s for s in seen["steps"] if s > 0]
    assert len(set(advancing)) >= 3 and advancing == sorted(advancing), seen["steps"]  # live while training
    assert "objective" in seen["trainView"] and "classification" in seen["trainView"], seen["trainView"]
    assert "teacher →" in seen["teacherView"] and "student →" in seen["studentView"]
    assert "good" in seen["teacherView"] and "good" in seen["studentView"]
    for name in ("teacher", "student", "train", "monitor", "explorer"):
        assert (art / f"widgets-{name}.png").stat().st_size > 10_000
