// What the shared job trains, in words, from `/api/status`: for the page and the card.

const millions = (n) => `${(n / 1e6).toFixed(2)}M`;
const count = (n) => (n >= 1e6 ? millions(n) : n.toLocaleString("en"));

/** A sentence naming the job and what it trains on; `short` for the widget's card. */
export function describeJob(status, short = false) {
  const f = status.finetune;
  if (!f) {
    return short
      ? `“${status.job}”`
      : `“${status.job}”, a ${millions(status.parameters)}-parameter language model, on ${status.data}`;
  }
  if (short) return `“${status.job}”: fine-tuning ${f.base} on ${status.data}`;
  return `“${status.job}”: fine-tuning ${f.base} (${millions(f.base_parameters)} parameters, frozen) on ` +
    `${status.data}, with LoRA adapters of rank ${f.rank} on ${f.targets.join(", ")} ` +
    `(${count(status.parameters)} parameters trained)`;
}
