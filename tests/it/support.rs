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

/// Runs `sluice <args> --out DIR/results --json` (a bench or simulate command), asserts that
/// it succeeded, and returns its JSON.
pub fn sluice_results(dir: &Path, args: &[&str]) -> Value {
    let out_dir = dir.join("results");
    let mut full = args.to_vec();
    full.extend_from_slice(&["--out", out_dir.to_str().unwrap(), "--json"]);
    let (summary, out) = sluice_json(dir, &full);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary
}

/// A `sluice serve` child process on a free loopback port, killed on drop.
pub struct Server {
    child: std::process::Child,
    pub base: String,
}

impl Server {
    pub fn start(state_dir: &Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .env("SLUICE_STATE_DIR", state_dir)
            .env("SLUICE_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sluice serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server announces its address");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Self { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
