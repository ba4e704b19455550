// The edge contributor: crowdgrad's wasm module under Node.js, training on the CPU.
//   node web/node/contribute.mjs ws://127.0.0.1:8080/ws[,ws://…/ws] [UNITS]
// Several relays (a federated job's): it moves to the next when its relay dies.
// Build the module first: `wasm-pack build web --target nodejs --out-dir ../target/node-pkg`
// (`cargo xtask test` does). Node 22 has WebSocket built in; Node 20 needs
// `--experimental-websocket`. Prints the final stats as JSON; exits 1 on failure.
import { createRequire } from "node:module";

const [relays = "ws://127.0.0.1:8080/ws", units = "0"] = process.argv.slice(2);
if (typeof WebSocket === "undefined") {
  console.error("this Node.js has no WebSocket: use Node 22+, or Node 20 with --experimental-websocket");
  process.exit(1);
}
const require = createRequire(import.meta.url);
const { contribute_headless: contribute } = require("../../target/node-pkg/crowdgrad_web.js");
try {
  const stats = await contribute(relays, Number(units));
  console.log(JSON.stringify(stats));
  process.exit(0);
} catch (e) {
  console.error(`crowdgrad edge contributor: ${e}`);
  process.exit(1);
}
