// Validates GLB files with the Khronos glTF validator (npm `gltf-validator`, installed by
// `make test` under .tools/): prints one JSON report line per file.
const fs = require("fs");
const validator = require("gltf-validator");

(async () => {
  for (const path of process.argv.slice(2)) {
    const bytes = new Uint8Array(fs.readFileSync(path));
    const report = await validator.validateBytes(bytes, { maxIssues: 50 });
    const issues = report.issues;
    console.log(JSON.stringify({
      path,
      errors: issues.numErrors,
      warnings: issues.numWarnings,
      messages: issues.messages.filter((m) => m.severity <= 1).slice(0, 10),
    }));
  }
})();
