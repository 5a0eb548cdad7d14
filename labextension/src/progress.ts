import { IRunSummary, Phase } from "./request";

/** The phases a run goes through, in order, with the words the Monitor widget uses too. */
export const PHASES: [Phase, string][] = [
  ["loading", "loading data and models"],
  ["preparing_teacher", "preparing the teacher"],
  ["caching_logits", "caching teacher logits"],
  ["caching_attributions", "computing teacher attributions"],
  ["training", "training"],
  ["evaluating", "final evaluation"],
  ["saving", "saving"],
];

/** One line, a bar value and a bar maximum for a run, whatever phase it is in. */
export interface IProgress {
  text: string;
  value: number;
  max: number;
}

function num(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** Seconds as m:ss (or XhYYm), "-" when unknown: the same as the widgets' fmt_eta. */
export function formatEta(seconds: unknown): string {
  const s = num(seconds);
  if (s === null || s < 0) {
    return "-";
  }
  const r = Math.round(s);
  if (r < 3600) {
    return `${Math.floor(r / 60)}:${String(r % 60).padStart(2, "0")}`;
  }
  return `${Math.floor(r / 3600)}h${String(Math.floor((r % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * The progress of `run` in one model across phases: loading → preparing the teacher k/N →
 * caching teacher logits k/N → training k/N → final evaluation → saving. Older runs without
 * a `phase` field are read as training (step/total_steps).
 */
export function runProgress(run: IRunSummary): IProgress {
  const step = num(run.step) ?? 0;
  const total = num(run.total_steps);
  let phase = run.phase ?? null;
  if (!phase || !PHASES.some(([p]) => p === phase)) {
    if (run.state === "completed") {
      phase = "done";
    } else if (run.state === "queued") {
      phase = "queued";
    } else {
      phase = null;
    }
  }
  if (phase === "done" || (run.state === "completed" && total)) {
    return {
      text: `done · step ${step}/${total ?? step}`,
      value: 1,
      max: 1,
    };
  }
  if (phase === "queued") {
    return { text: run.message || "queued", value: 0, max: 1 };
  }
  const active = run.state === "running" || run.state === "queued";
  const eta =
    active && num(run.eta_s) !== null ? ` · ETA ${formatEta(run.eta_s)}` : "";
  if (phase === null || phase === "training") {
    const prefix = phase === null ? "" : "training ";
    const index = phase === null ? "" : ` · ${phaseIndex(phase)}`;
    return {
      text: `${prefix}step ${step}/${total ?? "?"}${index}${eta}`,
      value: total ? Math.min(step, total) : 0,
      max: total || 1,
    };
  }
  const label = PHASES.find(([p]) => p === phase)![1];
  const k = num(run.phase_step);
  const n = num(run.phase_total);
  const count = k !== null && n ? ` ${k}/${n}` : "";
  return {
    text: `${label}${count} · ${phaseIndex(phase)}${eta}`,
    value: k !== null && n ? Math.min(k, n) : 0,
    max: n || 1,
  };
}

function phaseIndex(phase: Phase): string {
  const i = PHASES.findIndex(([p]) => p === phase);
  return i < 0 ? "" : `phase ${i + 1}/${PHASES.length}`;
}
