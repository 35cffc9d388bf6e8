// Runs Azurite inside this Node process and exits as soon as the process that started it is gone.
//
// Test harnesses kill Azurite when they finish, but a harness that is itself killed (SIGKILL, a CI timeout)
// cannot; without this watch such an Azurite would live on and hold its ports. The parent's pid arrives in
// AZURITE_PARENT_PID; every other argument is passed to Azurite unchanged.
"use strict";
const path = require("path");

const parent = Number(process.env.AZURITE_PARENT_PID || 0);
if (parent > 0) {
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch (_) {
      process.exit(0);
    }
  }, 250).unref();
}

const entry = require.resolve("azurite/dist/src/azurite.js", { paths: [path.join(__dirname, "..")] });
process.argv = [process.argv[0], entry, ...process.argv.slice(2)];
require(entry);
