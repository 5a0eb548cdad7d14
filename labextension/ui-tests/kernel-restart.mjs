// A run launched from a notebook survives "Restart Kernel" and the new kernel re-attaches to it.
// tests/test_browser_restart.py runs it. Input (env): JLAB_URL (with trailing /), JLAB_TOKEN, NOTEBOOK (path
// relative to the server root, cell 1 launches run RUN_ID, cell 2 re-attaches), RUN_ID, ARTIFACTS.
// Prints one JSON line of what it saw.
import { launchChromium, openLab } from "./browser.mjs";

const { JLAB_URL, JLAB_TOKEN, NOTEBOOK, RUN_ID, ARTIFACTS } = process.env;
const seen = { consoleErrors: [] };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await launchChromium();

async function runStatus(page) {
  const reply = await page.request.get(
    `${JLAB_URL}distill-nb/runs/${RUN_ID}?token=${JLAB_TOKEN}`,
  );
  return reply.ok() ? await reply.json() : { state: `http ${reply.status()}` };
}

async function runCell(page, index, expect) {
  const cell = page
    .locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
    .nth(index);
  const prompt = cell.locator(".jp-InputPrompt");
  // a request sent while the kernel connection is still settling can be dropped: retry until it shows [*] or [n]
  for (let attempt = 0; attempt < 4; attempt++) {
    await cell.locator(".jp-InputArea-editor").click();
    await page.keyboard.press("Control+Enter");
    const started = await page
      .waitForFunction(
        (node) => /\[(\*|\d+)\]/.test(node.textContent),
        await prompt.elementHandle(),
        { timeout: 20000 },
      )
      .then(
        () => true,
        () => false,
      );
    if (started) break;
  }
  const output = cell.locator(".jp-OutputArea-output", { hasText: expect });
  try {
    await output.waitFor({ timeout: 180000 });
  } catch (error) {
    await page.screenshot({ path: `${ARTIFACTS}/kernel-restart-failed.png` });
    const outputs = await cell.locator(".jp-OutputArea").allInnerTexts();
    throw new Error(
      `cell ${index} never printed ${expect}; its outputs: ${JSON.stringify(outputs)}`,
    );
  }
  return (await output.innerText()).trim();
}

async function waitForIdleKernel(page) {
  // the status bar reads "Python 3 (ipykernel) | Idle" once the session's kernel is connected and idle
  await page
    .locator(".jp-StatusBar-TextItem", { hasText: /\| Idle/ })
    .first()
    .waitFor({ timeout: 180000 });
}

try {
  const page = await openLab(browser, seen, `tree/${NOTEBOOK}`);
  await page.locator(".jp-NotebookPanel:visible .jp-Cell").first().waitFor();
  await waitForIdleKernel(page);

  seen.launched = await runCell(page, 0, "launched");
  // let it train a little in its background kernel
  let status = await runStatus(page);
  for (
    let i = 0;
    i < 240 && !(status.state === "running" && (status.step ?? 0) >= 3);
    i++
  ) {
    await sleep(500);
    status = await runStatus(page);
  }
  seen.before = {
    state: status.state,
    step: status.step,
    backend: status.backend,
  };

  // Kernel > Restart Kernel…, then confirm the dialog
  await page.locator(".lm-MenuBar-itemLabel", { hasText: /^Kernel$/ }).click();
  await page
    .locator(".lm-Menu-itemLabel", { hasText: /^Restart Kernel/ })
    .first()
    .click();
  const confirm = page.locator(".jp-Dialog .jp-mod-accept");
  await confirm
    .waitFor({ timeout: 10000 })
    .then(() => confirm.click())
    .catch(() => {});
  seen.restartedAt = Date.now();
  await sleep(2000);
  await waitForIdleKernel(page);
  status = await runStatus(page);
  seen.afterRestart = { state: status.state, step: status.step };
  await sleep(4000); // keeps training while the new kernel is up
  seen.attached = await runCell(page, 1, "attached");
  // a restarted kernel counts executions from 1 again; the output can arrive before the execute reply that
  // turns the prompt from [*] into [n], so wait for the prompt to settle before reading it
  const attachedPrompt = page
    .locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
    .nth(1)
    .locator(".jp-InputPrompt");
  await page
    .waitForFunction(
      (node) => /\[\d+\]/.test(node.textContent),
      await attachedPrompt.elementHandle(),
      { timeout: 60000 },
    )
    .catch(() => {});
  seen.attachedPrompt = (await attachedPrompt.innerText()).trim();
  status = await runStatus(page);
  seen.later = { state: status.state, step: status.step };
  await page.screenshot({ path: `${ARTIFACTS}/kernel-restart.png` });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
