use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub fn sluice(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_STATE_DIR", state_dir)
        .env("SLUICE_LOG", "error")
        .output()
        .expect("the sluice binary runs")
}

/// Runs a `--json` command and parses its one JSON object.
pub fn sluice_json(state_dir: &Path, args: &[&str]) -> (Value, Output) {
    let out = sluice(state_dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (value, out)
}
