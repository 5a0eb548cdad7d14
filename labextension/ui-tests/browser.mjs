// The one way the ui-tests start a browser: Debian's chromium ($CHROMIUM or /usr/bin/chromium), never a
// downloaded one; the flags keep it offline and quiet in a container.
import { chromium } from "playwright-core";

export function launchChromium() {
  return chromium.launch({
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
}

// A JupyterLab page at `path` (after `lab`, e.g. "" or "tree/x.ipynb"), logged in with the token, splash gone;
// the page's console errors are pushed to `seen.consoleErrors`.
export async function openLab(browser, seen, path = "") {
  const { JLAB_URL, JLAB_TOKEN } = process.env;
  const page = await browser.newPage({ viewport: { width: 1400, height: 850 } });
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      seen.consoleErrors.push(msg.text());
    }
  });
  page.setDefaultTimeout(60000);
  await page.goto(`${JLAB_URL}lab${path ? `/${path}` : ""}?token=${JLAB_TOKEN}`);
  await page.locator("#jupyterlab-splash").waitFor({ state: "detached" });
  return page;
}
