// Drives the runs sidebar and the launcher item in headless Chromium; tests/test_browser.py runs it.
// Input (env): JLAB_URL (with trailing /), JLAB_TOKEN, RUN_ID (a running run), DONE_ID (a completed
// run with an accuracy), ARTIFACTS (folder for screenshots). Prints one JSON line of what it saw.
import { chromium } from "playwright-core";

const { JLAB_URL, JLAB_TOKEN, RUN_ID, DONE_ID, ARTIFACTS } = process.env;
const seen = { consoleErrors: [] };

// Debian's chromium, never a downloaded one; flags keep it offline and quiet in a container
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
  ],
});
try {
  const page = await browser.newPage({
    viewport: { width: 1400, height: 850 },
  });
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      seen.consoleErrors.push(msg.text());
    }
  });
  page.setDefaultTimeout(60000);
  await page.goto(`${JLAB_URL}lab?token=${JLAB_TOKEN}`);
  await page.locator("#jupyterlab-splash").waitFor({ state: "detached" });

  // the sidebar tab carries the panel's id
  await page.locator('.jp-SideBar [data-id="distill-nb-runs"]').click();
  const panel = page.locator("#distill-nb-runs");
  const run = panel.locator(`.jp-DistillNb-run[data-run-id="${RUN_ID}"]`);
  const done = panel.locator(`.jp-DistillNb-run[data-run-id="${DONE_ID}"]`);
  await run.waitFor();
  seen.stateBefore = await run.locator(".jp-DistillNb-state").innerText();
  seen.stepsBefore = await run.locator(".jp-DistillNb-steps").innerText();
  seen.doneAccuracy = await done.locator(".jp-DistillNb-accuracy").innerText();
  seen.doneStopDisabled = await done.locator(".jp-DistillNb-stop").isDisabled();
  await page.screenshot({ path: `${ARTIFACTS}/sidebar-running.png` });

  await run.locator(".jp-DistillNb-stop").click();
  await run
    .locator(".jp-DistillNb-state", { hasText: "stopped" })
    .waitFor({ timeout: 30000 });
  seen.stateAfter = await run.locator(".jp-DistillNb-state").innerText();

  // the launcher opened with the page; its card runs distill-nb:new-notebook
  const card = page.locator(".jp-LauncherCard", {
    hasText: "New distillation notebook",
  });
  await card.waitFor();
  await page.screenshot({ path: `${ARTIFACTS}/launcher.png` });
  await card.click();
  const notebook = page.locator(".jp-NotebookPanel:visible");
  await notebook.locator(".jp-Cell").first().waitFor();
  // cells render their editors lazily: wait for the template's code to show, not just for a cell
  await notebook
    .locator(".jp-Cell", { hasText: "distill_nb" })
    .first()
    .waitFor({ timeout: 30000 })
    .catch(() => {});
  seen.templateTab = await page
    .locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    .innerText();
  seen.templateCells = await notebook.locator(".jp-Cell").count();
  seen.templateText = await notebook.locator(".jp-Cell").allInnerTexts();

  await run.locator(".jp-DistillNb-open").click();
  await page
    .locator(".jp-NotebookPanel:visible .jp-Cell", { hasText: "RunMonitor" })
    .waitFor();
  seen.monitorText = await page
    .locator(".jp-NotebookPanel:visible .jp-Cell")
    .first()
    .innerText();
  await page.screenshot({ path: `${ARTIFACTS}/browser-sidebar.png` });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
