import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin,
} from "@jupyterlab/application";
import { ICommandPalette } from "@jupyterlab/apputils";
import { IDefaultFileBrowser } from "@jupyterlab/filebrowser";
import { ILauncher } from "@jupyterlab/launcher";
import { LabIcon } from "@jupyterlab/ui-components";

import {
  fetchTemplate,
  openMonitorNotebook,
  openNewNotebook,
} from "./notebooks";
import { RunsPanel } from "./sidebar";

const NEW_NOTEBOOK = "distill-nb:new-notebook";

// a big "teacher" circle pouring into a small "student" one
const distillIcon = new LabIcon({
  name: "distill-nb:icon",
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<circle cx="8" cy="8" r="6"/><circle cx="18" cy="18" r="3.5"/>' +
    '<path d="M11.5 11.5l3.2 3.2-1 1-3.2-3.2z"/></g></svg>',
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: "distill-nb:plugin",
  description:
    "Distillation runs sidebar, REST client and a launcher item for new distillation notebooks.",
  autoStart: true,
  optional: [ILauncher, ICommandPalette, IDefaultFileBrowser, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    browser: IDefaultFileBrowser | null,
    restorer: ILayoutRestorer | null,
  ) => {
    // launcher cards pass the folder they were opened in; the palette does not
    const folder = (args: any) =>
      typeof args.cwd === "string" ? args.cwd : (browser?.model.path ?? "");

    app.commands.addCommand(NEW_NOTEBOOK, {
      label: "New distillation notebook",
      caption: "A notebook started from the distill_nb quickstart",
      icon: distillIcon,
      execute: async (args) =>
        openNewNotebook(app, await fetchTemplate(), folder(args)),
    });
    launcher?.add({ command: NEW_NOTEBOOK, category: "Distillation", rank: 1 });
    palette?.addItem({ command: NEW_NOTEBOOK, category: "Distillation" });

    const panel = new RunsPanel({
      openMonitor: (runId) => openMonitorNotebook(app, runId, folder({})),
      newNotebook: () => app.commands.execute(NEW_NOTEBOOK),
    });
    panel.id = "distill-nb-runs";
    panel.title.icon = distillIcon;
    panel.title.caption = "Distillation runs";
    app.shell.add(panel, "left", { rank: 600 });
    restorer?.add(panel, "distill-nb-runs");
  },
};

export default plugin;
