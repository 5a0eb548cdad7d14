import { JupyterFrontEnd } from "@jupyterlab/application";

import { requestAPI } from "./request";

const KERNELSPEC = {
  name: "python3",
  display_name: "Python 3 (ipykernel)",
  language: "python",
};

/** Save `content` (nbformat JSON) as a new untitled notebook in `cwd` and open it. */
export async function openNewNotebook(
  app: JupyterFrontEnd,
  content: any,
  cwd = "",
): Promise<string> {
  const contents = app.serviceManager.contents;
  // a kernelspec in the metadata lets the notebook start its kernel without asking
  content.metadata = { kernelspec: KERNELSPEC, ...(content.metadata || {}) };
  const model = await contents.newUntitled({ path: cwd, type: "notebook" });
  await contents.save(model.path, {
    type: "notebook",
    format: "json",
    content,
  });
  await app.commands.execute("docmanager:open", {
    path: model.path,
    factory: "Notebook",
  });
  return model.path;
}

/**
 * Show the monitor notebook of run `runId`: the open tab if there is one, else the saved
 * `monitor-<runId>.ipynb` in `cwd`, else a new one under that name (never another UntitledN).
 */
export async function openMonitorNotebook(
  app: JupyterFrontEnd,
  runId: string,
  cwd = "",
): Promise<string> {
  const contents = app.serviceManager.contents;
  const path = (cwd ? `${cwd}/` : "") + `monitor-${runId}.ipynb`;
  let exists = true;
  try {
    await contents.get(path, { content: false });
  } catch {
    exists = false;
  }
  if (!exists) {
    const content = monitorNotebook(runId);
    content.metadata = { kernelspec: KERNELSPEC };
    await contents.save(path, { type: "notebook", format: "json", content });
  }
  // docmanager:open activates the existing tab when the file is already open
  await app.commands.execute("docmanager:open", {
    path,
    factory: "Notebook",
  });
  return path;
}

/** The quickstart notebook from the server (a built-in starter when it is not installed). */
export function fetchTemplate(): Promise<any> {
  return requestAPI<any>("template");
}

/** A one-cell notebook that attaches the monitor widget to run `runId`. */
export function monitorNotebook(runId: string): any {
  const source =
    "from distill_nb.widgets import RunMonitor\n" +
    `RunMonitor.attach(${JSON.stringify(runId)})`;
  return {
    cells: [
      {
        cell_type: "code",
        metadata: {},
        source,
        outputs: [],
        execution_count: null,
      },
    ],
    metadata: {},
    nbformat: 4,
    nbformat_minor: 5,
  };
}
