/**
 * Text from run folders (teacher ids, messages, errors) made safe to show: anyone who can write a run folder
 * controls it, so it must never pass for the panel's own words (newlines, bidi overrides) nor break the layout.
 */

/** Bidi controls: embeddings/overrides U+202A-U+202E, isolates U+2066-U+2069, marks U+200E/U+200F/U+061C. */
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** Every character that is invisible or moves other text: C0/C1 controls, DEL, bidi, zero-width, separators. */
const HIDDEN =
  /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/;

const NAMED: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function escape(ch: string): string {
  return (
    NAMED[ch] ??
    `\\u${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`
  );
}

/** `text` with its bidi controls written out as \uXXXX (line breaks kept): for messages and errors. */
export function noBidi(text: string): string {
  return text.replace(BIDI, escape);
}

/**
 * `value` as one visible token: every control, bidi or invisible character written out (\n, \u202E, ...),
 * cut to `max` characters by an "…" in the middle: both ends stay visible, so a long path cannot hide where it
 * really ends (`/models/trusted/./././…/../../tmp/evil`). Show it in its own element (`isolate()`) so it cannot
 * reorder its neighbours.
 */
export function visibleToken(value: string, max = 120): string {
  const pieces = Array.from(value, (ch) => (HIDDEN.test(ch) ? escape(ch) : ch));
  const total = pieces.reduce((n, p) => n + p.length, 0);
  if (total <= max) {
    return pieces.join("");
  }
  const take = (from: string[], budget: number): string[] => {
    const kept: string[] = [];
    for (const p of from) {
      if (budget < p.length) {
        break;
      }
      kept.push(p);
      budget -= p.length;
    }
    return kept;
  };
  const head = take(pieces, Math.floor((max - 1) / 2));
  const tail = take([...pieces].reverse(), Math.ceil((max - 1) / 2)).reverse();
  return `${head.join("")}…${tail.join("")}`;
}

/** An element holding `value` as an isolated, quoted, left-to-right token (see `visibleToken`). */
export function isolate(
  value: string,
  className: string,
  max = 120,
): HTMLElement {
  const code = document.createElement("code");
  code.className = `jp-DistillNb-token ${className}`;
  code.dir = "ltr";
  code.textContent = `"${visibleToken(value, max)}"`;
  return code;
}

/** A hub id: `org/name` (one slash, no path-like start), shown in full so the org is never hidden. */
const HUB_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9_.-]+$/;

/**
 * How a teacher or dataset reads in the summary line: a hub id in full (`evilcorp/bert-base-uncased`), a plain
 * name as it is, and a local path as its last part (`/models/custom-bert` → `custom-bert`).
 */
export function displayName(value: string): string {
  if (HUB_ID.test(value) && !value.startsWith(".")) {
    return value;
  }
  const parts = value.split(/[/\\]/).filter((p) => p);
  return parts.length ? parts[parts.length - 1] : value;
}

/** `text` cut to `max` characters with "…" (the full text goes in a title). */
export function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
