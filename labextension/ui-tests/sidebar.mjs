// Drives the runs sidebar and the launcher item in headless Chromium; tests/test_browser.py runs it.
// Input (env): JLAB_URL (with trailing /), JLAB_TOKEN, RUN_ID (a running run), DONE_ID (a completed
// run with an accuracy), ARTIFACTS (folder for screenshots). Prints one JSON line of what it saw.
// The second half feeds the sidebar a fixed `GET /distill-nb/runs` reply (an unreadable run, a run with
// trust_remote_code, a run preparing its teacher, a reply that is not a list) to check the REST contract.
import { launchChromium, openLab } from "./browser.mjs";

const {
  JLAB_URL,
  JLAB_TOKEN,
  RUN_ID,
  DONE_ID,
  BROKEN_ID,
  REMOTE_ID,
  ARTIFACTS,
} = process.env;
const seen = { consoleErrors: [] };

const browser = await launchChromium();
try {
  const page = await openLab(browser, seen);

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
  seen.doneReasons = await done
    .locator(".jp-DistillNb-reasons")
    .allInnerTexts();
  // the real server's list: a corrupt run is one unreadable row, a remote-code run carries its flag
  const brokenRow = panel.locator(
    `.jp-DistillNb-run[data-run-id="${BROKEN_ID}"]`,
  );
  const remoteRow = panel.locator(
    `.jp-DistillNb-run[data-run-id="${REMOTE_ID}"]`,
  );
  seen.serverBroken = [
    await brokenRow.locator(".jp-DistillNb-state").innerText(),
    await brokenRow.locator(".jp-DistillNb-runError").innerText(),
  ];
  seen.remoteReasons = await remoteRow
    .locator(".jp-DistillNb-reasons")
    .allInnerTexts();
  seen.serverRemote = [
    await remoteRow.locator(".jp-DistillNb-remoteCode").innerText(),
    await remoteRow.locator(".jp-DistillNb-summary").innerText(),
  ];
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
  // a second Open shows the same notebook again: no new file, no new tab
  await run.locator(".jp-DistillNb-open").click();
  await page.waitForTimeout(1500);
  seen.monitorTabs = await page
    .locator(".lm-DockPanel-tabBar .lm-TabBar-tab", { hasText: "monitor-" })
    .count();
  seen.currentTab = await page
    .locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    .innerText();
  await page.screenshot({ path: `${ARTIFACTS}/browser-sidebar.png` });

  // --- the REST contract, with a fixed reply -------------------------------------------------
  const page2 = await browser.newPage({
    viewport: { width: 1400, height: 850 },
  });
  page2.on("console", (msg) => {
    if (msg.type() === "error") {
      seen.consoleErrors.push(msg.text());
    }
  });
  page2.setDefaultTimeout(60000);
  let reply = JSON.stringify([
    {
      run_id: "prep-run",
      state: "running",
      step: 0,
      total_steps: null,
      phase: "preparing_teacher",
      phase_step: 40,
      phase_total: 300,
      eta_s: 80,
      summary: {
        teacher: "minilm-l6",
        dataset: "sst2",
        student_layers: 3,
        objective: "classification",
      },
      trust_remote_code: false,
    },
    {
      run_id: "broken-run",
      state: "unreadable",
      error: "status.json is not UTF-8 (byte 0xff at 0)",
    },
    {
      run_id: "remote-run",
      state: "failed",
      step: 12,
      total_steps: 100,
      stale: true,
      error:
        "the worker process died without finishing (last step 12); resume() continues from the last checkpoint.",
      last_eval: { step: 10, accuracy: 0.8125, eval_examples: 872 },
      summary: {
        teacher: "/models/custom-bert",
        dataset: "/data/reviews.csv",
        student_layers: 2,
        objective: "classification",
      },
      trust_remote_code: true,
    },
  ]);
  const posted = [];
  await page2.route("**/distill-nb/runs**", async (route) => {
    const request = route.request();
    if (
      request.method() === "GET" &&
      request.url().match(/distill-nb\/runs(\?|$)/)
    ) {
      await route.fulfill({
        status: 200,
        contentType: "application/json",
        body: reply,
      });
      return;
    }
    posted.push({
      method: request.method(),
      url: request.url().replace(/\?.*$/, ""),
      body: request.postData(),
    });
    await route.fulfill({
      status: 200,
      contentType: "application/json",
      body: "{}",
    });
  });
  await page2.goto(`${JLAB_URL}lab?token=${JLAB_TOKEN}`);
  await page2.locator("#jupyterlab-splash").waitFor({ state: "detached" });
  const side = page2.locator("#distill-nb-runs");
  // the workspace may restore the sidebar open: click its tab only when it is not the current one
  const sideTab = page2.locator('.jp-SideBar [data-id="distill-nb-runs"]');
  await sideTab.waitFor();
  await page2.waitForTimeout(1000);
  if (!(await sideTab.getAttribute("class")).includes("lm-mod-current")) {
    await sideTab.click();
  }
  const prep = side.locator('.jp-DistillNb-run[data-run-id="prep-run"]');
  const broken = side.locator('.jp-DistillNb-run[data-run-id="broken-run"]');
  const remote = side.locator('.jp-DistillNb-run[data-run-id="remote-run"]');
  await remote.waitFor();
  seen.prepSteps = await prep.locator(".jp-DistillNb-steps").innerText();
  seen.prepBar = await prep
    .locator("progress")
    .evaluate((p) => [p.value, p.max]);
  seen.prepSummary = await prep.locator(".jp-DistillNb-summary").innerText();
  seen.brokenState = await broken.locator(".jp-DistillNb-state").innerText();
  seen.brokenError = await broken.locator(".jp-DistillNb-runError").innerText();
  seen.remoteFlag = await remote
    .locator(".jp-DistillNb-remoteCode")
    .innerText();
  seen.remoteSummary = await remote
    .locator(".jp-DistillNb-summary")
    .innerText();
  seen.remoteError = await remote.locator(".jp-DistillNb-runError").innerText();
  seen.remoteAccuracyTitle = await remote
    .locator(".jp-DistillNb-accuracy")
    .getAttribute("title");
  seen.prepFlagCount = await prep.locator(".jp-DistillNb-remoteCode").count();
  seen.prepDeleteDisabled = await prep
    .locator(".jp-DistillNb-delete")
    .isDisabled();
  seen.prepResumeDisabled = await prep
    .locator(".jp-DistillNb-resume")
    .isDisabled();
  seen.disabledOpacity = await prep
    .locator(".jp-DistillNb-resume")
    .evaluate((b) => getComputedStyle(b).opacity);
  await side.screenshot({ path: `${ARTIFACTS}/sidebar-contract.png` });

  // Resume on a remote-code run asks first; Cancel sends nothing, confirming sends the flag
  await remote.locator(".jp-DistillNb-resume").click();
  const dialog = page2.locator(".jp-Dialog");
  await dialog.waitFor();
  seen.dialogText = await dialog.locator(".jp-Dialog-content").innerText();
  await page2.screenshot({
    path: `${ARTIFACTS}/sidebar-remote-code-dialog.png`,
  });
  await dialog.locator("button", { hasText: "Cancel" }).click();
  await dialog.waitFor({ state: "detached" });
  seen.postsAfterCancel = posted.length;
  await remote.locator(".jp-DistillNb-resume").click();
  await dialog.waitFor();
  await dialog.locator("button", { hasText: "Resume and run it" }).click();
  await dialog.waitFor({ state: "detached" });
  // Delete asks too, then sends DELETE runs/<id>
  await broken.locator(".jp-DistillNb-delete").click();
  await dialog.waitFor();
  await dialog.locator("button.jp-mod-warn", { hasText: "Delete" }).click();
  await dialog.waitFor({ state: "detached" });
  await page2.waitForTimeout(500);
  seen.posted = posted;

  // a reply that is not a list: an error, never one "run" per character
  reply = JSON.stringify("NaN");
  await side.locator(".jp-DistillNb-error").waitFor({ timeout: 20000 });
  seen.notListError = await side.locator(".jp-DistillNb-error").innerText();
  seen.runsAfterBadReply = await side.locator(".jp-DistillNb-run").count();
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
