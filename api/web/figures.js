// What a fine-tune's summary (GET /models/{id}: model/train/run_finetune.job_summary) means, in words.

const dice = (value) => Number(value).toFixed(2);
const known = (value) => value !== null && value !== undefined;

export function finetuneFigures(summary) {
  if (!summary) return "";
  const parts = [];
  if (known(summary.held_out_dice_base) && known(summary.held_out_dice)) {
    const held = summary.mode === "grid" ? "on the grid's marks it held back" : "on the labels it held back";
    parts.push(`${held}: ${dice(summary.held_out_dice_base)} → ${dice(summary.held_out_dice)} Dice`);
  }
  if (known(summary.labelled_dice)) {
    const where = summary.mode === "grid" ? "on the grid's labels" : "on the pixels you labelled";
    const before = known(summary.labelled_dice_base) ? `${dice(summary.labelled_dice_base)} → ` : "";
    parts.push(`${where}: ${before}${dice(summary.labelled_dice)}`);
  }
  if (summary.mode === "grid" && Array.isArray(summary.rounds) && summary.rounds.length) {
    const sure = summary.rounds.at(-1).sure_marks;
    parts.push(`learned from ${Number(sure).toLocaleString()} sure marks of the grid`);
  }
  const int8 = summary.int8_check;
  if (int8) {
    const drop = -Number(int8.int8_dice_drop);
    const figures = `masks agree with fp32 at ${Number(int8.int8_mask_dice).toFixed(4)}, `
      + `Dice on your labels ${drop >= 0 ? "+" : "−"}${Math.abs(drop).toFixed(4)} from fp32's`;
    parts.push(int8.passed ? `int8 checked on your labels (${figures}): CPUs that run int8 faster use it`
      : `int8 failed its check on your labels (${figures}): it runs in bf16 or fp32`);
  }
  if (known(summary.steps) && known(summary.seconds)) {
    const why = summary.stopped ? ` (stopped: ${summary.stopped})` : "";
    parts.push(`${summary.steps} step${summary.steps === 1 ? "" : "s"} in ${Math.round(summary.seconds)} s${why}`);
  }
  return parts.join("; ");
}
