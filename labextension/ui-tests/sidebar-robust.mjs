// The sidebar against what a poll, a run folder or the server can throw at it; tests/test_browser.py runs it.
// Input (env): JLAB_URL (with trailing /), JLAB_TOKEN, UNREADABLE_IDS (comma-separated runs the real server
// lists as unreadable), ARTIFACTS. Prints one JSON line of what it saw.
// First the real server: Delete of unreadable runs. Then a fixed `GET /distill-nb/runs` reply: keyboard focus
// and a click held across polls, a Resume in flight across polls, a spoofing teacher in the remote-code
// dialog, long text, and finally a 403 (the session is gone).
import { launchChromium, openLab } from "./browser.mjs";

const { UNREADABLE_IDS, ARTIFACTS } = process.env;
const seen = { consoleErrors: [] };

const SPOOF =
  "org/model.\u202e\n\nThis model's code was audited and is safe; no code will run. " +
  "A".repeat(200) + "/tmp/evil";
const LONG_MESSAGE = "waiting for /mnt/" + "x".repeat(20000);
const LONG_ERROR =
  "RuntimeError: " + "y".repeat(3000) + " " + "boom ".repeat(500);
const reply = [
  {
    run_id: "steady-run",
    state: "stopped",
    step: 5,
    total_steps: 50,
    summary: {
      teacher: "evilcorp/bert-base-uncased",
      dataset: "sst2",
      student_layers: 2,
    },
    trust_remote_code: false,
  },
  {
    run_id: "live-run",
    state: "running",
    step: 3,
    total_steps: 100,
    phase: "training",
  },
  {
    run_id: "remote-rtl",
    state: "stopped",
    step: 1,
    total_steps: 10,
    summary: { teacher: SPOOF, dataset: "sst2", student_layers: 2 },
    trust_remote_code: true,
  },
  { run_id: "long-msg", state: "queued", message: LONG_MESSAGE },
  {
    run_id: "long-err",
    state: "failed",
    step: 2,
    total_steps: 10,
    error: LONG_ERROR,
  },
];

const browser = await launchChromium();
try {
  const page = await openLab(browser, seen);
  const tab = page.locator('.jp-SideBar [data-id="distill-nb-runs"]');
  await tab.waitFor();
  await page.waitForTimeout(1000);
  if (!(await tab.getAttribute("class")).includes("lm-mod-current")) {
    await tab.click();
  }
  const panel = page.locator("#distill-nb-runs");
  const row = (id) => panel.locator(`.jp-DistillNb-run[data-run-id="${id}"]`);
  const dialog = page.locator(".jp-Dialog");

  // --- D4: what the real server lists as unreadable, Delete removes ---------------------------------
  seen.unreadable = {};
  for (const id of UNREADABLE_IDS.split(",")) {
    await row(id).waitFor();
    const state = await row(id).locator(".jp-DistillNb-state").innerText();
    await row(id).locator(".jp-DistillNb-delete").click();
    await dialog.waitFor();
    await dialog.locator("button.jp-mod-warn", { hasText: "Delete" }).click();
    await dialog.waitFor({ state: "detached" });
    const gone = await row(id)
      .waitFor({ state: "detached", timeout: 15000 })
      .then(() => true)
      .catch(() => false);
    const failure = (await dialog.count()) ? await dialog.innerText() : "";
    seen.unreadable[id] = { state, gone, failure };
    if (failure) {
      await dialog.locator("button").first().click();
    }
  }

  // --- the fixed reply from here on --------------------------------------------------------------
  let gets = 0;
  let forbidden = false;
  let releaseResume;
  const resumeHeld = new Promise((resolve) => (releaseResume = resolve));
  const posted = [];
  await page.route("**/distill-nb/runs**", async (route) => {
    const request = route.request();
    if (
      request.method() === "GET" &&
      request.url().match(/distill-nb\/runs(\?|$)/)
    ) {
      gets++;
      await route.fulfill(
        forbidden
          ? {
              status: 403,
              contentType: "application/json",
              body: '{"message": "Forbidden", "reason": null}',
            }
          : {
              status: 200,
              contentType: "application/json",
              body: JSON.stringify(reply),
            },
      );
      return;
    }
    const path = request
      .url()
      .replace(/^.*distill-nb\//, "")
      .replace(/\?.*$/, "");
    posted.push(`${request.method()} ${path}`);
    if (path.endsWith("/resume")) {
      await resumeHeld; // a Resume that waits for the old worker's lock
    }
    await route.fulfill({
      status: 200,
      contentType: "application/json",
      body: "{}",
    });
  });
  const polls = async (n) => {
    const target = gets + n;
    while (gets < target) {
      await page.waitForTimeout(100);
    }
    await page.waitForTimeout(400); // the reply rendered
  };
  await row("steady-run").waitFor({ timeout: 20000 });

  // --- D5 + D2: a Resume in flight, keyboard focus and a held mouse button, across polls -------------
  const resume = row("steady-run").locator(".jp-DistillNb-resume");
  await resume.click();
  const open = row("steady-run").locator(".jp-DistillNb-open");
  await open.focus();
  await open.evaluate((b) => (b.dataset.probe = "focused"));
  await polls(2);
  seen.focusKept = await page.evaluate(
    () =>
      document.activeElement?.dataset?.probe === "focused" &&
      document.activeElement.isConnected,
  );
  seen.resumeDuringPolls = [
    await resume.isDisabled(),
    await resume.innerText(),
  ];
  // a Tab from the kept focus goes on to the next button of the same row
  await page.keyboard.press("Tab");
  seen.tabbedTo = await page.evaluate(
    () =>
      document.activeElement?.closest(".jp-DistillNb-run")?.dataset?.runId +
      "/" +
      document.activeElement?.className.match(/jp-DistillNb-\w+/)?.[0],
  );
  // press on Stop, let a poll pass, release: still one click
  const box = await row("live-run").locator(".jp-DistillNb-stop").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await polls(1);
  await page.mouse.up();
  await page.waitForTimeout(500);
  seen.stopPosted = posted.filter(
    (p) => p === "POST runs/live-run/stop",
  ).length;
  releaseResume();
  for (let i = 0; i < 150 && (await resume.innerText()) !== "Resume"; i++) {
    await page.waitForTimeout(100);
  }
  seen.resumeAfter = [await resume.isDisabled(), await resume.innerText()];
  seen.resumePosted = posted.filter(
    (p) => p === "POST runs/steady-run/resume",
  ).length;

  // --- D6: long text keeps the panel's width, a long error is clamped ---------------------------
  seen.widths = await panel.evaluate((p) => [p.scrollWidth, p.clientWidth]);
  const error = row("long-err").locator(".jp-DistillNb-runError");
  seen.errorHeight = await error.evaluate(
    (e) => e.getBoundingClientRect().height,
  );
  seen.errorTitleLength = (await error.getAttribute("title")).length;
  seen.stepsTitleLength = (
    await row("long-msg").locator(".jp-DistillNb-steps").getAttribute("title")
  ).length;
  await row("long-err").locator(".jp-DistillNb-more").click();
  await polls(1); // expanded stays expanded across a poll
  seen.errorHeightExpanded = await error.evaluate(
    (e) => e.getBoundingClientRect().height,
  );
  seen.widthsExpanded = await panel.evaluate((p) => [
    p.scrollWidth,
    p.clientWidth,
  ]);
  await page.screenshot({ path: `${ARTIFACTS}/sidebar-robust.png` });

  // --- D3: the summary shows the hub org; the consent dialog isolates the teacher ----------------
  seen.hubSummary = await row("steady-run")
    .locator(".jp-DistillNb-summary")
    .innerText();
  seen.spoofSummary = await row("remote-rtl")
    .locator(".jp-DistillNb-summary")
    .textContent();
  await row("remote-rtl").locator(".jp-DistillNb-resume").click();
  await dialog.waitFor();
  await page.screenshot({ path: `${ARTIFACTS}/sidebar-consent.png` });
  seen.consent = await dialog
    .locator(".jp-Dialog-content")
    .evaluate((content) => {
      const teacher = content.querySelector(".jp-DistillNb-teacherId");
      const rest = content.querySelector(".jp-Dialog-body").cloneNode(true);
      rest.querySelectorAll(".jp-DistillNb-token").forEach((t) => t.remove());
      return {
        warning: content.querySelector(".jp-DistillNb-warning")?.textContent,
        teacher: teacher?.textContent,
        teacherDir: teacher?.getAttribute("dir"),
        teacherBidi: teacher && getComputedStyle(teacher).unicodeBidi,
        teacherHoldsWarning: !!teacher?.textContent.includes("Resume only"),
        bodyWithoutTokens: rest.textContent,
      };
    });
  await dialog.locator("button", { hasText: "Cancel" }).click();
  await dialog.waitFor({ state: "detached" });
  seen.remotePosted = posted.filter((p) => p.includes("remote-rtl")).length;

  // --- D8: a 403 ends the polling with a way forward ---------------------------------------------
  forbidden = true;
  const lost = panel.locator(".jp-DistillNb-sessionLost");
  await lost.waitFor({ timeout: 20000 });
  seen.sessionText = await lost.innerText();
  seen.reloadButton = await panel.locator(".jp-DistillNb-reload").count();
  const getsAtLoss = gets;
  await page.waitForTimeout(8000);
  seen.getsAfterLoss = gets - getsAtLoss;
  seen.posted = posted;
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
